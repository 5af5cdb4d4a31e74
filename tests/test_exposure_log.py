"""The exposure log on a real profile server (SQLite and PostgreSQL): pages recorded once, outcomes
attributed by the rules of exposures.py whichever arrives first, requesters linked only when they
may be, per-bundle counts for exploration, and bad input named."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from bundlerec.profile.exposures import pseudonym
from bundlerec.v1 import common_pb2, exposures_pb2, exposures_pb2_grpc, profile_pb2
from tests.harness.factories import event, exposure_page
from tests.harness.servers import ProfileServer, field_of

CLICK, CART, BUY, VIEW = (
    common_pb2.EVENT_TYPE_CLICK,
    common_pb2.EVENT_TYPE_ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE,
    common_pb2.EVENT_TYPE_VIEW,
)
BUNDLE = common_pb2.TARGET_TYPE_BUNDLE


def attributed(kind: str) -> float:
    labels = {"variant": "a", "placement": "home", "type": kind}
    return REGISTRY.get_sample_value("bundlerec_profile_attributed_outcomes_total", labels) or 0.0


def revenue() -> float:
    labels = {"variant": "a", "placement": "home"}
    return REGISTRY.get_sample_value("bundlerec_profile_attributed_revenue_total", labels) or 0.0


def stub(profile: ProfileServer) -> exposures_pb2_grpc.ExposureServiceStub:
    return exposures_pb2_grpc.ExposureServiceStub(profile.channel)


async def pages_of(profile: ProfileServer, recs: set[str], **request: object) -> dict[str, exposures_pb2.ExposedPage]:
    found: dict[str, exposures_pb2.ExposedPage] = {}
    token = ""
    while True:
        reply = await stub(profile).ListExposedPages(
            exposures_pb2.ListExposedPagesRequest(page_token=token, page_size=50, **request)  # type: ignore[arg-type]
        )
        found.update((p.recommendation_id, p) for p in reply.pages if p.recommendation_id in recs)
        token = reply.next_page_token
        if not token:
            return found


async def test_outcomes_are_attributed_to_the_bundle_shown_within_the_window(profile: ProfileServer) -> None:
    user = f"shopper-{uuid.uuid4().hex[:8]}"
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, personalization=True))
    now = time.time()
    shown = exposure_page(user, at=now - 60)
    late = exposure_page(user, at=now - 3 * 86_400)  # the window (1 day) is over for anything sent now
    rec, old = shown.recommendation_id, late.recommendation_id
    reply = await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[shown, late]))
    assert (reply.recorded, reply.duplicates, reply.linked) == (2, 0, 2)
    before = attributed("purchase"), revenue()

    await profile.stub.RecordEvents(
        profile_pb2.RecordEventsRequest(
            events=[
                event(user, "i-4", kind=CLICK, recommendation_id=rec),  # an item of the built bundle, position 1
                event(user, "b-1", kind=BUY, target_type=BUNDLE, recommendation_id=rec),  # the bundle: its total
                event(user, "i-2", kind=BUY, recommendation_id=rec),  # an item of b-1: its own price
                event(user, "i-9", kind=BUY, recommendation_id=rec),  # not on the page
                event(user, "i-1", kind=VIEW, recommendation_id=rec),  # a view is no outcome
                event(user, "i-1", kind=CLICK, recommendation_id=old),  # after the window
            ]
        )
    )

    assert (attributed("purchase") - before[0], revenue() - before[1]) == (2, 20.0)  # per variant, in Prometheus
    found = await pages_of(profile, {rec, old})
    got = sorted((o.type, o.position, o.revenue) for o in found[rec].outcomes)
    assert got == [(CLICK, 1, 0.0), (BUY, 0, 5.0), (BUY, 0, 15.0)]
    assert not found[old].outcomes
    assert found[rec].requester == pseudonym(b"bundlerec", user) and found[rec].variant == "a"
    wider = await pages_of(profile, {old}, attribution_window_seconds=7 * 86_400)
    assert [(o.type, o.position) for o in wider[old].outcomes] == [(CLICK, 0)]


async def test_an_event_that_overtakes_its_page_is_attributed_and_a_page_is_kept_once(profile: ProfileServer) -> None:
    user = f"fast-{uuid.uuid4().hex[:8]}"
    shown = exposure_page(user, anonymous=True, bundles=[(f"b-{user}", ["i-1"], [7.0])])
    rec = shown.recommendation_id
    await profile.stub.RecordEvents(
        profile_pb2.RecordEventsRequest(events=[event(user, "i-1", kind=CART, recommendation_id=rec)])
    )
    first = await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[shown]))
    again = await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[shown]))

    assert (first.recorded, first.linked, again.recorded, again.duplicates) == (1, 1, 0, 1)
    found = await pages_of(profile, {rec})
    assert [(o.type, o.position) for o in found[rec].outcomes] == [(CART, 0)]
    counts = await bundle_counts(profile, f"b-{user}")
    assert (counts.shown, counts.engaged, counts.purchased) == (1, 1, 0)


async def bundle_counts(profile: ProfileServer, bundle_id: str, segment: str = "") -> exposures_pb2.BundleOutcome:
    token = ""
    while True:
        reply = await stub(profile).ListBundleOutcomes(
            exposures_pb2.ListBundleOutcomesRequest(page_token=token, page_size=100)
        )
        for b in reply.bundles:
            if b.bundle_id == bundle_id and b.segment == segment:
                return b
        token = reply.next_page_token
        if not token:
            return exposures_pb2.BundleOutcome(bundle_id=bundle_id)


async def test_a_bundle_counts_once_per_page_however_many_events_it_draws(profile: ProfileServer) -> None:
    user = f"counts-{uuid.uuid4().hex[:8]}"
    bundle = f"b-{user}"
    pages = [exposure_page(user, anonymous=True, bundles=[(bundle, ["i-1", "i-2"], [1.0, 2.0])]) for _ in range(3)]
    pages[0].segment = pages[2].segment = "Kitchen > Coffee"
    await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=pages))
    first, second = pages[0].recommendation_id, pages[1].recommendation_id
    for sent in [
        [
            event(user, "i-1", kind=CLICK, recommendation_id=first),
            event(user, "i-2", kind=CLICK, recommendation_id=first),
        ],
        [event(user, bundle, kind=BUY, target_type=BUNDLE, recommendation_id=first)],
        [event(user, "i-2", kind=CART, recommendation_id=second)],
    ]:
        await profile.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=sent))

    counts = await bundle_counts(profile, bundle)
    assert (counts.shown, counts.engaged, counts.purchased) == (3, 2, 1)
    coffee = await bundle_counts(profile, bundle, "Kitchen > Coffee")  # the pages about coffee: the first
    assert (coffee.shown, coffee.engaged, coffee.purchased) == (2, 1, 1)


async def test_a_user_without_consent_is_kept_unlinked(profile: ProfileServer) -> None:
    user = f"private-{uuid.uuid4().hex[:8]}"
    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, personalization=False))
    shown = exposure_page(user)
    reply = await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[shown]))
    await profile.stub.RecordEvents(
        profile_pb2.RecordEventsRequest(
            events=[event(user, "i-1", kind=CLICK, recommendation_id=shown.recommendation_id)]
        )
    )

    assert (reply.recorded, reply.linked) == (1, 0)
    found = (await pages_of(profile, {shown.recommendation_id}))[shown.recommendation_id]
    assert found.requester == "" and [o.type for o in found.outcomes] == [CLICK]  # counted, not linked


async def test_withdrawing_consent_and_erasure_remove_the_users_pages(profile: ProfileServer) -> None:
    withdrawn, erased = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("withdrawn", "erased"))
    for user in (withdrawn, erased):
        await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=user, personalization=True))
    shown = {user: exposure_page(user) for user in (withdrawn, erased)}
    await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=list(shown.values())))
    recs = {p.recommendation_id for p in shown.values()}
    assert len(await pages_of(profile, recs)) == 2

    await profile.stub.SetConsent(profile_pb2.SetConsentRequest(user_id=withdrawn, personalization=False))
    deleted = await profile.stub.DeleteUser(profile_pb2.DeleteUserRequest(user_id=erased))

    assert deleted.existed
    assert await pages_of(profile, recs) == {}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda e: setattr(e, "recommendation_id", ""), "exposures[0].recommendation_id"),
        (lambda e: setattr(e, "placement", "sidebar"), "exposures[0].placement"),
        (lambda e: setattr(e, "variant_share", 1.5), "exposures[0].variant_share"),
        (lambda e: e.ClearField("served_at"), "exposures[0].served_at"),
        (lambda e: e.served_at.FromSeconds(int(time.time()) + 86_400), "exposures[0].served_at"),
        (lambda e: e.bundles[1].item_prices.append(1.0), "exposures[0].bundles[1].item_prices"),
        (lambda e: e.bundles[0].item_prices.__setitem__(0, float("nan")), "exposures[0].bundles[0].item_prices[0]"),
        (lambda e: setattr(e.bundles[0], "kind", 0), "exposures[0].bundles[0].kind"),
        (lambda e: e.bundles[0].ClearField("item_ids"), "exposures[0].bundles[0].item_ids"),
    ],
)
async def test_a_bad_page_is_refused_naming_its_field(profile: ProfileServer, change, field: str) -> None:  # type: ignore[no-untyped-def]
    bad = exposure_page("someone")
    change(bad)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[bad]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(refused.value) == field


async def test_listing_refuses_a_foreign_token_and_an_empty_range(profile: ProfileServer) -> None:
    for request, field in [
        (exposures_pb2.ListExposedPagesRequest(page_token="bm9wZTox"), "page_token"),
        (exposures_pb2.ListExposedPagesRequest(since={"seconds": 100}, until={"seconds": 50}), "until"),
        (exposures_pb2.ListExposedPagesRequest(attribution_window_seconds=-1), "attribution_window_seconds"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub(profile).ListExposedPages(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(refused.value) == field
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest())
    assert field_of(refused.value) == "exposures"


async def test_a_listing_of_large_pages_stays_under_the_message_limit(profile: ProfileServer) -> None:
    tag = uuid.uuid4().hex[:8]
    items = [f"{tag}-{'x' * 200}-{n}" for n in range(40)]
    big = [(f"b-{tag}-{n}", items, [1.0] * len(items)) for n in range(40)]  # about 0.35 MB a page
    sent = [exposure_page(f"big-{tag}", anonymous=True, bundles=big) for _ in range(15)]
    for page in sent:
        await stub(profile).RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=[page]))
    replies = 0
    found: set[str] = set()
    token = ""
    while True:
        reply = await stub(profile).ListExposedPages(exposures_pb2.ListExposedPagesRequest(page_token=token))
        replies += 1
        assert reply.ByteSize() < 4_000_000
        found.update(p.recommendation_id for p in reply.pages)
        token = reply.next_page_token
        if not token:
            break
    assert {p.recommendation_id for p in sent} <= found and replies > 1
