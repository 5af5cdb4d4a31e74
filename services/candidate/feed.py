"""The catalogue's change feed (table catalogue_changes): every write appends one entry in its own
transaction, and every replica reads the entries after the last one it applied.

Order: an entry's number comes from the `sequence` counter row, which the writing transaction
updates first (`reserve`) and holds locked until it commits; so entries commit in number order, and a reader
that has seen entry n has seen every entry before it. On PostgreSQL each entry also sends a
NOTIFY on CHANNEL at commit, so followers need not wait for their next poll."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.candidate.schema import changes_t, meta_t

CHANNEL = "bundlerec_catalogue"
KEEP = 10_000  # entries kept; a follower further behind rebuilds its index from a snapshot
TRIM_EVERY = 500

_SEQUENCE = meta_t.c.key == "sequence"


@dataclass(frozen=True, slots=True)
class FeedEntries:
    """What changed after a follower's position, up to `sequence` (the newest entry read)."""

    sequence: int
    rebuild: bool  # an import, or entries already trimmed: rebuild from a snapshot
    oldest_at_us: int = 0  # when the oldest of them was written
    items: frozenset[str] = frozenset()
    bundles: frozenset[str] = frozenset()
    availability: frozenset[str] = frozenset()
    counted_items: frozenset[str] = frozenset()  # whose statistics changed (popularity, co-occurrence)
    counted_bundles: frozenset[str] = frozenset()


async def reserve(conn: AsyncConnection) -> int:
    """The number of the writing transaction `conn`'s entry: taken first in every catalogue write
    (the counter row is the first lock each takes, so writers never wait on each other in
    different orders), and held until it commits."""
    bump = update(meta_t).where(_SEQUENCE).values(value=meta_t.c.value + 1).returning(meta_t.c.value)
    sequence: int = (await conn.execute(bump)).scalar_one()
    return sequence


async def record(
    conn: AsyncConnection,
    sequence: int,
    now_us: int,
    *,
    items: Collection[str] = (),
    bundles: Collection[str] = (),
    availability: Collection[str] = (),
    kind: str = "write",
) -> None:
    """Writes the entry `reserve` numbered, naming what the transaction changed."""
    await conn.execute(
        changes_t.insert().values(
            sequence=sequence,
            kind=kind,
            items=sorted(items),
            bundles=sorted(bundles),
            availability=sorted(availability),
            at_us=now_us,
        )
    )
    if sequence % TRIM_EVERY == 0:
        await conn.execute(delete(changes_t).where(changes_t.c.sequence <= sequence - KEEP))
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(CHANNEL, str(sequence))))


async def position(conn: AsyncConnection) -> int:
    """The newest entry's number."""
    return (await conn.execute(select(meta_t.c.value).where(_SEQUENCE))).scalar_one()  # type: ignore[no-any-return]


async def entries_after(engine: AsyncEngine, after: int, skip: Collection[int] = ()) -> FeedEntries | None:
    """The entries after number `after`, merged (None when there are none); `skip`: numbers whose
    changes the reader already applied (its own writes)."""

    async def work(conn: AsyncConnection) -> FeedEntries | None:
        if await position(conn) <= after:
            return None
        rows = list(await conn.execute(select(changes_t).where(changes_t.c.sequence > after).order_by("sequence")))
        if not rows:
            return None
        if rows[0].sequence != after + 1:  # trimmed away
            return FeedEntries(rows[-1].sequence, rebuild=True, oldest_at_us=rows[0].at_us)
        items: set[str] = set()
        bundles: set[str] = set()
        availability: set[str] = set()
        counted_items: set[str] = set()
        counted_bundles: set[str] = set()
        rebuild = False
        oldest = 0
        for row in rows:
            if row.sequence in skip:
                continue
            oldest = oldest or row.at_us
            rebuild |= row.kind == "import"
            if row.kind == "statistics":
                counted_items.update(row.items)
                counted_bundles.update(row.bundles)
                continue
            items.update(row.items)
            bundles.update(row.bundles)
            availability.update(row.availability)
        return FeedEntries(
            rows[-1].sequence,
            rebuild,
            oldest,
            frozenset(items),
            frozenset(bundles),
            frozenset(availability - items),
            frozenset(counted_items),
            frozenset(counted_bundles),
        )

    return await db.read(engine, work)
