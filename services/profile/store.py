"""Persistence of the profile domain: the interface and its SQL adapter (SQLite, PostgreSQL).

The domain (service.py) decides policy (consent, sensitivity, affinity); the store only keeps
and fetches rows, each public method in one transaction committed before it returns.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Table, case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.profile.model import EVENT_WEIGHTS, Consent, Event, EventType, RecordResult, TargetType
from bundlerec.profile.schema import AnonymousEventIdRow, EventRow, PopularityRow, UserRow

MIGRATIONS = "bundlerec.profile:migrations"
US_PER_DAY = 86_400 * 1_000_000

users_t: Table = UserRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
popularity_t: Table = PopularityRow.__table__  # type: ignore[assignment]
anonymous_t: Table = AnonymousEventIdRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ProfileRows:
    """What the store knows about one user, read in one snapshot."""

    consent: Consent
    recent_events: list[Event]  # newest first
    counts: dict[EventType, int]
    total_events: int
    first_event_at_us: int | None
    last_event_at_us: int | None
    affinity_events: list[tuple[str, EventType, int]]  # (category, type, occurred_at_us), newest first


class ProfileStore(Protocol):
    async def record(self, events: Sequence[Event], *, default: Consent, now_us: int) -> RecordResult: ...
    async def profile_rows(
        self, user_id: str, *, sequence_length: int, affinity_window: int, is_sensitive: Callable[[str], bool]
    ) -> ProfileRows | None:
        """None for an unknown user. Events in categories `is_sensitive` accepts are left out of
        `recent_events` unless the user consented to the use of sensitive categories."""
    async def set_consent(
        self, user_id: str, *, personalization: bool | None, sensitive: bool | None, default: Consent, now_us: int
    ) -> tuple[Consent, int]: ...
    async def delete_user(self, user_id: str) -> tuple[bool, int]: ...
    async def export_events(
        self, user_id: str, *, after_id: int, limit: int
    ) -> tuple[Consent | None, list[tuple[int, Event]]]: ...
    async def popularity_by_day(self, target_type: TargetType, *, since_day: int) -> list[tuple[str, int, float]]: ...
    async def readiness(self) -> str | None: ...
    async def close(self) -> None: ...


def _event_from_row(row: Any) -> Event:
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


def _consent_from_row(row: Any) -> Consent:
    return Consent(row.personalization, row.sensitive_categories, row.consent_updated_at_us)


def anonymous_event_key(event_id: str) -> str:
    return hashlib.sha256(event_id.encode()).hexdigest()


class SqlProfileStore:
    """The profile store on SQLAlchemy: one adapter for SQLite and PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str, *, migrate: bool, pool_size: int = 10) -> SqlProfileStore:
        engine = db.create_engine(url, pool_size=pool_size)
        if migrate:
            await db.upgrade_to_head(engine, MIGRATIONS)
        return cls(engine)

    async def readiness(self) -> str | None:
        return await db.migration_problem(self.engine, MIGRATIONS)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------

    async def _personalization_of(self, conn: AsyncConnection, user_ids: list[str]) -> dict[str, bool]:
        # FOR SHARE (PostgreSQL) so a concurrent consent withdrawal waits for this batch, then
        # erases it, instead of leaving events written behind its back. SQLite serializes writers.
        query = (
            select(users_t.c.user_id, users_t.c.personalization)
            .where(users_t.c.user_id.in_(user_ids))
            .order_by(users_t.c.user_id)
            .with_for_update(read=True)
        )
        return {row.user_id: row.personalization for row in await conn.execute(query)}

    async def record(self, events: Sequence[Event], *, default: Consent, now_us: int) -> RecordResult:
        async def work(conn: AsyncConnection) -> RecordResult:
            user_ids = sorted({e.user_id for e in events})
            allowed = await self._personalization_of(conn, user_ids)
            unknown = [u for u in user_ids if u not in allowed]
            if unknown and default.personalization:
                new_users = [
                    {
                        "user_id": u,
                        "personalization": True,
                        "sensitive_categories": default.sensitive_categories,
                        "consent_updated_at_us": None,
                        "created_at_us": now_us,
                    }
                    for u in unknown
                ]
                await conn.execute(self._insert(users_t).on_conflict_do_nothing(index_elements=["user_id"]), new_users)
                allowed = await self._personalization_of(conn, user_ids)

            unique: dict[str, Event] = {}
            for e in events:
                unique.setdefault(e.event_id, e)
            personal = [e for e in unique.values() if allowed.get(e.user_id, False)]
            anonymous = [e for e in unique.values() if not allowed.get(e.user_id, False)]
            recorded = await self._insert_personal(conn, personal, now_us)
            anonymized = await self._insert_anonymous_keys(conn, anonymous, now_us)
            await self._count_popularity(conn, recorded + anonymized)
            return RecordResult(
                recorded=len(recorded),
                duplicates=len(events) - len(recorded) - len(anonymized),
                anonymized=len(anonymized),
            )

        return await db.in_transaction(self.engine, work)

    async def _insert_personal(self, conn: AsyncConnection, events: list[Event], now_us: int) -> list[Event]:
        if not events:
            return []
        events = sorted(events, key=lambda e: e.event_id)  # one lock order for concurrent batches
        rows = [
            {
                "event_id": e.event_id,
                "user_id": e.user_id,
                "event_type": e.type.value,
                "target_type": e.target_type.value,
                "target_id": e.target_id,
                "occurred_at_us": e.occurred_at_us,
                "value": e.value,
                "category": e.category,
                "context": e.context,
                "recommendation_id": e.recommendation_id,
                "received_at_us": now_us,
            }
            for e in events
        ]
        stmt = (
            self._insert(events_t)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(events_t.c.event_id)
        )
        inserted = set((await conn.execute(stmt, rows)).scalars())
        return [e for e in events if e.event_id in inserted]

    async def _insert_anonymous_keys(self, conn: AsyncConnection, events: list[Event], now_us: int) -> list[Event]:
        if not events:
            return []
        keyed = sorted(((anonymous_event_key(e.event_id), e) for e in events), key=lambda pair: pair[0])
        stmt = (
            self._insert(anonymous_t)
            .on_conflict_do_nothing(index_elements=["event_key"])
            .returning(anonymous_t.c.event_key)
        )
        rows = [{"event_key": key, "day": now_us // US_PER_DAY} for key, _ in keyed]
        inserted = set((await conn.execute(stmt, rows)).scalars())
        return [e for key, e in keyed if key in inserted]

    async def _count_popularity(self, conn: AsyncConnection, events: list[Event]) -> None:
        if not events:
            return
        counts = Counter(
            (e.target_type.value, e.target_id, e.occurred_at_us // US_PER_DAY, e.type.value) for e in events
        )
        rows = [
            {"target_type": t, "target_id": i, "day": d, "event_type": k, "count": n}
            for (t, i, d, k), n in sorted(counts.items())
        ]
        stmt = self._insert(popularity_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["target_type", "target_id", "day", "event_type"],
            set_={"count": popularity_t.c.count + stmt.excluded.count},
        )
        await conn.execute(stmt, rows)

    async def set_consent(
        self, user_id: str, *, personalization: bool | None, sensitive: bool | None, default: Consent, now_us: int
    ) -> tuple[Consent, int]:
        async def work(conn: AsyncConnection) -> tuple[Consent, int]:
            await conn.execute(
                self._insert(users_t).on_conflict_do_nothing(index_elements=["user_id"]),
                {
                    "user_id": user_id,
                    "personalization": default.personalization,
                    "sensitive_categories": default.sensitive_categories,
                    "consent_updated_at_us": None,
                    "created_at_us": now_us,
                },
            )
            current = (
                await conn.execute(select(users_t).where(users_t.c.user_id == user_id).with_for_update())
            ).one()
            consent = Consent(
                personalization=current.personalization if personalization is None else personalization,
                sensitive_categories=current.sensitive_categories if sensitive is None else sensitive,
                updated_at_us=now_us,
            )
            await conn.execute(
                update(users_t)
                .where(users_t.c.user_id == user_id)
                .values(
                    personalization=consent.personalization,
                    sensitive_categories=consent.sensitive_categories,
                    consent_updated_at_us=now_us,
                )
            )
            erased = 0
            if not consent.personalization:
                erased = (await conn.execute(delete(events_t).where(events_t.c.user_id == user_id))).rowcount
            return consent, erased

        return await db.in_transaction(self.engine, work)

    async def delete_user(self, user_id: str) -> tuple[bool, int]:
        async def work(conn: AsyncConnection) -> tuple[bool, int]:
            events = (await conn.execute(delete(events_t).where(events_t.c.user_id == user_id))).rowcount
            users = (await conn.execute(delete(users_t).where(users_t.c.user_id == user_id))).rowcount
            return bool(users or events), events

        return await db.in_transaction(self.engine, work)

    # -- reads ----------------------------------------------------------------------------

    async def profile_rows(
        self, user_id: str, *, sequence_length: int, affinity_window: int, is_sensitive: Callable[[str], bool]
    ) -> ProfileRows | None:
        async def work(conn: AsyncConnection) -> ProfileRows | None:
            user = (await conn.execute(select(users_t).where(users_t.c.user_id == user_id))).one_or_none()
            if user is None:
                return None
            mine = events_t.c.user_id == user_id
            counts = {
                EventType(row.event_type): row.n
                for row in await conn.execute(
                    select(events_t.c.event_type, func.count().label("n")).where(mine).group_by(events_t.c.event_type)
                )
            }
            span = (
                await conn.execute(select(func.min(events_t.c.occurred_at_us), func.max(events_t.c.occurred_at_us)).where(mine))
            ).one()
            consent = _consent_from_row(user)
            keep = (lambda _: True) if consent.sensitive_categories else (lambda c: not is_sensitive(c))
            recent = await self._recent_events(conn, user_id, sequence_length, keep)
            affinity = [
                (row.category, EventType(row.event_type), row.occurred_at_us)
                for row in await conn.execute(
                    select(events_t.c.category, events_t.c.event_type, events_t.c.occurred_at_us)
                    .where(mine, events_t.c.category != "")
                    .order_by(events_t.c.occurred_at_us.desc(), events_t.c.id.desc())
                    .limit(affinity_window)
                )
            ]
            return ProfileRows(
                consent=consent,
                recent_events=recent,
                counts=counts,
                total_events=sum(counts.values()),
                first_event_at_us=span[0],
                last_event_at_us=span[1],
                affinity_events=affinity,
            )

        return await db.read_snapshot(self.engine, work)

    async def _recent_events(
        self, conn: AsyncConnection, user_id: str, limit: int, keep: Callable[[str], bool]
    ) -> list[Event]:
        """The newest `limit` events whose category `keep` accepts, newest first."""
        found: list[Event] = []
        cursor: tuple[int, int] | None = None
        while len(found) < limit:
            query = select(events_t).where(events_t.c.user_id == user_id)
            if cursor is not None:
                t, i = cursor
                query = query.where(
                    (events_t.c.occurred_at_us < t) | ((events_t.c.occurred_at_us == t) & (events_t.c.id < i))
                )
            page = (
                await conn.execute(
                    query.order_by(events_t.c.occurred_at_us.desc(), events_t.c.id.desc()).limit(limit)
                )
            ).all()
            found.extend(_event_from_row(r) for r in page if keep(r.category))
            if len(page) < limit:
                break
            cursor = (page[-1].occurred_at_us, page[-1].id)
        return found[:limit]

    async def export_events(
        self, user_id: str, *, after_id: int, limit: int
    ) -> tuple[Consent | None, list[tuple[int, Event]]]:
        async def work(conn: AsyncConnection) -> tuple[Consent | None, list[tuple[int, Event]]]:
            user = (await conn.execute(select(users_t).where(users_t.c.user_id == user_id))).one_or_none()
            rows = (
                await conn.execute(
                    select(events_t)
                    .where(events_t.c.user_id == user_id, events_t.c.id > after_id)
                    .order_by(events_t.c.id)
                    .limit(limit)
                )
            ).all()
            return (_consent_from_row(user) if user else None), [(r.id, _event_from_row(r)) for r in rows]

        return await db.read_snapshot(self.engine, work)

    async def popularity_by_day(self, target_type: TargetType, *, since_day: int) -> list[tuple[str, int, float]]:
        weight = case(
            {kind.value: w for kind, w in EVENT_WEIGHTS.items()}, value=popularity_t.c.event_type, else_=1.0
        )

        async def work(conn: AsyncConnection) -> list[tuple[str, int, float]]:
            rows = await conn.execute(
                select(popularity_t.c.target_id, popularity_t.c.day, func.sum(popularity_t.c.count * weight))
                .where(popularity_t.c.target_type == target_type.value, popularity_t.c.day >= since_day)
                .group_by(popularity_t.c.target_id, popularity_t.c.day)
            )
            return [(r[0], r[1], float(r[2])) for r in rows]

        return await db.read_snapshot(self.engine, work)
