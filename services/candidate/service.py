"""The candidate domain service: validates catalogue writes, keeps the store and the in-memory
index in step, and answers retrieval and text search."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from bundlerec import validation
from bundlerec.candidate import metrics
from bundlerec.candidate.catalogue import CatalogueSnapshot, CatalogueStore
from bundlerec.candidate.collaborative import ModelWatcher
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Bundle, Filter, Item, RetrievalRequest, Retrieved
from bundlerec.candidate.retrieval import retrieve
from bundlerec.encoder.runtime import item_text
from bundlerec.errors import InvalidArgument

MAX_BATCH = 1000
T = TypeVar("T")
log = logging.getLogger("bundlerec.candidate")


class Encoder(Protocol):
    """Text → unit vectors (the ONNX sentence encoder in production)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def encoder_stamp(encoder: Encoder) -> int:
    """A number that changes when the embedding space does: the model, its dimension, its input
    length and pooling (not the bytes of one export: re-exporting the same model changes nothing)."""
    manifest = getattr(encoder, "manifest", None)
    what = (
        f"{manifest.model_name}|{manifest.dimension}|{manifest.max_seq_length}|{manifest.pooling}|{manifest.normalized}"
        if manifest
        else type(encoder).__qualname__
    )
    return int(hashlib.sha256(what.encode()).hexdigest()[:15], 16)


def now_us() -> int:
    return time.time_ns() // 1000


class CandidateService:
    def __init__(
        self, store: CatalogueStore, index: CatalogueIndex, encoder: Encoder, index_dir: Path | None = None
    ) -> None:
        self.store = store
        self.index = index
        self.encoder = encoder
        self.index_dir = index_dir
        self.restored = False  # whether the vector indexes came from disk at start
        self._instance = -1  # the catalogue's instance number (see CatalogueStore.generation)
        self._synced_generation = -1  # the catalogue generation the in-memory index reflects
        self._saved_generation = -1
        self._writes = asyncio.Lock()  # store and index change in the same order
        self._watcher: asyncio.Task[None] | None = None
        self._model_swap = asyncio.Lock()
        # While a new model's index is built: the index updates of the writes made meanwhile, to replay on it.
        self._replay: list[Callable[[], None]] | None = None
        metrics.watch_index(self)

    async def load(self) -> None:
        """Builds the index from the catalogue store; items stored without a text vector (for
        example inserted by an older version) are encoded now and written back."""
        snapshot = await self._embedded_snapshot()
        self._instance, generation = await self.store.generation()  # no writer runs yet: the snapshot's
        self.restored = bool(self.index_dir) and self.index.restore(self.index_dir, (self._instance, generation))  # type: ignore[arg-type]
        self.index.load(
            [(s.item, s.text_vector) for s in snapshot.items],  # type: ignore[misc]
            snapshot.bundles,
            snapshot.statistics,
            vectors_restored=self.restored,
        )
        self._synced_generation = generation
        if self.index_dir and not self.restored:
            await asyncio.to_thread(self.index.save, self.index_dir, (self._instance, generation))
        self._saved_generation = generation

    async def _embedded_snapshot(self) -> CatalogueSnapshot:
        snapshot = await self.store.snapshot()
        stamp, stored_stamp = encoder_stamp(self.encoder), await self.store.encoder_stamp()
        if stored_stamp not in (None, stamp):  # another encoder embedded the catalogue: re-embed all
            log.warning("the text encoder changed since the catalogue was embedded; re-embedding every item")
            missing = [s.item for s in snapshot.items]
        else:
            missing = [s.item for s in snapshot.items if s.text_vector is None]
        for start in range(0, len(missing), MAX_BATCH):
            chunk = missing[start : start + MAX_BATCH]
            await self.store.upsert_items(chunk, await self._encode(chunk), now_us())
        if missing:
            snapshot = await self.store.snapshot()
        if stored_stamp != stamp:
            await self.store.set_encoder_stamp(stamp)
        return snapshot

    # -- the ranker's model ---------------------------------------------------------------

    def follow_models(self, watcher: ModelWatcher, interval: float) -> None:
        """Every `interval` seconds (0: never), swaps in the collaborative vectors of a newer model."""
        if interval > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._follow(watcher, interval), name="candidate-model-watcher")

    async def _follow(self, watcher: ModelWatcher, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_model(watcher)
            except Exception as error:  # the watcher must outlive a bad poll (a vanished directory...)
                log.warning("model watcher poll failed", extra={"fields": {"error": type(error).__name__}})

    async def check_model(self, watcher: ModelWatcher) -> bool:
        """One poll: True when a newer model version was found and its vectors are now fused.

        The new vector indexes are built on a worker thread from a snapshot of the catalogue while
        retrieval and catalogue writes go on with the current index; the writes made meanwhile are
        replayed on the new index when it is swapped in."""
        async with self._model_swap:
            changed, collaborative = await asyncio.to_thread(watcher.poll)
            if not changed or (collaborative is None and self.index.collaborative is None):
                return False  # (a version without vectors after none: the index would be the same)
            async with self._writes:
                snapshot = await self._embedded_snapshot()
                instance, generation = await self.store.generation()
                self._replay = []
            try:
                index = self.index.with_collaborative(collaborative)
                items = [(s.item, s.text_vector) for s in snapshot.items]

                def build() -> None:
                    index.load(items, snapshot.bundles, snapshot.statistics)  # type: ignore[arg-type]
                    index.warm()

                await asyncio.to_thread(build)
                async with self._writes:
                    await self._swap(index, instance, generation)
            finally:
                self._replay = None
            return True

    async def _swap(self, index: CatalogueIndex, instance: int, generation: int) -> None:
        """Under the write lock: the new index replaces the current one, with the writes it missed."""
        pending, self._replay = self._replay or [], None
        self.index, self._instance = index, instance
        try:
            for update in pending:
                update()
        except Exception:
            log.exception("replaying catalogue writes on the new model's index failed; rebuilding it")
            await self.load()
            return
        if not pending:  # else the generation stays as the writes left it (in step, or -1)
            self._synced_generation = generation
        if self.index_dir and self._synced_generation >= 0:
            await asyncio.to_thread(index.save, self.index_dir, (instance, self._synced_generation))
            self._saved_generation = self._synced_generation

    async def close(self) -> None:
        """Saves the vector indexes when they changed and nobody else changed the catalogue since
        (then the saved generation matches; otherwise the next start rebuilds), and closes the store."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        try:
            if self.index_dir and self._synced_generation != self._saved_generation:
                if await self.store.generation() == (self._instance, self._synced_generation):
                    await asyncio.to_thread(self.index.save, self.index_dir, (self._instance, self._synced_generation))
        finally:
            await self.store.close()

    def _synced(self, generation_before: int) -> None:
        """After a write of ours: still in step if the store moved by exactly our one change."""
        in_step = generation_before >= 0 and self.store.last_generation == generation_before + 1
        self._synced_generation = self.store.last_generation if in_step else -1

    async def _encode(self, items: Sequence[Item]) -> np.ndarray:
        texts = [item_text(it.title, it.category, it.brand) for it in items]  # as bundlerec import does
        return await asyncio.to_thread(self.encoder.encode, texts)

    # -- catalogue ------------------------------------------------------------------------

    def _check_item(self, field: str, item: Item) -> None:
        validation.identifier(f"{field}.item_id", item.item_id)
        validation.text(f"{field}.title", item.title, max_length=1024)
        validation.text(f"{field}.category", item.category, max_length=512)
        validation.text(f"{field}.brand", item.brand, max_length=256)
        if item.price is not None:
            validation.finite(f"{field}.price", item.price)
            if item.price < 0:
                raise InvalidArgument(f"{field}.price", "must not be negative")
        if len(item.attributes) > 64:
            raise InvalidArgument(f"{field}.attributes", "at most 64 attributes")
        for j, attribute in enumerate(item.attributes):
            validation.text(f"{field}.attributes[{j}]", attribute, max_length=128)
        if item.stock_count is not None and item.stock_count < 0:
            raise InvalidArgument(f"{field}.availability.stock_count", "must not be negative")
        if item.external_vector:
            expected = self.index.external_dim
            if len(item.external_vector) != expected:
                problem = (
                    "external vectors are disabled (external_vector_dim=0)"
                    if not expected
                    else (f"has {len(item.external_vector)} dimensions; this catalogue uses {expected}")
                )
                raise InvalidArgument(f"{field}.external_vector", problem)
            if not all(math.isfinite(x) for x in item.external_vector):
                raise InvalidArgument(f"{field}.external_vector", "must contain only finite numbers")

    async def upsert_items(self, items: Sequence[Item]) -> tuple[int, int]:
        _check_batch("items", items)
        seen: set[str] = set()
        for i, item in enumerate(items):
            self._check_item(f"items[{i}]", item)
            if item.item_id in seen:
                raise InvalidArgument(f"items[{i}].item_id", f"repeats {item.item_id!r}")
            seen.add(item.item_id)
        vectors = await self._encode(items)

        def update_index(_: object) -> None:
            for item, vector in zip(items, vectors, strict=True):
                self.index.upsert_item(item, vector)

        return await self._write(lambda: self.store.upsert_items(items, vectors, now_us()), update_index)

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        validation.identifiers("item_ids", item_ids, max_count=MAX_BATCH)

        def update_index(_: object) -> None:
            for item_id in item_ids:
                self.index.remove_item(item_id)

        deleted, _ = await self._write(lambda: self.store.delete_items(item_ids), update_index)
        return deleted

    async def upsert_bundles(self, bundles: Sequence[Bundle]) -> tuple[int, int]:
        _check_batch("bundles", bundles)
        seen: set[str] = set()
        for i, bundle in enumerate(bundles):
            validation.identifier(f"bundles[{i}].bundle_id", bundle.bundle_id)
            validation.text(f"bundles[{i}].title", bundle.title, max_length=1024)
            if not bundle.item_ids:
                raise InvalidArgument(f"bundles[{i}].item_ids", "a bundle needs at least one item")
            validation.identifiers(f"bundles[{i}].item_ids", bundle.item_ids, max_count=100)
            if bundle.bundle_id in seen:
                raise InvalidArgument(f"bundles[{i}].bundle_id", f"repeats {bundle.bundle_id!r}")
            seen.add(bundle.bundle_id)

        def update_index(_: object) -> None:
            for bundle in bundles:
                self.index.upsert_bundle(bundle)

        return await self._write(lambda: self.store.upsert_bundles(bundles, now_us()), update_index)

    async def delete_bundles(self, bundle_ids: Sequence[str]) -> int:
        validation.identifiers("bundle_ids", bundle_ids, max_count=MAX_BATCH)

        def update_index(_: object) -> None:
            for bundle_id in bundle_ids:
                self.index.remove_bundle(bundle_id)

        return await self._write(lambda: self.store.delete_bundles(bundle_ids), update_index)

    async def set_availability(self, updates: Sequence[tuple[str, bool, int | None]]) -> tuple[int, list[str]]:
        if not updates:
            raise InvalidArgument("updates", "must contain at least one update")
        if len(updates) > 10_000:
            raise InvalidArgument("updates", f"has {len(updates)} updates; at most 10000")
        for i, (item_id, _, count) in enumerate(updates):
            validation.identifier(f"updates[{i}].item_id", item_id)
            if count is not None and count < 0:
                raise InvalidArgument(f"updates[{i}].availability.stock_count", "must not be negative")

        def update_index(_: object) -> None:
            for item_id, in_stock, count in updates:
                if item_id in self.index.items:
                    self.index.set_availability(item_id, in_stock, count)

        return await self._write(
            lambda: self.store.set_availability(updates, now_us()), update_index, changes_vectors=False
        )

    async def _write(
        self,
        store_write: Callable[[], Awaitable[T]],
        update_index: Callable[[T], None],
        *,
        changes_vectors: bool = True,
    ) -> T:
        """Store first, then the in-memory index, as one step that a cancelled call cannot cut in
        two; if the index update fails after the commit, the index is rebuilt from the store, so
        what is served never drifts from what is stored."""

        async def step() -> T:
            async with self._writes:
                before = self._synced_generation
                result = await store_write()
                if self._replay is not None:
                    self._replay.append(functools.partial(update_index, result))
                try:
                    update_index(result)
                except Exception:
                    log.exception("index update failed after a catalogue commit; rebuilding the index")
                    await self.load()
                    raise
                if changes_vectors:
                    self._synced(before)
                return result

        return await asyncio.shield(step())

    async def get_items(self, item_ids: Sequence[str]) -> tuple[list[Item], list[str]]:
        validation.identifiers("item_ids", item_ids, max_count=MAX_BATCH, unique=False)
        found = await self.store.get_items(item_ids)
        return [found[i] for i in item_ids if i in found], [i for i in item_ids if i not in found]

    async def text_vectors(self, item_ids: Sequence[str]) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
        """(item id, text vector) in request order for items with text; the other ids (unknown, or no text)."""
        validation.identifiers("item_ids", item_ids, max_count=MAX_BATCH, unique=False)
        found = await self.store.text_vectors(item_ids)
        return [(i, found[i]) for i in item_ids if i in found], [i for i in item_ids if i not in found]

    async def get_bundles(self, bundle_ids: Sequence[str]) -> tuple[list[Bundle], list[str]]:
        validation.identifiers("bundle_ids", bundle_ids, max_count=MAX_BATCH, unique=False)
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


def _check_batch(field: str, values: Sequence[object]) -> None:
    if not values:
        raise InvalidArgument(field, "must contain at least one entry")
    if len(values) > MAX_BATCH:
        raise InvalidArgument(field, f"has {len(values)} entries; at most {MAX_BATCH} per request")
