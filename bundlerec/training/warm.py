"""Warm start: a new model begins from a serving model's weights instead of from scratch.

The new data's vocabulary usually differs from the serving model's (items and bundles launched
since, others without events any more), so id rows are copied by id, not by position:
- an item or bundle the serving model had keeps its learned row;
- a new item starts from the serving model's "unknown" item row, which is what that model used
  for it (plus its text), so its score starts where the serving model had it and moves from there;
- a new bundle starts from zeros, as a bundle without a row scored (its members alone).
Every other weight has the same shape in both (the same settings) and is copied. The co-occurrence
tables and the mix of the two parts are not: they are rebuilt from the new data after training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bundlerec.ranking.features import UNKNOWN
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.model import BundleRanker

REBUILT = ("item_text", "bundle_members", "neural_weight")  # follow the new data (and wide_*: refit)


@dataclass
class WarmStart:
    state: dict[str, torch.Tensor]  # the serving model's state dict
    vocabulary: Vocabulary  # its id maps
    since: int  # train on the histories of users with an event at or after this time (0: every user)


def apply(model: BundleRanker, vocabulary: Vocabulary, warm: WarmStart) -> dict[str, int]:
    """Copies `warm` into `model` (built for `vocabulary`); returns how many id rows were kept and new."""
    state = model.state_dict()
    for name, value in warm.state.items():
        if name.startswith("wide_") or name in REBUILT or name not in state:
            continue
        if name in ("item_id.weight", "bundle_id.weight"):
            continue
        if state[name].shape != value.shape:
            raise ValueError(f"cannot warm-start {name}: shape {tuple(value.shape)} became {tuple(state[name].shape)}")
        state[name] = value.clone()
    old_items = warm.state["item_id.weight"]
    old_bundles = warm.state["bundle_id.weight"]
    items = state["item_id.weight"]
    bundles = state["bundle_id.weight"]
    kept = {"items kept": 0, "items new": 0, "bundles kept": 0, "bundles new": 0}
    items[:2] = old_items[:2]  # PAD and UNKNOWN
    for item_id in vocabulary.item_ids:
        row = vocabulary.item(item_id)
        if warm.vocabulary.has_item(item_id):
            items[row] = old_items[warm.vocabulary.item(item_id)]
            kept["items kept"] += 1
        else:
            items[row] = old_items[UNKNOWN]
            kept["items new"] += 1
    bundles[:2] = old_bundles[:2]
    for bundle_id in vocabulary.bundle_ids:
        row = vocabulary.bundle(bundle_id)
        old = warm.vocabulary.bundle(bundle_id)
        if old > UNKNOWN:
            bundles[row] = old_bundles[old]
            kept["bundles kept"] += 1
        else:
            bundles[row] = 0.0
            kept["bundles new"] += 1
    model.load_state_dict(state)
    return kept
