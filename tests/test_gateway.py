"""The gateway against the three real services (in-process servers on port 0, SQLite stores, the
real sentence encoder, a real ONNX model trained on the demo shop)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bundlerec.datasets import read_dataset
from bundlerec.gateway.server import build
from bundlerec.gateway.settings import GatewaySettings
from bundlerec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.harness.databases import rows_mentioning
from tests.harness.servers import eventually, field_of
from tests.harness.shops import Running, Suite, buyer, running_suite

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")

ITEM = common_pb2.TARGET_TYPE_ITEM


@pytest.fixture(scope="module")
async def shop(suite: Suite, encoder_dir: str) -> AsyncIterator[Running]:
    async with running_suite(suite, encoder_dir) as running:
        yield running


async def recommend(stub: gateway_pb2_grpc.RecommendationServiceStub, **fields: object):  # type: ignore[no-untyped-def]
    return await stub.Recommend(gateway_pb2.RecommendRequest(**fields))  # type: ignore[arg-type]


def event(user: str, item: str, kind: int = common_pb2.EVENT_TYPE_VIEW, category: str = "") -> common_pb2.Event:
    return common_pb2.Event(
        event_id=uuid.uuid4().hex,
        user_id=user,
        type=kind,
        target=common_pb2.TargetRef(type=ITEM, id=item),
        category=category,
    )


async def test_a_known_user_gets_a_personalized_page_that_respects_the_default_rules(
    shop: Running, suite: Suite
) -> None:
    user = buyer(suite)
    response = await recommend(shop.stub, user_id=user, page_size=8)
    assert response.personalized and not response.degraded
    assert response.model_version and response.recommendation_id and response.experiment_variant == "default"
    assert 0 < len(response.bundles) <= 8
    seen: set[str] = set()
    for bundle in response.bundles:
        ids = [i.item_id for i in bundle.items]
        assert not seen & set(ids), "an item repeated across bundles"
        seen.update(ids)
        assert not set(ids) & suite.purchases[user], "an item the user already bought"
        assert all(i.availability.in_stock for i in bundle.items)
        assert 1 <= len(ids) <= 5 and bundle.explanation
        assert bundle.total_price == pytest.approx(sum(suite.items[i][2] for i in ids))


async def test_a_product_page_leads_with_a_bundle_of_its_item(shop: Running, suite: Suite) -> None:
    anchor = next(i for i, (category, *_) in suite.items.items() if category.startswith("Electronics > Phones"))
    context = gateway_pb2.RecommendContext(placement=gateway_pb2.PLACEMENT_PRODUCT_PAGE, anchor_item_id=anchor)
    response = await recommend(shop.stub, session_id="visitor-1", context=context, page_size=10, debug=True)
    assert anchor in [i.item_id for i in response.bundles[0].items]
    assert "you're looking at" in response.bundles[0].explanation
    counters = {k: v for s in response.trace.stages for k, v in s.counters.items()}
    assert counters["bundles.generated"] > 0
    for bundle in (b for b in response.bundles if b.generated):
        categories = [suite.items[i.item_id][0] for i in bundle.items]
        assert bundle.items[0].item_id == anchor and 2 <= len(bundle.items) <= 3
        assert len(set(categories)) == len(categories), "two items of one category in a built bundle"
    assert not response.personalized
    stages = {s.stage for s in response.trace.stages}
    assert {gateway_pb2.STAGE_CANDIDATES, gateway_pb2.STAGE_RANKER, gateway_pb2.STAGE_RULES} <= stages
    plain = await recommend(shop.stub, session_id="visitor-1", context=context, page_size=10)
    assert not plain.HasField("trace")


async def test_a_budget_caps_every_bundle(shop: Running, suite: Suite) -> None:
    anchor = next(i for i, (_, _, price, _) in suite.items.items() if 20 < price < 60)
    context = gateway_pb2.RecommendContext(anchor_item_id=anchor, budget=120.0)
    response = await recommend(shop.stub, user_id=buyer(suite), context=context, page_size=10)
    assert response.bundles
    assert all(b.total_price <= 120.0 + 1e-6 for b in response.bundles)


async def test_overrides_exclude_brands_and_bad_requests_name_the_field(shop: Running, suite: Suite) -> None:
    user = buyer(suite)
    first = await recommend(shop.stub, user_id=user, page_size=10)
    brand = first.bundles[0].items[0].brand
    overrides = gateway_pb2.RuleOverrides(exclude_brands=[brand])
    again = await recommend(shop.stub, user_id=user, page_size=10, overrides=overrides)
    assert all(i.brand != brand for b in again.bundles for i in b.items)
    bad = [
        ({}, "user_id"),
        ({"user_id": user, "page_size": 51}, "page_size"),
        ({"user_id": user, "overrides": gateway_pb2.RuleOverrides(diversity_weight=2.0)}, "overrides.diversity_weight"),
        ({"user_id": user, "context": gateway_pb2.RecommendContext(budget=-1.0)}, "context.budget"),
        ({"user_id": "x" * 300}, "user_id"),
    ]
    for fields, name in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recommend(shop.stub, **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(caught.value) == name


async def test_tracked_events_change_the_next_page_and_bad_events_are_refused_whole(
    shop: Running, suite: Suite
) -> None:
    user = f"new-{uuid.uuid4().hex[:8]}"
    before = await recommend(shop.stub, user_id=user, page_size=5)
    camera = [i for i, (category, *_) in suite.items.items() if "Camera" in category or "Phone" in category][:3]
    events = [event(user, item, kind, suite.items[item][0]) for item in camera for kind in (1, 2, 3)]
    tracked = await shop.stub.Track(gateway_pb2.TrackRequest(events=events))
    assert tracked.events_recorded == len(events)
    after = await recommend(shop.stub, user_id=user, page_size=5)
    assert [b.bundle_id or tuple(i.item_id for i in b.items) for b in after.bundles] != [
        b.bundle_id or tuple(i.item_id for i in b.items) for b in before.bundles
    ]
    titles = [suite.items[i][3] for i in camera]
    assert any(t in b.explanation for b in after.bundles for t in titles)  # evidence from the new history
    broken = [event(user, camera[0]), common_pb2.Event(event_id="e1", user_id=user, type=1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shop.stub.Track(gateway_pb2.TrackRequest(events=broken))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_of(caught.value) == "events[1].target"
    again = await shop.stub.Track(gateway_pb2.TrackRequest(events=events))  # a retry is not counted twice
    assert again.events_duplicate == len(events) and again.events_recorded == 0


async def test_without_consent_nothing_personal_is_used_and_erasure_leaves_nothing(shop: Running, suite: Suite) -> None:
    user = f"private-{uuid.uuid4().hex[:8]}"
    item = next(iter(suite.items))
    await shop.stub.Track(gateway_pb2.TrackRequest(events=[event(user, item, 4, suite.items[item][0])]))
    assert (await recommend(shop.stub, user_id=user)).personalized
    await shop.stub.SetUserConsent(gateway_pb2.SetUserConsentRequest(user_id=user, personalization=False))
    page = await recommend(shop.stub, user_id=user, page_size=10)
    assert not page.personalized and page.bundles
    assert {b.explanation for b in page.bundles} == {"popular right now"}  # nothing of theirs

    other = f"erased-{uuid.uuid4().hex[:8]}"
    await shop.stub.Track(gateway_pb2.TrackRequest(events=[event(other, item, 4, suite.items[item][0])]))
    shown = (await recommend(shop.stub, user_id=other)).bundles[0]
    impression = gateway_pb2.Impression(
        impression_id=uuid.uuid4().hex,
        user_id=other,
        recommendation_id="r1",
        bundle_id=shown.bundle_id,
        item_ids=[i.item_id for i in shown.items],
    )
    await shop.stub.Track(gateway_pb2.TrackRequest(impressions=[impression]))
    assert (await shop.stub.ForgetUser(gateway_pb2.ForgetUserRequest(user_id=other))).existed
    assert await rows_mentioning(suite.profile_url, other) == {}
    assert not await shop.gateway.impressions.holds(other)
    fresh = await recommend(shop.stub, user_id=other, page_size=10)
    assert all("bought" not in b.explanation for b in fresh.bundles)  # treated as new: no history


async def test_a_bundle_shown_many_times_without_interaction_rotates_down(suite: Suite, encoder_dir: str) -> None:
    async with running_suite(suite, encoder_dir, rotate_after_impressions=2) as running:
        user = buyer(suite)
        first = await recommend(running.stub, user_id=user, page_size=5)
        top = first.bundles[0]
        for _ in range(2):
            shown = gateway_pb2.Impression(
                impression_id=uuid.uuid4().hex,
                user_id=user,
                recommendation_id=first.recommendation_id,
                bundle_id=top.bundle_id,
                item_ids=[i.item_id for i in top.items],
            )
            await running.stub.Track(gateway_pb2.TrackRequest(impressions=[shown]))
        later = await recommend(running.stub, user_id=user, page_size=5)
        keys = [(b.bundle_id, tuple(i.item_id for i in b.items)) for b in later.bundles]
        assert (top.bundle_id, tuple(i.item_id for i in top.items)) not in keys[:1]


async def test_each_failing_stage_degrades_the_page_instead_of_failing_it(suite: Suite, encoder_dir: str) -> None:
    user = buyer(suite)
    async with running_suite(suite, encoder_dir, popular_refresh_seconds=0.2, breaker_failures=2) as running:
        healthy = await recommend(running.stub, user_id=user, page_size=5)
        assert not healthy.degraded and healthy.personalized

        await running.ranker.running.stop()
        page = await recommend(running.stub, user_id=user, page_size=5)
        assert [(d.stage, d.fallback) for d in page.degraded] == [(gateway_pb2.STAGE_RANKER, "candidate_order")]
        assert page.degraded[0].fallback_code == gateway_pb2.FALLBACK_CANDIDATE_ORDER
        assert page.degraded[0].reason_code == gateway_pb2.DEGRADATION_REASON_UNAVAILABLE
        assert page.bundles and not page.model_version

        await running.candidate.running.stop()
        page = await recommend(running.stub, user_id=user, page_size=5)
        fallbacks = {(d.stage, d.fallback) for d in page.degraded}
        assert (gateway_pb2.STAGE_CANDIDATES, "cached_popular") in fallbacks
        assert page.bundles, "the popular bundles kept by the gateway stand in"

        await running.profile.running.stop()
        for _ in range(3):  # the third call finds the profile circuit open
            page = await recommend(running.stub, user_id=user, page_size=5)
        reasons = {d.stage: (d.reason, d.reason_code, d.fallback_code) for d in page.degraded}
        assert reasons[gateway_pb2.STAGE_PROFILE] == (
            "circuit_open",
            gateway_pb2.DEGRADATION_REASON_CIRCUIT_OPEN,
            gateway_pb2.FALLBACK_ANONYMOUS,
        )
        assert not page.personalized and page.bundles


async def test_a_corrupt_rules_file_stops_the_start(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("max_per_brand = 'two'\n")
    with pytest.raises(SystemExit, match="max_per_brand"):
        await build(GatewaySettings(port=0, metrics_port=0, rules_file=str(rules)))


async def test_rules_file_blocklist_applies_and_a_bad_edit_keeps_the_old_rules(
    suite: Suite, encoder_dir: str, tmp_path: Path
) -> None:
    user = buyer(suite)
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    async with running_suite(suite, encoder_dir, rules_file=str(rules), rules_poll_seconds=0.05) as running:
        first = await recommend(running.stub, user_id=user, page_size=5)
        blocked = first.bundles[0].items[0].item_id
        # each edit replaces the file whole, as an editor or a ConfigMap does: a poll never reads it
        # half-written (write_text truncates first, and an empty file is valid rules)
        replace_file(rules, f'blocklist_items = ["{blocked}"]\n')
        await eventually(lambda: _blocked(running, user, blocked))
        replace_file(rules, "blocklist_items = 42\n")  # a bad edit: the old rules stay
        source = running.gateway.servicer.recommender.rules

        async def rejected() -> bool:
            return source.last_error is not None

        await eventually(rejected)
        page = await recommend(running.stub, user_id=user, page_size=5)
        assert all(i.item_id != blocked for b in page.bundles for i in b.items)


async def test_promotions_reach_the_page_even_when_retrieval_misses_them(
    suite: Suite, encoder_dir: str, tmp_path: Path
) -> None:
    user = buyer(suite)
    dataset = read_dataset(suite.root / "shop")
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    # retrieval returns one item and one bundle, and nothing is built: the promoted ones are not among them
    settings = {"rules_file": str(rules), "rules_poll_seconds": 0.05, "candidate_limit": 1, "built_bundles": 0}
    async with running_suite(suite, encoder_dir, **settings) as running:
        plain = await recommend(running.stub, user_id=user, page_size=4)
        assert len(plain.bundles) <= 1
        on_page = {i.item_id for b in plain.bundles for i in b.items}
        bundle = next(b for b in sorted(dataset.bundles) if b not in {p.bundle_id for p in plain.bundles})
        members = set(dataset.bundles[bundle].item_ids)
        bought = suite.purchases.get(user, set())
        item = next(i for i in sorted(dataset.items) if i not in on_page | members | bought)
        rules.write_text(
            f"""max_promoted_share = 1.0
[[promotions]]
name = "kit"
bundle_id = "{bundle}"
kind = "pin"
position = 0

[[promotions]]
name = "new-item"
item_id = "{item}"
kind = "pin"
position = 1
"""
        )

        async def pinned() -> bool:
            page = await recommend(running.stub, user_id=user, page_size=4)
            return bool(page.bundles) and page.bundles[0].bundle_id == bundle

        await eventually(pinned)
        page = await recommend(running.stub, user_id=user, page_size=4, debug=True)
        assert page.bundles[0].explanation == "featured"
        assert [i.item_id for i in page.bundles[1].items] == [item] and not page.bundles[1].bundle_id
        assert {a.rule for a in page.trace.rule_actions if a.action == "pinned"} >= {"kit", "new-item"}
        pins = [a for a in page.trace.rule_actions if a.action == "pinned"]
        assert all(a.kind == gateway_pb2.RULE_ACTION_KIND_PINNED for a in pins)


def replace_file(path: Path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    staged.replace(path)


async def _blocked(running: Running, user: str, item: str) -> bool:
    page = await recommend(running.stub, user_id=user, page_size=5)
    return all(i.item_id != item for b in page.bundles for i in b.items)


async def test_search_finds_by_text_reorders_for_the_user_and_names_bad_fields(shop: Running, suite: Suite) -> None:
    found = await shop.stub.Search(gateway_pb2.SearchRequest(query="smartphone", page_size=5))
    assert len(found.results) == 5 and not found.degraded
    assert "Phones" in found.results[0].item.category
    personal = await shop.stub.Search(gateway_pb2.SearchRequest(user_id=buyer(suite), query="smartphone", page_size=5))
    assert len(personal.results) == 5 and not personal.degraded
    # re-ordered by the blend: the same query, another order for a consenting user
    assert [r.item.item_id for r in personal.results] != [r.item.item_id for r in found.results]
    assert all("Phones" in r.item.category or "phone" in r.item.title.lower() for r in personal.results[:3])
    for request, name in (
        (gateway_pb2.SearchRequest(query=""), "query"),
        (gateway_pb2.SearchRequest(query="x", page_size=101), "page_size"),
        (gateway_pb2.SearchRequest(query="x" * 513), "query"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.stub.Search(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_of(caught.value) == name


async def test_a_deadline_too_short_for_any_stage_still_serves_the_popular_page(suite: Suite, encoder_dir: str) -> None:
    async with running_suite(suite, encoder_dir, deadline_ms=1) as running:

        async def served() -> bool:
            return bool((await recommend(running.stub, user_id=buyer(suite), page_size=5)).bundles)

        await eventually(served)  # once the gateway's popular bundles are in
        page = await recommend(running.stub, user_id=buyer(suite), page_size=5)
        assert {(d.stage, d.reason) for d in page.degraded} == {
            (gateway_pb2.STAGE_PROFILE, "deadline_exceeded"),
            (gateway_pb2.STAGE_CANDIDATES, "deadline_exceeded"),
            (gateway_pb2.STAGE_RANKER, "deadline_exceeded"),
        }
        assert not page.personalized and not page.model_version


async def test_sensitive_categories_are_never_evidence_without_consent(suite: Suite, encoder_dir: str) -> None:
    sensitive = {"sensitive_categories": ["Pets"]}
    async with running_suite(suite, encoder_dir, sensitive, **sensitive) as running:
        user = f"pet-owner-{uuid.uuid4().hex[:8]}"
        phones = [i for i, v in suite.items.items() if v[0].startswith("Electronics > Phones")][:2]
        pets = [i for i, v in suite.items.items() if v[0].startswith("Pets")][:3]
        assert phones and pets
        events = [event(user, i, 2, suite.items[i][0]) for i in phones]  # older, ordinary interest
        events += [event(user, i, kind, suite.items[i][0]) for i in pets for kind in (1, 3)]  # newest: pets
        await running.stub.Track(gateway_pb2.TrackRequest(events=events))
        page = await recommend(running.stub, user_id=user, page_size=10)
        assert page.personalized and page.bundles
        pet_titles = [suite.items[i][3] for i in pets]
        for bundle in page.bundles:
            assert not any(t in bundle.explanation for t in pet_titles), bundle.explanation
            assert "Dog" not in bundle.explanation and "Cat" not in bundle.explanation
        assert any(suite.items[i][3] in b.explanation for b in page.bundles for i in phones)  # not vacuous


async def test_with_two_tower_retrieval_a_shopper_s_next_page_searches_their_user_vector(
    suite: Suite, encoder_dir: str
) -> None:
    from prometheus_client import REGISTRY

    def two_tower_hits() -> float:
        labels = ({"kind": kind, "source": "two_tower"} for kind in ("item", "bundle"))
        return sum(REGISTRY.get_sample_value("bundlerec_candidate_source_hits_total", label) or 0.0 for label in labels)

    candidate = {"models_dir": str(suite.models)}  # the model's vectors fused: two-tower search possible
    async with running_suite(suite, encoder_dir, candidate_settings=candidate, two_tower_retrieval=True) as running:
        request = gateway_pb2.RecommendRequest(user_id=buyer(suite), page_size=5)
        before = two_tower_hits()
        await running.stub.Recommend(request)
        assert two_tower_hits() == before, "a first page has no user vector yet"
        page = await running.stub.Recommend(request)
        assert page.bundles and two_tower_hits() > before, "the next one searches with the vector the ranker gave"


async def test_a_user_vector_the_candidate_service_cannot_search_is_dropped_not_failed(
    suite: Suite, encoder_dir: str
) -> None:
    # the candidate service fuses no model here: a vector of the ranker model's size is refused
    async with running_suite(suite, encoder_dir, two_tower_retrieval=True) as running:
        request = gateway_pb2.RecommendRequest(user_id=buyer(suite), page_size=5)
        await running.stub.Recommend(request)
        assert await running.gateway.impressions.user_vector(buyer(suite)) is not None
        page = await running.stub.Recommend(request)
        assert page.bundles and not page.degraded
