"""Each user's precomputed profile: what GetProfile answers, built from the user's rows.

A feature store's online row: GetProfile is one primary-key read, never an aggregation over the
user's events. A snapshot is the API's Profile message itself (its newest `sequence_length`
events, counts, affinities, purchases), so a read needs no conversion per event either. Consent
and the settings decide what a profile may show (sensitive categories, lengths); a snapshot built
under other settings (`key`) is not used. When it is used, and rebuilt, is snapshots.py's part.
No grpc here, only the API's messages (wire.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bundlerec.profile.model import EVENT_WEIGHTS, CategoryAffinity, Consent, Event, EventType, Profile
from bundlerec.profile.wire import profile_pb

FORMAT = 1  # raise when what a snapshot holds changes: every stored one is then rebuilt on read
US_PER_DAY = 86_400 * 1_000_000
MAX_PURCHASED = 1000


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    sequence_length: int
    affinity_window: int
    affinity_half_life_days: float
    sensitive: Callable[[str], bool]  # a category the user must consent to before it is used
    sensitive_names: tuple[str, ...] = ()  # what `sensitive` matches, for the key

    @property
    def key(self) -> str:
        """What a snapshot's content depends on besides the user's rows."""
        fields = [FORMAT, self.sequence_length, self.affinity_window, self.affinity_half_life_days]
        return hashlib.sha256(json.dumps([*fields, sorted(self.sensitive_names)]).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SnapshotRows:
    """A user's rows as a snapshot is built from them (snapshots.py reads them in one transaction,
    already cut to the settings' lengths)."""

    consent: Consent
    recent: list[Event]  # the newest events the consent lets show, newest first
    counts: dict[EventType, tuple[int, int, int]]  # type → (events, first, last occurred_at_us)
    window: list[tuple[int, str, str]]  # (occurred_at_us, category, event type) of the newest categorized events
    bought: list[tuple[int, str, str]]  # (last purchase us, item id, category) per item and category, newest first


def build(user_id: str, rows: SnapshotRows, settings: SnapshotSettings, now_us: int) -> bytes:
    """The encoded Profile message of a user with these rows."""
    keep = keeper(rows.consent, settings)
    profile = Profile(
        user_id=user_id,
        known=True,
        consent=rows.consent,
        recent_events=rows.recent[::-1],
        counts={kind: n for kind, (n, _, _) in rows.counts.items()},
        affinities=[CategoryAffinity(c, score) for c, score in affinities(rows.window, rows.consent, settings, now_us)],
        total_events=sum(n for n, _, _ in rows.counts.values()),
        first_event_at_us=min((first for _, first, _ in rows.counts.values()), default=None),
        last_event_at_us=max((last for _, _, last in rows.counts.values()), default=None),
        purchased_item_ids=list(dict.fromkeys(item for _, item, category in rows.bought if keep(category))),
    )
    return profile_pb(profile).SerializeToString()


def affinities(
    window: Sequence[Sequence],  # type: ignore[type-arg]
    consent: Consent,
    settings: SnapshotSettings,
    now_us: int,
) -> list[tuple[str, float]]:
    """Category → share of the decayed, weighted events of the window, highest first. The decay to
    the day of reading is a common factor of every share: the shares stay right on later days."""
    today = now_us // US_PER_DAY
    counted: dict[tuple[str, str, int], int] = defaultdict(int)
    for at, category, kind in window:
        counted[(category, kind, at // US_PER_DAY)] += 1
    totals: dict[str, float] = defaultdict(float)
    for (category, kind, day), n in counted.items():
        decay = 0.5 ** (max(0, today - day) / settings.affinity_half_life_days)
        totals[category] += EVENT_WEIGHTS[EventType(kind)] * n * decay
    grand_total = sum(totals.values())
    if grand_total <= 0:
        return []
    kept = [
        (category, score / grand_total)
        for category, score in totals.items()
        if consent.sensitive_categories or not settings.sensitive(category)
    ]
    return sorted(kept, key=lambda a: (-a[1], a[0]))


def keeper(consent: Consent, settings: SnapshotSettings) -> Callable[[str], bool]:
    return (lambda _: True) if consent.sensitive_categories else (lambda c: not settings.sensitive(c))
