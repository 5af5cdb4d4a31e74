"""The training objective: what one batch contributes to the loss.

Two terms, both softmax cross-entropy over candidates of the target's kind (items or bundles):
- the two-tower term at every predicting position: the user state against every known item or
  bundle (the exact softmax; catalogues of this size fit, and it is what makes SASRec-style models
  strong on full ranking);
- the full score at the user token (two-tower plus target attention), against the batch's own
  targets (in-batch negatives) and uniformly sampled ones; a sampled column equal to the row's own
  target is masked, so no positive is ever treated as a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bundlerec.ranking.features import FIRST_ID
from bundlerec.training.data import BUNDLE, ITEM, Batch
from bundlerec.training.model import NEGATIVE, BundleRanker


def batch_loss(model: BundleRanker, batch: Batch, negatives: int, generator: torch.Generator) -> tuple[Tensor, dict]:
    seq = torch.from_numpy(batch.seq)
    kinds = torch.from_numpy(batch.position_kinds)
    targets = torch.from_numpy(batch.position_targets)
    projected = model.projected_text()
    bundles = model.bundle_table(projected)
    states, key_bias = model.encode(seq, projected, bundles)
    users = model.user_vectors(states)
    rows = model.config.num_item_rows
    items = model.sets(torch.arange(rows).unsqueeze(-1), torch.zeros(rows, dtype=torch.long), projected)
    tables = {ITEM: items, BUNDLE: bundles}

    two_tower = torch.zeros(())
    predicting = 0
    for kind, table in tables.items():
        where = kinds == kind
        if not where.any():
            continue
        logits = users[where] @ table.T
        logits[:, :FIRST_ID] = NEGATIVE
        two_tower = two_tower + F.cross_entropy(logits, targets[where], reduction="sum")
        predicting += int(where.sum())
    two_tower = two_tower / max(predicting, 1)

    full = torch.zeros(())
    final_kind, final_target = kinds[:, -1], targets[:, -1]
    for kind, table in tables.items():
        where = final_kind == kind
        if not where.any() or table.shape[0] <= FIRST_ID:
            continue
        positives = final_target[where]
        own = positives.unique()
        sampled = torch.randint(FIRST_ID, table.shape[0], (negatives,), generator=generator)
        columns = torch.cat([own, sampled])
        scores = model.score(users[where, -1], table[columns], states[where], key_bias[where])
        label = torch.searchsorted(own, positives)
        duplicate = (columns.unsqueeze(0) == positives.unsqueeze(1)) & (
            torch.arange(len(columns)).unsqueeze(0) != label.unsqueeze(1)
        )
        full = full + F.cross_entropy(scores.masked_fill(duplicate, NEGATIVE), label, reduction="sum")
    full = full / len(final_kind)
    return two_tower + full, {"two_tower": two_tower.item(), "full": full.item()}
