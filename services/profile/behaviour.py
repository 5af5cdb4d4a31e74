"""The anonymous behaviour log (table profile_behaviour_log): what the candidate service keeps its
popularity and co-occurrence live from, through `ReadBehaviour`, without a user id ever leaving
the profile store.

Every accepted event appends one row in the ingest transaction: its target, type and time, and,
for a user who consented to personalization, the targets of that user's previous `WINDOW` events
(with their distance): the co-occurrence one history gives. Nothing in a row names the user or
the event. What each kind of user contributes:
- with personalization consent: popularity, and co-occurrence with their previous events;
- without it: popularity only, as the anonymous counts of profile_popularity already do (their
  events are not kept, so they have no previous events to pair with);
- an event of a sensitive category never pairs with another (it still counts as popular).
Erasing a user changes no row here (none names them): the aggregates learned from their past
behaviour stay, as the anonymous popularity counts do. Rows older than the retention setting are
deleted; a reader further behind than that misses what was deleted.

Order. Readers page by (txid, seq). On PostgreSQL `txid` is the writing transaction's id and a
reader sees only rows of transactions older than the oldest one still running, so a row that
commits after a later one was read is never skipped. SQLite's writers commit one at a time, in
`seq` order, and `txid` is 0."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Table, delete, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.events import EventType, TargetType
from bundlerec.profile.model import Event
from bundlerec.profile.schema import BehaviourRow, EventRow

WINDOW = 5  # previous events of the same user an event pairs with (as `bundlerec import` counts them)
TOKEN_KIND = "behaviour"

behaviour_t: Table = BehaviourRow.__table__  # type: ignore[assignment]
events_t: Table = EventRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Partner:
    target_type: TargetType
    target_id: str
    type: EventType
    distance: int  # 1: the user's event right before


@dataclass(frozen=True, slots=True)
class BehaviourEntry:
    target_type: TargetType
    target_id: str
    type: EventType
    occurred_at_us: int
    partners: tuple[Partner, ...] = ()


@dataclass(frozen=True, slots=True)
class Position:
    txid: int = 0
    seq: int = 0

    def token(self) -> str:
        return validation.encode_page_token(TOKEN_KIND, f"{self.txid}.{self.seq}")

    @classmethod
    def parse(cls, field: str, token: str) -> Position:
        """A token `token` made; "" is the start of the log. Anything else: INVALID_ARGUMENT."""
        position = validation.page_token(field, token, TOKEN_KIND)
        if not position:
            return cls()
        txid, dot, seq = position.partition(".")
        if not (dot and txid.isdigit() and seq.isdigit()):
            raise InvalidArgument(field, "is not a cursor this service issued")
        return cls(int(txid), int(seq))


async def previous_steps(conn: AsyncConnection, user_ids: Sequence[str]) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per user, their newest `WINDOW` stored events, oldest first: (target type, id, event type, category)."""
    if not user_ids:
        return {}
    ranked = (
        select(
            events_t.c.user_id,
            events_t.c.target_type,
            events_t.c.target_id,
            events_t.c.event_type,
            events_t.c.category,
            func.row_number()
            .over(partition_by=events_t.c.user_id, order_by=(events_t.c.occurred_at_us.desc(), events_t.c.id.desc()))
            .label("newest"),
        )
        .where(events_t.c.user_id.in_(list(user_ids)))
        .subquery()
    )
    query = select(ranked).where(ranked.c.newest <= WINDOW).order_by(ranked.c.user_id, ranked.c.newest.desc())
    steps: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in await conn.execute(query):
        steps.setdefault(row.user_id, []).append((row.target_type, row.target_id, row.event_type, row.category))
    return steps


def log_rows(
    personal: Sequence[Event],
    anonymous: Sequence[Event],
    before: Mapping[str, list[tuple[str, str, str, str]]],
    sensitive: Callable[[str], bool],
    now_us: int,
) -> list[dict[str, object]]:
    """The log rows of one ingest batch: `personal` events (consenting users, stored) pair with
    the same user's previous events (`before`: the stored ones, then this batch's, in time
    order); `anonymous` ones with nothing."""
    rows = []
    history = {user: list(steps) for user, steps in before.items()}
    for event in sorted(personal, key=lambda e: (e.user_id, e.occurred_at_us)):
        steps = history.setdefault(event.user_id, [])
        partners: list[list[str | int]] = []
        if not sensitive(event.category):
            for distance, (kind, target, event_type, category) in enumerate(reversed(steps[-WINDOW:]), start=1):
                if target != event.target_id and not sensitive(category):
                    partners.append([kind, target, event_type, distance])
        rows.append(_row(event, partners, now_us))
        steps.append((event.target_type.value, event.target_id, event.type.value, event.category))
    rows.extend(_row(event, [], now_us) for event in anonymous)
    return rows


def _row(event: Event, partners: list[list[str | int]], now_us: int) -> dict[str, object]:
    return {
        "target_type": event.target_type.value,
        "target_id": event.target_id,
        "event_type": event.type.value,
        "occurred_at_us": event.occurred_at_us,
        "partners": partners,
        "logged_at_us": now_us,
    }


async def read(conn: AsyncConnection, after: Position, limit: int) -> tuple[list[BehaviourEntry], Position]:
    """Up to `limit` entries after `after`, and the position after the last one (or `after`)."""
    # a row-value comparison: the (txid, seq) index answers it (an OR of the two would scan the log)
    query = select(behaviour_t).where(tuple_(behaviour_t.c.txid, behaviour_t.c.seq) > tuple_(after.txid, after.seq))
    if conn.dialect.name == "postgresql":  # only transactions that can no longer commit a row below
        horizon = literal_column("pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        query = query.where(behaviour_t.c.txid < horizon)
    rows = list(await conn.execute(query.order_by(behaviour_t.c.txid, behaviour_t.c.seq).limit(limit)))
    entries = [
        BehaviourEntry(
            TargetType(row.target_type),
            row.target_id,
            EventType(row.event_type),
            row.occurred_at_us,
            tuple(Partner(TargetType(k), str(t), EventType(e), int(d)) for k, t, e, d in row.partners),
        )
        for row in rows
    ]
    return entries, (Position(rows[-1].txid, rows[-1].seq) if rows else after)


async def trim(conn: AsyncConnection, before_us: int) -> None:
    await conn.execute(delete(behaviour_t).where(behaviour_t.c.logged_at_us < before_us))
