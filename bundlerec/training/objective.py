"""The training objective: what one batch contributes to the loss.

Two terms, both softmax cross-entropy over candidates of the target's kind (items or bundles):
- the two-tower term at every predicting position: the user state against every known item or
  bundle (the exact softmax, what makes SASRec-style models strong on full ranking). Its cost grows
  with the catalogue (every row's vector is computed and scored at every step), so a kind whose
  table has more rows than TrainSettings.two_tower_negatives uses a sampled softmax instead: the
  target against that many rows drawn by popularity for the whole batch, each logit corrected by
  the log of its sampling probability (as below), a draw equal to the target masked; the step then
  computes only the rows it reads (sampled_forward);
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
from bundlerec.training.model import NEGATIVE, BundleRanker, Encoded, Table, TableRows


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
        self,
        seq: Tensor,
        rows: Tensor,
        positions: Tensor,
        kinds: Tensor,
        targets: Tensor,
        negatives: dict[int, Tensor],
        two_tower_negatives: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A Batch as tensors on the model's device, the sampled negatives of each kind for the full
        term and, for the kinds whose two-tower term is sampled, its negatives → (loss, two-tower
        term, full term)."""
        if two_tower_negatives:
            return self.sampled_forward(seq, rows, positions, kinds, targets, negatives, two_tower_negatives)
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
        full = self.full_term(seq, rows, positions, kinds, targets, negatives, encoded, users, tables)
        return two_tower + full, two_tower.detach(), full.detach()

    def sampled_forward(
        self,
        seq: Tensor,
        rows: Tensor,
        positions: Tensor,
        kinds: Tensor,
        targets: Tensor,
        negatives: dict[int, Tensor],
        two_tower_negatives: dict[int, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """forward() where some kinds' two-tower term is a sampled softmax: the rows of each table
        that the step reads (the sequence's steps, the targets, the negatives, the members of the
        bundles among them) are the only ones computed. A kind without sampled negatives keeps the
        exact softmax over its whole table."""
        model = self.model
        device = seq.device
        num_rows = {ITEM: model.config.num_item_rows, BUNDLE: model.config.num_bundle_rows}
        unused = torch.arange(FIRST_ID, device=device)  # padding and unknown: read by padded steps
        candidates = {}  # kind → the rows scored as candidates
        for kind, size in num_rows.items():
            if kind not in two_tower_negatives:
                candidates[kind] = torch.arange(size, device=device)
                continue
            parts = [unused, targets[kinds == kind], two_tower_negatives[kind]]
            candidates[kind] = torch.cat(parts + ([negatives[kind]] if kind in negatives else [])).unique()
        bundle_rows = torch.cat([candidates[BUNDLE], seq[:, 1].flatten()]).unique()
        text_rows = torch.cat(
            [candidates[ITEM], seq[:, 0].flatten(), model.bundle_members[bundle_rows].flatten()]
        ).unique()
        projected = TableRows(text_rows, model.projected_rows(text_rows))
        bundles = TableRows(bundle_rows, model.bundle_rows(bundle_rows, projected))
        encoded = model.encode(seq, projected, bundles)
        users = model.user_vectors(encoded.states)
        tables: dict[int, Table] = {
            ITEM: TableRows(candidates[ITEM], model.item_rows(candidates[ITEM], projected)),
            BUNDLE: bundles,
        }

        two_tower = torch.zeros((), device=device)
        for kind, table in tables.items():
            where = kinds == kind
            if not where.any():
                continue
            user = users[rows[where], positions[where]]
            target = targets[where]
            if kind not in two_tower_negatives:
                logits = user @ table[candidates[kind]].T
                logits[:, :FIRST_ID] = NEGATIVE
                two_tower = two_tower + F.cross_entropy(logits, target, reduction="sum")
                continue
            two_tower = two_tower + self.sampled_softmax(user, target, two_tower_negatives[kind], table, kind)
        two_tower = two_tower / len(targets)
        full = self.full_term(seq, rows, positions, kinds, targets, negatives, encoded, users, tables, num_rows)
        return two_tower + full, two_tower.detach(), full.detach()

    def sampled_softmax(self, user: Tensor, target: Tensor, drawn: Tensor, table: Table, kind: int) -> Tensor:
        """Summed cross-entropy of each target against the shared draws, every logit less its log
        sampling probability and a draw of the target itself masked. Written as logsumexp over the
        draws rather than a softmax over [target, draws], which saves copies of the largest tensor
        of the step ([predictions, draws])."""
        log_q = self.log_q[kind].to(user.device)
        positive = (user * table[target]).sum(-1) - log_q[target]
        logits = torch.addmm(-log_q[drawn], user, table[drawn].T)
        logits.masked_fill_(drawn.unsqueeze(0) == target.unsqueeze(1), NEGATIVE)
        return (torch.logaddexp(positive, torch.logsumexp(logits, dim=1)) - positive).sum()

    def full_term(
        self,
        seq: Tensor,
        rows: Tensor,
        positions: Tensor,
        kinds: Tensor,
        targets: Tensor,
        negatives: dict[int, Tensor],
        encoded: Encoded,
        users: Tensor,
        tables: dict[int, Table],
        num_rows: dict[int, int] | None = None,
    ) -> Tensor:
        """The full score's term at the user token (module docstring); `num_rows` gives the tables'
        sizes where they are TableRows."""
        model = self.model
        device = seq.device
        full = torch.zeros((), device=device)
        final = positions == seq.shape[-1]  # the user token's predictions
        for kind, table in tables.items():
            where = final & (kinds == kind)
            size = table.shape[0] if num_rows is None else num_rows[kind]
            if not where.any() or size <= FIRST_ID:
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
        return full / final.sum()


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
