"""Sphinx extension: keep docstring sections that numpydoc does not know.

Some docstrings of the packages have sections of their own ("Shapes", "Strategies", "The gradient
rule"). numpydoc renders only its standard sections and drops the others with a UserWarning, so
their content (shape tables, for one) would be missing from the API pages. Before numpydoc sees
a docstring, this moves each such section, under a rubric with its title, to the end of the
"Notes" section (created before "References" or "Examples" where there is none).
"""

from __future__ import annotations

import itertools
from typing import Any

from sphinx.application import Sphinx

STANDARD = {
    "parameters", "returns", "yields", "receives", "raises", "warns", "other parameters",
    "attributes", "methods", "see also", "notes", "warnings", "references", "examples",
}  # fmt: skip
AFTER_NOTES = ("references", "examples")


def _headers(lines: list[str]) -> list[int]:
    """Indices of the section titles: a line underlined by dashes, after a blank line."""
    return [
        i
        for i in range(len(lines) - 1)
        if lines[i].strip()
        and set(lines[i + 1].strip()) == {"-"}
        and len(lines[i + 1].strip()) >= 3
        and (i == 0 or not lines[i - 1].strip())
    ]


def keep_unknown_sections(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    starts = _headers(lines)
    if not any(lines[i].strip().lower() not in STANDARD for i in starts):
        return
    bounds = [*starts, len(lines)]
    head = lines[: starts[0]]
    sections = [(lines[a].strip(), lines[a + 2 : b]) for a, b in itertools.pairwise(bounds)]
    kept = [(t, body) for t, body in sections if t.lower() in STANDARD]
    moved = [(t, body) for t, body in sections if t.lower() not in STANDARD]
    extra: list[str] = []
    for title, body in moved:
        extra += ["", f".. rubric:: {title}", "", *body]
    titles = [t.lower() for t, _ in kept]
    if "notes" in titles:
        k = titles.index("notes")
        kept[k] = (kept[k][0], [*kept[k][1], *extra, ""])
    else:
        k = next((i for i, t in enumerate(titles) if t in AFTER_NOTES), len(kept))
        kept.insert(k, ("Notes", [*extra, ""]))
    out = list(head)
    for title, body in kept:
        out += [title, "-" * len(title), *body]
    lines[:] = out


def setup(app: Sphinx) -> dict[str, Any]:
    # before numpydoc's handler (priority 500) parses the sections
    app.connect("autodoc-process-docstring", keep_unknown_sections, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
