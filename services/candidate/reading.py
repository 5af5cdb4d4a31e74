"""What the candidate service answers from its store and its current index: the read RPCs
(items, bundles, text vectors, pages of the catalogue), retrieval and text search. Mixed into
CandidateService (service.py), which keeps both current."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bundlerec import validation
from bundlerec.candidate import checks, metrics
from bundlerec.candidate.model import Bundle, Filter, Item, RetrievalRequest, Retrieved
from bundlerec.candidate.retrieval import retrieve
from bundlerec.errors import InvalidArgument

if TYPE_CHECKING:
    from bundlerec.candidate.catalogue import CatalogueStore
    from bundlerec.candidate.index import CatalogueIndex


class Encoder(Protocol):
    """Text → unit vectors (the ONNX sentence encoder in production)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class CatalogueReads:
    store: CatalogueStore
    index: CatalogueIndex
    encoder: Encoder

    async def get_items(self, item_ids: Sequence[str]) -> tuple[list[Item], list[str]]:
        validation.identifiers("item_ids", item_ids, max_count=checks.MAX_BATCH, unique=False)
        found = await self.store.get_items(item_ids)
        return [found[i] for i in item_ids if i in found], [i for i in item_ids if i not in found]

    async def text_vectors(self, item_ids: Sequence[str]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
        """(item id, text vector) in request order for items with text; the other ids (unknown, or no text)."""
        validation.identifiers("item_ids", item_ids, max_count=checks.MAX_BATCH, unique=False)
        found = await self.store.text_vectors(item_ids)
        return [(i, found[i]) for i in item_ids if i in found], [i for i in item_ids if i not in found]

    async def get_bundles(self, bundle_ids: Sequence[str]) -> tuple[list[Bundle], list[str]]:
        validation.identifiers("bundle_ids", bundle_ids, max_count=checks.MAX_BATCH, unique=False)
        found = await self.store.get_bundles(bundle_ids)
        return [found[b] for b in bundle_ids if b in found], [b for b in bundle_ids if b not in found]

    async def list_items(self, page_size: int, page_token: str) -> tuple[list[Item], str]:
        """A page of the catalogue in id order, and the token of the next one ("" after the last)."""
        size = validation.page_size("page_size", page_size, default=100, maximum=1000)
        after_id = validation.page_token("page_token", page_token, "items")
        items = await self.store.list_items(after_id, size + 1)
        more = len(items) > size
        items = items[:size]
        return items, (validation.encode_page_token("items", items[-1].item_id) if more else "")

    async def list_bundles(self, page_size: int, page_token: str) -> tuple[list[Bundle], str]:
        """A page of the bundles in id order, and the token of the next one ("" after the last)."""
        size = validation.page_size("page_size", page_size, default=100, maximum=1000)
        ids = await self.store.list_bundle_ids(validation.page_token("page_token", page_token, "bundles"), size + 1)
        found = await self.store.get_bundles(ids[:size])
        token = validation.encode_page_token("bundles", ids[size - 1]) if len(ids) > size else ""
        return [found[b] for b in ids[:size] if b in found], token

    # -- retrieval ------------------------------------------------------------------------

    def retrieve(self, request: RetrievalRequest) -> Retrieved:
        index = self.index  # one index for the whole call, even if a new model's is swapped in
        fused, model = index.item_vectors.dim, index.collaborative.dim if index.collaborative else 0
        if request.user_vector and len(request.user_vector) not in (fused, model):
            expected = f"the ranker model's {model} or the fused {fused}" if model else f"{fused} (no ranker model)"
            raise InvalidArgument("user_vector", f"has {len(request.user_vector)} dimensions; expected {expected}")
        retrieved = retrieve(index, request)
        metrics.count_hits(retrieved)
        return retrieved

    async def search_text(self, query: str, limit: int, item_filter: Filter) -> list[tuple[Item, float]]:
        validation.text("query", query, max_length=512, required=True)
        if not query.strip():
            raise InvalidArgument("query", "is required")
        size = validation.page_size("limit", limit, default=20, maximum=200)
        vector = (await asyncio.to_thread(self.encoder.encode, [query]))[0]
        index = self.index
        hits = index.item_vectors.search(index.fusion.fuse(vector), size, index.item_mask(item_filter))
        metrics.SOURCE_HITS.labels("item", "text_search").inc(len(hits))
        return [(index.items[key], score) for key, score in hits]
