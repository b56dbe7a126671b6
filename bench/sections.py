"""Sections of docs/benchmarks.md that a bench of their own writes (GradBench, isolation, latency) between two markers,
and that `make bench`, which rewrites the rest of the file, keeps as they are."""

import re


def kept_section(path, begin: str, end: str) -> str:
    """The text from `begin` to `end` in the file at `path` ('' if there is none)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    m = re.search(re.escape(begin) + ".*?" + re.escape(end) + "\n?", text, flags=re.S)
    return m.group(0) if m else ""


def write_section(path, begin: str, end: str, text: str) -> None:
    """Put `text` (which starts with `begin` and ends with `end`) in place of the file's section, or at its end."""
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    if begin in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end) + "\n?", lambda _: text, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(doc)


# what people wrote about the measurements (analyses, runs by hand): no bench writes it, and `make bench` keeps it
NOTES_BEGIN, NOTES_END = "<!-- BEGIN NOTES (written by hand; make bench keeps them) -->", "<!-- END NOTES -->"


def kept_notes(path) -> str:
    return kept_section(path, NOTES_BEGIN, NOTES_END)
