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

GetProfile answers with each user's precomputed profile (snapshot.py), kept current by every write
in its own transaction, so a read is one lookup and still sees every write acknowledged before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from bundlerec import validation
from bundlerec.errors import InvalidArgument, NotFound
from bundlerec.privacy import SensitiveCategories
from bundlerec.profile.behaviour import BehaviourEntry, Position
from bundlerec.profile.model import (
    Consent,
    EncodedProfile,
    Event,
    ExportPage,
    PopularTarget,
    Profile,
    RecordResult,
    TargetType,
)
from bundlerec.profile.settings import ProfileSettings
from bundlerec.profile.snapshot import SnapshotSettings
from bundlerec.profile.store import US_PER_DAY, ProfileStore
from bundlerec.profile.training_export import TrainingEvent
from bundlerec.profile.wire import profile_pb

US_PER_SECOND = 1_000_000


def snapshot_settings(settings: ProfileSettings) -> SnapshotSettings:
    sensitive = SensitiveCategories(settings.sensitive_categories)
    return SnapshotSettings(
        sequence_length=settings.snapshot_sequence_length,
        affinity_window=settings.affinity_window,
        affinity_half_life_days=settings.affinity_half_life_days,
        sensitive=sensitive.__contains__,
        sensitive_names=tuple(settings.sensitive_categories),
    )


def now_us() -> int:
    return time.time_ns() // 1000


def _encode_token(kind: str, value: int) -> str:
    return validation.encode_page_token(kind, value)


def time_range(since_us: int | None, until_us: int | None) -> tuple[int, int]:
    """[since, until) of a listing: from the oldest row kept, until now, when unset."""
    since, until = since_us or 0, now_us() if until_us is None else until_us
    if until <= since and until_us is None:
        raise InvalidArgument("since", "is not in the past")
    if until <= since:
        raise InvalidArgument("until", "must be after since")
    return since, until


def page_position(kind: str, token: str) -> int:
    """The position a page token of `kind` holds (0 for none); INVALID_ARGUMENT for anything else."""
    position = validation.page_token("page_token", token, kind)
    if not position:
        return 0
    if position.isdigit() and int(position) < 2**63:
        return int(position)
    raise InvalidArgument("page_token", "is not a token this service issued")


class ProfileService:
    def __init__(
        self, store: ProfileStore, settings: ProfileSettings, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self.on_change = on_change  # profiles changed (the snapshot refresher's cue)
        self.settings = settings
        self.default_consent = Consent(settings.default_personalization, settings.default_sensitive_categories)
        self.snapshot = snapshot_settings(settings)

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
        result = await self.store.record(events, default=self.default_consent, now_us=now)
        if result.recorded:
            self.on_change()
        return result

    async def get_profile(self, user_id: str, sequence_length: int) -> EncodedProfile:
        validation.identifier("user_id", user_id)
        length = validation.page_size(
            "sequence_length",
            sequence_length,
            default=self.settings.default_sequence_length,
            maximum=self.settings.max_sequence_length,
        )
        if length > self.snapshot.sequence_length:  # longer than snapshots keep: built from the events
            longer = dataclasses.replace(self.snapshot, sequence_length=length)
            built = await self.store.build_snapshot(user_id, longer, keep=False)
            return EncodedProfile(built or self._unknown(user_id), length)
        stored = await self.store.profile_snapshot(user_id)
        if stored is None:
            return EncodedProfile(self._unknown(user_id), length)
        if stored.encoded is None:  # written to since it was built (or built under other settings)
            if self.settings.snapshot_refresh_seconds > 0:  # the refresher stores it; reads never wait on writers
                built = await self.store.build_snapshot(user_id, self.snapshot, keep=False)
            else:  # shielded: a caller that gives up (its deadline) does not throw the work away
                rebuild = asyncio.ensure_future(self.store.build_snapshot(user_id, self.snapshot, keep=True))
                built = await asyncio.shield(rebuild)
            return EncodedProfile(built or self._unknown(user_id), length)
        return EncodedProfile(stored.encoded, length)

    def _unknown(self, user_id: str) -> bytes:
        profile = Profile(user_id, False, self.default_consent, [], {}, [], 0, None, None)
        return profile_pb(profile).SerializeToString()

    async def set_consent(
        self, user_id: str, personalization: bool | None, sensitive: bool | None
    ) -> tuple[Consent, int]:
        validation.identifier("user_id", user_id)
        if personalization is None and sensitive is None:
            raise InvalidArgument("personalization", "set personalization, sensitive_categories or both")
        changed = await self.store.set_consent(
            user_id, personalization=personalization, sensitive=sensitive, default=self.default_consent, now_us=now_us()
        )
        self.on_change()
        return changed

    async def delete_user(self, user_id: str) -> tuple[bool, int]:
        validation.identifier("user_id", user_id)
        return await self.store.delete_user(user_id, now_us=now_us())

    async def export_user(self, user_id: str, page_size: int, page_token: str) -> ExportPage:
        validation.identifier("user_id", user_id)
        size = validation.page_size("page_size", page_size, default=500, maximum=5000)
        after_id = page_position("export", page_token)
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
        offset = page_position("popular", page_token)
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

    async def export_training_events(
        self, since_us: int | None, until_us: int | None, key: str, page_size: int, page_token: str
    ) -> tuple[list[TrainingEvent], str]:
        """Stored histories of [since, until) for retraining, pseudonymous (training_export.py)."""
        validation.text("pseudonym_key", key, max_length=256, required=True)
        if len(key) < 16:
            raise InvalidArgument("pseudonym_key", "must be at least 16 characters (a fresh random key per export)")
        size = validation.page_size("page_size", page_size, default=1000, maximum=10_000)
        after_id = page_position("training", page_token)
        since, until = time_range(since_us, until_us)
        events, last = await self.store.training_events(
            since_us=since,
            until_us=until,
            after_id=after_id,
            limit=size,
            key=key.encode(),
            sensitive=self.snapshot.sensitive,
        )
        return events, ("" if last is None else _encode_token("training", last))

    async def read_behaviour(self, cursor: str, max_entries: int) -> tuple[list[BehaviourEntry], str]:
        """Anonymous behaviour after `cursor` (behaviour.py), and the cursor after it."""
        limit = validation.page_size("max_entries", max_entries, default=1000, maximum=10_000)
        entries, position = await self.store.read_behaviour(Position.parse("cursor", cursor), limit)
        return entries, position.token() if entries else cursor
