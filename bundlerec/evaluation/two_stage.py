"""The two-stage figure: what the candidate service retrieves, and what ranking only that leaves.

Serving never ranks the whole catalogue: the candidate service retrieves K (200) candidates and the
ranker orders those. So beside full ranking, the report gives candidate recall@K (the share of
held-out targets among the candidates: the ceiling of the pipeline) and the model's metrics when
every target outside the candidates is ranked last. The retrieval is the candidate service's own
code (`bundlerec.candidate`), run in-process over the dataset as `bundlerec import` would load it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from bundlerec.candidate.importer import dataset_statistics
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Bundle, Filter, Item, RecentInteraction, RetrievalRequest, Source
from bundlerec.candidate.retrieval import retrieve
from bundlerec.datasets import Dataset
from bundlerec.evaluation.protocol import EvalSplit, Scorer
from bundlerec.events import EventType

HISTORY = 50  # recent interactions sent as the retrieval context, as the gateway does
TEXT_DIM = 384  # the index's text dimension when a dataset has no text at all


class CandidateRetriever:
    def __init__(self, dataset: Dataset, text_vectors: np.ndarray | None) -> None:
        vectors = text_vectors if text_vectors is not None else np.zeros((len(dataset.items), TEXT_DIM), np.float32)
        self.index = CatalogueIndex(vectors.shape[1])
        items = [
            (Item(it.item_id, it.title, it.category, it.brand, it.price), vectors[n])
            for n, it in enumerate(dataset.items.values())
        ]
        bundles = [Bundle(b.bundle_id, b.item_ids, b.title) for b in dataset.bundles.values()]
        self.index.load(items, bundles, dataset_statistics(dataset))

    def candidates(self, split: EvalSplit, user: str, k: int, sources: frozenset[Source] | None = None) -> list[str]:
        """The user's top `k` targets of the split's kind from `sources` (default: all, merged)."""
        steps = split.histories.get(user, [])
        bundle_task = split.task == "bundle"
        seen_items = frozenset(s.target_id for s in steps if s.target_type == "item")
        seen_bundles = frozenset(s.target_id for s in steps if s.target_type == "bundle")
        recent = tuple(
            RecentInteraction(s.target_id, s.target_type == "bundle", EventType(s.event_type)) for s in steps[-HISTORY:]
        )
        request = RetrievalRequest(
            recent=recent,
            item_limit=0 if bundle_task else k,
            bundle_limit=k if bundle_task else 0,
            filter=Filter(exclude_item_ids=seen_items, exclude_bundle_ids=seen_bundles),
            sources=sources if sources is not None else frozenset(Source),
        )
        got = retrieve(self.index, request)
        return [c.target_id for c in (got.bundles if bundle_task else got.items)]


@dataclasses.dataclass
class CandidatesOnly:
    """A Scorer that ranks only the retrieved candidates (everything else scores -inf)."""

    name: str
    ranker: Scorer
    retriever: CandidateRetriever
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
