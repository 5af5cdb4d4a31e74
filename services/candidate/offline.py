"""The candidate service's retrieval over a dataset, in process and without a store: what the
service would retrieve for each user of an evaluation split, for the two-stage figure of
`bundlerec evaluate` (bundlerec/evaluation/two_stage.py) and bench/candidate_recall.py."""

from __future__ import annotations

import numpy as np

from bundlerec.candidate.importer import dataset_statistics
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Bundle, Filter, Item, RecentInteraction, RetrievalRequest, Source
from bundlerec.candidate.retrieval import retrieve
from bundlerec.datasets import Dataset
from bundlerec.evaluation.protocol import EvalSplit
from bundlerec.events import EventType

HISTORY = 50  # recent interactions sent as the retrieval context, as the gateway does
TEXT_DIM = 384  # the index's text dimension when a dataset has no text at all


class DatasetRetriever:
    """The catalogue of a dataset loaded into the service's in-memory index, as `bundlerec import`
    would load it; retrieval per user of a split, as the gateway would ask for it."""

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
