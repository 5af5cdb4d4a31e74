"""Privacy vocabulary every service shares: which category paths are sensitive.

The profile service keeps sensitive categories out of sequences and affinities without consent;
the gateway never uses them as evidence nor names them in an explanation. Both match the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence


class SensitiveCategories:
    """Matches category paths against configured sensitive names (case-insensitive)."""

    def __init__(self, entries: Sequence[str]) -> None:
        self._paths = [self._levels(e) for e in entries if e.strip()]

    @staticmethod
    @functools.lru_cache(maxsize=65_536)  # pure; asked of every item on every page
    def _levels(path: str) -> tuple[str, ...]:
        return tuple(level.strip().casefold() for level in path.split(">") if level.strip())

    def __contains__(self, category: str) -> bool:
        levels = self._levels(category)
        for entry in self._paths:
            if levels[: len(entry)] == entry:
                return True
            if len(entry) == 1 and entry[0] in levels:
                return True
        return False
