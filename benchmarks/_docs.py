"""Writing one section of a markdown document (the benchmarks' `--write-docs`)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace the section that starts at `heading` (up to the next "## " heading) with `body`, or
    append `body` when the document has no such section; the rest of the file is kept."""
    text = path.read_text() if path.exists() else "# Performance\n"
    if heading in text:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
