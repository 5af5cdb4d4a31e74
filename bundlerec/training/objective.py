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
from torch import Tensor, nn

from bundlerec.ranking.features import FIRST_ID
from bundlerec.training.data import BUNDLE, ITEM, Batch
from bundlerec.training.model import NEGATIVE, BundleRanker, Encoded


def sampling_distribution(counts: Tensor) -> Tensor:
    """Popularity with add-one smoothing over the learned rows; padding and unknown are never drawn."""
    weights = counts.double() + 1.0
    weights[:FIRST_ID] = 0.0
    return weights / weights.sum()


class TrainingLoss(nn.Module):
    """The loss of one batch as a module's forward, so that DistributedDataParallel can wrap it:
    DDP synchronizes the gradients of what its wrapped forward ran."""

    def __init__(self, model: BundleRanker, sampling: dict[int, Tensor]) -> None:
        """`sampling` maps ITEM and BUNDLE to sampling_distribution() over that table's rows."""
        super().__init__()
        self.model = model
        self.log_q = {kind: torch.log(p).float() for kind, p in sampling.items()}

    def forward(
        self, seq: Tensor, rows: Tensor, positions: Tensor, kinds: Tensor, targets: Tensor, negatives: dict[int, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A Batch as tensors on the model's device, and the sampled negatives of each kind →
        (loss, two-tower term, full term)."""
        model = self.model
        device = seq.device
        projected = model.projected_text()
        bundles = model.bundle_table(projected)
        encoded = model.encode(seq, projected, bundles)
        users = model.user_vectors(encoded.states)
        tables = {ITEM: model.item_table(projected), BUNDLE: bundles}

        two_tower = torch.zeros((), device=device)
        for kind, table in tables.items():
            where = kinds == kind
            if not where.any():
                continue
            logits = users[rows[where], positions[where]] @ table.T
            logits[:, :FIRST_ID] = NEGATIVE
            two_tower = two_tower + F.cross_entropy(logits, targets[where], reduction="sum")
        two_tower = two_tower / len(targets)

        full = torch.zeros((), device=device)
        final = positions == seq.shape[-1]  # the user token's predictions
        for kind, table in tables.items():
            where = final & (kinds == kind)
            if not where.any() or table.shape[0] <= FIRST_ID:
                continue
            positives, owners = targets[where], rows[where]
            own = positives.unique()
            columns = torch.cat([own, negatives[kind]])
            examples, owner = owners.unique(return_inverse=True)
            subset = Encoded(*(part[examples] for part in encoded))
            log_q = self.log_q[kind].to(device)[columns]
            scores = (model.score(users[examples, -1], table[columns], subset) - log_q)[owner]
            label = torch.searchsorted(own, positives)
            # every positive of the example is kept out of the others' softmax, not just the own target
            is_positive = (columns.unsqueeze(0) == positives.unsqueeze(1)).float()  # [T, N]
            example_positive = torch.zeros(len(examples), len(columns), device=device).index_add_(0, owner, is_positive)
            own_column = torch.arange(len(columns), device=device).unsqueeze(0) == label.unsqueeze(1)
            other = (example_positive[owner] > 0) & ~own_column
            full = full + F.cross_entropy(scores.masked_fill(other, NEGATIVE), label, reduction="sum")
        full = full / final.sum()
        return two_tower + full, two_tower.detach(), full.detach()


def batch_tensors(batch: Batch, device: torch.device) -> tuple[Tensor, ...]:
    return tuple(
        torch.from_numpy(a).to(device) for a in (batch.seq, batch.rows, batch.positions, batch.kinds, batch.targets)
    )


def sample_negatives(
    sampling: dict[int, Tensor], count: int, generator: torch.Generator, device: torch.device
) -> dict[int, Tensor]:
    """`count` rows of each kind by popularity, drawn on the CPU generator (reproducible anywhere)."""
    return {
        kind: torch.multinomial(p, count, replacement=True, generator=generator).to(device)
        for kind, p in sampling.items()
        if len(p) > FIRST_ID
    }
