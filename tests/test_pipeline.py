"""The recommendation pipeline's branches without the four services: in-memory stand-ins for the
three ports (ports.py), the real rules, page assembly, impression store, popular cache and stage
runner. What a stage stand-in does when told to fail is the injected fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from bundlerec.errors import Unavailable
from bundlerec.events import EventType
from bundlerec.gateway.experiments import Experiments
from bundlerec.gateway.impressions import MemoryImpressions, bundle_key
from bundlerec.gateway.model import (
    Context,
    Found,
    HistoryStep,
    PageItem,
    Placement,
    Requester,
    Retrieved,
    Stage,
)
from bundlerec.gateway.pipeline import PipelineSettings, Recommender, RecommendQuery
from bundlerec.gateway.popular import PopularCache
from bundlerec.gateway.ports import CandidateFilter, CandidateQuery, StageFailed
from bundlerec.gateway.rules import RulesSource
from bundlerec.gateway.search import SearchQuery, search
from bundlerec.privacy import SensitiveCategories
from bundlerec.sources import Source

CATALOGUE = {
    i.item_id: i
    for i in (
        PageItem("phone", "Smartphone", "Electronics > Phones", "Vireo", 300.0),
        PageItem("case", "Phone case", "Electronics > Cases", "Vireo", 20.0),
        PageItem("charger", "Charger", "Electronics > Chargers", "Voltix", 35.0),
        PageItem("kettle", "Kettle", "Kitchen > Kettles", "Brew", 40.0),
        PageItem("mug", "Mug", "Kitchen > Mugs", "Brew", 9.0),
        PageItem("pills", "Vitamins", "Health > Vitamins", "Vita", 12.0),
        PageItem("tester", "Test kit", "Health > Tests", "Vita", 15.0),
    )
}
# a text search's matches, best first: close enough for the ranker's order to move the first three
TEXT_MATCHES = (("mug", 0.90), ("kettle", 0.89), ("phone", 0.88), ("case", 0.5))
BUNDLES = {"b-phone": ("phone", "case"), "b-kitchen": ("kettle", "mug"), "b-health": ("pills", "tester")}


def step(item_id: str) -> HistoryStep:
    return HistoryStep(item_id, False, EventType.VIEW, 1, CATALOGUE[item_id].category)


@dataclass
class Profile:
    requester: Requester | None = None  # None: the profile stage fails
    asked: list[str] = field(default_factory=list)

    async def requester_of(self, user_id: str, seconds: float) -> Requester:
        self.asked.append(user_id)
        if self.requester is None:
            raise StageFailed("unavailable")
        return self.requester


class ProfileStage:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    async def requester(self, user_id: str, seconds: float) -> Requester:
        return await self.profile.requester_of(user_id, seconds)


@dataclass
class Candidates:
    """Every bundle, in a fixed order, and every item of the catalogue as an item candidate."""

    down: bool = False
    queries: list[CandidateQuery] = field(default_factory=list)

    async def retrieve(self, query: CandidateQuery, seconds: float) -> Retrieved:
        self.queries.append(query)
        if self.down:
            raise StageFailed("unavailable")
        vector = frozenset({Source.VECTOR})
        bundles = tuple(Found(b, True, 1.0 - n / 10, vector, items) for n, (b, items) in enumerate(BUNDLES.items()))
        items = tuple(Found(i, False, 0.5, frozenset({Source.ANCHOR}), (i,)) for i in CATALOGUE)
        return Retrieved(items, bundles)

    async def items(self, item_ids: Sequence[str], seconds: float) -> Mapping[str, PageItem]:
        return {i: CATALOGUE[i] for i in item_ids if i in CATALOGUE}

    async def bundles(self, bundle_ids: Sequence[str], seconds: float) -> Mapping[str, tuple[str, ...]]:
        return {b: BUNDLES[b] for b in bundle_ids if b in BUNDLES}

    async def search_text(
        self, text: str, limit: int, item_filter: CandidateFilter, seconds: float
    ) -> list[tuple[PageItem, float]]:
        if self.down:
            raise StageFailed("unavailable")
        return [(CATALOGUE[i], score) for i, score in TEXT_MATCHES][:limit]


@dataclass
class Ranker:
    """Scores a candidate by its position from the end (the last one best), or fails."""

    down: bool = False
    histories: list[tuple[str, ...]] = field(default_factory=list)

    async def rank(
        self,
        history: Sequence[HistoryStep],
        candidates: Sequence[tuple[str, tuple[str, ...]]],
        model_version: str,
        seconds: float,
        *,
        with_user_vector: bool = False,
    ) -> tuple[list[float], str, tuple[float, ...]]:
        self.histories.append(tuple(s.target_id for s in history))
        if self.down:
            raise StageFailed("deadline_exceeded")
        vector = (float(len(history)), 1.0) if with_user_vector else ()  # the history's own vector
        return [float(n) for n in range(len(candidates))], "v1", vector


@dataclass
class Pipeline:
    recommender: Recommender
    profile: Profile
    candidates: Candidates
    ranker: Ranker
    impressions: MemoryImpressions


async def pipeline(requester: Requester | None = None, *, primed: bool = True, two_tower: bool = True) -> Pipeline:
    profile, candidates, ranker = Profile(requester), Candidates(), Ranker()
    popular = PopularCache(candidates)
    if primed:
        assert await popular.refresh()
    impressions = MemoryImpressions(rotate_after=2)
    settings = PipelineSettings(sensitive=SensitiveCategories(["Health"]), two_tower_retrieval=two_tower)
    recommender = Recommender(
        ProfileStage(profile), candidates, ranker, RulesSource(None), popular, impressions, Experiments(), settings
    )
    return Pipeline(recommender, profile, candidates, ranker, impressions)


def shopper(personalized: bool = True, sensitive: bool = False, history: tuple[str, ...] = ("kettle",)) -> Requester:
    return Requester(
        "u1",
        anonymous=False,
        personalized=personalized,
        sensitive_allowed=sensitive,
        history=tuple(step(i) for i in history),
        purchased=frozenset({"mug"}),
    )


def query(user: str = "u1", placement: Placement = Placement.HOME, anchor: str = "", page: int = 5) -> RecommendQuery:
    return RecommendQuery(user, "" if user else "s1", Context(placement, anchor), page, debug=True)


def ids(recommendation) -> list[str]:  # type: ignore[no-untyped-def]
    return [b.bundle_id or "+".join(i.item_id for i in b.items) for b in recommendation.bundles]


async def test_a_personalized_page_uses_the_history_and_the_ranker_order() -> None:
    p = await pipeline(shopper())
    page = await p.recommender.recommend(query())
    assert page.personalized and not page.degraded and page.model_version == "v1"
    assert p.candidates.queries[-1].recent[-1].target_id == "kettle"  # the history reached retrieval
    assert p.candidates.queries[-1].anchor_item_id == "kettle"  # and the anchor is its newest item
    assert p.ranker.histories == [("kettle",)]
    assert all("mug" not in {i.item_id for i in b.items} for b in page.bundles)  # bought: not shown again
    assert page.bundles[0].score >= page.bundles[-1].score


async def test_without_consent_nothing_personal_reaches_a_stage_and_impressions_are_erased() -> None:
    p = await pipeline(shopper(personalized=False))
    await p.impressions.record("u1", "i1", bundle_key("b-phone", ()), ["phone", "case"])
    page = await p.recommender.recommend(query())
    assert not page.personalized and not page.degraded
    assert p.candidates.queries[-1].recent == () and p.candidates.queries[-1].anchor_item_id == ""
    assert p.ranker.histories == [()]
    assert not await p.impressions.holds("u1")
    assert all("you viewed" not in b.explanation and "interest" not in b.explanation for b in page.bundles)


async def test_a_sensitive_item_is_no_anchor_and_no_reason_without_that_consent() -> None:
    p = await pipeline(shopper(history=("kettle", "pills")))
    await p.recommender.recommend(query())
    assert p.candidates.queries[-1].anchor_item_id == "kettle"  # the newest usable item, not the vitamins
    allowed = await pipeline(shopper(sensitive=True, history=("kettle", "pills")))
    await allowed.recommender.recommend(query())
    assert allowed.candidates.queries[-1].anchor_item_id == "pills"


async def test_a_failed_profile_serves_an_anonymous_page_and_says_so() -> None:
    p = await pipeline(None)
    page = await p.recommender.recommend(query())
    assert not page.personalized and page.bundles
    assert [(d.stage, d.fallback) for d in page.degraded] == [(Stage.PROFILE, "anonymous")]
    assert p.ranker.histories == [()]


async def test_a_failed_candidate_stage_serves_the_popular_bundles_and_an_unprimed_one_an_empty_page() -> None:
    p = await pipeline(shopper())
    p.candidates.down = True
    page = await p.recommender.recommend(query())
    assert page.bundles and [(d.stage, d.fallback) for d in page.degraded] == [(Stage.CANDIDATES, "cached_popular")]
    empty = await pipeline(shopper(), primed=False)
    empty.candidates.down = True
    page = await empty.recommender.recommend(query())
    assert page.bundles == [] and page.degraded


async def test_a_failed_ranker_keeps_the_retrieval_order() -> None:
    p = await pipeline(shopper())
    p.ranker.down = True
    page = await p.recommender.recommend(query(page=3))
    assert [(d.stage, d.reason, d.fallback) for d in page.degraded] == [
        (Stage.RANKER, "deadline_exceeded", "candidate_order")
    ]
    assert page.model_version == "" and ids(page)[0] == "b-phone"  # the best retrieval score (b-kitchen holds a
    ranked = await (await pipeline(shopper())).recommender.recommend(query(page=3))  # bought mug): reversed by rank
    assert ids(ranked)[0] != "b-phone"


async def test_a_product_page_leads_with_bundles_of_its_item() -> None:
    p = await pipeline(None)  # anonymous: only the page's own item counts
    page = await p.recommender.recommend(query(user="", placement=Placement.PRODUCT_PAGE, anchor="phone"))
    assert "phone" in {i.item_id for i in page.bundles[0].items}
    assert page.bundles[0].explanation.startswith("goes with the Smartphone")


async def test_bundles_shown_often_without_interaction_rotate_down() -> None:
    p = await pipeline(shopper(history=()))
    first = await p.recommender.recommend(query(page=1))
    top = first.bundles[0]
    for n in range(2):
        await p.impressions.record("u1", f"i{n}", bundle_key(top.bundle_id, [i.item_id for i in top.items]), [])
    again = await p.recommender.recommend(query(page=1))
    assert ids(again) != ids(first)
    assert any(a.rule == "rotation" for a in again.trace.actions)


async def test_no_time_left_skips_every_stage_as_late() -> None:
    p = await pipeline(shopper())
    page = await p.recommender.recommend(RecommendQuery("u1", "", Context(Placement.HOME), 5, caller_seconds=1e-9))
    assert {d.reason for d in page.degraded} == {"deadline_exceeded"}
    assert p.profile.asked == [] and len(p.candidates.queries) == 1  # the popular cache's refresh only


# -- Search: the same ports and consent, the text match deciding what is found ------------------


async def test_search_re_orders_the_text_matches_for_a_consenting_user() -> None:
    p = await pipeline(shopper())
    found = await search(p.recommender, SearchQuery("u1", "kitchen", 3))
    assert [item.item_id for item, _ in found.results] == ["phone", "kettle", "mug"] and not found.degraded
    assert p.ranker.histories == [("kettle",)]


async def test_search_without_consent_keeps_the_text_order_and_asks_no_ranker() -> None:
    p = await pipeline(shopper(personalized=False))
    found = await search(p.recommender, SearchQuery("u1", "kitchen", 3))
    assert [item.item_id for item, _ in found.results] == ["mug", "kettle", "phone"] and not found.degraded
    assert p.ranker.histories == []


async def test_search_with_the_ranker_down_keeps_the_text_order_and_says_so() -> None:
    p = await pipeline(shopper())
    p.ranker.down = True
    found = await search(p.recommender, SearchQuery("u1", "kitchen", 3))
    assert [item.item_id for item, _ in found.results] == ["mug", "kettle", "phone"]
    assert [(d.stage, d.fallback) for d in found.degraded] == [(Stage.RANKER, "text_order")]


async def test_search_without_the_candidate_service_is_unavailable() -> None:
    p = await pipeline(shopper())
    p.candidates.down = True
    with pytest.raises(Unavailable):
        await search(p.recommender, SearchQuery("u1", "kitchen", 3))


# -- the two-tower source: the user vector of a shopper's previous page -----------------------


async def test_a_consenting_shopper_s_next_page_retrieves_with_the_vector_of_the_last() -> None:
    p = await pipeline(shopper(history=("kettle", "mug")))
    await p.recommender.recommend(query())
    assert p.candidates.queries[-1].user_vector == ()  # the first page has none yet
    await p.recommender.recommend(query())
    assert p.candidates.queries[-1].user_vector == (2.0, 1.0)  # the ranker's vector of that history
    assert await p.impressions.forget("u1")  # erased with the impressions
    await p.recommender.recommend(query())
    assert p.candidates.queries[-1].user_vector == ()


async def test_no_vector_is_kept_or_sent_without_consent_or_for_an_anonymous_visitor() -> None:
    for requester, user in ((shopper(personalized=False), "u1"), (None, "")):
        p = await pipeline(requester)
        for _ in range(2):
            await p.recommender.recommend(query(user=user))
        assert all(q.user_vector == () for q in p.candidates.queries)
        assert await p.impressions.user_vector(user or "s1") is None


async def test_without_the_setting_no_vector_is_asked_kept_or_sent() -> None:
    p = await pipeline(shopper(), two_tower=False)
    for _ in range(2):
        await p.recommender.recommend(query())
    assert all(q.user_vector == () for q in p.candidates.queries)
    assert await p.impressions.user_vector("u1") is None
