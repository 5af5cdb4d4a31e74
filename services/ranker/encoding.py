"""A checked RankQuery → the model's input arrays for one request (bundlerec.ranking.features).

The same rules the evaluation scorer follows (bundlerec.training.scorer), so serving sees what
validation measured: an item the model has no row for is its text (an extra_text row) when the
catalogue knows it, else the UNKNOWN row; a catalogue bundle without a learned row is fed as 0
(just its items); a bundle step of the sequence is kept only when its bundle has a learned row.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bundlerec.ranker.model import LoadedModel
from bundlerec.ranker.query import RankQuery
from bundlerec.ranking.features import (
    EVENT_TYPE_INDEX,
    PAD,
    UNKNOWN,
    encode_candidate_columns,
    encode_sequence_columns,
)


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
    sequence, candidates = query.sequence, query.candidates
    ids = [i for i, t in zip(sequence.target_ids[-steps:], sequence.target_types[-steps:], strict=True) if t == "item"]
    if max(candidates.sizes, default=0) <= members:
        ids += candidates.item_ids
    else:
        start = 0
        for size in candidates.sizes:
            ids += candidates.item_ids[start : start + min(size, members)]
            start += size
    known = model.item_index
    return [i for i in dict.fromkeys(ids) if i not in known]


class _Items:
    """Item id → model index, giving an unknown item with a text vector the next extra_text row."""

    def __init__(self, model: LoadedModel, text: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.text = text
        self.rows: dict[str, int] = {}

    def many(self, item_ids: list[str]) -> np.ndarray:
        known = self.model.item_index.get  # known rows are >= FIRST_ID
        out = np.fromiter(map(known, item_ids, itertools.repeat(UNKNOWN)), np.int64, len(item_ids))
        if self.text:  # in order, so extra_text rows are numbered by first appearance
            for n in np.flatnonzero(out == UNKNOWN).tolist():
                out[n] = self.unknown(item_ids[n])
        return out

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
    steps = query.sequence
    kept = list(range(len(steps)))
    bundles = [PAD] * len(steps)
    if "bundle" in steps.target_types:  # a bundle step is kept only when its bundle has a learned row
        row = model.bundle_index.get
        bundles = [
            row(i, UNKNOWN) if t == "bundle" else PAD
            for i, t in zip(steps.target_ids, steps.target_types, strict=True)
        ]
        kept = [n for n in kept if bundles[n] != UNKNOWN]
    kept = kept[-model.manifest.max_sequence :]
    item_steps = [n for n in kept if bundles[n] == PAD]
    item_rows = dict(zip(item_steps, items.many([steps.target_ids[n] for n in item_steps]).tolist(), strict=True))
    sequence = encode_sequence_columns(
        [item_rows.get(n, PAD) for n in kept],
        [bundles[n] for n in kept],
        [EVENT_TYPE_INDEX[steps.event_types[n]] for n in kept],  # type: ignore[index]
        # unordered models were trained with one shared timestamp: recency means nothing to them
        [steps.timestamps[n] for n in kept] if model.causal else [0] * len(kept),
        max(1, len(kept)),
        clock=model.manifest.clock,
    )
    candidates = query.candidates
    bundle_rows = map(model.bundle_index.get, candidates.bundle_ids, itertools.repeat(PAD))  # unknown or none: 0
    cand_bundles, cand_items = encode_candidate_columns(
        np.fromiter(bundle_rows, np.int64, len(candidates)),
        items.many(candidates.item_ids),
        np.array(candidates.sizes, dtype=np.int64),
        model.manifest.max_members,
    )
    return EncodedRequest(sequence, cand_items, cand_bundles, items.extra_text())
