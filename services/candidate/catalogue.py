"""The catalogue store: items, bundles, availability and behaviour statistics, on the shared SQL
layer (SQLite embedded, PostgreSQL in production). Each public method is one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.candidate import feed, stats_store
from bundlerec.candidate.catalogue_reads import CatalogueRows, StoredItem, from_bytes, item_from_row
from bundlerec.candidate.model import Bundle, Item
from bundlerec.candidate.schema import (
    bundle_cooccurrence_t,
    bundles_t,
    cooccurrence_t,
    items_t,
    members_t,
    meta_t,
    stats_t,
)
from bundlerec.candidate.statistics import BehaviourStatistics
from bundlerec.errors import InvalidArgument

MIGRATIONS = "bundlerec.candidate:migrations"

_GENERATION = meta_t.c.key == "generation"


def to_bytes(vector: np.ndarray | Sequence[float] | None) -> bytes | None:
    if vector is None or len(vector) == 0:
        return None
    return np.asarray(vector, dtype="<f4").tobytes()


@dataclass(frozen=True, slots=True)
class Counters:
    instance: int  # random, per catalogue: tells catalogues apart
    generation: int  # grows with every change of items or bundles (a saved vector index's stamp)
    sequence: int  # the change feed's newest entry (feed.py): grows with every write

    @property
    def stamp(self) -> tuple[int, int]:
        return self.instance, self.generation


@dataclass(frozen=True, slots=True)
class CatalogueSnapshot:
    """Everything the in-memory indexes are built from, and the counters read before it (so it
    holds at least every change up to them; a follower re-applies later ones idempotently)."""

    counters: Counters
    items: list[StoredItem]
    bundles: list[Bundle]
    statistics: BehaviourStatistics


async def _counters(conn: AsyncConnection) -> Counters:
    values = {row.key: row.value for row in await conn.execute(select(meta_t.c.key, meta_t.c.value))}
    return Counters(values["instance"], values["generation"], values["sequence"])


class CatalogueStore(CatalogueRows):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.last_sequence = -1  # the change-feed number of this store's last write (feed.py)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str, *, migrate: bool, pool_size: int = 10) -> CatalogueStore:
        engine = db.create_engine(url, pool_size=pool_size)
        if migrate:
            await db.upgrade_to_head(engine, MIGRATIONS)
        return cls(engine)

    async def readiness(self) -> str | None:
        return await db.migration_problem(self.engine, MIGRATIONS)

    async def close(self) -> None:
        await self.engine.dispose()

    async def _bump(self, conn: AsyncConnection) -> None:
        """Counts a change of items or bundles (in the writing transaction): a saved vector index
        is current only while the generation it was saved at is the catalogue's."""
        await conn.execute(update(meta_t).where(_GENERATION).values(value=meta_t.c.value + 1))

    async def _reserve(self, conn: AsyncConnection) -> int:
        """This write's change-feed number: the first lock every catalogue write takes (feed.py)."""
        self.last_sequence = await feed.reserve(conn)
        return self.last_sequence

    async def counters(self) -> Counters:
        return await db.read(self.engine, _counters)

    async def encoder_stamp(self) -> int | None:
        """Which encoder embedded the stored text vectors (see CandidateService.load)."""

        async def work(conn: AsyncConnection) -> int | None:
            return (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == "encoder"))).scalar_one_or_none()

        return await db.read(self.engine, work)

    async def set_encoder_stamp(self, stamp: int) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(delete(meta_t).where(meta_t.c.key == "encoder"))
            await conn.execute(meta_t.insert().values(key="encoder", value=stamp))

        await db.in_transaction(self.engine, work)

    async def upsert_items(self, items: Sequence[Item], text_vectors: np.ndarray, now_us: int) -> tuple[int, int]:
        """Inserts or replaces items with their text embeddings; returns (inserted, updated)."""

        async def work(conn: AsyncConnection) -> tuple[int, int]:
            sequence = await self._reserve(conn)
            counts = await self._upsert_items(conn, items, text_vectors, now_us)
            await feed.record(conn, sequence, now_us, items=[it.item_id for it in items])
            return counts

        return await db.in_transaction(self.engine, work)

    async def _upsert_items(
        self,
        conn: AsyncConnection,
        items: Sequence[Item],
        text_vectors: np.ndarray,
        now_us: int,
        *,
        keep_availability: bool = False,
    ) -> tuple[int, int]:
        rows = [
            {
                "item_id": it.item_id,
                "title": it.title,
                "category": it.category,
                "brand": it.brand,
                "price": it.price,
                "attributes": list(it.attributes),
                "in_stock": it.in_stock,
                "stock_count": it.stock_count,
                "external_vector": to_bytes(it.external_vector),
                "text_vector": to_bytes(vec),
                "updated_at_us": now_us,
            }
            for it, vec in zip(items, text_vectors, strict=True)
        ]
        await self._bump(conn)
        existing = await db.existing(conn, items_t.c.item_id, (r["item_id"] for r in rows))
        stmt = self._insert(items_t)
        kept = {"item_id"} | ({"in_stock", "stock_count"} if keep_availability else set())
        stmt = stmt.on_conflict_do_update(
            index_elements=["item_id"], set_={c: stmt.excluded[c] for c in rows[0] if c not in kept}
        )
        for start in range(0, len(rows), 1000):
            await conn.execute(stmt, rows[start : start + 1000])
        return len(rows) - len(existing), len(existing)

    async def delete_items(self, item_ids: Sequence[str], now_us: int) -> tuple[int, list[str]]:
        """Deletes items (and their bundle memberships); returns (deleted, bundles that changed)."""

        async def work(conn: AsyncConnection) -> tuple[int, list[str]]:
            sequence = await self._reserve(conn)
            await self._bump(conn)
            touched = list(
                (
                    await conn.execute(
                        select(members_t.c.bundle_id).where(members_t.c.item_id.in_(item_ids)).distinct()
                    )
                ).scalars()
            )
            await feed.record(conn, sequence, now_us, items=item_ids, bundles=touched)
            await conn.execute(delete(members_t).where(members_t.c.item_id.in_(item_ids)))
            await conn.execute(delete(stats_t).where(stats_t.c.item_id.in_(item_ids)))
            await conn.execute(
                delete(cooccurrence_t).where(
                    cooccurrence_t.c.item_id.in_(item_ids) | cooccurrence_t.c.other_id.in_(item_ids)
                )
            )
            deleted = (await conn.execute(delete(items_t).where(items_t.c.item_id.in_(item_ids)))).rowcount
            if touched:  # bundles left with no member at all are deleted with their last item
                still_used = select(members_t.c.bundle_id).where(members_t.c.bundle_id.in_(touched))
                await conn.execute(
                    delete(bundles_t).where(
                        bundles_t.c.bundle_id.in_(touched), bundles_t.c.bundle_id.not_in(still_used)
                    )
                )
            return deleted, touched

        return await db.in_transaction(self.engine, work)

    async def upsert_bundles(self, bundles: Sequence[Bundle], now_us: int) -> tuple[int, int]:
        async def work(conn: AsyncConnection) -> tuple[int, int]:
            sequence = await self._reserve(conn)
            counts = await self._upsert_bundles(conn, bundles, now_us)
            await feed.record(conn, sequence, now_us, bundles=[b.bundle_id for b in bundles])
            return counts

        return await db.in_transaction(self.engine, work)

    async def _upsert_bundles(self, conn: AsyncConnection, bundles: Sequence[Bundle], now_us: int) -> tuple[int, int]:
        await self._bump(conn)
        members = {i for b in bundles for i in b.item_ids}
        known = await db.existing(conn, items_t.c.item_id, members)
        for i, bundle in enumerate(bundles):
            for j, item_id in enumerate(bundle.item_ids):
                if item_id not in known:
                    raise InvalidArgument(f"bundles[{i}].item_ids[{j}]", f"item {item_id!r} is not in the catalogue")
        ids = [b.bundle_id for b in bundles]
        existing = await db.existing(conn, bundles_t.c.bundle_id, ids)
        stmt = self._insert(bundles_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["bundle_id"], set_={"title": stmt.excluded.title, "updated_at_us": now_us}
        )
        await conn.execute(
            stmt, [{"bundle_id": b.bundle_id, "title": b.title, "updated_at_us": now_us} for b in bundles]
        )
        for start in range(0, len(ids), 500):
            await conn.execute(delete(members_t).where(members_t.c.bundle_id.in_(ids[start : start + 500])))
        rows = [
            {"bundle_id": b.bundle_id, "item_id": item_id, "position": n}
            for b in bundles
            for n, item_id in enumerate(b.item_ids)
        ]
        for start in range(0, len(rows), 5000):
            await conn.execute(self._insert(members_t), rows[start : start + 5000])
        return len(ids) - len(existing), len(existing)

    async def delete_bundles(self, bundle_ids: Sequence[str], now_us: int) -> int:
        async def work(conn: AsyncConnection) -> int:
            sequence = await self._reserve(conn)
            await self._bump(conn)
            await feed.record(conn, sequence, now_us, bundles=bundle_ids)
            await conn.execute(delete(members_t).where(members_t.c.bundle_id.in_(bundle_ids)))
            await conn.execute(
                delete(bundle_cooccurrence_t).where(
                    bundle_cooccurrence_t.c.bundle_id.in_(bundle_ids) | bundle_cooccurrence_t.c.other_id.in_(bundle_ids)
                )
            )
            return (await conn.execute(delete(bundles_t).where(bundles_t.c.bundle_id.in_(bundle_ids)))).rowcount

        return await db.in_transaction(self.engine, work)

    async def set_availability(
        self, updates: Sequence[tuple[str, bool, int | None]], now_us: int
    ) -> tuple[int, list[str]]:
        async def work(conn: AsyncConnection) -> tuple[int, list[str]]:
            sequence = await self._reserve(conn)
            known = await db.existing(conn, items_t.c.item_id, (u[0] for u in updates))
            await feed.record(conn, sequence, now_us, availability=known)
            for item_id, in_stock, count in updates:
                if item_id in known:
                    await conn.execute(
                        update(items_t)
                        .where(items_t.c.item_id == item_id)
                        .values(in_stock=in_stock, stock_count=count, updated_at_us=now_us)
                    )
            return len([u for u in updates if u[0] in known]), [u[0] for u in updates if u[0] not in known]

        return await db.in_transaction(self.engine, work)

    async def snapshot(self) -> CatalogueSnapshot:
        """The whole catalogue, to (re)build the in-memory indexes."""

        async def work(conn: AsyncConnection) -> CatalogueSnapshot:
            counters = await _counters(conn)
            items = [
                StoredItem(item_from_row(r), from_bytes(r.text_vector))
                for r in await conn.execute(select(items_t).order_by(items_t.c.item_id))
            ]
            members: dict[str, list[str]] = {}
            for r in await conn.execute(select(members_t).order_by(members_t.c.bundle_id, members_t.c.position)):
                members.setdefault(r.bundle_id, []).append(r.item_id)
            bundles = [
                Bundle(r.bundle_id, tuple(members.get(r.bundle_id, ())), r.title)
                for r in await conn.execute(select(bundles_t).order_by(bundles_t.c.bundle_id))
            ]
            statistics = BehaviourStatistics(
                popularity={r.item_id: r.popularity for r in await conn.execute(select(stats_t))},
                item_pairs={(r.item_id, r.other_id): r.weight for r in await conn.execute(select(cooccurrence_t))},
                bundle_pairs={
                    (r.bundle_id, r.other_id): r.weight for r in await conn.execute(select(bundle_cooccurrence_t))
                },
            )
            return CatalogueSnapshot(counters, items, bundles, statistics)

        return await db.read(self.engine, work)

    async def _replace_statistics(self, conn: AsyncConnection, statistics: BehaviourStatistics) -> None:
        tables = (
            (stats_t, [{"item_id": i, "popularity": p} for i, p in statistics.popularity.items()]),
            (
                cooccurrence_t,
                [{"item_id": a, "other_id": b, "weight": w} for (a, b), w in statistics.item_pairs.items()],
            ),
            (
                bundle_cooccurrence_t,
                [{"bundle_id": a, "other_id": b, "weight": w} for (a, b), w in statistics.bundle_pairs.items()],
            ),
        )
        for table, rows in tables:
            await conn.execute(delete(table))
            for start in range(0, len(rows), 5000):
                await conn.execute(self._insert(table), rows[start : start + 5000])

    async def import_catalogue(
        self,
        items: Sequence[Item],
        text_vectors: np.ndarray,
        bundles: Sequence[Bundle],
        statistics: BehaviourStatistics,
        now_us: int,
        epoch_s: int | None = None,
    ) -> tuple[int, int]:
        """Items, bundles and statistics in one transaction: an import lands whole or not at all.
        `epoch_s`: the time the statistics are decayed to (their newest event), which live counts
        then grow from (live.py)."""

        async def work(conn: AsyncConnection) -> tuple[int, int]:
            # The import format has no availability: items already in the catalogue keep theirs.
            await feed.record(conn, await self._reserve(conn), now_us, kind="import")
            counts = await self._upsert_items(conn, items, text_vectors, now_us, keep_availability=True)
            if bundles:
                await self._upsert_bundles(conn, bundles, now_us)
            await self._replace_statistics(conn, statistics)
            if epoch_s is not None:
                await stats_store.set_epoch(conn, epoch_s)
            return counts

        return await db.in_transaction(self.engine, work)
