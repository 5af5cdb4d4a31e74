"""What ExportTrainingEvents reads: the stored personal histories of a time range, for retraining.

Only profile_events is read, which holds events of users with personalization consent alone and
loses a user's rows when they are erased or withdraw consent: an export after an erasure cannot
contain the erased user's events. An event of a sensitive category is left out unless its user
consented to sensitive categories, as GetProfile leaves it out of their sequence. Users are named
by HMAC-SHA-256 under the caller's key (`pseudonym`), never by id; the event id, context,
category and recommendation id stay behind.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bundlerec.profile.model import EventType, TargetType
from bundlerec.profile.schema import EventRow, UserRow

events_t = EventRow.__table__
users_t = UserRow.__table__


@dataclass(frozen=True, slots=True)
class TrainingEvent:
    user: str  # the pseudonym
    type: EventType
    target_type: TargetType
    target_id: str
    occurred_at_us: int
    value: float | None


def pseudonym(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


async def read_page(
    conn: AsyncConnection,
    *,
    since_us: int,
    until_us: int,
    after_id: int,
    limit: int,
    key: bytes,
    sensitive: Callable[[str], bool],
) -> tuple[list[TrainingEvent], int | None]:
    """Up to `limit` stored rows after row `after_id` in [since_us, until_us), less the sensitive
    ones a user did not consent to; and the last row id read when there may be more (the next page
    starts after it), None after the last page."""
    rows = (
        await conn.execute(
            select(
                events_t.c.id,
                events_t.c.user_id,
                events_t.c.event_type,
                events_t.c.target_type,
                events_t.c.target_id,
                events_t.c.occurred_at_us,
                events_t.c.value,
                events_t.c.category,
                users_t.c.sensitive_categories,
            )
            .join(users_t, users_t.c.user_id == events_t.c.user_id)
            .where(
                events_t.c.id > after_id,
                events_t.c.occurred_at_us >= since_us,
                events_t.c.occurred_at_us < until_us,
            )
            .order_by(events_t.c.id)
            .limit(limit)
        )
    ).all()
    out = [
        TrainingEvent(
            pseudonym(key, r.user_id),
            EventType(r.event_type),
            TargetType(r.target_type),
            r.target_id,
            r.occurred_at_us,
            r.value,
        )
        for r in rows
        if r.sensitive_categories or not sensitive(r.category)
    ]
    return out, (rows[-1].id if len(rows) == limit else None)
