"""Category paths ("Home > Kitchen > Kettles"), read one way by every service: levels split on
">", trimmed and case-folded, broadest first; a prefix matches whole levels only ("Home" matches
"Home > Kitchen", not "Homeware").

Splitting on ">" and trimming lets a rules file write "Home>Kitchen" for the catalogue's
"Home > Kitchen"; case-folding spares merchandisers the catalogue's exact capitalisation. Empty
levels are kept, so a check can refuse them ("Home > > Kitchen" in a rules file)."""

from __future__ import annotations

import functools

SEPARATOR = ">"


@functools.lru_cache(maxsize=65_536)  # pure, and asked of every item of every page
def levels(path: str) -> tuple[str, ...]:
    if not path.strip():
        return ()
    return tuple(level.strip().casefold() for level in path.split(SEPARATOR))


def within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it."""
    wanted = levels(prefix)
    return bool(wanted) and levels(path)[: len(wanted)] == wanted


def department(path: str) -> str:
    """The broadest level ("" for no category)."""
    found = levels(path)
    return found[0] if found else ""
