"""Behaviour statistics in the catalogue store (popularity, item and bundle co-occurrence): added
to live from the profile service's behaviour log (live.py), each batch in one transaction that
also moves the log cursor (so a batch counts once, whichever replica applies it) and appends a
change-feed entry (so every replica's index follows), and read back per item or bundle.

Only one replica's batch lands for a cursor position: the cursor moves by compare-and-set, and
the replica that lost the race rolls its batch back."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.candidate import feed
from bundlerec.candidate.live import Increments
from bundlerec.candidate.schema import (
    bundle_cooccurrence_t,
    bundles_t,
    cooccurrence_t,
    cursors_t,
    items_t,
    meta_t,
    stats_t,
)
from bundlerec.candidate.statistics import KEEP_PER_ITEM

PRUNE_EVERY = 10  # batches between prunings of the partner lists (housekeeping: a list may grow a while)
CURSOR = "behaviour"
EPOCH = "statistics_epoch_s"


_batches = itertools.count(1)


@dataclass(frozen=True, slots=True)
class LiveState:
    cursor: str  # where the next batch of the behaviour log starts
    epoch_s: int | None  # the time weights grow from (live.py); None before any statistics


@dataclass(frozen=True, slots=True)
class Counts:
    """The current statistics of some items and bundles, as the index holds them."""

    popularity: dict[str, float]
    item_partners: dict[str, dict[str, float]]
    bundle_partners: dict[str, dict[str, float]]


async def live_state(engine: AsyncEngine) -> LiveState:
    async def work(conn: AsyncConnection) -> LiveState:
        cursor = (await conn.execute(select(cursors_t.c.cursor).where(cursors_t.c.name == CURSOR))).scalar_one()
        epoch = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == EPOCH))).scalar_one_or_none()
        return LiveState(cursor, epoch)

    return await db.read(engine, work)


async def set_epoch(conn: AsyncConnection, epoch_s: int) -> None:
    """The time weights grow from: set by an import (its newest event) or the first live batch."""
    await conn.execute(delete(meta_t).where(meta_t.c.key == EPOCH))
    await conn.execute(meta_t.insert().values(key=EPOCH, value=epoch_s))


async def add(
    engine: AsyncEngine,
    counts: Increments,
    state: LiveState,
    next_cursor: str,
    epoch_s: int,
    now_us: int,
    on_reserved: Callable[[int], None] = lambda _: None,
) -> int | None:
    """Adds `counts` (weighted from `epoch_s`) and moves the cursor from `state.cursor` to
    `next_cursor`, in one transaction. None, with nothing written, when another replica moved the
    cursor first or the epoch is no longer `epoch_s` (an import set another); else the number of
    the change-feed entry naming what changed, which `on_reserved` learns before the commit.

    Locks, in the order every catalogue write takes them: the cursor row, the feed's counter
    (feed.reserve), then the statistics rows."""

    async def work(conn: AsyncConnection) -> int | None:
        if state.epoch_s is None:  # the first batch ever: its epoch, unless an import set one meanwhile
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            await conn.execute(insert(meta_t).values(key=EPOCH, value=epoch_s).on_conflict_do_nothing())
        stored = (await conn.execute(select(meta_t.c.value).where(meta_t.c.key == EPOCH))).scalar_one()
        if stored != epoch_s:
            raise _Retry
        moved = await conn.execute(
            update(cursors_t)
            .where(cursors_t.c.name == CURSOR, cursors_t.c.cursor == state.cursor)
            .values(cursor=next_cursor)
        )
        if moved.rowcount != 1:
            raise _Retry
        items = await db.existing(conn, items_t.c.item_id, {*counts.popularity, *(a for a, _ in counts.item_pairs)})
        bundles = await db.existing(conn, bundles_t.c.bundle_id, {a for a, _ in counts.bundle_pairs})
        popularity = [{"item_id": i, "popularity": w} for i, w in counts.popularity.items() if i in items]
        item_pairs = [
            {"item_id": a, "other_id": b, "weight": w}
            for (a, b), w in counts.item_pairs.items()
            if a in items and b in items
        ]
        bundle_pairs = [
            {"bundle_id": a, "other_id": b, "weight": w}
            for (a, b), w in counts.bundle_pairs.items()
            if a in bundles and b in bundles
        ]
        sequence = await feed.reserve(conn)
        on_reserved(sequence)
        touched_items = {r["item_id"] for r in popularity} | {r["item_id"] for r in item_pairs}
        touched_bundles = {r["bundle_id"] for r in bundle_pairs}
        await feed.record(conn, sequence, now_us, items=touched_items, bundles=touched_bundles, kind="statistics")
        if popularity:
            await db.insert_rows(conn, stats_t, popularity, key=["item_id"], add_to="popularity")
        if item_pairs:
            await db.insert_rows(conn, cooccurrence_t, item_pairs, key=["item_id", "other_id"], add_to="weight")
        if bundle_pairs:
            await db.insert_rows(
                conn, bundle_cooccurrence_t, bundle_pairs, key=["bundle_id", "other_id"], add_to="weight"
            )
        if next(_batches) % PRUNE_EVERY == 0:
            await _prune(conn, cooccurrence_t, cooccurrence_t.c.item_id, {r["item_id"] for r in item_pairs})
            bundle_owner = bundle_cooccurrence_t.c.bundle_id
            await _prune(conn, bundle_cooccurrence_t, bundle_owner, {r["bundle_id"] for r in bundle_pairs})
        return sequence

    try:
        return await db.in_transaction(engine, work)
    except _Retry:  # rolled back: nothing of this batch was written
        return None


class _Retry(Exception):
    """Another replica counted this batch first, or an import changed the epoch."""


async def counts_of(engine: AsyncEngine, item_ids: Collection[str], bundle_ids: Collection[str]) -> Counts:
    if not item_ids and not bundle_ids:
        return Counts({}, {}, {})

    async def work(conn: AsyncConnection) -> Counts:
        popularity: dict[str, float] = dict.fromkeys(item_ids, 0.0)  # no row: never counted
        items: dict[str, dict[str, float]] = defaultdict(dict)
        bundles: dict[str, dict[str, float]] = defaultdict(dict)
        wanted, wanted_bundles = list(item_ids), list(bundle_ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in await conn.execute(select(stats_t).where(stats_t.c.item_id.in_(chunk))):
                popularity[row.item_id] = row.popularity
            for row in await conn.execute(select(cooccurrence_t).where(cooccurrence_t.c.item_id.in_(chunk))):
                items[row.item_id][row.other_id] = row.weight
        for start in range(0, len(wanted_bundles), 500):
            chunk = wanted_bundles[start : start + 500]
            query = select(bundle_cooccurrence_t).where(bundle_cooccurrence_t.c.bundle_id.in_(chunk))
            for row in await conn.execute(query):
                bundles[row.bundle_id][row.other_id] = row.weight
        return Counts(
            popularity, {i: items.get(i, {}) for i in wanted}, {b: bundles.get(b, {}) for b in wanted_bundles}
        )

    return await db.read(engine, work)


async def _prune(conn: AsyncConnection, table: Table, owner: object, touched: set[str]) -> None:
    """Owners with more than twice KEEP_PER_ITEM partners keep their strongest KEEP_PER_ITEM."""
    if not touched:
        return
    crowded = select(owner).where(owner.in_(list(touched))).group_by(owner).having(func.count() > 2 * KEEP_PER_ITEM)  # type: ignore[attr-defined]
    for key in list((await conn.execute(crowded)).scalars()):
        strongest = (
            select(table.c.other_id).where(owner == key).order_by(table.c.weight.desc()).limit(KEEP_PER_ITEM)  # type: ignore[operator]
        )
        kept = list((await conn.execute(strongest)).scalars())
        await conn.execute(delete(table).where(owner == key, table.c.other_id.not_in(kept)))  # type: ignore[operator]
