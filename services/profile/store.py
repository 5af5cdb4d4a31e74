"""Persistence of the profile domain: the interface and its SQL adapter (SQLite, PostgreSQL).

The domain (service.py) decides policy (consent, sensitivity, affinity); the store only keeps
and fetches rows, each public method in one transaction committed before it returns.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.profile import behaviour, exposure_store, metrics, snapshot, snapshots, training_export
from bundlerec.profile.bulk_reads import BulkReads
from bundlerec.profile.exposure_store import ExposureRules
from bundlerec.profile.exposures import BundleOutcome, ExposedPage, Exposure
from bundlerec.profile.hot_read import MISSING, hot_reader
from bundlerec.profile.model import Consent, Event, RecordResult, TargetType
from bundlerec.profile.schema import AnonymousEventIdRow, EventRow, PopularityRow, UserRow
from bundlerec.profile.snapshot import US_PER_DAY, SnapshotSettings

MIGRATIONS = "bundlerec.profile:migrations"
DEFAULT_RULES = ExposureRules()

users_t: Table = UserRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
popularity_t: Table = PopularityRow.__table__  # type: ignore[assignment]
anonymous_t: Table = AnonymousEventIdRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A user's precomputed profile as stored: `encoded` is None when there is none yet, or when it
    was built before the user's latest change or with other settings (stale: build it again)."""

    encoded: bytes | None


class ProfileStore(Protocol):
    async def profile_snapshot(self, user_id: str) -> StoredSnapshot | None:
        """None for an unknown user; else the user's snapshot, if it is fresh."""

    async def build_snapshot(self, user_id: str, settings: SnapshotSettings, *, keep: bool) -> bytes | None:
        """A user's profile built from their rows under `settings` (None for an unknown user); with
        `keep`, stored as their snapshot unless a write came in meanwhile."""

    async def stale_users(self, limit: int) -> list[str]:
        """Users whose snapshot is stale, those with the oldest pending change first."""

    async def record(
        self, events: Sequence[Event], *, default: Consent, now_us: int, log_behaviour: bool = True
    ) -> RecordResult: ...
    async def set_consent(
        self, user_id: str, *, personalization: bool | None, sensitive: bool | None, default: Consent, now_us: int
    ) -> tuple[Consent, int]: ...
    async def delete_user(self, user_id: str, *, now_us: int) -> tuple[bool, int]: ...
    async def export_events(
        self, user_id: str, *, after_id: int, limit: int
    ) -> tuple[Consent | None, list[tuple[int, Event]]]: ...
    async def popularity_by_day(self, target_type: TargetType, *, since_day: int) -> list[tuple[str, int, float]]: ...
    async def read_behaviour(
        self, after: behaviour.Position, limit: int
    ) -> tuple[list[behaviour.BehaviourEntry], behaviour.Position]: ...
    async def training_events(
        self, *, since_us: int, until_us: int, after_id: int, limit: int, key: bytes, sensitive: Callable[[str], bool]
    ) -> tuple[list[training_export.TrainingEvent], int | None]: ...
    async def record_exposures(self, exposures: Sequence[Exposure]) -> exposure_store.Recorded: ...
    async def exposed_pages(
        self, *, since_us: int, until_us: int, after_seq: int, limit: int, window_us: int
    ) -> tuple[list[ExposedPage], int | None]: ...
    async def bundle_outcomes(self, *, after: str, limit: int) -> tuple[list[BundleOutcome], str | None]: ...
    async def readiness(self) -> str | None: ...
    async def close(self) -> None: ...


def event_key(secret: bytes, event_id: str) -> str:
    """A keyed hash of an event id: recognises a retried id without keeping the id itself."""
    return hmac.new(secret, event_id.encode(), hashlib.sha256).hexdigest()


class SqlProfileStore(BulkReads):
    """The profile store on SQLAlchemy: one adapter for SQLite and PostgreSQL."""

    def __init__(
        self,
        engine: AsyncEngine,
        snapshot: SnapshotSettings,
        *,
        key_secret: bytes = b"",
        retry_window_days: int = 90,
        behaviour_retention_days: int = 7,
        exposures: ExposureRules = DEFAULT_RULES,
    ) -> None:
        self.engine = engine
        self.snapshot = snapshot
        self._hot = hot_reader(engine.url.render_as_string(hide_password=False), engine.pool.size())  # type: ignore[attr-defined]
        self._postgres = engine.dialect.name == "postgresql"
        self._secret = key_secret or b"bundlerec"
        self._retry_window_days = retry_window_days
        self._behaviour_retention_days = behaviour_retention_days
        self.exposures = exposures
        self._purged_day = -1  # the day the event-id keys were last purged by this process

    @classmethod
    async def open(
        cls,
        url: str,
        snapshot: SnapshotSettings,
        *,
        migrate: bool,
        pool_size: int = 10,
        key_secret: bytes = b"",
        retry_window_days: int = 90,
        behaviour_retention_days: int = 7,
        exposures: ExposureRules = DEFAULT_RULES,
    ) -> SqlProfileStore:
        engine = db.create_engine(url, pool_size=pool_size)
        if migrate:
            await db.upgrade_to_head(engine, MIGRATIONS)
        return cls(
            engine,
            snapshot,
            key_secret=key_secret,
            retry_window_days=retry_window_days,
            behaviour_retention_days=behaviour_retention_days,
            exposures=exposures,
        )

    @metrics.timed("readiness")
    async def readiness(self) -> str | None:
        return await db.migration_problem(self.engine, MIGRATIONS)

    async def close(self) -> None:
        await self._hot.close()
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

    @metrics.timed("record")
    async def record(
        self, events: Sequence[Event], *, default: Consent, now_us: int, log_behaviour: bool = True
    ) -> RecordResult:
        """Stores a batch; `log_behaviour` False (a bulk import of history, whose statistics the
        catalogue import computes itself) keeps it out of the behaviour log (behaviour.py)."""

        attributed: list[exposure_store.Attributed] = []

        async def work(conn: AsyncConnection) -> RecordResult:
            attributed.clear()  # a transaction retried from the start
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
                await db.insert_rows(conn, users_t, new_users, key=["user_id"])
                allowed = await self._personalization_of(conn, user_ids)

            unique: dict[str, Event] = {}
            for e in events:
                unique.setdefault(e.event_id, e)
            personal = await self._not_forgotten(conn, [e for e in unique.values() if allowed.get(e.user_id, False)])
            anonymous = [e for e in unique.values() if not allowed.get(e.user_id, False)]
            users = sorted({e.user_id for e in personal}) if log_behaviour else []
            before = await behaviour.previous_steps(conn, users)
            recorded = await self._insert_personal(conn, personal, now_us)
            # A user created above whose events were all retries of erased ones is not kept: an
            # erased user stays erased, even when a client retries an old batch.
            empty = set(unknown) - {e.user_id for e in recorded}
            if empty and default.personalization:
                await conn.execute(
                    delete(users_t).where(users_t.c.user_id.in_(empty), users_t.c.created_at_us == now_us)
                )
            await self._changed(conn, [e.user_id for e in recorded])
            anonymized = await self._insert_anonymous_keys(conn, anonymous, now_us)
            await self._purge_old_keys(conn, now_us)
            await self._count_popularity(conn, recorded + anonymized)
            attributed.extend(await exposure_store.keep_outcomes(conn, recorded + anonymized, self.exposures))
            if log_behaviour and (recorded or anonymized):
                logged = behaviour.log_rows(recorded, anonymized, before, self.snapshot.sensitive, now_us)
                await self._insert_rows(conn, behaviour.behaviour_t, logged)
            return RecordResult(
                recorded=len(recorded),
                duplicates=len(events) - len(recorded) - len(anonymized),
                anonymized=len(anonymized),
            )

        result = await db.in_transaction(self.engine, work)
        metrics.count_attributed(attributed)
        return result

    async def _insert_rows(self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
        if self._postgres:
            await conn.execute(db.bulk_insert(table, list(rows[0])), db.columns_of(table, rows))
        else:
            await conn.execute(insert(table), rows)

    async def _changed(self, conn: AsyncConnection, user_ids: list[str]) -> None:
        """These users' profiles changed: their snapshots are stale from this commit on."""
        if user_ids:
            await self._insert_rows(conn, snapshots.changes_t, snapshots.changed_rows(user_ids))

    async def _not_forgotten(self, conn: AsyncConnection, events: list[Event]) -> list[Event]:
        """Drops events whose id was erased (or kept anonymously) before: a client retrying an
        old batch after an erasure must not bring the data back."""
        if not events:
            return []
        keys = {self._key(e.event_id): e for e in events}
        query = select(anonymous_t.c.event_key).where(anonymous_t.c.event_key.in_(list(keys)))
        forgotten = set((await conn.execute(query)).scalars())
        return [e for k, e in keys.items() if k not in forgotten]

    async def _forget_history(self, conn: AsyncConnection, user_id: str, now_us: int) -> int:
        """Erases a user's events, remembering only keyed hashes of their ids (see _not_forgotten)."""
        ids = list((await conn.execute(select(events_t.c.event_id).where(events_t.c.user_id == user_id))).scalars())
        if ids:
            rows = [{"event_key": self._key(i), "day": now_us // US_PER_DAY} for i in sorted(ids)]
            await db.insert_rows(conn, anonymous_t, rows, key=["event_key"])
        await conn.execute(delete(events_t).where(events_t.c.user_id == user_id))
        return len(ids)

    async def _purge_old_keys(self, conn: AsyncConnection, now_us: int) -> None:
        """Once a day per process: event-id keys older than the retry window go (no client
        retries a batch months later; the keys would only grow)."""
        today = now_us // US_PER_DAY
        if today != self._purged_day:
            await conn.execute(delete(anonymous_t).where(anonymous_t.c.day < today - self._retry_window_days))
            await snapshots.compact(conn)
            await behaviour.trim(conn, now_us - self._behaviour_retention_days * US_PER_DAY)
            await exposure_store.trim(conn, now_us - self.exposures.retention_days * US_PER_DAY)
            self._purged_day = today

    def _key(self, event_id: str) -> str:
        return event_key(self._secret, event_id)

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
        inserted = await db.insert_rows(conn, events_t, rows, key=["event_id"], returning="event_id")
        return [e for e in events if e.event_id in inserted]

    async def _insert_anonymous_keys(self, conn: AsyncConnection, events: list[Event], now_us: int) -> list[Event]:
        if not events:
            return []
        keyed = sorted(((self._key(e.event_id), e) for e in events), key=lambda pair: pair[0])
        rows = [{"event_key": key, "day": now_us // US_PER_DAY} for key, _ in keyed]
        inserted = await db.insert_rows(conn, anonymous_t, rows, key=["event_key"], returning="event_key")
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
        await db.insert_rows(
            conn, popularity_t, rows, key=["target_type", "target_id", "day", "event_type"], add_to="count"
        )

    @metrics.timed("set_consent")
    async def set_consent(
        self, user_id: str, *, personalization: bool | None, sensitive: bool | None, default: Consent, now_us: int
    ) -> tuple[Consent, int]:
        async def work(conn: AsyncConnection) -> tuple[Consent, int]:
            new_user = {
                "user_id": user_id,
                "personalization": default.personalization,
                "sensitive_categories": default.sensitive_categories,
                "consent_updated_at_us": None,
                "created_at_us": now_us,
            }
            await db.insert_rows(conn, users_t, [new_user], key=["user_id"])
            current = (await conn.execute(select(users_t).where(users_t.c.user_id == user_id).with_for_update())).one()
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
                erased = await self._forget_history(conn, user_id, now_us)
                await exposure_store.forget(conn, self._secret, user_id)
            await self._changed(conn, [user_id])  # consent decides what the profile shows
            return consent, erased

        return await db.in_transaction(self.engine, work)

    @metrics.timed("delete_user")
    async def delete_user(self, user_id: str, *, now_us: int) -> tuple[bool, int]:
        async def work(conn: AsyncConnection) -> tuple[bool, int]:
            events = await self._forget_history(conn, user_id, now_us)
            pages = await exposure_store.forget(conn, self._secret, user_id)
            users = (await conn.execute(delete(users_t).where(users_t.c.user_id == user_id))).rowcount
            return bool(users or events or pages), events

        return await db.in_transaction(self.engine, work)

    @metrics.timed("record_exposures")
    async def record_exposures(self, exposures: Sequence[Exposure]) -> exposure_store.Recorded:
        async def work(conn: AsyncConnection) -> exposure_store.Recorded:
            consent = functools.partial(self._personalization_of, conn)
            return await exposure_store.record(conn, exposures, self._secret, self.exposures, consent)

        recorded = await db.in_transaction(self.engine, work)
        metrics.count_attributed(recorded.attributed)
        return recorded

    # -- reads ----------------------------------------------------------------------------

    @metrics.timed("profile_snapshot")
    async def profile_snapshot(self, user_id: str) -> StoredSnapshot | None:
        row = await self._hot.read(user_id)
        if row is MISSING:
            row = await db.read(self.engine, lambda conn: snapshots.read(conn, user_id))
        if row is None:
            return None
        return StoredSnapshot(row.snapshot if snapshots.fresh(row, self.snapshot.key) else None)

    @metrics.timed("stale_users")
    async def stale_users(self, limit: int) -> list[str]:
        return await db.read(self.engine, lambda conn: snapshots.stale_users(conn, limit))

    @metrics.timed("profile_rows")
    async def build_snapshot(self, user_id: str, settings: SnapshotSettings, *, keep: bool) -> bytes | None:
        now = time.time_ns() // 1000

        async def build(conn: AsyncConnection) -> bytes | None:
            rows = await snapshots.read_rows(conn, user_id, settings)
            return None if rows is None else snapshot.build(user_id, rows, settings, now)

        if not keep:
            return await db.read(self.engine, build)

        async def rebuild(conn: AsyncConnection) -> bytes | None:
            return await snapshots.rebuild(conn, self._postgres, user_id, settings, now)

        try:
            return await db.in_transaction(self.engine, rebuild, isolation="REPEATABLE READ", attempts=1)
        except IntegrityError:  # the user was erased while it was built
            return None
        except db.Conflict:  # another reader stored it meanwhile: answer without storing
            return await db.read(self.engine, build)
