"""The profile store's reads that scan many rows: a user's export (data subject access),
popularity by day, the anonymous behaviour log (behaviour.py) and the training histories
(training_export.py). Mixed into SqlProfileStore (store.py), which writes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sqlalchemy import Table, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bundlerec import db
from bundlerec.profile import behaviour, exposure_store, metrics, snapshots, training_export
from bundlerec.profile.exposures import BundleOutcome, ExposedPage
from bundlerec.profile.model import EVENT_WEIGHTS, Consent, Event, TargetType
from bundlerec.profile.schema import EventRow, PopularityRow, UserRow

users_t: Table = UserRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]
popularity_t: Table = PopularityRow.__table__  # type: ignore[assignment]


class BulkReads:
    engine: AsyncEngine
    exposures: exposure_store.ExposureRules

    async def exposed_pages(
        self, *, since_us: int, until_us: int, after_seq: int, limit: int, window_us: int
    ) -> tuple[list[ExposedPage], int | None]:
        rules = dataclasses.replace(self.exposures, window_us=window_us)
        return await db.read(
            self.engine,
            lambda conn: exposure_store.pages(
                conn, since_us=since_us, until_us=until_us, after_seq=after_seq, limit=limit, rules=rules
            ),
        )

    async def bundle_outcomes(self, *, after: str, limit: int) -> tuple[list[BundleOutcome], str | None]:
        return await db.read(self.engine, lambda conn: exposure_store.bundle_outcomes(conn, after=after, limit=limit))

    async def read_behaviour(
        self, after: behaviour.Position, limit: int
    ) -> tuple[list[behaviour.BehaviourEntry], behaviour.Position]:
        return await db.read(self.engine, lambda conn: behaviour.read(conn, after, limit))

    async def training_events(
        self, *, since_us: int, until_us: int, after_id: int, limit: int, key: bytes, sensitive: Callable[[str], bool]
    ) -> tuple[list[training_export.TrainingEvent], int | None]:
        return await db.read(
            self.engine,
            lambda conn: training_export.read_page(
                conn,
                since_us=since_us,
                until_us=until_us,
                after_id=after_id,
                limit=limit,
                key=key,
                sensitive=sensitive,
            ),
        )

    @metrics.timed("export_events")
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
            return (snapshots.consent_of(user) if user else None), [(r.id, snapshots.event_of(r)) for r in rows]

        return await db.read(self.engine, work)

    @metrics.timed("popularity_by_day")
    async def popularity_by_day(self, target_type: TargetType, *, since_day: int) -> list[tuple[str, int, float]]:
        weight = case({kind.value: w for kind, w in EVENT_WEIGHTS.items()}, value=popularity_t.c.event_type, else_=1.0)

        async def work(conn: AsyncConnection) -> list[tuple[str, int, float]]:
            rows = await conn.execute(
                select(popularity_t.c.target_id, popularity_t.c.day, func.sum(popularity_t.c.count * weight))
                .where(popularity_t.c.target_type == target_type.value, popularity_t.c.day >= since_day)
                .group_by(popularity_t.c.target_id, popularity_t.c.day)
            )
            return [(r[0], r[1], float(r[2])) for r in rows]

        return await db.read(self.engine, work)
