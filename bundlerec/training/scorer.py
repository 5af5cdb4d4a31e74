"""The trained model as a Scorer of the evaluation harness: full ranking of every item or bundle.

Scores with the PyTorch weights rather than the ONNX file, because full ranking shares the
candidate side across users (every candidate is encoded once per split, not once per user); the
ONNX parity test is what ties the two together. Items the model has no row for are scored from
their text, through the same `extra_text` path the ranker service uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bundlerec.datasets import Dataset
from bundlerec.evaluation.protocol import EvalSplit
from bundlerec.ranking.features import PAD, UNKNOWN, Step, encode_candidates, encode_sequence
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.data import model_steps
from bundlerec.training.model import BundleRanker

# users × candidates scored at once at most: target attention holds several [users, candidates, d]
# tensors, a gigabyte each at 32 users and 160k candidates
CANDIDATE_BUDGET = 2_000_000


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


class ModelScorer:
    def __init__(
        self,
        name: str,
        model: BundleRanker,
        dataset: Dataset,
        vocabulary: Vocabulary,
        text_vectors: np.ndarray | None,
        batch_users: int = 32,
    ) -> None:
        self.name = name
        self.model = model
        self.dataset = dataset
        self.vocabulary = vocabulary
        self.mapper = ItemMapper(dataset, vocabulary, text_vectors)
        self.timed = dataset.info.timestamps != "none"
        self.clock = dataset.info.timestamps == "unix"
        self.batch_users = batch_users
        self._candidates: tuple[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] | None = None

    def _steps(self, split: EvalSplit, user: str) -> list[Step]:
        return model_steps(split.histories.get(user, []), self.vocabulary, self.mapper.item, timed=self.timed)

    def _candidate_index(self, split: EvalSplit) -> tuple[torch.Tensor, torch.Tensor]:
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

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        neural, wide = self.parts(split, users)
        return float(self.model.neural_weight) * neural + float(self.model.wide_weight) * wide

    @torch.inference_mode()
    def parts(self, split: EvalSplit, users: Sequence[str], neural: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The neural score and the (unweighted) co-occurrence score of every target, [users, targets]
        each; without `neural` the first is left unfilled (only the tables are read)."""
        self.model.eval()
        device = self.model.user_token.device
        projected = self.model.projected_text()
        bundles = self.model.bundle_table(projected)
        extra = torch.from_numpy(self.mapper.extra_text).to(device)
        members, rows = (index.to(device) for index in self._candidate_index(split))
        # the vectors are not kept between calls, since the weights change while training
        candidates = self.model.sets(members, rows, projected, extra)
        length = self.model.config.max_sequence
        scores = np.empty((len(users), len(split.target_ids)), dtype=np.float32)
        wide = np.empty_like(scores)
        step = max(1, min(self.batch_users, CANDIDATE_BUDGET // max(1, len(split.target_ids))))
        for start in range(0, len(users), step):
            chunk = users[start : start + step]
            seq = torch.from_numpy(
                np.stack([encode_sequence(self._steps(split, u), length, clock=self.clock) for u in chunk])
            ).to(device)
            if neural:
                encoded = self.model.encode(seq, projected, bundles, extra)
                user = self.model.user_vectors(encoded.states[:, -1])
                scores[start : start + len(chunk)] = self.model.score(user, candidates, encoded).cpu().numpy()
            wide[start : start + len(chunk)] = self.model.wide_score(self.model.wide(seq), members, rows).cpu().numpy()
        return scores, wide
