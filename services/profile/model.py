"""The profile domain: events, consent, profiles. Plain data; no grpc, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from bundlerec.events import EVENT_WEIGHTS, EventType, TargetType

__all__ = ["EVENT_WEIGHTS", "EventType", "TargetType"]  # part of the profile domain


@dataclass(frozen=True, slots=True)
class EncodedProfile:
    """A profile as the API's Profile message, with at least `sequence_length` recent events when the
    user has them: the reply keeps the newest `sequence_length`."""

    encoded: bytes
    sequence_length: int


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    type: EventType
    target_type: TargetType
    target_id: str
    occurred_at_us: int  # microseconds since the Unix epoch, UTC
    value: float | None = None
    category: str = ""
    context: dict[str, str] = field(default_factory=dict)
    recommendation_id: str = ""


@dataclass(frozen=True, slots=True)
class Consent:
    personalization: bool
    sensitive_categories: bool
    updated_at_us: int | None = None  # None: never set by the user, service defaults apply


@dataclass(frozen=True, slots=True)
class CategoryAffinity:
    category: str
    score: float


@dataclass(frozen=True, slots=True)
class Profile:
    user_id: str
    known: bool
    consent: Consent
    recent_events: list[Event]  # oldest first
    counts: dict[EventType, int]
    affinities: list[CategoryAffinity]  # highest first
    total_events: int
    first_event_at_us: int | None
    last_event_at_us: int | None
    purchased_item_ids: list[str] = field(default_factory=list)  # most recent purchase first


@dataclass(frozen=True, slots=True)
class RecordResult:
    recorded: int
    duplicates: int
    anonymized: int


@dataclass(frozen=True, slots=True)
class ExportPage:
    user_id: str
    consent: Consent
    events: list[Event]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class PopularTarget:
    target_type: TargetType
    target_id: str
    score: float
