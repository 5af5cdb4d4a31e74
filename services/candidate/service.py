"""The candidate domain service: validates catalogue writes and keeps the store and the in-memory
index in step; what it answers from them (reads, retrieval, text search) is reading.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from bundlerec import validation
from bundlerec.candidate import checks, feed, metrics, stats_store
from bundlerec.candidate.catalogue import CatalogueSnapshot, CatalogueStore, Counters
from bundlerec.candidate.collaborative import Collaborative, ModelWatcher
from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.live import Increments
from bundlerec.candidate.model import Bundle, Item
from bundlerec.candidate.reading import CatalogueReads, Encoder
from bundlerec.candidate.stats_store import LiveState
from bundlerec.encoder.runtime import item_text

T = TypeVar("T")
log = logging.getLogger("bundlerec.candidate")


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


CURRENT_MODEL = object()  # rebuild(): with the model in use when the build starts


def now_us() -> int:
    return time.time_ns() // 1000


class CandidateService(CatalogueReads):
    """Catalogue writes, retrieval and text search over one in-memory index, kept in step with the
    store: this replica's writes update it at once, and every other writer's (another replica, an
    import) arrive through the store's change feed (`follow_catalogue`, feed.py)."""

    def __init__(
        self, store: CatalogueStore, index: CatalogueIndex, encoder: Encoder, index_dir: Path | None = None
    ) -> None:
        self.store = store
        self.index = index
        self.encoder = encoder
        self.index_dir = index_dir
        self.restored = False  # whether the vector indexes came from disk at start
        self._instance = -1  # the catalogue's instance number (Counters)
        self._sequence = -1  # the change-feed entry the in-memory index reflects, and every one before
        self._own: set[int] = set()  # entries of this replica's writes past _sequence (applied already)
        self._pending: set[int] = set()  # entries of this replica's statistics, committing or to apply
        self._saved: tuple[int, int] | None = None  # the stamp of the vector indexes on disk
        self._writes = asyncio.Lock()  # store and index change in the same order
        self._rebuilding = asyncio.Lock()
        self._rebuild_task: asyncio.Task[bool] | None = None
        self._rebuild_again = False
        self._rebuild_pending = False  # the feed passed an import this index lacks: a rebuild must land
        self._failed_at = -math.inf  # when a background rebuild last failed
        metrics.watch_index(self)

    @property
    def sequence(self) -> int:
        return self._sequence

    async def load(self) -> None:
        """Builds the index from the catalogue store; items stored without a text vector (for
        example inserted by an older version) are encoded now and written back."""
        snapshot = await self._embedded_snapshot()
        counters = snapshot.counters  # no writer of ours runs yet
        self.restored = bool(self.index_dir) and self.index.restore(self.index_dir, counters.stamp)  # type: ignore[arg-type]
        self.index.load(
            [(s.item, s.text_vector) for s in snapshot.items],  # type: ignore[misc]
            snapshot.bundles,
            snapshot.statistics,
            vectors_restored=self.restored,
        )
        self._instance, self._sequence, self._own, self._pending = counters.instance, counters.sequence, set(), set()
        self._saved = counters.stamp if self.restored else None
        await self._save_if_current()

    async def _embedded_snapshot(self) -> CatalogueSnapshot:
        snapshot = await self.store.snapshot()
        stamp, stored_stamp = encoder_stamp(self.encoder), await self.store.encoder_stamp()
        if stored_stamp not in (None, stamp):  # another encoder embedded the catalogue: re-embed all
            log.warning("the text encoder changed since the catalogue was embedded; re-embedding every item")
            missing = [s.item for s in snapshot.items]
        else:
            missing = [s.item for s in snapshot.items if s.text_vector is None]
        for start in range(0, len(missing), checks.MAX_BATCH):
            chunk = missing[start : start + checks.MAX_BATCH]
            await self.store.upsert_items(chunk, await self._encode(chunk), now_us())
        if missing:
            snapshot = await self.store.snapshot()
        if stored_stamp != stamp:
            await self.store.set_encoder_stamp(stamp)
        return snapshot

    async def _save_if_current(self) -> None:
        """Saves the vector indexes, stamped with the catalogue generation, when they reflect the
        whole feed (nobody wrote since) and differ from what is on disk."""
        if not self.index_dir or self._rebuild_pending:  # (the index lacks an import the feed passed)
            return
        counters = await self.store.counters()
        current = counters.sequence == self._sequence and counters.instance == self._instance
        if current and counters.stamp != self._saved:
            await asyncio.to_thread(self.index.save, self.index_dir, counters.stamp)
            self._saved = counters.stamp

    # -- rebuilds: a new model's vectors, compaction, an import -----------------------------

    async def rebuild(self, collaborative: Collaborative | object | None = CURRENT_MODEL) -> None:
        """Builds a new index (with `collaborative` vectors; by default the model's in use when the
        build starts) from a snapshot of the store, on a worker thread, while retrieval and
        catalogue writes go on with the current index (nothing waits for the snapshot or the
        build); swapped in, it catches up on the change feed from the snapshot's position, this
        replica's own writes included."""
        async with self._rebuilding:
            if collaborative is CURRENT_MODEL:
                collaborative = self.index.collaborative
            snapshot = await self.store.snapshot()  # every stored item has its vector (load() saw to it)
            index = self.index.with_collaborative(collaborative)  # type: ignore[arg-type]
            items = [(s.item, s.text_vector) for s in snapshot.items]

            def build() -> None:
                index.load(items, snapshot.bundles, snapshot.statistics)  # type: ignore[arg-type]
                index.warm()

            await asyncio.to_thread(build)
            async with self._writes:
                await self._swap(index, snapshot.counters)
            metrics.REBUILDS.inc()

    async def check_model(self, watcher: ModelWatcher) -> bool:
        """One look for a newer model version: True when one was found and its vectors are now fused."""
        changed, collaborative = await asyncio.to_thread(watcher.poll)
        if not changed or (collaborative is None and self.index.collaborative is None):
            return False  # (a version without vectors after none: the index would be the same)
        await self.rebuild(collaborative)
        return True

    def rebuild_in_background(self, reason: str) -> None:
        """Starts a rebuild with the current model's vectors; while one runs, it runs once more
        when done (its snapshot may predate what asked for this one: an import)."""
        if self._rebuild_task is not None and not self._rebuild_task.done():
            self._rebuild_again = True
            return
        log.info("rebuilding the catalogue index in the background", extra={"fields": {"reason": reason}})
        self._rebuild_task = asyncio.create_task(self._rebuild_quietly(), name=f"candidate-rebuild-{reason}")

    async def _rebuild_quietly(self) -> bool:
        failures = 0
        while True:
            self._rebuild_again = False
            try:
                await self.rebuild()
                failures = 0
            except Exception:  # the current index keeps serving meanwhile
                log.exception("background rebuild of the catalogue index failed")
                failures += 1
                self._failed_at = time.monotonic()
                if not self._rebuild_pending:
                    return False  # compaction: the next write after the back-off tries again
                await asyncio.sleep(min(60.0, 2.0**failures))  # an import is missing: keep trying
                continue
            if not self._rebuild_again:
                return True

    async def _swap(self, index: CatalogueIndex, counters: Counters) -> None:
        """Under the write lock: the new index applies every feed entry after its snapshot's
        (`counters`, read before the snapshot: re-applying one it holds is harmless), then replaces
        the current one, so a reader never sees it behind the one it replaces (the catch-up awaits
        the store: a reader in between would miss writes the current index already serves)."""
        self._instance = counters.instance
        self._sequence, self._own, self._pending, self._rebuild_pending = counters.sequence, set(), set(), False
        await self._catch_up(index)  # (re-reads this replica's statistics committed since, so none is added twice)
        self.index = index
        await self._save_if_current()

    async def close(self) -> None:
        """Saves the vector indexes when they changed and nobody else changed the catalogue since
        (otherwise the next start rebuilds), and closes the store."""
        if self._rebuild_task is not None:
            self._rebuild_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebuild_task
        try:
            await self._save_if_current()
        finally:
            await self.store.close()

    # -- following the other writers --------------------------------------------------------

    async def follow_catalogue(self) -> bool:
        """One look at the change feed: applies what other writers (replicas, an import) changed
        after the index's position. True when something changed."""
        async with self._writes:
            entries = await self._catch_up()
        if entries is None:
            return False
        metrics.FOLLOWED.inc()
        if entries.oldest_at_us:
            metrics.FEED_LAG.observe(max(0.0, (now_us() - entries.oldest_at_us) / 1e6))
        self._compact_if_needed()
        return True

    async def _catch_up(self, target: CatalogueIndex | None = None) -> feed.FeedEntries | None:
        """Under the write lock: the feed entries after the index's position (but this replica's
        own), applied to `target` (by default the index serving) by reading the changed rows'
        current state, so applying an entry twice is harmless; an import, or entries trimmed away,
        rebuild the index in the background."""
        entries = await feed.entries_after(self.store.engine, self._sequence, self._own | self._pending)
        if entries is None:
            return None
        if entries.rebuild:  # rebuilt from a snapshot taken after these entries; nothing saved until then
            self._rebuild_pending = True
            self._advance(entries.sequence)
            self.rebuild_in_background("import or trimmed feed")
            return entries
        # (a statistics entry, the most frequent kind while the shop records, names none of these)
        items = await self.store.stored_items(entries.items) if entries.items else {}
        stock = await self.store.get_items(entries.availability) if entries.availability else {}
        bundles = await self.store.get_bundles(list(entries.bundles)) if entries.bundles else {}
        # the statistics of items and bundles stored anew too: their counts may predate this index
        # (an item another replica added, one deleted and stored again)
        counted_items, counted_bundles = (
            entries.counted_items | entries.items,
            entries.counted_bundles | entries.bundles,
        )
        counted = await stats_store.counts_of(self.store.engine, counted_items, counted_bundles)

        def update_index(_: object) -> None:
            index = target if target is not None else self.index
            for item_id in entries.items:
                if item_id in items:
                    index.upsert_item(items[item_id].item, items[item_id].text_vector)  # type: ignore[arg-type]
                elif item_id in index.items:
                    index.remove_item(item_id)
            for item_id, item in stock.items():
                if item_id in index.items:
                    index.set_availability(item_id, item.in_stock, item.stock_count)
            for bundle_id in entries.bundles:
                if bundle_id in bundles:
                    index.upsert_bundle(bundles[bundle_id])
                elif bundle_id in index.bundles:
                    index.remove_bundle(bundle_id)
            if counted_items or counted_bundles:  # (a stock change alone leaves the counts, and their caches, be)
                known = {i: v for i, v in counted.popularity.items() if i in index.items}
                item_partners = {i: p for i, p in counted.item_partners.items() if i in index.items}
                bundle_partners = {b: p for b, p in counted.bundle_partners.items() if b in index.bundles}
                index.set_statistics(known, item_partners, bundle_partners)

        await self._apply(update_index, None)
        self._advance(entries.sequence)
        return entries

    def _advance(self, sequence: int) -> None:
        self._sequence = max(self._sequence, sequence)
        self._own = {n for n in self._own if n > self._sequence}

    def _compact_if_needed(self) -> None:
        """A compaction when the index wants one, none runs, and none failed in the last minute."""
        running = self._rebuild_task is not None and not self._rebuild_task.done()
        if self.index.wants_compaction() and not running and time.monotonic() - self._failed_at > 60.0:
            self.rebuild_in_background("compaction")

    async def _encode(self, items: Sequence[Item]) -> np.ndarray:
        texts = [item_text(it.title, it.category, it.brand) for it in items]  # as bundlerec import does
        return await asyncio.to_thread(self.encoder.encode, texts)

    # -- catalogue ------------------------------------------------------------------------

    async def upsert_items(self, items: Sequence[Item]) -> tuple[int, int]:
        checks.items(items, self.index.external_dim)
        vectors = await self._encode(items)

        def update_index(_: object) -> None:
            for item, vector in zip(items, vectors, strict=True):
                self.index.upsert_item(item, vector)

        return await self._write(lambda: self.store.upsert_items(items, vectors, now_us()), update_index)

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        validation.identifiers("item_ids", item_ids, max_count=checks.MAX_BATCH)

        def update_index(_: object) -> None:
            for item_id in item_ids:
                self.index.remove_item(item_id)

        deleted, _ = await self._write(lambda: self.store.delete_items(item_ids, now_us()), update_index)
        return deleted

    async def upsert_bundles(self, bundles: Sequence[Bundle]) -> tuple[int, int]:
        checks.bundles(bundles)

        def update_index(_: object) -> None:
            for bundle in bundles:
                self.index.upsert_bundle(bundle)

        return await self._write(lambda: self.store.upsert_bundles(bundles, now_us()), update_index)

    async def delete_bundles(self, bundle_ids: Sequence[str]) -> int:
        validation.identifiers("bundle_ids", bundle_ids, max_count=checks.MAX_BATCH)

        def update_index(_: object) -> None:
            for bundle_id in bundle_ids:
                self.index.remove_bundle(bundle_id)

        return await self._write(lambda: self.store.delete_bundles(bundle_ids, now_us()), update_index)

    async def set_availability(self, updates: Sequence[tuple[str, bool, int | None]]) -> tuple[int, list[str]]:
        checks.availability(updates)

        def update_index(_: object) -> None:
            for item_id, in_stock, count in updates:
                if item_id in self.index.items:
                    self.index.set_availability(item_id, in_stock, count)

        return await self._write(lambda: self.store.set_availability(updates, now_us()), update_index)

    async def _write(
        self,
        store_write: Callable[[], Awaitable[T]],
        update_index: Callable[[T], None],
    ) -> T:
        """Store first, then the in-memory index, as one step that a cancelled call cannot cut in two."""

        async def step() -> T:
            async with self._writes:
                result = await store_write()
                await self._apply(update_index, result)
                self._wrote(self.store.last_sequence)
                return result

        result = await asyncio.shield(step())
        self._compact_if_needed()
        return result

    def _wrote(self, sequence: int) -> None:
        """This replica's write made feed entry `sequence`, and its index has it."""
        if sequence == self._sequence + 1:
            self._sequence = sequence
        else:  # other writers' entries come first: the feed brings them, and skips ours
            self._own.add(sequence)

    async def count_behaviour(self, counts: Increments, state: LiveState, next_cursor: str, epoch_s: int) -> bool:
        """Adds live statistics to the store (stats_store.add, without holding the write lock:
        catalogue writes never wait for it) and then to this replica's index; the other replicas
        follow through the change feed. False: another replica counted them.

        The entry's number is marked as this replica's own before the commit, so this replica's
        follower skips it rather than re-reading what the increments give; if the transaction
        fails, the mark goes before its number can be another writer's."""
        reserved: list[int] = []

        def mark(sequence: int) -> None:
            reserved.append(sequence)
            self._pending.add(sequence)

        try:
            sequence = await stats_store.add(
                self.store.engine, counts, state, next_cursor, epoch_s, now_us(), on_reserved=mark
            )
        except BaseException:
            self._pending.difference_update(reserved)
            raise
        if sequence is None:
            return False
        async with self._writes:
            if sequence in self._pending:  # (else a rebuild's catch-up re-read the counts, these included)
                self._pending.discard(sequence)
                await self._apply(lambda _: self.index.add_statistics(counts), None)
                self._wrote(sequence)
        return True

    async def _apply(self, update_index: Callable[[T], None], result: T) -> None:
        """Under the write lock: a committed change reaches the index; if the update fails, the
        index is rebuilt from the store, so what is served never drifts from what is stored."""
        try:
            update_index(result)
        except Exception:
            log.exception("index update failed after a catalogue commit; rebuilding the index")
            await self.load()
            raise
