"""When a user's snapshot (snapshot.py) is used, and how it is rebuilt: profile_snapshots and
profile_changes (schema.py).

Every write that changes what GetProfile answers for a user adds a row to profile_changes in its
own transaction: plain inserts, so concurrent writers never wait on each other. A read uses the
snapshot only when the user has no such row, so it sees every write acknowledged before it. A
read that finds rows (or no snapshot, or one built under other settings) builds the profile from
the events and, in one transaction that sees the rows it read and nothing newer, stores it and
deletes the change rows that transaction saw; a change committed meanwhile keeps its row, and the
snapshot stays stale until the next read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, delete, exists, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bundlerec.profile import snapshot
from bundlerec.profile.model import Consent, Event, EventType, TargetType
from bundlerec.profile.schema import ChangeRow, EventRow, SnapshotRow, UserRow
from bundlerec.profile.snapshot import SnapshotRows, SnapshotSettings

users_t: Table = UserRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
snapshots_t: Table = SnapshotRow.__table__  # type: ignore[assignment]
changes_t: Table = ChangeRow.__table__  # type: ignore[assignment]

_SNAPSHOT = (
    select(
        snapshots_t.c.snapshot,
        snapshots_t.c.snapshot_key,
        exists().where(changes_t.c.user_id == users_t.c.user_id).label("changed"),
    )
    .select_from(users_t.outerjoin(snapshots_t, snapshots_t.c.user_id == users_t.c.user_id))
    .where(users_t.c.user_id == bindparam("user_id"))
)
_USER = select(users_t).where(users_t.c.user_id == bindparam("user_id"))
# What a snapshot is built from.
_STATS = (
    select(
        events_t.c.event_type,
        func.count(events_t.c.id).label("n"),
        func.min(events_t.c.occurred_at_us).label("first"),
        func.max(events_t.c.occurred_at_us).label("last"),
    )
    .where(events_t.c.user_id == bindparam("user_id"))
    .group_by(events_t.c.event_type)
)
_NEWEST = 2**62  # a cursor position after every event
_RECENT = (
    select(events_t)
    .where(
        events_t.c.user_id == bindparam("user_id"),
        tuple_(events_t.c.occurred_at_us, events_t.c.id) < tuple_(bindparam("before_us"), bindparam("before_id")),
    )
    .order_by(events_t.c.occurred_at_us.desc(), events_t.c.id.desc())
    .limit(bindparam("limit"))
)
_WINDOW = (
    select(events_t.c.occurred_at_us, events_t.c.category, events_t.c.event_type)
    .where(events_t.c.user_id == bindparam("user_id"), events_t.c.category != "")
    .order_by(events_t.c.occurred_at_us.desc(), events_t.c.id.desc())
    .limit(bindparam("window"))
)
_BOUGHT = (
    select(func.max(events_t.c.occurred_at_us).label("last"), events_t.c.target_id, events_t.c.category)
    .where(
        events_t.c.user_id == bindparam("user_id"),
        events_t.c.event_type == EventType.PURCHASE.value,
        events_t.c.target_type == TargetType.ITEM.value,
    )
    .group_by(events_t.c.target_id, events_t.c.category)
    .order_by(func.max(events_t.c.occurred_at_us).desc(), events_t.c.target_id)
    .limit(snapshot.MAX_PURCHASED)
)


def consent_of(row: Any) -> Consent:
    return Consent(row.personalization, row.sensitive_categories, row.consent_updated_at_us)


def event_of(row: Any) -> Event:
    return Event(
        event_id=row.event_id,
        user_id=row.user_id,
        type=EventType(row.event_type),
        target_type=TargetType(row.target_type),
        target_id=row.target_id,
        occurred_at_us=row.occurred_at_us,
        value=row.value,
        category=row.category,
        context=dict(row.context or {}),
        recommendation_id=row.recommendation_id,
    )


def fresh(row: Any, key: str) -> bool:
    """Whether a row of `read` holds a snapshot that is current and built with settings `key`."""
    return row.snapshot is not None and not row.changed and row.snapshot_key == key


async def read(conn: AsyncConnection, user_id: str) -> Any:
    """The user's stored snapshot and whether writes came in since; None for an unknown user."""
    return (await conn.execute(_SNAPSHOT, {"user_id": user_id})).one_or_none()


async def read_rows(conn: AsyncConnection, user_id: str, settings: SnapshotSettings) -> SnapshotRows | None:
    """What `snapshot.build` needs, in the store's order (time, then row id); None for an unknown user."""
    user = (await conn.execute(_USER, {"user_id": user_id})).one_or_none()
    if user is None:
        return None
    consent = consent_of(user)
    stats = (await conn.execute(_STATS, {"user_id": user_id})).all()
    keep = snapshot.keeper(consent, settings)
    window = await conn.execute(_WINDOW, {"user_id": user_id, "window": settings.affinity_window})
    bought = await conn.execute(_BOUGHT, {"user_id": user_id})
    return SnapshotRows(
        consent=consent,
        recent=await _recent(conn, user_id, settings.sequence_length, keep),
        counts={EventType(r.event_type): (r.n, r.first, r.last) for r in stats},
        window=[(r.occurred_at_us, r.category, r.event_type) for r in window],
        bought=[(r.last, r.target_id, r.category) for r in bought],
    )


async def _recent(conn: AsyncConnection, user_id: str, limit: int, keep: Callable[[str], bool]) -> list[Event]:
    """The newest `limit` events whose category `keep` accepts, newest first."""
    found: list[Event] = []
    params = {"user_id": user_id, "limit": limit, "before_us": _NEWEST, "before_id": _NEWEST}
    while len(found) < limit:
        page = (await conn.execute(_RECENT, params)).all()
        found.extend(event_of(r) for r in page if keep(r.category))
        if len(page) < limit:
            break
        params.update(before_us=page[-1].occurred_at_us, before_id=page[-1].id)
    return found[:limit]


async def rebuild(
    conn: AsyncConnection, postgres: bool, user_id: str, settings: SnapshotSettings, now_us: int
) -> bytes | None:
    """In a transaction that sees one state of the store (REPEATABLE READ on PostgreSQL): the
    user's profile built from their rows, stored as their snapshot, and the change rows it covers
    deleted. None for an unknown user."""
    rows = await read_rows(conn, user_id, settings)
    if rows is None:
        return None
    encoded = snapshot.build(user_id, rows, settings, now_us)
    await conn.execute(delete(changes_t).where(changes_t.c.user_id == user_id))
    insert = (pg_insert if postgres else sqlite_insert)(snapshots_t).values(
        user_id=user_id, snapshot_key=settings.key, snapshot=encoded
    )
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=["user_id"], set_={n: insert.excluded[n] for n in ("snapshot_key", "snapshot")}
        )
    )
    return encoded


async def stale_users(conn: AsyncConnection, limit: int) -> list[str]:
    """Users with change rows, the oldest change first."""
    query = select(changes_t.c.user_id).group_by(changes_t.c.user_id).order_by(func.min(changes_t.c.id)).limit(limit)
    return list((await conn.execute(query)).scalars())


def changed_rows(user_ids: Sequence[str]) -> list[dict[str, str]]:
    """The profile_changes rows of a write that changed these users' profiles (users in order)."""
    return [{"user_id": u} for u in sorted(set(user_ids))]


async def compact(conn: AsyncConnection) -> None:
    """One change row per user is enough to mark a snapshot stale: the older ones of users nobody
    reads (who would otherwise gather one per write) go."""
    newest = select(func.max(changes_t.c.id)).group_by(changes_t.c.user_id)
    await conn.execute(delete(changes_t).where(changes_t.c.id.not_in(newest.scalar_subquery())))
