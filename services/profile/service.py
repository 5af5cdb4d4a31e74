"""The profile domain service: consent policy, sensitive categories, affinity, popularity.

What is kept (see also schema.py):
- A user with personalization consent: every accepted event, as personal history, until the
  user is erased or withdraws consent (which erases the history at once).
- A user without it: no personal history and no user row unless they set consent explicitly;
  their events only increment anonymous per-day popularity counts (target, day, event type),
  and a SHA-256 of each event id is kept so a retried batch is not counted twice.
- Sensitive categories: events are stored, but without the user's sensitive-category consent
  they are left out of the profile's sequence and affinities (not used as evidence, not
  inferred). Exports always return everything stored.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from collections.abc import Sequence

from bundlerec import validation
from bundlerec.errors import InvalidArgument, NotFound
from bundlerec.privacy import SensitiveCategories
from bundlerec.profile.model import (
    EVENT_WEIGHTS,
    CategoryAffinity,
    Consent,
    Event,
    EventType,
    ExportPage,
    PopularTarget,
    Profile,
    RecordResult,
    TargetType,
)
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.store import US_PER_DAY, ProfileStore

US_PER_SECOND = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def _encode_token(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def _decode_token(kind: str, token: str) -> int:
    if not token:
        return 0
    try:
        prefix, _, number = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if prefix == kind and number.isdigit() and int(number) < 2**63:
            return int(number)
    except (binascii.Error, UnicodeError, ValueError):
        pass
    raise InvalidArgument("page_token", "is not a token this service issued")


class ProfileService:
    def __init__(self, store: ProfileStore, settings: ProfileSettings) -> None:
        self.store = store
        self.settings = settings
        self.sensitive = SensitiveCategories(settings.sensitive_categories)
        self.default_consent = Consent(settings.default_personalization, settings.default_sensitive_categories)

    async def record_events(self, events: Sequence[Event]) -> RecordResult:
        if not events:
            raise InvalidArgument("events", "must contain at least one event")
        if len(events) > self.settings.max_batch_events:
            raise InvalidArgument(
                "events", f"has {len(events)} events; at most {self.settings.max_batch_events} per batch"
            )
        now = now_us()
        latest = now + self.settings.max_future_skew_seconds * US_PER_SECOND
        for i, e in enumerate(events):
            if e.occurred_at_us > latest:
                raise InvalidArgument(
                    f"events[{i}].timestamp",
                    f"is more than {self.settings.max_future_skew_seconds} s in the future",
                )
        return await self.store.record(events, default=self.default_consent, now_us=now)

    async def get_profile(self, user_id: str, sequence_length: int) -> Profile:
        validation.identifier("user_id", user_id)
        length = validation.page_size(
            "sequence_length",
            sequence_length,
            default=self.settings.default_sequence_length,
            maximum=self.settings.max_sequence_length,
        )
        rows = await self.store.profile_rows(
            user_id,
            sequence_length=length,
            affinity_window=self.settings.affinity_window,
            is_sensitive=self.sensitive.__contains__,
        )
        if rows is None:
            return Profile(user_id, False, self.default_consent, [], {}, [], 0, None, None)
        return Profile(
            user_id=user_id,
            known=True,
            consent=rows.consent,
            recent_events=list(reversed(rows.recent_events)),
            counts=rows.counts,
            affinities=self._affinities(rows.affinity, rows.consent),
            total_events=rows.total_events,
            first_event_at_us=rows.first_event_at_us,
            last_event_at_us=rows.last_event_at_us,
            purchased_item_ids=rows.purchased_item_ids,
        )

    def _affinities(self, counted: list[tuple[str, EventType, int, int]], consent: Consent) -> list[CategoryAffinity]:
        today = now_us() // US_PER_DAY
        totals: dict[str, float] = defaultdict(float)
        for category, kind, day, n in counted:
            decay = 0.5 ** (max(0, today - day) / self.settings.affinity_half_life_days)
            totals[category] += EVENT_WEIGHTS[kind] * n * decay
        grand_total = sum(totals.values())
        if grand_total <= 0:
            return []
        kept = [
            CategoryAffinity(category, score / grand_total)
            for category, score in totals.items()
            if consent.sensitive_categories or category not in self.sensitive
        ]
        return sorted(kept, key=lambda a: (-a.score, a.category))

    async def set_consent(
        self, user_id: str, personalization: bool | None, sensitive: bool | None
    ) -> tuple[Consent, int]:
        validation.identifier("user_id", user_id)
        if personalization is None and sensitive is None:
            raise InvalidArgument("personalization", "set personalization, sensitive_categories or both")
        return await self.store.set_consent(
            user_id, personalization=personalization, sensitive=sensitive, default=self.default_consent, now_us=now_us()
        )

    async def delete_user(self, user_id: str) -> tuple[bool, int]:
        validation.identifier("user_id", user_id)
        return await self.store.delete_user(user_id, now_us=now_us())

    async def export_user(self, user_id: str, page_size: int, page_token: str) -> ExportPage:
        validation.identifier("user_id", user_id)
        size = validation.page_size("page_size", page_size, default=500, maximum=5000)
        after_id = _decode_token("export", page_token)
        consent, rows = await self.store.export_events(user_id, after_id=after_id, limit=size + 1)
        if consent is None and not rows and not page_token:
            raise NotFound("nothing is stored about this user")  # no id: messages reach logs and traces
        more = len(rows) > size
        rows = rows[:size]
        token = _encode_token("export", rows[-1][0]) if more else ""
        return ExportPage(user_id, consent or self.default_consent, [e for _, e in rows], token)

    async def popular_targets(
        self, target_type: TargetType | None, window_days: int, page_size: int, page_token: str
    ) -> tuple[list[PopularTarget], str]:
        if target_type is None:
            raise InvalidArgument("target_type", "is required (item or bundle)")
        days = validation.page_size("window_days", window_days, default=30, maximum=365)
        size = validation.page_size("page_size", page_size, default=100, maximum=1000)
        offset = _decode_token("popular", page_token)
        today = now_us() // US_PER_DAY
        rows = await self.store.popularity_by_day(target_type, since_day=today - days + 1)
        scores: dict[str, float] = defaultdict(float)
        for target_id, day, weighted in rows:
            age = max(0, today - day)
            scores[target_id] += weighted * 0.5 ** (age / self.settings.popularity_half_life_days)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        page = ranked[offset : offset + size]
        token = _encode_token("popular", offset + size) if offset + size < len(ranked) else ""
        return [PopularTarget(target_type, t, s) for t, s in page], token
