"""The catalogue index's sparse relations (co-occurrence, bundle pairs, bundle membership) as slot
arrays, for retrieval to combine in numpy.

Built per key on first use and valid for one version of the index: any change of the index bumps
its version, and `CatalogueIndex.relations` then starts a new, empty `Relations`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from bundlerec.candidate.model import MAX_BUNDLE_FOR_PAIRS

if TYPE_CHECKING:
    from bundlerec.candidate.index import CatalogueIndex

Row = tuple[np.ndarray, np.ndarray]  # slots (int64), and a strength (float64) for each


class Relations:
    def __init__(self, index: CatalogueIndex) -> None:
        self.index = index
        self.version = index.version
        self._co_occurring: dict[str, Row] = {}
        self._paired_bundles: dict[str, Row] = {}
        self._containing: dict[str, Row] = {}

    def co_occurring(self, item_id: str) -> Row:
        """Item slots: the items bought with `item_id` (events) or curated with it (small bundles)."""
        row = self._co_occurring.get(item_id)
        if row is None:
            index = self.index
            found = dict(index.event_pairs.get(item_id, {}))
            for bundle_id in index.bundles_of.get(item_id, ()):
                members = index.bundles[bundle_id].item_ids
                if len(members) <= MAX_BUNDLE_FOR_PAIRS:
                    for other in members:
                        if other != item_id:
                            found[other] = found.get(other, 0.0) + 1.0 / len(members)
            row = self._co_occurring[item_id] = _row(found.items(), index.item_vectors.slot_of)
        return row

    def paired_bundles(self, bundle_id: str) -> Row:
        """Bundle slots: the bundles bought with `bundle_id`, by strength."""
        row = self._paired_bundles.get(bundle_id)
        if row is None:
            slot_of = self.index.bundle_vectors.slot_of
            row = self._paired_bundles[bundle_id] = _row(self.index.bundle_pairs.get(bundle_id, {}).items(), slot_of)
        return row

    def containing(self, item_id: str) -> Row:
        """Bundle slots: the bundles that contain `item_id`, each with strength 1."""
        row = self._containing.get(item_id)
        if row is None:
            slot_of = self.index.bundle_vectors.slot_of
            members = ((bundle_id, 1.0) for bundle_id in self.index.bundles_of.get(item_id, ()))
            row = self._containing[item_id] = _row(members, slot_of)
        return row


def _row(pairs: Iterable[tuple[str, float]], slot_of: dict[str, int]) -> Row:
    """Keys without a slot (no vector: never a candidate) are left out."""
    found = [(slot_of[key], strength) for key, strength in pairs if key in slot_of]
    return np.array([s for s, _ in found], np.int64), np.array([w for _, w in found], np.float64)


def accumulate(rows: list[Row], weights: list[float], allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """By slot: Σ weight × strength over the rows, for the `allowed` slots, and which slots a row
    reached. Summed row after row, as a loop over the rows would (float sums depend on the order)."""
    reached = np.zeros(len(allowed), bool)
    if not rows:
        return np.zeros(len(allowed)), reached
    slots = np.concatenate([slots for slots, _ in rows])
    values = np.repeat(weights, [len(slots) for slots, _ in rows]) * np.concatenate([s for _, s in rows])
    keep = allowed[slots]
    slots, values = slots[keep], values[keep]
    reached[slots] = True
    return np.bincount(slots, values, minlength=len(allowed)), reached  # adds in order, from 0.0
