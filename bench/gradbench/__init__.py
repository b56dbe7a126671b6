"""GradBench's evals in adserve's language beside JAX (`python -m bench.gradbench`)."""

import re

BEGIN, END = "<!-- BEGIN GRADBENCH (python -m bench.gradbench) -->", "<!-- END GRADBENCH -->"


def kept_section(path) -> str:
    """The GradBench section of an existing docs/benchmarks.md ('' if none), which `make bench` keeps."""
    try:
        text = open(path).read()
    except OSError:
        return ""
    m = re.search(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n?", text, flags=re.S)
    return m.group(0) if m else ""
