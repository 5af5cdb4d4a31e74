"""The profile domain's records as the API's messages (protobuf only: no grpc here). Used by the
servicer for replies, and by the service to encode each user's precomputed profile (service.py)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from bundlerec.profile.behaviour import BehaviourEntry
from bundlerec.profile.model import Consent, Event, Profile, TargetType
from bundlerec.profile.training_export import TrainingEvent
from bundlerec.v1 import common_pb2, profile_pb2
from bundlerec.v1_events import EVENT_TYPES_PB

TARGET_TYPES = {common_pb2.TARGET_TYPE_ITEM: TargetType.ITEM, common_pb2.TARGET_TYPE_BUNDLE: TargetType.BUNDLE}
TARGET_TYPES_PB = {v: k for k, v in TARGET_TYPES.items()}


def timestamp_pb(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    return Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def event_pb(e: Event) -> common_pb2.Event:
    pb = common_pb2.Event(
        event_id=e.event_id,
        user_id=e.user_id,
        type=EVENT_TYPES_PB[e.type],
        target=common_pb2.TargetRef(type=TARGET_TYPES_PB[e.target_type], id=e.target_id),
        timestamp=timestamp_pb(e.occurred_at_us),
        category=e.category,
        context=e.context,
        recommendation_id=e.recommendation_id,
    )
    if e.value is not None:
        pb.value = e.value
    return pb


def consent_pb(c: Consent) -> common_pb2.Consent:
    return common_pb2.Consent(
        personalization=c.personalization,
        sensitive_categories=c.sensitive_categories,
        updated_at=timestamp_pb(c.updated_at_us),
    )


def profile_pb(p: Profile) -> profile_pb2.Profile:
    return profile_pb2.Profile(
        user_id=p.user_id,
        known=p.known,
        consent=consent_pb(p.consent),
        recent_events=[event_pb(e) for e in p.recent_events],
        counts=[
            profile_pb2.EventTypeCount(type=EVENT_TYPES_PB[k], count=n)
            for k, n in sorted(p.counts.items(), key=lambda kv: EVENT_TYPES_PB[kv[0]])
        ],
        affinities=[profile_pb2.CategoryAffinity(category=a.category, score=a.score) for a in p.affinities],
        total_events=p.total_events,
        first_event_at=timestamp_pb(p.first_event_at_us),
        last_event_at=timestamp_pb(p.last_event_at_us),
        purchased_item_ids=p.purchased_item_ids,
    )


def behaviour_entry_pb(entry: BehaviourEntry) -> profile_pb2.BehaviourEntry:
    return profile_pb2.BehaviourEntry(
        target=common_pb2.TargetRef(type=TARGET_TYPES_PB[entry.target_type], id=entry.target_id),
        type=EVENT_TYPES_PB[entry.type],
        occurred_at=timestamp_pb(entry.occurred_at_us),
        partners=[
            profile_pb2.BehaviourPartner(
                target=common_pb2.TargetRef(type=TARGET_TYPES_PB[p.target_type], id=p.target_id),
                type=EVENT_TYPES_PB[p.type],
                distance=p.distance,
            )
            for p in entry.partners
        ],
    )


def training_event_pb(e: TrainingEvent) -> profile_pb2.TrainingEvent:
    pb = profile_pb2.TrainingEvent(
        user=e.user,
        type=EVENT_TYPES_PB[e.type],
        target=common_pb2.TargetRef(type=TARGET_TYPES_PB[e.target_type], id=e.target_id),
        occurred_at=timestamp_pb(e.occurred_at_us),
    )
    if e.value is not None:
        pb.value = e.value
    return pb
