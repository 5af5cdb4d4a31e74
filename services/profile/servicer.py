"""gRPC face of the profile service: translates proto ↔ domain, nothing else."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.profile import metrics
from bundlerec.profile.model import Event, EventType
from bundlerec.profile.service import ProfileService, now_us
from bundlerec.profile.wire import (
    TARGET_TYPES,
    TARGET_TYPES_PB,
    behaviour_entry_pb,
    consent_pb,
    event_pb,
    training_event_pb,
)
from bundlerec.v1 import common_pb2, profile_pb2, profile_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES

MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the protobuf Timestamp limit


def timestamp_us(field: str, ts: Timestamp) -> int:
    if ts.seconds < 0:
        raise InvalidArgument(field, "must not be before 1970-01-01")
    if ts.seconds > MAX_TIMESTAMP_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "is not a valid timestamp")
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def event_from_pb(field: str, pb: common_pb2.Event, received_us: int) -> Event:
    validation.identifier(f"{field}.event_id", pb.event_id)
    validation.identifier(f"{field}.user_id", pb.user_id)
    kind = EVENT_TYPES.get(pb.type)
    if kind is None:
        raise InvalidArgument(f"{field}.type", f"must be one of {', '.join(t.value for t in EventType)}")
    if not pb.HasField("target"):
        raise InvalidArgument(f"{field}.target", "is required")
    target_type = TARGET_TYPES.get(pb.target.type)
    if target_type is None:
        raise InvalidArgument(f"{field}.target.type", "must be item or bundle")
    validation.identifier(f"{field}.target.id", pb.target.id)
    value = None
    if pb.HasField("value"):
        value = validation.finite(f"{field}.value", pb.value)
    elif kind is EventType.RATING:
        raise InvalidArgument(f"{field}.value", "is required for a rating")
    return Event(
        event_id=pb.event_id,
        user_id=pb.user_id,
        type=kind,
        target_type=target_type,
        target_id=pb.target.id,
        occurred_at_us=timestamp_us(f"{field}.timestamp", pb.timestamp) if pb.HasField("timestamp") else received_us,
        value=value,
        category=validation.text(f"{field}.category", pb.category, max_length=512),
        context=validation.string_map(f"{field}.context", pb.context, max_entries=32, max_key=64, max_value=1024),
        recommendation_id=validation.identifier(f"{field}.recommendation_id", pb.recommendation_id, required=False),
    )


class ProfileServicer(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, service: ProfileService) -> None:
        self.service = service

    async def RecordEvents(
        self, request: profile_pb2.RecordEventsRequest, context: object
    ) -> profile_pb2.RecordEventsResponse:
        received = now_us()
        try:
            events = [event_from_pb(f"events[{i}]", pb, received) for i, pb in enumerate(request.events)]
            result = await self.service.record_events(events)
        except Exception as error:
            outcome = "rejected" if isinstance(error, InvalidArgument) else "failed"
            metrics.EVENTS.labels(outcome).inc(len(request.events))
            raise
        metrics.EVENTS.labels("recorded").inc(result.recorded)
        metrics.EVENTS.labels("anonymized").inc(result.anonymized)
        metrics.EVENTS.labels("duplicate").inc(result.duplicates)
        return profile_pb2.RecordEventsResponse(
            recorded=result.recorded, duplicates=result.duplicates, anonymized=result.anonymized
        )

    async def GetProfile(
        self, request: profile_pb2.GetProfileRequest, context: object
    ) -> profile_pb2.GetProfileResponse:
        # the user's precomputed Profile message, cut to the sequence asked for: parsed, not rebuilt
        found = await self.service.get_profile(request.user_id, request.sequence_length)
        profile = profile_pb2.Profile.FromString(found.encoded)
        if len(profile.recent_events) > found.sequence_length:
            del profile.recent_events[: len(profile.recent_events) - found.sequence_length]
        return profile_pb2.GetProfileResponse(profile=profile)

    async def SetConsent(
        self, request: profile_pb2.SetConsentRequest, context: object
    ) -> profile_pb2.SetConsentResponse:
        consent, erased = await self.service.set_consent(
            request.user_id,
            request.personalization if request.HasField("personalization") else None,
            request.sensitive_categories if request.HasField("sensitive_categories") else None,
        )
        return profile_pb2.SetConsentResponse(consent=consent_pb(consent), events_erased=erased)

    async def DeleteUser(
        self, request: profile_pb2.DeleteUserRequest, context: object
    ) -> profile_pb2.DeleteUserResponse:
        existed, deleted = await self.service.delete_user(request.user_id)
        return profile_pb2.DeleteUserResponse(existed=existed, events_deleted=deleted)

    async def ExportUser(
        self, request: profile_pb2.ExportUserRequest, context: object
    ) -> profile_pb2.ExportUserResponse:
        page = await self.service.export_user(request.user_id, request.page_size, request.page_token)
        return profile_pb2.ExportUserResponse(
            user_id=page.user_id,
            consent=consent_pb(page.consent),
            events=[event_pb(e) for e in page.events],
            next_page_token=page.next_page_token,
        )

    async def ListPopularTargets(
        self, request: profile_pb2.ListPopularTargetsRequest, context: object
    ) -> profile_pb2.ListPopularTargetsResponse:
        targets, token = await self.service.popular_targets(
            TARGET_TYPES.get(request.target_type), request.window_days, request.page_size, request.page_token
        )
        return profile_pb2.ListPopularTargetsResponse(
            targets=[
                profile_pb2.PopularTarget(
                    target=common_pb2.TargetRef(type=TARGET_TYPES_PB[t.target_type], id=t.target_id), score=t.score
                )
                for t in targets
            ],
            next_page_token=token,
        )

    async def ExportTrainingEvents(
        self, request: profile_pb2.ExportTrainingEventsRequest, context: object
    ) -> profile_pb2.ExportTrainingEventsResponse:
        since = timestamp_us("since", request.since) if request.HasField("since") else None
        until = timestamp_us("until", request.until) if request.HasField("until") else None
        events, token = await self.service.export_training_events(
            since, until, request.pseudonym_key, request.page_size, request.page_token
        )
        return profile_pb2.ExportTrainingEventsResponse(
            events=[training_event_pb(e) for e in events], next_page_token=token
        )

    async def ReadBehaviour(
        self, request: profile_pb2.ReadBehaviourRequest, context: object
    ) -> profile_pb2.ReadBehaviourResponse:
        entries, cursor = await self.service.read_behaviour(request.cursor, request.max_entries)
        return profile_pb2.ReadBehaviourResponse(entries=[behaviour_entry_pb(e) for e in entries], next_cursor=cursor)
