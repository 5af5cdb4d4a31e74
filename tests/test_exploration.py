"""Exploration: the slots it takes, what it may explore and where it puts it (seeded, on the
Explorer itself), and on the real services: explored bundles marked, the rules still applied, the
counts read from the exposure log (shared by replicas, kept across restarts)."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from bundlerec.gateway.consent import ConsentPolicy
from bundlerec.gateway.exploration import BanditState, BundleCounts, ExplorationSettings, Explorer, page_segment
from bundlerec.gateway.exposure_client import ExposureClient
from bundlerec.gateway.model import PageItem, Requester, Scored
from bundlerec.privacy import SensitiveCategories
from bundlerec.sources import Source
from bundlerec.v1 import common_pb2, exposures_pb2, exposures_pb2_grpc, gateway_pb2
from tests.harness.factories import exposure_page
from tests.harness.shops import Running, Suite, buyer, running_suite

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")


def candidates(n: int, generated: tuple[int, ...] = ()) -> list[Scored]:
    return [
        Scored(
            "" if i in generated else f"b-{i}",
            (PageItem(f"i-{i}"),),
            float(n - i),
            frozenset({Source.VECTOR}),
            generated=i in generated,
        )
        for i in range(n)
    ]


def explorer(
    counts: dict[str, BundleCounts] | None = None,
    seed: int = 1,
    segments: dict[tuple[str, str], BundleCounts] | None = None,
    **settings: object,
) -> Explorer:
    state = BanditState()
    state.replace({**{(b, ""): c for b, c in (counts or {}).items()}, **(segments or {})})
    return Explorer(state, ExplorationSettings(**settings), seed=seed)  # type: ignore[arg-type]


def explored(page: list[Scored], size: int) -> list[tuple[int, str]]:
    return [(n, b.bundle_id) for n, b in enumerate(page[:size]) if b.explored]


def test_the_share_of_slots_holds_per_page_and_on_average() -> None:
    seasoned = {f"b-{i}": BundleCounts(1000, 50) for i in range(10)}  # the page's own: no longer explored
    every = explorer(seasoned)
    for _ in range(50):
        assert len(explored(every.explore(candidates(40), 10, 0.1), 10)) == 1
    half = explorer(seasoned)
    pages = [half.explore(candidates(40), 5, 0.1) for _ in range(2000)]
    assert 0.45 < sum(len(explored(p, 5)) for p in pages) / 2000 < 0.55
    assert explorer(seasoned).explore(candidates(8), 10, 0.5) == candidates(8)  # all on the page already


def test_only_rarely_shown_catalogue_bundles_are_explored_and_never_first() -> None:
    counts = {f"b-{i}": BundleCounts(1000, 50) for i in range(20)}
    counts.update({"b-12": BundleCounts(5, 0)})  # rarely shown; 11 and 13 are built for the request
    chosen = Counter()
    lead = explorer(counts, seed=4)
    for _ in range(300):
        page = lead.explore(candidates(20, generated=(11, 13)), 10, 0.1)
        chosen.update(b for n, b in explored(page, 10))
        assert all(n >= 1 for n, _ in explored(page, 10))
        assert sorted(b.bundle_id for b in page) == sorted(b.bundle_id for b in candidates(20, generated=(11, 13)))
        scores = [b.score for b in page[:10]]
        assert scores == sorted(scores, reverse=True)  # the page stays in score order
    assert set(chosen) == {"b-12"}
    holding = [dataclasses.replace(b, items=(PageItem("anchor"), *b.items)) for b in candidates(3)]
    anchored = explorer(counts).explore([*holding, *candidates(20)[3:]], 10, 0.3, anchor="anchor")
    assert all(n >= 3 for n, _ in explored(anchored, 10))


def test_a_bundle_that_draws_well_climbs_and_one_that_does_not_stays_low() -> None:
    counts = {f"b-{i}": BundleCounts(2000, 100) for i in range(10)}  # the page: 5 % engaged
    counts["b-30"] = BundleCounts(150, 60)  # 40 % of its pages engaged: the segment loves it
    counts["b-31"] = BundleCounts(150, 1)
    climbs, sinks = Counter(), Counter()
    lead = explorer(counts, seed=9, max_exposures=300)
    for _ in range(400):
        candidates_ = candidates(40)
        page = lead.explore([*candidates_[:10], candidates_[30]], 10, 0.1)
        climbs.update(n for n, _ in explored(page, 10))
        page = lead.explore([*candidates_[:10], candidates_[31]], 10, 0.1)
        sinks.update(n for n, _ in explored(page, 10))
    assert sum(climbs[n] for n in (1, 2)) / sum(climbs.values()) > 0.9  # the top 3 (first is the ranker's)
    assert sum(sinks[n] for n in range(7, 10)) / sum(sinks.values()) > 0.9


def test_what_a_segment_drew_decides_on_its_pages() -> None:
    counts = {f"b-{i}": BundleCounts(2000, 100) for i in range(10)}
    counts["b-30"] = BundleCounts(200, 12)  # middling over all its pages...
    coffee = {("b-30", "Kitchen > Coffee"): BundleCounts(40, 12)}  # ...loved on the coffee pages
    lead = explorer(counts, seed=5, segments=coffee)
    on_coffee, elsewhere = Counter(), Counter()
    for _ in range(300):
        page = [*candidates(40)[:10], candidates(40)[30]]
        on_coffee.update(n for n, _ in explored(lead.explore(page, 10, 0.1, segment="Kitchen > Coffee"), 10))
        elsewhere.update(n for n, _ in explored(lead.explore(page, 10, 0.1, segment="Outdoor > Hiking"), 10))
    assert sum(on_coffee[n] for n in (1, 2)) / sum(on_coffee.values()) > 0.8
    assert sum(elsewhere[n] for n in (1, 2)) / sum(elsewhere.values()) < 0.5


def test_a_rarely_shown_bundle_already_low_on_the_page_climbs_where_its_segment_engages() -> None:
    counts = {f"b-{i}": BundleCounts(2000, 100) for i in range(6)}
    counts["b-5"] = BundleCounts(60, 6)  # on the page by its score, last; shown little so far
    coffee = {("b-5", "Kitchen > Coffee"): BundleCounts(30, 12)}  # engaged on 40 % of the coffee pages
    lead = explorer(counts, seed=3, segments=coffee)
    places = Counter()
    for _ in range(300):
        page = lead.explore(candidates(20), 6, 0.5, segment="Kitchen > Coffee")
        assert sorted(b.bundle_id for b in page) == sorted(b.bundle_id for b in candidates(20))
        places[next(n for n, b in enumerate(page) if b.bundle_id == "b-5")] += 1
    assert sum(places[n] for n in (1, 2)) / 300 > 0.8  # into the top 3 (the lead stays the ranker's)
    assert places[0] == 0


def test_a_page_is_about_its_item_or_the_interest_the_shopper_lets_it_use() -> None:
    consenting = ConsentPolicy(SensitiveCategories(["Health"]), 50)

    def allowed(affinities: tuple[tuple[str, float], ...], sensitive: bool = False):  # type: ignore[no-untyped-def]
        requester = Requester("u", False, True, sensitive, (), affinities)
        return consenting.allowed(requester, answered=True)

    coffee = PageItem("i-1", category="Kitchen > Coffee > Grinders")
    assert page_segment(coffee, allowed(())) == "Kitchen > Coffee"
    assert page_segment(None, allowed((("Health > Vitamins", 0.6), ("Outdoor > Hiking > Boots", 0.4)))) == (
        "Outdoor > Hiking"  # the sensitive interest is not used without that consent
    )
    assert page_segment(None, allowed((("Health > Vitamins", 0.6),), sensitive=True)) == "Health > Vitamins"
    assert page_segment(None, consenting.unknown("visitor", anonymous=True)) == ""


def test_relevance_weighs_the_draws() -> None:
    counts = {f"b-{i}": BundleCounts(1000, 50) for i in range(10)}
    chosen = Counter()
    lead = explorer(counts, seed=2)
    for _ in range(500):
        chosen.update(b for _, b in explored(lead.explore(candidates(60), 10, 0.1), 10))
    assert chosen["b-10"] + chosen["b-11"] > 3 * (chosen["b-58"] + chosen["b-59"])


@pytest.fixture(scope="module")
async def shop(suite: Suite, encoder_dir: str) -> AsyncIterator[Running]:
    async with running_suite(suite, encoder_dir, exploration_share=0.5, exposure_flush_ms=20) as running:
        yield running


async def test_explored_bundles_are_marked_and_the_rules_still_apply(shop: Running, suite: Suite) -> None:
    user = buyer(suite)
    brands = Counter(brand for _, brand, _, _ in suite.items.values())
    banned = brands.most_common(1)[0][0]
    seen = 0
    for _ in range(10):
        page = await shop.stub.Recommend(
            gateway_pb2.RecommendRequest(
                user_id=user,
                page_size=10,
                overrides=gateway_pb2.RuleOverrides(exclude_brands=[banned], in_stock_only=True),
                debug=True,
            )
        )
        for n, bundle in enumerate(page.bundles):
            assert all(i.brand != banned and i.availability.in_stock for i in bundle.items)
            assert bundle.items[0].item_id not in suite.purchases[user]
            if bundle.kind == common_pb2.BUNDLE_KIND_EXPLORED:
                seen += 1
                assert n > 0 and bundle.bundle_id and bundle.explanation.startswith("new")
                assert any(a.rule == "exploration" and a.target.id == bundle.bundle_id for a in page.trace.rule_actions)
    assert seen >= 10  # half of each page's ten positions are explored; the rules remove some


async def test_the_counts_come_from_the_exposure_log_whichever_replica_reads_them(shop: Running) -> None:
    bundle = f"b-{uuid.uuid4().hex[:8]}"
    shown = [exposure_page(f"s-{n}", anonymous=True, bundles=[(bundle, ["i-1"], [1.0])]) for n in range(3)]
    stub = exposures_pb2_grpc.ExposureServiceStub(shop.profile.channel)
    await stub.RecordExposures(exposures_pb2.RecordExposuresRequest(exposures=shown))
    await shop.profile.stub.RecordEvents(
        _click("s-0", "i-1", shown[0].recommendation_id),
    )
    for replica in (ExposureClient(shop.profile.channel), ExposureClient(shop.profile.channel)):  # e.g. after a restart
        state = BanditState(replica)
        assert await state.refresh()
        assert state.counts(bundle) == BundleCounts(3, 1)
        state.shown([bundle])  # a page this replica serves counts at once
        assert state.counts(bundle) == BundleCounts(4, 1)


def _click(user: str, item: str, recommendation_id: str):  # type: ignore[no-untyped-def]
    from bundlerec.v1 import profile_pb2
    from tests.harness.factories import event

    return profile_pb2.RecordEventsRequest(
        events=[event(user, item, kind=common_pb2.EVENT_TYPE_CLICK, recommendation_id=recommendation_id)]
    )
