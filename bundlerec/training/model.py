"""The Transformer bundle ranker (PyTorch). Training and export only; serving runs its ONNX export.

Shape of the model, following the lesson in PERF-FLOORS.md (encode the user once, candidates
attend to the result):
- An item is its learned id row plus a projection of its title's text embedding. Items the model
  never saw use the "unknown" id row plus their text, which is also what id-dropout trains.
- A candidate is a set of items: attention pooling over its members (no order), plus the learned
  row of the catalogue bundle when it has one. An item is a bundle of one.
- The behaviour sequence (item or bundle steps, with event type, recency and age) goes through
  pre-norm self-attention blocks, causal when the data has an order, with a user token appended as
  the newest step; its output is the user vector (the two-tower head).
- Score = <user vector, candidate> + target attention: the candidate attends over the encoded
  sequence (as in Alibaba's BST/DIN), and the attended context is compared with the candidate.

Every masked softmax uses a large negative number rather than -inf, so that an empty sequence or a
padding row never produces NaN. The code sticks to ops that export cleanly to ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from bundlerec.ranking.features import NUM_AGE_BUCKETS, NUM_EVENT_TYPES, PAD, UNKNOWN
from bundlerec.training.cooccurrence import NeighbourTables, empty_tables

NEGATIVE = -1e9


@dataclass
class ModelConfig:
    num_item_rows: int
    num_bundle_rows: int
    text_dim: int  # 0 when the data has no item text
    causal: bool  # the data orders events in time (unix or ordinal timestamps)
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_sequence: int = 50
    max_members: int = 32
    dropout: float = 0.5
    id_dropout: float = 0.1
    neighbours: int = 100  # co-occurrence neighbours per column (cooccurrence.py); 0 = none
    wide_l2: float = 0.0  # how the tables were weighed: EASE's L2 regularization, 0 = cosine only
    wide_cosine_share: float = 0.0  # and the share of cosine blended in (cooccurrence.blend_tables)
    wide_text_share: float = 0.0  # and of the text neighbours (cooccurrence.text_tables), with their
    wide_text_gate: float = 0.0  # target-count gate
    wide_view_share: float = 0.0  # bundle data: the item view's share (cooccurrence.item_view_tables),
    wide_view_l2: float = 0.0  # 0 = none, and its L2

    def to_dict(self) -> dict:
        return asdict(self)


class Encoded(NamedTuple):
    """A batch of encoded sequences, the user token last."""

    states: Tensor  # [B, L+1, d] after self-attention: the user vector comes from states[:, -1]
    memory: Tensor  # [B, L+1, d] the steps as they went in: what target attention reads
    key_bias: Tensor  # [B, 1, 1, L+1] 0 for present steps, NEGATIVE for padding


class TableRows:
    """Some rows of a table indexed by item or bundle row (the items' text parts, the bundles'
    vectors), read like the whole table: what a sampled training step computes instead of every
    row of a large catalogue. Reading a row it does not hold is an error."""

    def __init__(self, rows: Tensor, values: Tensor) -> None:
        """rows [N] sorted and distinct; values [N, d], row n of the table in values[n]."""
        self.rows = rows
        self.values = values

    def __getitem__(self, index: Tensor) -> Tensor:
        position = torch.searchsorted(self.rows, index.contiguous()).clamp(max=len(self.rows) - 1)
        if not bool((self.rows[position] == index).all()):
            raise IndexError("a row the step did not compute was read")
        return self.values[position]


Table = Tensor | TableRows  # a whole table, or the rows a step needs


class SelfAttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention and feed-forward, written out so it exports cleanly."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x [B, T, d]; bias [B, 1, T, T] additive attention mask."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        attended = (self.drop(weights) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ffn(self.norm2(x)))


class BundleRanker(nn.Module):
    def __init__(
        self, config: ModelConfig, item_text: Tensor, bundle_members: Tensor, neighbours: NeighbourTables | None = None
    ) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.item_id = nn.Embedding(config.num_item_rows, d, padding_idx=PAD)
        self.bundle_id = nn.Embedding(config.num_bundle_rows, d, padding_idx=PAD)
        self.register_buffer("item_text", item_text.float())
        # which item rows have text, kept rather than recomputed from the whole table at every
        # step (not saved: it follows from item_text, which is fixed at construction)
        self.register_buffer("has_text", self.item_text.abs().sum(-1) > 0, persistent=False)
        self.register_buffer("bundle_members", bundle_members.long()[:, : config.max_members])
        if neighbours is None:
            neighbours = empty_tables(config.num_item_rows, config.num_bundle_rows, config.neighbours)
        for name, table in zip(NeighbourTables._fields, neighbours, strict=True):
            self.register_buffer(f"wide_{name}", torch.from_numpy(np.ascontiguousarray(table)))
        # the mix of the two parts, set after training on validation (mix.fit_wide_weight)
        self.register_buffer("neural_weight", torch.ones(()))
        self.register_buffer("wide_weight", torch.zeros(()))
        # a candidate without a row of its own scores the mean of its members' item weights, which
        # are on another scale than bundle weights: this factor, chosen on validation, converts
        self.register_buffer("wide_member_weight", torch.ones(()))
        self.text_proj = nn.Linear(max(config.text_dim, 1), d)
        self.event_type = nn.Embedding(NUM_EVENT_TYPES, d, padding_idx=PAD)
        self.recency = nn.Embedding(config.max_sequence, d)
        self.age = nn.Embedding(NUM_AGE_BUCKETS, d)
        self.user_token = nn.Parameter(torch.zeros(d))
        self.pool_key = nn.Linear(d, d)
        self.pool_query = nn.Parameter(torch.zeros(d))
        self.blocks = nn.ModuleList(SelfAttentionBlock(d, config.heads, config.dropout) for _ in range(config.layers))
        self.sequence_norm = nn.LayerNorm(d)
        self.user_proj = nn.Linear(d, d)
        self.target_query = nn.Linear(d, d)
        self.target_key = nn.Linear(d, d)
        self.target_value = nn.Linear(d, d)
        self.target_out = nn.Linear(d, d, bias=False)
        self.drop = nn.Dropout(config.dropout)
        # Ids carry the signal, the step's context only modulates it: context rows start small so
        # they do not drown the item (nn.Embedding's default N(0, 1) would be 20 times its size).
        for table in (self.item_id, self.bundle_id):
            nn.init.normal_(table.weight, std=d**-0.5)
        for table in (self.event_type, self.recency, self.age):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            if config.text_dim:
                # An item with text starts as its text and its id row learns what the text misses:
                # a random row would drown the text of a rare item, which few updates ever move.
                self.item_id.weight[self.item_text.abs().sum(-1) > 0] = 0.0
            self.item_id.weight[PAD].zero_()
            self.bundle_id.weight[PAD].zero_()
            self.event_type.weight[PAD].zero_()
        nn.init.zeros_(self.target_out.weight)  # start as a pure two-tower model

    def set_neighbours(self, tables: NeighbourTables) -> None:
        """Replaces the co-occurrence tables (same vocabulary, same shapes)."""
        with torch.no_grad():
            for name, table in zip(NeighbourTables._fields, tables, strict=True):
                getattr(self, f"wide_{name}").copy_(torch.from_numpy(table))

    # ---- representations -------------------------------------------------------------------
    def projected_text(self) -> Tensor:
        """[num_item_rows, d]: the text part of every known item (zeros when there is no text)."""
        if self.config.text_dim == 0:
            return torch.zeros_like(self.item_id.weight)
        return self.text_proj(self.item_text) * (self.item_text.abs().sum(-1, keepdim=True) > 0)

    def projected_rows(self, rows: Tensor) -> Tensor:
        """[len(rows), d]: the text part of those item rows, as projected_text() has them."""
        if self.config.text_dim == 0:
            return torch.zeros(len(rows), self.config.dim, device=rows.device)
        text = self.item_text[rows]
        return self.text_proj(text) * (text.abs().sum(-1, keepdim=True) > 0)

    def items(self, index: Tensor, projected: Table, extra_text: Tensor | None = None) -> Tensor:
        """Item vectors for indices of any shape; index >= num_item_rows selects a row of extra_text."""
        rows = self.config.num_item_rows
        known = index < rows
        known_index = torch.where(known, index, torch.full_like(index, UNKNOWN))
        id_index = known_index
        if self.training and self.config.id_dropout > 0 and self.config.text_dim:
            # Id-dropout teaches the text path to stand in for a missing id (cold items); an item
            # without text keeps its id, since nothing could stand in for it.
            rolled = torch.rand(index.shape, device=index.device) < self.config.id_dropout
            dropped = rolled & self.has_text[known_index]
            id_index = torch.where(dropped, torch.full_like(index, UNKNOWN), known_index)
        vectors = self.item_id(id_index) + projected[known_index]
        if extra_text is not None and self.config.text_dim:
            extra_index = torch.clamp(index - rows, 0, extra_text.shape[0] - 1)
            extra = self.text_proj(extra_text)[extra_index] * (extra_text.abs().sum(-1) > 0)[extra_index].unsqueeze(-1)
            vectors = torch.where(known.unsqueeze(-1), vectors, self.item_id.weight[UNKNOWN] + extra)
        return vectors

    def sets(self, members: Tensor, bundles: Tensor, projected: Table, extra_text: Tensor | None = None) -> Tensor:
        """Candidate vectors: members [..., M] item indices (0 = none), bundles [...] → [..., d]."""
        vectors = self.items(members, projected, extra_text)
        if members.shape[-1] == 1:  # single items: pooling one vector is the vector (a training shortcut;
            return vectors[..., 0, :] + self.bundle_id(bundles)  # export traces M > 1)
        present = (members != PAD).unsqueeze(-1)
        logits = (torch.tanh(self.pool_key(vectors)) * self.pool_query).sum(-1, keepdim=True)
        weights = torch.softmax(logits.masked_fill(~present, NEGATIVE), dim=-2) * present
        pooled = (weights * vectors).sum(-2)
        if self.training and self.config.id_dropout > 0:
            # A bundle first seen at serving time is its members alone; dropping learned bundle
            # rows in training keeps the members-only path in use (new bundles, built bundles).
            dropped = torch.rand(bundles.shape, device=bundles.device) < self.config.id_dropout
            bundles = torch.where(dropped, torch.zeros_like(bundles), bundles)
        return pooled + self.bundle_id(bundles)

    def item_table(self, projected: Tensor) -> Tensor:
        """[num_item_rows, d]: every known item as a candidate (a set of one; rows 0 and 1 unused)."""
        rows = torch.arange(self.config.num_item_rows, device=projected.device)
        return self.sets(rows.unsqueeze(-1), torch.zeros_like(rows), projected)

    def bundle_table(self, projected: Tensor) -> Tensor:
        """[num_bundle_rows, d]: every known bundle as a candidate (row 0 and 1 unused)."""
        rows = torch.arange(self.config.num_bundle_rows, device=projected.device)
        return self.sets(self.bundle_members, rows, projected)

    def item_rows(self, rows: Tensor, projected: Table) -> Tensor:
        """[len(rows), d]: those item rows as candidates, as item_table() has them."""
        return self.sets(rows.unsqueeze(-1), torch.zeros_like(rows), projected)

    def bundle_rows(self, rows: Tensor, projected: Table) -> Tensor:
        """[len(rows), d]: those bundle rows as candidates, as bundle_table() has them."""
        return self.sets(self.bundle_members[rows], rows, projected)

    # ---- the sequence ----------------------------------------------------------------------
    def encode(self, seq: Tensor, projected: Table, bundles: Table, extra_text: Tensor | None = None) -> Encoded:
        """seq [B, 5, L] (features.encode_sequence) → the encoded batch."""
        items, bundle_steps, types, recency, age = seq.unbind(1)
        item_vectors = self.sets(items.unsqueeze(-1), torch.zeros_like(items), projected, extra_text)
        steps = torch.where((bundle_steps != PAD).unsqueeze(-1), bundles[bundle_steps], item_vectors)
        b, length = items.shape
        memory = torch.cat([steps, self.user_token.expand(b, 1, -1)], dim=1)
        steps = steps + self.event_type(types) + self.recency(recency) + self.age(age)
        x = torch.cat([self.drop(steps), self.user_token.expand(b, 1, -1)], dim=1)
        user_token = torch.ones_like(items[:, :1], dtype=torch.bool)
        present = torch.cat([(items != PAD) | (bundle_steps != PAD), user_token], 1)
        key_bias = torch.where(present, 0.0, NEGATIVE)[:, None, None, :]
        bias = key_bias
        if self.config.causal:
            later = torch.triu(torch.ones(length + 1, length + 1, dtype=torch.bool, device=seq.device), diagonal=1)
            bias = bias + torch.where(later, NEGATIVE, 0.0)
        for block in self.blocks:
            x = block(x, bias)
        return Encoded(self.sequence_norm(x), memory, key_bias)

    def user_vectors(self, states: Tensor) -> Tensor:
        return self.user_proj(states)

    # ---- scoring ---------------------------------------------------------------------------
    def target_attention(self, candidates: Tensor, encoded: Encoded) -> Tensor:
        """candidates [B, N, d] or [N, d] (shared) → [B, N]: each candidate attends over the steps
        themselves (not their contextualized states), so the term stays an item-to-item similarity
        in the spirit of DIN and NAIS, which is what sparse data supports."""
        query = self.target_query(candidates)
        keys = self.target_key(encoded.memory)
        values = self.target_value(encoded.memory)
        scale = 1.0 / math.sqrt(self.config.dim)
        if candidates.dim() == 2:
            logits = torch.einsum("nd,btd->bnt", query, keys) * scale
        else:
            logits = torch.einsum("bnd,btd->bnt", query, keys) * scale
        weights = torch.softmax(logits + encoded.key_bias[:, 0], dim=-1)
        context = self.drop(weights @ values)  # [B, N, d]
        return (context * self.target_out(candidates)).sum(-1)

    def wide(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """seq [B, 5, L] → summed co-occurrence similarity of every item row [B, num_item_rows] and
        every bundle row [B, num_bundle_rows] to the steps (cooccurrence.py)."""
        items, bundle_steps = seq[:, 0], seq[:, 1]
        rows = self.config.num_item_rows
        known_item = torch.where(items < rows, items, torch.zeros_like(items))  # extra-text rows: none
        column = torch.where(bundle_steps != PAD, bundle_steps + rows, known_item)
        b = seq.shape[0]

        def spread(index: Tensor, weight: Tensor, size: int) -> Tensor:
            out = torch.zeros(b, size, dtype=weight.dtype, device=seq.device)
            if index.shape[1] == 0:
                return out
            return out.scatter_add(1, index[column].flatten(1).long(), weight[column].flatten(1))

        return (
            spread(self.wide_item_index, self.wide_item_weight, rows),
            spread(self.wide_bundle_index, self.wide_bundle_weight, self.config.num_bundle_rows),
        )

    def wide_score(self, wide: tuple[Tensor, Tensor], members: Tensor, bundles: Tensor) -> Tensor:
        """Candidates (members [B, N, M] or shared [N, M], bundles [B, N] or [N]) → [B, N]: a known
        bundle's own similarity, otherwise the mean over its members the model knows, times
        wide_member_weight (1 for next-item data, where every candidate is an item)."""
        item_wide, bundle_wide = wide
        b = item_wide.shape[0]
        known = (members != PAD) & (members < self.config.num_item_rows)
        index = torch.where(known, members, torch.zeros_like(members))
        if members.dim() == 2:
            values = item_wide[:, index]  # [B, N, M]
            bundle_values = bundle_wide[:, bundles]
        else:
            values = torch.gather(item_wide, 1, index.flatten(1)).reshape(index.shape)
            bundle_values = torch.gather(bundle_wide, 1, bundles)
        counts = known.sum(-1).clamp(min=1)
        mean = (values * known).sum(-1) / counts * self.wide_member_weight
        return torch.where(bundles > UNKNOWN, bundle_values, mean.expand(b, -1))

    def score(self, user: Tensor, candidates: Tensor, encoded: Encoded) -> Tensor:
        """Full score of candidates [B, N, d] (or shared [N, d]) for users [B, d]."""
        if candidates.dim() == 2:
            two_tower = user @ candidates.T
        else:
            two_tower = (user.unsqueeze(1) * candidates).sum(-1)
        return two_tower + self.target_attention(candidates, encoded)

    def forward(
        self, seq: Tensor, cand_items: Tensor, cand_bundles: Tensor, extra_text: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The serving signature: seq [B, 5, L], cand_items [B, N, M], cand_bundles [B, N],
        extra_text [E, text_dim] → (scores [B, N], user vectors [B, d])."""
        projected = self.projected_text()
        bundles = self.bundle_table(projected)
        encoded = self.encode(seq, projected, bundles, extra_text)
        user = self.user_vectors(encoded.states[:, -1])
        candidates = self.sets(cand_items, cand_bundles, projected, extra_text)
        return self.with_wide(self.score(user, candidates, encoded), seq, cand_items, cand_bundles), user

    def with_wide(self, scores: Tensor, seq: Tensor, members: Tensor, bundles: Tensor) -> Tensor:
        """The neural `scores` plus the weighted co-occurrence part: the model's final score."""
        return self.neural_weight * scores + self.wide_weight * self.wide_score(self.wide(seq), members, bundles)
