"""The profile service's RPCs against real servers on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import grpc
import pytest

from bundlerec.v1 import common_pb2, profile_pb2
from tests.harness.factories import event
from tests.harness.servers import ProfileServer, running_profile

VIEW, CLICK, CART, PURCHASE, RATING = (
    common_pb2.EVENT_TYPE_VIEW,
    common_pb2.EVENT_TYPE_CLICK,
    common_pb2.EVENT_TYPE_ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE,
    common_pb2.EVENT_TYPE_RATING,
)


async def record(server: ProfileServer, *events: common_pb2.Event) -> profile_pb2.RecordEventsResponse:
    return await server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=events))


async def get_profile(server: ProfileServer, user_id: str, length: int = 0) -> profile_pb2.Profile:
    reply = await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user_id, sequence_length=length))
    return reply.profile


async def test_recorded_events_form_the_profile_sequence_oldest_first(profile: ProfileServer, user_id: str) -> None:
    base = time.time() - 1000
    sent = [event(user_id, f"item-{i}", at=base + i, category="Outdoor > Hiking") for i in range(5)]
    reply = await record(profile, *reversed(sent))

    assert (reply.recorded, reply.duplicates, reply.anonymized) == (5, 0, 0)
    got = await get_profile(profile, user_id)
    assert got.known
    assert [e.target.id for e in got.recent_events] == [f"item-{i}" for i in range(5)]
    assert got.total_events == 5
    assert got.first_event_at.seconds == int(base)
    assert got.last_event_at.seconds == int(base + 4)


async def test_sequence_length_returns_the_most_recent_events(profile: ProfileServer, user_id: str) -> None:
    base = time.time() - 1000
    await record(profile, *[event(user_id, f"item-{i}", at=base + i) for i in range(10)])

    got = await get_profile(profile, user_id, length=3)

    assert [e.target.id for e in got.recent_events] == ["item-7", "item-8", "item-9"]
    assert got.total_events == 10


async def test_counts_by_type_and_category_affinity(profile: ProfileServer, user_id: str) -> None:
    now = time.time()
    await record(
        profile,
        event(user_id, "boots", kind=VIEW, category="Outdoor > Hiking", at=now),
        event(user_id, "boots", kind=PURCHASE, category="Outdoor > Hiking", at=now),
        event(user_id, "kettle", kind=VIEW, category="Kitchen > Coffee", at=now),
    )

    got = await get_profile(profile, user_id)

    assert {(c.type, c.count) for c in got.counts} == {(VIEW, 2), (PURCHASE, 1)}
    assert [a.category for a in got.affinities] == ["Outdoor > Hiking", "Kitchen > Coffee"]
    # view=1, purchase=5 vs view=1, all at the same time: 6/7 and 1/7.
    assert got.affinities[0].score == pytest.approx(6 / 7, rel=1e-3)
    assert sum(a.score for a in got.affinities) == pytest.approx(1.0)


async def test_older_events_weigh_less_in_affinity(profile: ProfileServer, user_id: str) -> None:
    now = time.time()
    await record(
        profile,
        event(user_id, "old", category="Books", at=now - 90 * 86400),
        event(user_id, "new", category="Games", at=now),
    )

    got = await get_profile(profile, user_id)

    assert [a.category for a in got.affinities] == ["Games", "Books"]


async def test_retried_batch_is_not_duplicated(profile: ProfileServer, user_id: str) -> None:
    batch = [event(user_id, f"item-{i}") for i in range(4)]
    first = await record(profile, *batch)
    again = await record(profile, *batch, event(user_id, "item-new"))

    assert (first.recorded, first.duplicates) == (4, 0)
    assert (again.recorded, again.duplicates) == (1, 4)
    assert (await get_profile(profile, user_id)).total_events == 5


async def test_repeated_event_id_inside_one_batch_is_kept_once(profile: ProfileServer, user_id: str) -> None:
    one = event(user_id, "item-1", event_id=f"{user_id}-same")
    reply = await record(profile, one, one)

    assert (reply.recorded, reply.duplicates) == (1, 1)


async def test_unknown_user_gets_an_empty_profile_with_default_consent(profile: ProfileServer, user_id: str) -> None:
    got = await get_profile(profile, user_id)

    assert not got.known
    assert got.total_events == 0
    assert got.consent.personalization is True
    assert got.consent.sensitive_categories is False
    assert not got.consent.HasField("updated_at")


async def test_withdrawing_consent_erases_history_and_keeps_only_aggregates(
    profile: ProfileServer, user_id: str
) -> None:
    await record(profile, event(user_id, "item-1"), event(user_id, "item-2"))

    reply = await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user_id, personalization=False))
    later = await record(profile, event(user_id, "item-3"))
    got = await get_profile(profile, user_id)

    assert reply.events_erased == 2
    assert reply.consent.personalization is False
    assert reply.consent.HasField("updated_at")
    assert (later.recorded, later.anonymized) == (0, 1)
    assert got.known and got.total_events == 0 and not got.recent_events
    assert got.consent.personalization is False


async def test_consent_flags_change_independently(profile: ProfileServer, user_id: str) -> None:
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user_id, sensitive_categories=True))
    reply = await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user_id, personalization=True))

    assert reply.consent.personalization is True
    assert reply.consent.sensitive_categories is True


async def test_sensitive_categories_hidden_without_consent(profile: ProfileServer, user_id: str) -> None:
    now = time.time()
    await record(
        profile,
        event(user_id, "vitamins", category="Health > Supplements", at=now - 2),
        event(user_id, "boots", category="Outdoor > Hiking", at=now - 1),
    )

    hidden = await get_profile(profile, user_id)
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user_id, sensitive_categories=True))
    shown = await get_profile(profile, user_id)

    assert [e.target.id for e in hidden.recent_events] == ["boots"]
    assert [a.category for a in hidden.affinities] == ["Outdoor > Hiking"]
    assert hidden.total_events == 2  # stored, only not used
    assert [e.target.id for e in shown.recent_events] == ["vitamins", "boots"]
    assert {a.category for a in shown.affinities} == {"Outdoor > Hiking", "Health > Supplements"}


async def test_purchased_items_cover_the_whole_history_newest_purchase_first(
    profile: ProfileServer, user_id: str
) -> None:
    base = time.time() - 1000
    bought = [event(user_id, f"old-{i}", kind=common_pb2.EVENT_TYPE_PURCHASE, at=base + i) for i in range(3)]
    views = [event(user_id, f"seen-{i}", at=base + 10 + i) for i in range(60)]  # beyond the sequence
    again = event(user_id, "old-0", kind=common_pb2.EVENT_TYPE_PURCHASE, at=base + 100)
    bundle = event(user_id, "kit", kind=common_pb2.EVENT_TYPE_PURCHASE, target_type=common_pb2.TARGET_TYPE_BUNDLE)
    pill = event(user_id, "pill", kind=common_pb2.EVENT_TYPE_PURCHASE, category="Health > Supplements", at=base + 50)
    await record(profile, *bought, *views, again, bundle, pill)
    got = await get_profile(profile, user_id, length=10)
    assert list(got.purchased_item_ids) == ["old-0", "old-2", "old-1"]  # items only; sensitive only with consent
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user_id, sensitive_categories=True))
    assert "pill" in (await get_profile(profile, user_id)).purchased_item_ids


async def test_sensitive_filter_still_fills_the_requested_sequence(profile: ProfileServer, user_id: str) -> None:
    base = time.time() - 100
    normal = [event(user_id, f"book-{i}", category="Books", at=base + i) for i in range(3)]
    sensitive = [event(user_id, f"pill-{i}", category="Health", at=base + 10 + i) for i in range(5)]
    await record(profile, *normal, *sensitive)

    got = await get_profile(profile, user_id, length=3)

    assert [e.target.id for e in got.recent_events] == ["book-0", "book-1", "book-2"]


async def test_users_without_consent_by_default_leave_no_row(database_url: str, user_id: str) -> None:
    async with running_profile(database_url, default_personalization=False) as server:
        reply = await record(server, event(user_id, "item-1"))
        got = await get_profile(server, user_id)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.ExportUser(profile_pb2.ExportUserRequest(user_id=user_id))

    assert (reply.recorded, reply.anonymized) == (0, 1)
    assert not got.known
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_anonymous_events_count_in_popularity_once(database_url: str) -> None:
    item = f"popular-{time.time_ns()}"
    async with running_profile(database_url, default_personalization=False) as server:
        batch = [event("anon-a", item, kind=PURCHASE), event("anon-b", item, kind=PURCHASE)]
        await record(server, *batch)
        await record(server, *batch)  # a retry must not count twice
        reply = await server.stub.ListPopularTargets(
            profile_pb2.ListPopularTargetsRequest(target_type=common_pb2.TARGET_TYPE_ITEM, page_size=1000)
        )

    scores = {t.target.id: t.score for t in reply.targets}
    assert scores[item] == pytest.approx(2 * 5.0)  # two purchases, weight 5, today


async def test_popularity_ranks_and_paginates(profile: ProfileServer, user_id: str) -> None:
    tag = time.time_ns()
    await record(
        profile,
        *[event(user_id, f"hot-{tag}", kind=PURCHASE) for _ in range(3)],
        event(user_id, f"warm-{tag}", kind=CART),
        event(user_id, f"bundle-{tag}", kind=PURCHASE, target_type=common_pb2.TARGET_TYPE_BUNDLE),
    )

    first = await profile.stub.ListPopularTargets(
        profile_pb2.ListPopularTargetsRequest(target_type=common_pb2.TARGET_TYPE_ITEM, page_size=1)
    )
    ids = [t.target.id for t in first.targets]
    token = first.next_page_token
    while token:
        page = await profile.stub.ListPopularTargets(
            profile_pb2.ListPopularTargetsRequest(
                target_type=common_pb2.TARGET_TYPE_ITEM, page_size=50, page_token=token
            )
        )
        ids += [t.target.id for t in page.targets]
        token = page.next_page_token

    assert ids.index(f"hot-{tag}") < ids.index(f"warm-{tag}")
    assert f"bundle-{tag}" not in ids
    assert len(ids) == len(set(ids))


async def test_export_returns_everything_page_by_page(profile: ProfileServer, user_id: str) -> None:
    sent = [event(user_id, f"item-{i}", category="Health" if i % 2 else "Books") for i in range(7)]
    await record(profile, *sent)

    exported, token, pages = [], "", 0
    while True:
        page = await profile.stub.ExportUser(
            profile_pb2.ExportUserRequest(user_id=user_id, page_size=3, page_token=token)
        )
        exported += list(page.events)
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert sorted(e.event_id for e in exported) == sorted(e.event_id for e in sent)
    assert page.consent.personalization is True


async def test_delete_user_erases_and_is_idempotent(profile: ProfileServer, user_id: str) -> None:
    await record(profile, event(user_id, "item-1"), event(user_id, "item-2"))

    first = await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=user_id))
    second = await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=user_id))
    got = await get_profile(profile, user_id)

    assert (first.existed, first.events_deleted) == (True, 2)
    assert (second.existed, second.events_deleted) == (False, 0)
    assert not got.known and got.total_events == 0


async def test_missing_timestamp_means_now(profile: ProfileServer, user_id: str) -> None:
    pb = event(user_id, "item-1")
    pb.ClearField("timestamp")
    before = time.time()
    await record(profile, pb)

    got = await get_profile(profile, user_id)

    assert before - 1 <= got.recent_events[0].timestamp.seconds <= time.time() + 1


async def test_event_fields_round_trip(profile: ProfileServer, user_id: str) -> None:
    sent = event(
        user_id,
        "item-1",
        kind=RATING,
        value=4.5,
        category="Books > Poetry",
        context={"placement": "home", "device": "ios"},
        recommendation_id="rec-1",
        at=int(time.time()) - 5,
    )
    await record(profile, sent)

    got = (await get_profile(profile, user_id)).recent_events[0]

    assert got == sent
