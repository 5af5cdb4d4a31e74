"""The two-stage figure: what the candidate service retrieves, and what ranking only that leaves.

Serving never ranks the whole catalogue: the candidate service retrieves K (200) candidates and the
ranker orders those. So beside full ranking, the report gives candidate recall@K (the share of
held-out targets among the candidates: the ceiling of the pipeline) and the model's metrics when
every target outside the candidates is ranked last. The retrieval is the candidate service's own
code, run in-process over the dataset (bundlerec.candidate.offline.DatasetRetriever); this module
takes any `Retriever`, and imports no service.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from bundlerec.evaluation.protocol import EvalSplit, Scorer


class Retriever(Protocol):
    def candidates(self, split: EvalSplit, user: str, k: int) -> list[str]:
        """The user's top `k` targets of the split's kind (ids)."""
        ...


@dataclasses.dataclass
class CandidatesOnly:
    """A Scorer that ranks only the retrieved candidates (everything else scores -inf)."""

    name: str
    ranker: Scorer
    retriever: Retriever
    k: int
    recalls: list[float] = dataclasses.field(default_factory=list)  # per user: found / positives

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        scores = np.array(self.ranker.score(split, users), dtype=np.float32)
        for row, user in enumerate(users):
            kept = [split.target_index[t] for t in self.retriever.candidates(split, user, self.k)]
            mask = np.ones(scores.shape[1], dtype=bool)
            mask[kept] = False
            scores[row, mask] = -np.inf
            positives = set(split.positives[user].tolist())
            self.recalls.append(len(set(kept) & positives) / len(positives))
        return scores

    @property
    def recall(self) -> float:
        """Candidate recall@k, averaged over users (as FORMAT.md's Recall is)."""
        return sum(self.recalls) / len(self.recalls) if self.recalls else 0.0


def sample_users(split: EvalSplit, users: int, seed: int) -> EvalSplit:
    """The split restricted to a fixed random sample of its users (retrieval runs per user)."""
    if len(split.users) <= users:
        return split
    return dataclasses.replace(split, users=sorted(random.Random(seed).sample(split.users, users)))
