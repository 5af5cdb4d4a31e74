"""The two evaluation protocols of FORMAT.md, turned into one structure every scorer reads.

FORMAT.md defines what a model may know when it ranks for a user: `bundle` — the history is
events.csv, the ranking universe is every bundle, bundles already in the user's events are masked;
`next_item` (leave-one-out) — the history is events.csv, plus the user's valid.csv row when scoring
test.csv, the universe is every item, items already in the history are masked. `build_split` applies
those rules once, so baselines, our model and the metrics cannot disagree on them.

Histories are built for every user with events (not only the evaluated ones): that is the training
data a baseline may fit on for this split. The split's own positives are never part of it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from bundlerec.datasets.format import HeldOut
from bundlerec.datasets.reader import Dataset

COLD_THRESHOLD = 5  # a target with fewer training interactions than this is "cold"


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a user's history, oldest first."""

    target_type: str  # "item" | "bundle"
    target_id: str
    event_type: str
    timestamp: int


@dataclass
class EvalSplit:
    """Everything a scorer and the metrics need for one (dataset, split): see build_split."""

    dataset: Dataset
    task: str  # "bundle" | "next_item"
    split: str  # "valid" | "test", or "all" for everything_known
    target_ids: list[str]  # the ranking universe: every item (next_item) or every bundle (bundle), file order
    users: list[str]  # users with >= 1 held-out positive in this split, sorted
    histories: dict[str, list[Step]]  # per user, oldest first; every user with history, plus the evaluated ones
    positives: dict[str, np.ndarray]  # per evaluated user: target indices of the held-out positives
    excluded: dict[str, np.ndarray]  # per evaluated user: target indices masked out of the ranking
    training_counts: np.ndarray  # per target: interactions with it in `histories` (for the cold subset)

    @cached_property
    def target_index(self) -> dict[str, int]:
        """Target id -> its position in `target_ids` (the column of a score matrix)."""
        return {target: n for n, target in enumerate(self.target_ids)}

    @property
    def target_type(self) -> str:
        """What the ranked targets are: "bundle" for the bundle task, "item" for next_item."""
        return "bundle" if self.task == "bundle" else "item"


class Scorer(Protocol):
    """A model under evaluation. `score` returns float32 [len(users), len(split.target_ids)]; higher
    is better. Masking of excluded targets is the metrics' job, so a scorer need not do it."""

    name: str

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray: ...


def build_split(dataset: Dataset, split: str) -> EvalSplit:
    """The protocol of FORMAT.md for `split` ("valid" or "test") of `dataset`.

    History order is timestamp, then file order (a stable sort), so ordinal and missing timestamps
    keep the order the file gives. For next_item test, the valid.csv row carries no time: it is
    appended as the newest step, one tick after the user's last event. Held-out rows naming an id
    outside the universe (possible only where dataset.json allows unknown ids) cannot be ranked and
    are dropped; a user left without positives is not evaluated.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    task = dataset.info.task
    target_ids = list(dataset.bundles if task == "bundle" else dataset.items)
    index = {target: n for n, target in enumerate(target_ids)}
    target_type = "bundle" if task == "bundle" else "item"

    histories = event_histories(dataset)
    if task == "next_item" and split == "test":  # the valid row is history at test time (FORMAT.md)
        _append_held_out(histories, dataset.valid, "item")

    held: dict[str, list[int]] = defaultdict(list)
    for row in dataset.test if split == "test" else dataset.valid:
        if row.target_id in index:
            held[row.user_id].append(index[row.target_id])
    users = sorted(held)
    positives = {user: np.asarray(held[user], dtype=np.int64) for user in users}
    # a user may be held out without any events (diginetica)
    excluded = {user: _seen(histories.setdefault(user, []), index, target_type) for user in users}
    return EvalSplit(
        dataset, task, split, target_ids, users, histories, positives, excluded, _counts(histories, index, target_type)
    )


def everything_known(dataset: Dataset) -> EvalSplit:
    """No split: every user with any interaction, ranked with everything the dataset knows about
    them (events.csv, then the valid.csv and test.csv rows as the newest steps) and with the targets
    they already have masked, nothing held out. What batch recommendations rank for."""
    task = dataset.info.task
    target_ids = list(dataset.bundles if task == "bundle" else dataset.items)
    index = {target: n for n, target in enumerate(target_ids)}
    target_type = "bundle" if task == "bundle" else "item"
    histories = event_histories(dataset)
    _append_held_out(histories, dataset.valid, target_type)
    _append_held_out(histories, dataset.test, target_type)
    users = sorted(user for user, steps in histories.items() if steps)
    excluded = {user: _seen(histories[user], index, target_type) for user in users}
    positives = {user: np.zeros(0, dtype=np.int64) for user in users}
    return EvalSplit(
        dataset, task, "all", target_ids, users, histories, positives, excluded, _counts(histories, index, target_type)
    )


def _append_held_out(histories: dict[str, list[Step]], rows: Sequence[HeldOut], target_type: str) -> None:
    """Held-out rows as each user's newest steps, one tick apart, of the kind of the user's last event
    (the kind this dataset records; a purchase for a user without events)."""
    for row in rows:
        steps = histories.setdefault(row.user_id, [])
        after = steps[-1].timestamp + 1 if steps else 0
        kind = steps[-1].event_type if steps else "purchase"
        steps.append(Step(target_type, row.target_id, kind, after))


def _seen(steps: list[Step], index: dict[str, int], target_type: str) -> np.ndarray:
    """The target indices of a history (masked out of its ranking), sorted."""
    seen = {index[s.target_id] for s in steps if s.target_type == target_type and s.target_id in index}
    return np.fromiter(sorted(seen), dtype=np.int64, count=len(seen))


def _counts(histories: dict[str, list[Step]], index: dict[str, int], target_type: str) -> np.ndarray:
    """Per target of the ranked kind: interactions with it in `histories`."""
    counts = np.zeros(len(index), dtype=np.int64)
    for steps in histories.values():
        for step in steps:
            if step.target_type == target_type and step.target_id in index:
                counts[index[step.target_id]] += 1
    return counts


def event_histories(dataset: Dataset) -> dict[str, list[Step]]:
    """events.csv per user, sorted by timestamp; Python's sort is stable, so ties keep file order."""
    grouped: dict[str, list[Step]] = defaultdict(list)
    for e in dataset.events:
        grouped[e.user_id].append(Step(e.target_type, e.target_id, e.event_type, e.timestamp))
    for steps in grouped.values():
        steps.sort(key=lambda step: step.timestamp)
    return dict(grouped)
