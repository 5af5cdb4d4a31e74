"""Ranking over index slots: each source's candidates in rank order, and their reciprocal rank fusion.

Candidates are slots of a VectorIndex (item or bundle), scores numpy arrays, so a retrieval does
its per-candidate work in numpy. The order is always score descending, then key (the item or
bundle id) ascending: `ranked` sorts by score in numpy and orders only the runs of equal scores
by their keys in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bundlerec.candidate.model import SOURCE_SETS, Bundle, Candidate, Source

SOURCE_WEIGHTS = {
    Source.ANCHOR: 1.2,
    Source.VECTOR: 1.0,
    Source.CO_OCCURRENCE: 1.0,
    Source.BUNDLE_MEMBERSHIP: 0.8,
    Source.TWO_TOWER: 1.0,
    Source.POPULARITY: 0.3,
}
__all__ = ["RRF_K", "SOURCE_SETS", "SOURCE_WEIGHTS", "Found", "RankFusion", "by_key_among_equals", "ranked", "top"]
RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al., 2009)
NO_SLOTS = np.zeros(0, np.int64)


def ranked(
    slots: np.ndarray, scores: np.ndarray, keys: Sequence[str | None], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`slots` (and their `scores`) by score descending then key ascending, the first `limit` of them."""
    order = np.argsort(-scores, kind="stable")
    return by_key_among_equals(slots[order], scores[order], keys, limit)


def by_key_among_equals(
    slots: np.ndarray, scores: np.ndarray, keys: Sequence[str | None], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """As `ranked`, for slots already by score descending: only runs of equal scores are reordered."""
    tied = np.flatnonzero(scores[1:] == scores[:-1]).tolist()  # i: scores[i] == scores[i + 1]
    if tied:
        runs: list[list[int]] = []  # [first, last] positions of equal scores
        for i in tied:
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        reordered = slots.tolist()
        for first, last in runs:
            if limit is not None and first >= limit:
                break
            reordered[first : last + 1] = sorted(reordered[first : last + 1], key=keys.__getitem__)  # type: ignore[arg-type]
        slots = np.asarray(reordered, np.int64)
    return slots[:limit], scores[:limit]


def top(scores: np.ndarray, found: np.ndarray, keys: Sequence[str | None], limit: int) -> np.ndarray:
    """The `limit` best slots among those `found` (a bool array), by `scores` (an array over slots)."""
    slots = np.flatnonzero(found)
    return ranked(slots, scores[slots], keys, limit)[0]


class RankFusion:
    """Weighted reciprocal rank fusion: a slot earns weight / (RRF_K + rank) from every ranking it is in.

    The rankings are kept as they come and summed at the end, in the order they came (float sums
    depend on the order)."""

    def __init__(self, size: int, keys: Sequence[str | None]) -> None:
        self.size, self.keys = size, keys
        self._slots: list[np.ndarray] = []
        self._terms: list[np.ndarray] = []
        self._sources: list[Source] = []

    def add(self, source: Source, slots: np.ndarray) -> None:
        """One source's slots, best first (each slot at most once)."""
        if len(slots):
            self._slots.append(slots)
            self._terms.append(_rrf_terms(source, len(slots)))
            self._sources.append(source)

    def add_sorted(self, source: Source, slots: np.ndarray, scores: np.ndarray) -> None:
        """One source's slots by its own scores, descending (as a vector search returns them): among
        equal scores, by key."""
        self.add(source, by_key_among_equals(slots, scores, self.keys)[0])

    def found(self, limit: int, layout: tuple[int, int], bundles: Mapping[str, Bundle] | None = None) -> Found:
        """The `limit` best, as a Found (`layout` and `bundles`: see there)."""
        return Found(*self.best(limit), self.keys, layout, bundles)

    def best(self, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The `limit` best slots, their fused scores and their source bits (see SOURCE_SETS)."""
        if not self._slots:
            return NO_SLOTS, np.zeros(0), np.zeros(0, np.uint8)
        slots = np.concatenate(self._slots)
        score = np.bincount(slots, np.concatenate(self._terms), minlength=self.size)  # adds in order, from 0.0
        sources = np.zeros(self.size, np.uint8)
        for source, found in zip(self._sources, self._slots, strict=True):
            sources[found] |= np.uint8(1 << source)
        found = np.flatnonzero(sources)
        best, scores = ranked(found, score[found], self.keys, limit)
        return best, scores, sources[best]


def _rrf_terms(source: Source, n: int) -> np.ndarray:
    """weight / (RRF_K + rank) for ranks 0 … n-1."""
    terms = _RRF_TERMS[source]
    return terms[:n] if n <= len(terms) else SOURCE_WEIGHTS[source] / (RRF_K + np.arange(n))


_RRF_TERMS = {source: weight / (RRF_K + np.arange(2000)) for source, weight in SOURCE_WEIGHTS.items()}


@dataclass(frozen=True, slots=True)
class Found:
    """One kind's candidates, best first, as arrays over the slots of a vector index: what a
    retrieval returns, rather than a Candidate each (the servicer encodes from the arrays)."""

    slots: np.ndarray  # int64
    scores: np.ndarray  # float64, the fused scores
    source_bits: np.ndarray  # uint8, see SOURCE_SETS
    keys: Sequence[str | None]  # the vector index's ids by slot
    layout: tuple[int, int]  # (the vector index's id, its layout): slots mean the same within one
    bundles: Mapping[str, Bundle] | None = None  # for bundles: their members; None for items
    # items only: (candidate, the request's item it co-occurs with most, the pair's behaviour strength)
    co_occurrences: tuple[tuple[str, str, float], ...] = ()

    @property
    def ids(self) -> list[str]:
        keys = self.keys
        return [keys[slot] for slot in self.slots.tolist()]  # type: ignore[misc]

    def candidates(self) -> list[Candidate]:
        sets, bundles = SOURCE_SETS, self.bundles
        columns = zip(self.ids, self.scores.tolist(), self.source_bits.tolist(), strict=True)
        if bundles is None:
            return [Candidate(i, False, score, sets[bits], (i,)) for i, score, bits in columns]
        return [Candidate(i, True, score, sets[bits], bundles[i].item_ids) for i, score, bits in columns]
