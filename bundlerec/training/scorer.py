"""The trained model as a Scorer of the evaluation harness: full ranking of every item or bundle.

Scores with the PyTorch weights rather than the ONNX file, and computes the same function as the
model's forward (the served graph; a test ties the two) in the layout full ranking affords:
- every candidate of the split is encoded once per set of weights, not once per user;
- target attention, where each candidate attends over the user's steps, is a function of the pair
  (step, candidate) only: the steps are item, bundle or user-token vectors, so it becomes one table
  over the steps the split's users have (`_AttentionTables`, two matrix products), and each user
  sums the rows of its own steps (an embedding bag) instead of a [steps, candidates, d] product;
- the co-occurrence part is linear in the steps, so it is one sparse product: the users' step
  counts [users, columns] times what one step on each column adds to each candidate
  (`_wide_matrix`: BundleRanker.wide_score's rule, a bundle's own row or its members' mean);
- users are encoded in groups of similar history length, each trimmed to its longest history
  (the sequences are left-padded, and padding is masked, so trimming changes nothing).
Items the model has no row for are scored from their text, through the same `extra_text` path the
ranker service uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from bundlerec.datasets import Dataset
from bundlerec.evaluation.protocol import EvalSplit
from bundlerec.ranking.features import PAD, UNKNOWN, Step, encode_candidates, encode_sequence
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.data import model_steps
from bundlerec.training.model import NEGATIVE, BundleRanker

# the attention table kept for a set of weights, [steps of the split's users, 2 × candidates] float32,
# at most (amazon-beauty's takes 1.2 GB, Youshu's 0.7 GB); a larger one is computed per call, for
# the steps of that call's users only
TABLE_BYTES = 2 << 30


class ItemMapper:
    """Maps dataset item ids to model indices; an unknown item with text gets an extra-text row."""

    def __init__(self, dataset: Dataset, vocabulary: Vocabulary, text_vectors: np.ndarray | None) -> None:
        self.vocabulary = vocabulary
        self.extra_rows: dict[str, int] = {}
        extra = []
        if text_vectors is not None:
            for position, item_id in enumerate(dataset.items):
                if not vocabulary.has_item(item_id) and np.any(text_vectors[position]):
                    self.extra_rows[item_id] = vocabulary.num_item_rows + len(extra)
                    extra.append(text_vectors[position])
        width = text_vectors.shape[1] if text_vectors is not None else 1
        self.extra_text = np.asarray(extra, dtype=np.float32).reshape(-1, width)
        if not len(self.extra_text):
            self.extra_text = np.zeros((1, width), dtype=np.float32)

    def item(self, item_id: str) -> int:
        if self.vocabulary.has_item(item_id):
            return self.vocabulary.item(item_id)
        return self.extra_rows.get(item_id, UNKNOWN)


class _AttentionTables:
    """Target attention of one set of weights over one split's candidates, as tables over the
    vocabulary of steps (item rows, extra-text rows, bundle rows, the user token, then a padding row
    of zeros). With logits[s, n] = <key(step s), query(candidate n)> / sqrt(d) and values[s, n] =
    <value(step s), out(candidate n)>, a user's term for candidate n is
    sum_t softmax_t(logits[s_t, n]) * values[s_t, n] (BundleRanker.target_attention reordered; eval
    mode, no dropout) = sum_t E[s_t, n] * values[s_t, n] / sum_t E[s_t, n], E = exp(logits - c[n]),
    where c[n], the largest logit of candidate n, cancels and keeps exp from overflowing. So a user
    costs two sums of its steps' rows (an embedding bag) and no exp at all. Should every E of a user
    underflow (logits spread over more than ~87), that user is recomputed with the softmax itself."""

    def __init__(self, model: BundleRanker, steps: Tensor, candidates: Tensor, kept: Tensor) -> None:
        """`kept`: the step ids (sorted, distinct) the table is built for: those of the split's users."""
        self.keys = model.target_key(steps)
        self.step_values = model.target_value(steps)
        self.queries = model.target_query(candidates) / math.sqrt(model.config.dim)
        self.outs = model.target_out(candidates)
        self.pad = len(steps)  # the step id of padding, whose row is zeros
        self.whole: Tensor | None = None
        if len(kept) * 2 * len(candidates) * 4 <= TABLE_BYTES:
            self.whole = self._tables(kept)
            # step id → its row of the table; ids outside `kept` (and padding) → the zero row
            self.position = torch.full((len(steps) + 1,), len(kept), dtype=torch.long, device=steps.device)
            self.position[kept] = torch.arange(len(kept), device=steps.device)

    def _tables(self, used: Tensor) -> Tensor:
        """[E | E * values] over the step ids `used`, [len(used) + 1, 2N] with a zero row appended:
        one row read per step gives both sums. Built in place, since fresh tables of this size cost
        more to allocate than to compute."""
        keys, values = self.keys[used], self.step_values[used]
        n = len(self.queries)
        table = torch.empty(len(keys) + 1, 2 * n, device=keys.device)
        weights, weighted = table[:-1, :n], table[:-1, n:]
        torch.matmul(keys, self.queries.T, out=weights)
        torch.matmul(values, self.outs.T, out=weighted)
        weights.sub_(weights.amax(0)).exp_()
        weighted.mul_(weights)
        table[-1] = 0.0
        return table

    def score(self, steps: Tensor, present: Tensor) -> Tensor:
        """steps [B, T] step ids, present [B, T] (False for padding) → [B, candidates]."""
        table = None
        if self.whole is not None:
            rows = self.position[torch.where(present, steps, self.pad)]
            if not bool((rows[present] == len(self.whole) - 1).any()):  # every step has a row
                table = self.whole
        if table is None:  # a user from outside the split, or a table too large: this call's rows
            used, local = torch.unique(steps, return_inverse=True)
            table, rows = self._tables(used), torch.where(present, local, len(used))
        offsets = torch.arange(0, rows.numel(), rows.shape[1], device=rows.device)
        sums = nn.functional.embedding_bag(rows.reshape(-1), table, offsets, mode="sum")
        n = len(self.queries)
        total = sums[:, :n]
        out = sums[:, n:].div_(total)
        underflow = (total <= 0).any(1).nonzero().ravel()
        if len(underflow):
            out[underflow] = self.exact(steps[underflow], present[underflow])
        return out

    def exact(self, steps: Tensor, present: Tensor) -> Tensor:
        """The softmax itself, for users whose every E underflowed: [B, T, N] at once."""
        logits = self.keys[steps] @ self.queries.T
        weights = torch.softmax(logits + torch.where(present, 0.0, NEGATIVE)[:, :, None], dim=1)
        return (weights * (self.step_values[steps] @ self.outs.T)).sum(1)


@dataclass
class _Weights:
    projected: Tensor  # BundleRanker.projected_text()
    bundles: Tensor  # BundleRanker.bundle_table()
    extra: Tensor  # the extra-text rows
    candidates: Tensor  # [N, d] every target of the split
    attention: _AttentionTables


class ModelScorer:
    def __init__(
        self,
        name: str,
        model: BundleRanker,
        dataset: Dataset,
        vocabulary: Vocabulary,
        text_vectors: np.ndarray | None,
        group_steps: int = 1024,
    ) -> None:
        self.name = name
        self.model = model
        self.dataset = dataset
        self.vocabulary = vocabulary
        self.mapper = ItemMapper(dataset, vocabulary, text_vectors)
        self.timed = dataset.info.timestamps != "none"
        self.clock = dataset.info.timestamps == "unix"
        self.group_steps = group_steps  # users × trimmed history length encoded at once
        self._candidates: tuple[tuple[str, ...], tuple[Tensor, Tensor]] | None = None
        # the caches of one split hold the split itself: an id() could be reused by another split
        self._tables: tuple[EvalSplit, tuple, _Weights] | None = None
        self._wide_cache: tuple[tuple, sp.csr_matrix] | None = None
        self._sequences: tuple[EvalSplit, tuple[str, ...], dict[str, int], np.ndarray] | None = None

    def _steps(self, split: EvalSplit, user: str) -> list[Step]:
        return model_steps(split.histories.get(user, []), self.vocabulary, self.mapper.item, timed=self.timed)

    def _candidate_index(self, split: EvalSplit) -> tuple[Tensor, Tensor]:
        """Every target of the split as candidate (members [N, M], bundle rows [N]), kept between calls."""
        key = tuple(split.target_ids)
        if self._candidates is None or self._candidates[0] != key:
            if split.task == "bundle":
                pairs = [
                    (self.vocabulary.bundle(b), [self.mapper.item(i) for i in self.dataset.bundles[b].item_ids])
                    for b in split.target_ids
                ]
            else:
                pairs = [(0, [self.mapper.item(i)]) for i in split.target_ids]
            bundles, items = encode_candidates(pairs, self.model.config.max_members)
            bundles[bundles == UNKNOWN] = PAD  # a bundle without a learned row is just its items
            self._candidates = (key, (torch.from_numpy(items), torch.from_numpy(bundles)))
        return self._candidates[1]

    def _weights_key(self, split: EvalSplit, part: Callable[[str], bool]) -> tuple:
        """Changes whenever a weight or buffer whose name `part` accepts does (optimizer steps, fills
        and copies are in place and bump a tensor's version counter) or the candidates do: when a
        cached table is stale."""
        state = self.model.state_dict(keep_vars=True)
        versions = [(name, t.data_ptr(), t._version) for name, t in state.items() if part(name)]
        return (tuple(split.target_ids), tuple(versions))

    def _split_sequences(self, split: EvalSplit) -> tuple[dict[str, int], np.ndarray]:
        """Every evaluated user of the split, encoded ([users, 5, max_sequence]), and their rows:
        kept between calls (and epochs: a validation split does not change while training)."""
        users = tuple(split.users)
        cached = self._sequences
        if cached is None or cached[0] is not split or cached[1] != users:
            cached = self._sequences = (split, users, {u: n for n, u in enumerate(users)}, self._encode(split, users))
        return cached[2], cached[3]

    def _encode(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        length = self.model.config.max_sequence
        encoded = [encode_sequence(self._steps(split, u), length, clock=self.clock) for u in users]
        return np.stack(encoded) if encoded else np.zeros((0, 5, length), dtype=np.int64)

    def _step_ids(self, seq: Tensor, extra_rows: int) -> tuple[Tensor, Tensor]:
        """Sequences [B, 5, T] → their step ids [B, T + 1] in the attention tables' vocabulary (item
        and extra-text rows, bundle rows, the user token last) and which are present (not padding)."""
        items, bundle_steps = seq[:, 0], seq[:, 1]
        token_id = self.model.config.num_item_rows + extra_rows + self.model.config.num_bundle_rows
        steps = torch.where(bundle_steps != PAD, bundle_steps + self.model.config.num_item_rows + extra_rows, items)
        token = torch.full_like(steps[:, :1], token_id)
        present = torch.cat([(items != PAD) | (bundle_steps != PAD), torch.ones_like(token, dtype=torch.bool)], 1)
        return torch.cat([steps, token], dim=1), present

    def _attention(self, split: EvalSplit) -> _Weights:
        """What scoring reads of the current weights: kept until a weight changes."""
        # the tables hold the rows of the split's users' steps: a new split, new tables
        key = (tuple(split.users), self._weights_key(split, lambda name: not name.startswith("wide_")))
        if self._tables is None or self._tables[0] is not split or self._tables[1] != key:
            model = self.model
            device = model.user_token.device
            projected = model.projected_text()
            bundles = model.bundle_table(projected)
            extra = torch.from_numpy(self.mapper.extra_text).to(device)
            members, rows = (index.to(device) for index in self._candidate_index(split))
            candidates = model.sets(members, rows, projected, extra)
            item_rows = torch.arange(model.config.num_item_rows + len(extra), device=device)
            items = model.sets(item_rows.unsqueeze(-1), torch.zeros_like(item_rows), projected, extra)
            steps = torch.cat([items, bundles, model.user_token.unsqueeze(0)])
            ids, present = self._step_ids(torch.from_numpy(self._split_sequences(split)[1]).to(device), len(extra))
            tables = _AttentionTables(model, steps, candidates, torch.unique(ids[present]))
            self._tables = (split, key, _Weights(projected, bundles, extra, candidates, tables))
        return self._tables[2]

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        scores = np.empty((len(users), len(split.target_ids)), dtype=np.float32)
        neural_weight, wide_weight = float(self.model.neural_weight), float(self.model.wide_weight)
        for chunk, neural, wide in self._groups(split, users, neural=True):
            neural *= neural_weight  # per group and in place, while the group's scores are in cache
            wide *= wide_weight
            neural += wide
            scores[chunk] = neural
        return scores

    def parts(self, split: EvalSplit, users: Sequence[str], neural: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The neural score and the (unweighted) co-occurrence score of every target, [users, targets]
        each; without `neural` the first is left unfilled (only the tables are read)."""
        scores = np.empty((len(users), len(split.target_ids)), dtype=np.float32)
        wide = np.empty_like(scores)
        for chunk, group_neural, group_wide in self._groups(split, users, neural):
            wide[chunk] = group_wide
            if group_neural is not None:
                scores[chunk] = group_neural
        return scores, wide

    @torch.inference_mode()
    def _groups(
        self, split: EvalSplit, users: Sequence[str], neural: bool
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """(positions in `users`, neural scores or None, co-occurrence scores) per group of users of
        similar history length, each group's sequences trimmed to its longest."""
        self.model.eval()
        device = self.model.user_token.device
        length = self.model.config.max_sequence
        rows, encoded = self._split_sequences(split)
        if all(user in rows for user in users):
            seqs = encoded[[rows[user] for user in users]]
        else:
            seqs = self._encode(split, users)
        present = (seqs[:, 0] != PAD) | (seqs[:, 1] != PAD)
        lengths = np.where(present.any(1), length - present.argmax(1), 0)
        matrix = self._wide_matrix(split)
        weights = self._attention(split) if neural else None
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(users):
            # as many users as fit `group_steps` at the group's longest (trimmed) history
            end = start + 1
            while end < len(users) and (end + 1 - start) * max(1, lengths[order[end]]) <= self.group_steps:
                end += 1
            chunk = order[start:end]
            kept = max(1, int(lengths[chunk].max()))
            seq = torch.from_numpy(np.ascontiguousarray(seqs[chunk][:, :, -kept:])).to(device)
            scores = self._neural(seq, weights).cpu().numpy() if weights is not None else None
            yield chunk, scores, self._wide(seq, matrix)
            start = end

    def _wide_matrix(self, split: EvalSplit) -> sp.csr_matrix:
        """[item rows + bundle rows, candidates]: what one step on each column adds to each
        candidate's co-occurrence score; BundleRanker.wide_score of a sequence of that one step."""
        key = self._weights_key(split, lambda name: name.startswith("wide_"))
        if self._wide_cache is None or self._wide_cache[0] != key:
            model = self.model
            items, bundles = model.wide_item_index.cpu(), model.wide_bundle_index.cpu()
            members, rows = (index.cpu() for index in self._candidate_index(split))
            num_items, columns = model.config.num_item_rows, len(items)

            def table(index: Tensor, weight: Tensor, width: int) -> sp.csr_matrix:
                """The neighbour table as a sparse [columns, width] matrix of weights."""
                if not index.shape[1]:  # no neighbours kept (--neighbours 0, or no bundles)
                    return sp.csr_matrix((columns, width), dtype=np.float32)
                starts = np.arange(0, index.numel() + 1, index.shape[1])
                values = (weight.cpu().numpy().ravel(), index.numpy().ravel(), starts)
                return sp.csr_matrix(values, shape=(columns, width))

            # candidate n with a bundle row reads that row of the bundle neighbours; otherwise the
            # mean over its known members of their item neighbours, times wide_member_weight
            own = rows > UNKNOWN
            known = (members != PAD) & (members < num_items) & ~own[:, None]
            share = float(model.wide_member_weight) / known.sum(1).clamp(min=1)
            n, m = known.nonzero(as_tuple=True)
            spread = sp.csr_matrix((share[n].numpy(), (members[n, m].numpy(), n.numpy())), shape=(num_items, len(rows)))
            wide = table(items, model.wide_item_weight, num_items) @ spread
            if own.any() and bundles.shape[1]:
                picked = own.nonzero().ravel()
                select = sp.csr_matrix(
                    (np.ones(len(picked), np.float32), (rows[picked].numpy(), picked.numpy())),
                    shape=(model.config.num_bundle_rows, len(rows)),
                )
                wide = wide + table(bundles, model.wide_bundle_weight, model.config.num_bundle_rows) @ select
            self._wide_cache = (key, sp.csr_matrix(wide, dtype=np.float32))
        return self._wide_cache[1]

    def _wide(self, seq: Tensor, matrix: sp.csr_matrix) -> np.ndarray:
        """BundleRanker.wide_score(BundleRanker.wide(seq)) for sequences [B, 5, T]: step counts per
        column times the matrix (padding and extra-text rows count nothing)."""
        items, bundle_steps = seq[:, 0].cpu().numpy(), seq[:, 1].cpu().numpy()
        num_items = self.model.config.num_item_rows
        column = np.where(bundle_steps != PAD, bundle_steps + num_items, np.where(items < num_items, items, PAD))
        user, step = np.nonzero(column != PAD)
        counts = sp.csr_matrix(
            (np.ones(len(user), np.float32), (user, column[user, step])), shape=(len(column), matrix.shape[0])
        )
        return (counts @ matrix).toarray()

    def _neural(self, seq: Tensor, weights: _Weights) -> Tensor:
        """BundleRanker.score for trimmed sequences [B, 5, T] against every candidate."""
        model = self.model
        encoded = model.encode(seq, weights.projected, weights.bundles, weights.extra)
        two_tower = model.user_vectors(encoded.states[:, -1]) @ weights.candidates.T
        steps, present = self._step_ids(seq, len(weights.extra))
        return two_tower.add_(weights.attention.score(steps, present))


@dataclass
class PartScorer:
    """One part of a ModelScorer's model alone, as a Scorer: "neural" (the Transformer, trained
    without the co-occurrence tables, so the model `--neighbours 0` trains) or "wide" (the
    co-occurrence part: EASE, blended with cosine where validation chose it)."""

    scorer: ModelScorer
    part: str
    name: str = ""

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        neural, wide = self.scorer.parts(split, users, neural=self.part == "neural")
        return neural if self.part == "neural" else wide
