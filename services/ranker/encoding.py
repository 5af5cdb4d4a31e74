"""A checked RankQuery → the model's input arrays for one request (bundlerec.ranking.features).

The same rules the evaluation scorer follows (bundlerec.training.scorer), so serving sees what
validation measured: an item the model has no row for is its text (an extra_text row) when the
catalogue knows it, else the UNKNOWN row; a catalogue bundle without a learned row is fed as 0
(just its items); a bundle step of the sequence is kept only when its bundle has a learned row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from bundlerec.ranker.model import LoadedModel
from bundlerec.ranker.query import RankQuery
from bundlerec.ranking.features import EVENT_TYPE_INDEX, PAD, UNKNOWN, Step, encode_candidates, encode_sequence


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    sequence: np.ndarray  # [5, L] int64, left-padded
    cand_items: np.ndarray  # [N, M] int64, 0-padded
    cand_bundles: np.ndarray  # [N] int64
    extra_text: np.ndarray | None  # [E, text_dim] float32; item index num_item_rows + e is row e


def unknown_items(model: LoadedModel, query: RankQuery) -> list[str]:
    """Item ids of the request the model has no learned row for (first-seen order, unique). Only
    what the model will read counts: the newest max_sequence steps and each candidate's first
    max_members items, so a huge request cannot flood the catalogue with lookups."""
    steps, members = model.manifest.max_sequence, model.manifest.max_members
    ids: Iterable[str] = (
        *(s.target_id for s in query.sequence[-steps:] if s.target_type == "item"),
        *(i for c in query.candidates for i in c.item_ids[:members]),
    )
    return [i for i in dict.fromkeys(ids) if not model.vocabulary.has_item(i)]


class _Items:
    """Item id → model index, giving an unknown item with a text vector the next extra_text row."""

    def __init__(self, model: LoadedModel, text: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.text = text
        self.rows: dict[str, int] = {}

    def many(self, item_ids: Iterable[str]) -> list[int]:
        known = self.model.item_index.get  # known rows are >= FIRST_ID, never 0
        return [known(item_id) or self.unknown(item_id) for item_id in item_ids]

    def one(self, item_id: str) -> int:
        return self.model.item_index.get(item_id) or self.unknown(item_id)

    def unknown(self, item_id: str) -> int:
        if item_id not in self.text:
            return UNKNOWN
        row = self.rows.setdefault(item_id, len(self.rows))
        return self.model.num_item_rows + row

    def extra_text(self) -> np.ndarray | None:
        if not self.rows:
            return None
        return np.stack([self.text[item_id] for item_id in self.rows]).astype(np.float32, copy=False)


def encode_query(model: LoadedModel, query: RankQuery, text: Mapping[str, np.ndarray]) -> EncodedRequest:
    """`text` maps unknown item ids to text vectors of the model's text dimension (may be empty)."""
    items = _Items(model, text)
    vocabulary = model.vocabulary
    kept = []
    for step in query.sequence:
        if step.target_type == "bundle":
            bundle = vocabulary.bundle(step.target_id)
            if bundle > UNKNOWN:
                kept.append((step, bundle))
        else:
            kept.append((step, PAD))
    kept = kept[-model.manifest.max_sequence :]
    steps = [
        Step(
            items.one(step.target_id) if bundle == PAD else PAD,
            bundle,
            EVENT_TYPE_INDEX[step.event_type],  # type: ignore[index]
            # unordered models were trained with one shared timestamp: recency means nothing to them
            step.timestamp if model.causal else 0,
        )
        for step, bundle in kept
    ]
    sequence = encode_sequence(steps, max(1, len(steps)), clock=model.manifest.clock)
    pairs = []
    for candidate in query.candidates:
        bundle = vocabulary.bundle(candidate.bundle_id)
        pairs.append((PAD if bundle == UNKNOWN else bundle, items.many(candidate.item_ids)))
    cand_bundles, cand_items = encode_candidates(pairs, model.manifest.max_members)
    return EncodedRequest(sequence, cand_items, cand_bundles, items.extra_text())
