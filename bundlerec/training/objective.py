"""The training objective: what one batch contributes to the loss.

Two terms, both softmax cross-entropy over candidates of the target's kind (items or bundles):
- the two-tower term at every predicting position: the user state against every known item or
  bundle (the exact softmax; catalogues of this size fit, and it is what makes SASRec-style models
  strong on full ranking);
- the full score at the user token (two-tower plus target attention), against the batch's own
  targets (in-batch negatives) and negatives sampled by popularity; a column equal to another of
  the example's targets is masked, so no positive is ever treated as a negative. Both kinds of negative
  arrive in proportion to popularity, so every logit is corrected by the log of its sampling
  probability (the logQ correction of Yi et al., RecSys 2019); without it the score learns to
  favour popular targets, which full ranking punishes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bundlerec.ranking.features import FIRST_ID
from bundlerec.training.data import BUNDLE, ITEM, Batch
from bundlerec.training.model import NEGATIVE, BundleRanker, Encoded


def sampling_distribution(counts: Tensor) -> Tensor:
    """Popularity with add-one smoothing over the learned rows; padding and unknown are never drawn."""
    weights = counts.double() + 1.0
    weights[:FIRST_ID] = 0.0
    return weights / weights.sum()


def batch_loss(
    model: BundleRanker, batch: Batch, negatives: int, sampling: dict[int, Tensor], generator: torch.Generator
) -> tuple[Tensor, dict]:
    """`sampling` maps ITEM and BUNDLE to sampling_distribution() over that table's rows."""
    seq = torch.from_numpy(batch.seq)
    rows, positions = torch.from_numpy(batch.rows), torch.from_numpy(batch.positions)
    kinds, targets = torch.from_numpy(batch.kinds), torch.from_numpy(batch.targets)
    projected = model.projected_text()
    bundles = model.bundle_table(projected)
    encoded = model.encode(seq, projected, bundles)
    users = model.user_vectors(encoded.states)
    n_items = model.config.num_item_rows
    items = model.sets(torch.arange(n_items).unsqueeze(-1), torch.zeros(n_items, dtype=torch.long), projected)
    tables = {ITEM: items, BUNDLE: bundles}

    two_tower = torch.zeros(())
    for kind, table in tables.items():
        where = kinds == kind
        if not where.any():
            continue
        logits = users[rows[where], positions[where]] @ table.T
        logits[:, :FIRST_ID] = NEGATIVE
        two_tower = two_tower + F.cross_entropy(logits, targets[where], reduction="sum")
    two_tower = two_tower / len(targets)

    full = torch.zeros(())
    final = positions == seq.shape[-1]  # the user token's predictions
    for kind, table in tables.items():
        where = final & (kinds == kind)
        if not where.any() or table.shape[0] <= FIRST_ID:
            continue
        positives, owners = targets[where], rows[where]
        own = positives.unique()
        sampled = torch.multinomial(sampling[kind], negatives, replacement=True, generator=generator)
        columns = torch.cat([own, sampled])
        examples, owner = owners.unique(return_inverse=True)
        subset = Encoded(*(part[examples] for part in encoded))
        log_q = torch.log(sampling[kind][columns]).float()
        scores = (model.score(users[examples, -1], table[columns], subset) - log_q)[owner]
        label = torch.searchsorted(own, positives)
        # every positive of the example is masked out of the others' softmax, not just the own target
        is_positive = columns.unsqueeze(0) == positives.unsqueeze(1)  # [T, N]
        example_positive = torch.zeros(len(examples), len(columns)).index_add_(0, owner, is_positive.float()) > 0
        other = example_positive[owner] & (torch.arange(len(columns)).unsqueeze(0) != label.unsqueeze(1))
        full = full + F.cross_entropy(scores.masked_fill(other, NEGATIVE), label, reduction="sum")
    full = full / int(final.sum())
    return two_tower + full, {"two_tower": two_tower.item(), "full": full.item()}
