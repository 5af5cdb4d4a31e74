"""Privacy vocabulary every service shares: which category paths are sensitive.

The profile service keeps sensitive categories out of sequences and affinities without consent;
the gateway never uses them as evidence nor names them in an explanation. Both match the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from bundlerec import categories


class SensitiveCategories:
    """Matches category paths against configured sensitive names (case-insensitive)."""

    _MEMO_ENTRIES = 65_536  # answers remembered; a catalogue has far fewer categories

    def __init__(self, entries: Sequence[str]) -> None:
        self._paths = [categories.levels(e) for e in entries if e.strip()]
        self._answers: dict[str, bool] = {}  # category -> sensitive: asked of the same few paths on every page

    def __contains__(self, category: str) -> bool:
        answer = self._answers.get(category)
        if answer is None:
            answer = self._matches(category)
            if len(self._answers) >= self._MEMO_ENTRIES:
                self._answers.clear()
            self._answers[category] = answer
        return answer

    def _matches(self, category: str) -> bool:
        levels = categories.levels(category)
        for entry in self._paths:
            if levels[: len(entry)] == entry:
                return True
            if len(entry) == 1 and entry[0] in levels:
                return True
        return False
