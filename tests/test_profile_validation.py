"""Hostile input: every rejected request gets INVALID_ARGUMENT naming the field, and nothing
of a rejected batch is written."""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bundlerec.v1 import common_pb2, profile_pb2
from tests.harness.databases import rows_mentioning
from tests.harness.factories import event
from tests.harness.servers import ProfileServer, running_profile

OVERFLOWING_TOKEN = base64.urlsafe_b64encode(b"export:99999999999999999999").decode()


def field_violation(error: grpc.aio.AioRpcError) -> str:
    """The field named in the google.rpc.BadRequest detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


def _mutations() -> list[tuple[str, object, str]]:
    """(case name, how to spoil the second event of a batch, the field the error must name)."""

    def set_(name: str, value: object):  # type: ignore[no-untyped-def]
        return lambda pb: setattr(pb, name, value)

    return [
        ("missing event_id", set_("event_id", ""), "events[1].event_id"),
        ("blank user_id", set_("user_id", "   "), "events[1].user_id"),
        ("huge user_id", set_("user_id", "u" * 257), "events[1].user_id"),
        ("padded user_id", set_("user_id", " u1"), "events[1].user_id"),
        ("NUL in user_id", set_("user_id", "u\x001"), "events[1].user_id"),
        # an id carries no control character or line separator anywhere (they forge log lines)
        *[
            (f"U+{ord(char):04X} in {name}", set_(name, f"a{char}b"), f"events[1].{name}")
            for char in "\t\n\r\x7f\x85\u2028"
            for name in ("event_id", "user_id")
        ],
        ("line separator in target.id", lambda pb: setattr(pb.target, "id", "a\u2029b"), "events[1].target.id"),
        ("unknown type", set_("type", 99), "events[1].type"),
        ("unspecified type", set_("type", 0), "events[1].type"),
        ("no target", lambda pb: pb.ClearField("target"), "events[1].target"),
        ("unspecified target type", lambda pb: setattr(pb.target, "type", 0), "events[1].target.type"),
        ("missing target id", lambda pb: setattr(pb.target, "id", ""), "events[1].target.id"),
        ("far future", lambda pb: pb.timestamp.FromSeconds(int(time.time()) + 86400), "events[1].timestamp"),
        ("before 1970", lambda pb: setattr(pb.timestamp, "seconds", -5), "events[1].timestamp"),
        ("past year 9999", lambda pb: setattr(pb.timestamp, "seconds", 10**12), "events[1].timestamp"),
        ("NaN value", set_("value", float("nan")), "events[1].value"),
        ("infinite value", set_("value", float("inf")), "events[1].value"),
        ("rating without value", set_("type", common_pb2.EVENT_TYPE_RATING), "events[1].value"),
        ("huge category", set_("category", "c" * 513), "events[1].category"),
        ("control char in category", set_("category", "a\x07b"), "events[1].category"),
        (
            "too many context entries",
            lambda pb: pb.context.update({str(i): "v" for i in range(33)}),
            "events[1].context",
        ),
        ("huge context value", lambda pb: pb.context.update({"k": "v" * 1025}), "events[1].context['k']"),
        ("empty context key", lambda pb: pb.context.update({"": "v"}), "events[1].context['']"),
        ("huge recommendation_id", set_("recommendation_id", "r" * 300), "events[1].recommendation_id"),
    ]


@pytest.mark.parametrize(("case", "spoil", "field"), _mutations(), ids=[m[0] for m in _mutations()])
async def test_bad_event_rejects_whole_batch(
    profile: ProfileServer, database_url: str, user_id: str, case: str, spoil, field: str
) -> None:  # type: ignore[no-untyped-def]
    good, bad = event(user_id, f"{user_id}-item-1"), event(user_id, f"{user_id}-item-2")
    spoil(bad)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[good, bad]))

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(field)
    assert field_violation(error.value) == field
    assert await rows_mentioning(database_url, user_id) == {}, "nothing of a rejected batch may be written"


async def test_empty_batch_is_rejected(profile: ProfileServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest())

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(error.value) == "events"


async def test_oversized_batch_is_rejected(database_url: str, user_id: str) -> None:
    async with running_profile(database_url, max_batch_events=10) as server:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.RecordEvents(
                profile_pb2.RecordEventsRequest(events=[event(user_id, f"i{i}") for i in range(11)])
            )

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10" in error.value.details()


async def test_message_over_the_size_limit_is_refused(database_url: str, user_id: str) -> None:
    async with running_profile(database_url, max_message_bytes=64 * 1024) as server:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.RecordEvents(
                profile_pb2.RecordEventsRequest(events=[event(user_id, "i", category="c" * 500) for _ in range(200)])
            )

    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_invalid_utf8_names_the_field(profile: ProfileServer, user_id: str) -> None:
    request = profile_pb2.RecordEventsRequest(
        events=[event(user_id, "item-1"), event(user_id, "item-2", context={"page": "PLACEHOLDER"})]
    )
    raw = request.SerializeToString().replace(b"PLACEHOLDER", b"PLACE\xffOLDER")
    call = profile.channel.unary_unary("/bundlerec.v1.ProfileService/RecordEvents")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(raw)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "events[1].context[0].value: is not valid UTF-8"
    got = await profile.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user_id))
    assert got.profile.total_events == 0


async def test_garbage_bytes_are_invalid_argument(profile: ProfileServer) -> None:
    call = profile.channel.unary_unary("/bundlerec.v1.ProfileService/GetProfile")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(b"\xff\xff\xff\xff")

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "request: is not a valid protobuf message"


@pytest.mark.parametrize(
    ("rpc", "request_", "field"),
    [
        ("GetProfile", profile_pb2.GetProfileRequest(user_id=""), "user_id"),
        ("GetProfile", profile_pb2.GetProfileRequest(user_id="u", sequence_length=-1), "sequence_length"),
        ("GetProfile", profile_pb2.GetProfileRequest(user_id="u", sequence_length=1001), "sequence_length"),
        ("SetConsent", profile_pb2.SetConsentRequest(user_id="u"), "personalization"),
        ("SetConsent", profile_pb2.SetConsentRequest(user_id="", personalization=True), "user_id"),
        ("DeleteUser", profile_pb2.DeleteUserRequest(user_id=""), "user_id"),
        ("ExportUser", profile_pb2.ExportUserRequest(user_id=""), "user_id"),
        ("ExportUser", profile_pb2.ExportUserRequest(user_id="u", page_size=5001), "page_size"),
        ("ExportUser", profile_pb2.ExportUserRequest(user_id="u", page_token="not-a-token"), "page_token"),
        ("ExportUser", profile_pb2.ExportUserRequest(user_id="u", page_token="cG9wdWxhcjox"), "page_token"),
        ("ExportUser", profile_pb2.ExportUserRequest(user_id="u", page_token=OVERFLOWING_TOKEN), "page_token"),
        ("ListPopularTargets", profile_pb2.ListPopularTargetsRequest(), "target_type"),
        ("ListPopularTargets", profile_pb2.ListPopularTargetsRequest(target_type=1, window_days=400), "window_days"),
        ("ListPopularTargets", profile_pb2.ListPopularTargetsRequest(target_type=1, page_size=-3), "page_size"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_requests_name_the_field(profile: ProfileServer, rpc: str, request_, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(profile.stub, rpc)(request_)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violation(error.value) == field


async def test_export_of_unknown_user_is_not_found(profile: ProfileServer, user_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile.stub.ExportUser(profile_pb2.ExportUserRequest(user_id=user_id))

    assert error.value.code() == grpc.StatusCode.NOT_FOUND
