"""ReadBehaviour: the anonymous behaviour log the candidate service keeps its statistics live
from. No user id leaves the profile service; a consenting user's event pairs with their previous
ones; other events pair with nothing; the cursor resumes; erasure leaves the aggregates."""

from __future__ import annotations

import uuid

import grpc
import pytest

from bundlerec.v1 import common_pb2, profile_pb2
from tests.harness.databases import rows_mentioning
from tests.harness.factories import event
from tests.harness.servers import ProfileServer, field_of, running_profile

SETTINGS = {"sensitive_categories": ["Health"]}


async def read_all(
    server: ProfileServer, cursor: str = "", page: int = 2
) -> tuple[list[profile_pb2.BehaviourEntry], str]:
    entries: list[profile_pb2.BehaviourEntry] = []
    while True:
        reply = await server.stub.ReadBehaviour(profile_pb2.ReadBehaviourRequest(cursor=cursor, max_entries=page))
        entries += reply.entries
        if not reply.entries:
            assert reply.next_cursor == cursor, "nothing new: the same cursor"
            return entries, cursor
        cursor = reply.next_cursor


async def test_behaviour_is_anonymous_pairs_consenting_histories_and_resumes(database_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    shopper, private = f"b-{tag}", f"p-{tag}"
    async with running_profile(database_url, **SETTINGS) as server:
        _, start = await read_all(server)  # what earlier tests left: read past it
        await server.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=private, personalization=False))
        await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[
            event(shopper, f"phone-{tag}", at=1_700_000_000),
            event(shopper, f"pills-{tag}", at=1_700_000_010, category="Health > Vitamins"),
            event(private, f"phone-{tag}", at=1_700_000_015),
            event(shopper, f"case-{tag}", kind=common_pb2.EVENT_TYPE_PURCHASE, at=1_700_000_020),
        ]))  # fmt: skip
        await server.stub.RecordEvents(
            profile_pb2.RecordEventsRequest(events=[event(shopper, f"charger-{tag}", at=1_700_000_030)])
        )
        entries, cursor = await read_all(server, start)

        def targets(entry: profile_pb2.BehaviourEntry) -> list[tuple[str, int]]:
            return [(p.target.id, p.distance) for p in entry.partners]

        by_target = {(e.target.id, e.occurred_at.seconds): e for e in entries}
        assert len(entries) == 5
        assert targets(by_target[f"phone-{tag}", 1_700_000_000]) == []
        assert targets(by_target[f"pills-{tag}", 1_700_000_010]) == [], "a sensitive event pairs with nothing"
        assert targets(by_target[f"case-{tag}", 1_700_000_020]) == [(f"phone-{tag}", 2)], "nor is it a partner"
        assert by_target[f"case-{tag}", 1_700_000_020].type == common_pb2.EVENT_TYPE_PURCHASE
        assert targets(by_target[f"phone-{tag}", 1_700_000_015]) == [], "no consent: popularity only"
        # the second batch pairs with what the first stored
        assert targets(by_target[f"charger-{tag}", 1_700_000_030]) == [(f"case-{tag}", 1), (f"phone-{tag}", 3)]
        text = "".join(str(e) for e in entries)
        assert shopper not in text and private not in text, "no user id in any entry"

        # resumable: the same cursor gives nothing new, a new event only that
        await server.stub.RecordEvents(
            profile_pb2.RecordEventsRequest(events=[event(shopper, f"mug-{tag}", at=1_700_000_040)])
        )
        more, _ = await read_all(server, cursor)
        assert [e.target.id for e in more] == [f"mug-{tag}"]

        # erasure: the user's rows go, the anonymous log stays (no row names the user)
        await server.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=shopper))
        assert await rows_mentioning(database_url, shopper + "") == {}
        assert len((await read_all(server, start))[0]) == 6


@pytest.mark.parametrize(
    ("cursor", "limit", "field"), [("garbage", 0, "cursor"), ("", -1, "max_entries"), ("", 10_001, "max_entries")]
)
async def test_a_bad_cursor_or_size_names_the_field(
    profile: ProfileServer, cursor: str, limit: int, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await profile.stub.ReadBehaviour(profile_pb2.ReadBehaviourRequest(cursor=cursor, max_entries=limit))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field
