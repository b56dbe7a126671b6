"""GradBench's evals in adserve's language beside JAX (`python -m bench.gradbench`)."""

from .. import sections

BEGIN, END = "<!-- BEGIN GRADBENCH (python -m bench.gradbench) -->", "<!-- END GRADBENCH -->"


def kept_section(path) -> str:
    """The GradBench section of an existing docs/benchmarks.md ('' if none), which `make bench` keeps."""
    return sections.kept_section(path, BEGIN, END)
