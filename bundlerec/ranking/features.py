"""Turning behaviour sequences and candidate bundles into the ranker's input arrays.

One module for training, evaluation and serving, so that the model sees at serving time exactly the
features it was trained on. numpy only: the ranker service imports it without torch.

The model's inputs (all int64 unless noted; index 0 is padding everywhere):
- a sequence of S steps, oldest first, left-padded to a fixed length: `seq_items` / `seq_bundles`
  (one of the two is set per step), `seq_types` (event type), `seq_recency` (how many distinct
  timestamps are newer: 0 for the newest step), `seq_age` (log2-hours bucket of the time between the
  step and the newest step; 0 when timestamps are only an order);
- N candidates, each a set of up to M item indices (`cand_items`, padded with 0) and an optional
  catalogue bundle index (`cand_bundles`);
- `extra_text` (float32 [E, text_dim]): text vectors of items the model has no row for; an item
  index >= num_item_rows means row (index - num_item_rows) of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD = 0
UNKNOWN = 1  # an item or bundle the model has no learned row for
FIRST_ID = 2

EVENT_TYPE_INDEX = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4, "rating": 5, "like": 6}
NUM_EVENT_TYPES = 7
MAX_AGE_BUCKET = 24  # 2**23 hours is ~950 years: every real gap fits
NUM_AGE_BUCKETS = MAX_AGE_BUCKET + 1


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a behaviour sequence, already mapped to model indices."""

    item: int  # item index, or PAD for a bundle step
    bundle: int  # bundle index, or PAD for an item step
    event_type: int
    timestamp: int | None  # Unix seconds, an ordinal position, or None when unknown


def age_bucket(seconds: float) -> int:
    """1 + floor(log2(1 + hours)), capped; 0 is reserved for "no clock"."""
    hours = max(seconds, 0.0) / 3600.0
    return min(1 + int(math.log2(1.0 + hours)), MAX_AGE_BUCKET)


def collapse_repeats(steps: Sequence[Step]) -> list[Step]:
    """Consecutive steps on the same target become one: a view → click → add-to-cart → purchase
    funnel on one item is one step (the strongest event type, the latest time). Otherwise most of
    a funnel-shaped history would teach the model to predict the item just seen."""
    out: list[Step] = []
    for step in steps:
        last = out[-1] if out else None
        if last is not None and (last.item, last.bundle) == (step.item, step.bundle) and step.item != UNKNOWN:
            out[-1] = Step(step.item, step.bundle, max(last.event_type, step.event_type), step.timestamp)
        else:
            out.append(step)
    return out


def encode_sequence(steps: Sequence[Step], length: int, *, clock: bool) -> np.ndarray:
    """The newest `length` steps (repeats collapsed) as a [5, length] int64 array (items, bundles,
    types, recency, age), left-padded. `clock` says whether timestamps are real times (Unix
    seconds) or only an order."""
    out = np.zeros((5, length), dtype=np.int64)
    steps = collapse_repeats(steps)
    kept = steps[-length:] if length else []
    if not kept:
        return out
    stamps = [s.timestamp for s in kept]
    known = [t for t in stamps if t is not None]
    newest = max(known) if known else None
    distinct_newer = _distinct_newer(stamps)
    offset = length - len(kept)
    for i, step in enumerate(kept):
        col = offset + i
        out[0, col] = step.item
        out[1, col] = step.bundle
        out[2, col] = step.event_type
        out[3, col] = min(distinct_newer[i], length - 1)
        if clock and newest is not None and step.timestamp is not None:
            out[4, col] = age_bucket(newest - step.timestamp)
    return out


def _distinct_newer(stamps: list[int | None]) -> list[int]:
    """For each step, how many distinct timestamps are newer. Steps without a timestamp count as
    ordered by position, so a sequence with no clock at all still has a recency."""
    if all(t is None for t in stamps):
        return [len(stamps) - 1 - i for i in range(len(stamps))]
    values = sorted({t for t in stamps if t is not None}, reverse=True)
    rank = {t: r for r, t in enumerate(values)}
    return [rank[t] if t is not None else 0 for t in stamps]


def encode_candidates(candidates: Sequence[tuple[int, Sequence[int]]], max_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(bundle index, item indices) pairs as `cand_bundles` [N] and `cand_items` [N, M], where M is
    the largest candidate size up to `max_items` (larger sets keep their first `max_items`)."""
    width = max(1, min(max_items, max((len(items) for _, items in candidates), default=1)))
    items = np.zeros((len(candidates), width), dtype=np.int64)
    bundles = np.zeros(len(candidates), dtype=np.int64)
    for n, (bundle, members) in enumerate(candidates):
        bundles[n] = bundle
        kept = list(members)[:width]
        items[n, : len(kept)] = kept
    return bundles, items


# -- the same two encodings from columns, for the ranker's hot path ----------------------------
# encode_sequence and encode_candidates above stay the reference (training and evaluation use
# them); these give identical arrays (tests/test_ranker_service.py compares every served score with
# arrays built by the reference) with a few numpy passes instead of an object per step or member.


def encode_sequence_columns(
    items: Sequence[int],
    bundles: Sequence[int],
    event_types: Sequence[int],
    timestamps: Sequence[int | None],
    length: int,
    *,
    clock: bool,
) -> np.ndarray:
    """encode_sequence of Step(items[i], bundles[i], event_types[i], timestamps[i]) for each i.
    Timestamps are whole seconds (or positions) here, as the API carries them."""
    out = np.zeros((5, length), dtype=np.int64)
    if not len(items) or not length:
        return out
    item = np.asarray(items, dtype=np.int64)
    bundle = np.asarray(bundles, dtype=np.int64)
    # collapse_repeats: a step on the previous step's target (not UNKNOWN) joins it: the strongest
    # event type, the latest step's time
    joins = (item[1:] == item[:-1]) & (bundle[1:] == bundle[:-1]) & (item[1:] != UNKNOWN)
    starts = np.flatnonzero(np.concatenate(([True], ~joins)))
    starts = starts[-length:]  # the newest `length` collapsed steps
    kinds = np.maximum.reduceat(np.asarray(event_types, dtype=np.int64), starts)
    lasts = [*(starts[1:] - 1).tolist(), len(item) - 1]
    stamps = [timestamps[i] for i in lasts]
    offset = length - len(starts)
    out[0, offset:] = item[starts]
    out[1, offset:] = bundle[starts]
    out[2, offset:] = kinds
    out[3, offset:] = np.minimum(_distinct_newer(stamps), length - 1)
    if clock:
        known = [n for n, t in enumerate(stamps) if t is not None]
        if known:
            newest = max(stamps[n] for n in known)
            out[4, offset + np.asarray(known)] = age_buckets([newest - stamps[n] for n in known])  # type: ignore[operator]
    return out


def age_buckets(seconds: Sequence[int]) -> np.ndarray:
    """age_bucket of each of these whole, non-negative numbers of seconds. 1 + floor(log2(x)) is
    x's binary exponent (frexp), and x = 1 + seconds / 3600 is never within rounding of a power of
    two without being one, so this equals age_bucket's math.log2 exactly."""
    hours = np.maximum(np.asarray(seconds, dtype=np.float64), 0.0) / 3600.0
    return np.minimum(np.frexp(1.0 + hours)[1], MAX_AGE_BUCKET)


def encode_candidate_columns(
    bundles: Sequence[int], items: np.ndarray, sizes: np.ndarray, max_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """encode_candidates of candidate n = (bundles[n], the next sizes[n] entries of `items`)."""
    count = len(sizes)
    largest = int(sizes.max()) if count else 1
    width = max(1, min(max_items, largest))
    out = np.zeros((count, width), dtype=np.int64)
    if count and largest:
        rows = np.repeat(np.arange(count), sizes)
        cols = np.arange(len(items)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        if largest > width:  # larger sets keep their first `width`
            kept = cols < width
            rows, cols, items = rows[kept], cols[kept], items[kept]
        out[rows, cols] = items
    return np.asarray(bundles, dtype=np.int64), out
