"""Explanations are claims to a shopper, so they must be true: "often bought with X" only when
retrieval found a member through its co-occurrence with X and the pair is strong enough in the
shop's behaviour; "matches your interest in C" only for an interest the shopper has. On the
explain function itself, and on the pages of every shopper of the demo shop (the real services)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bundlerec.datasets import read_dataset
from bundlerec.events import EventType
from bundlerec.gateway.consent import ConsentPolicy
from bundlerec.gateway.explain import MIN_CO_OCCURRENCE, Evidence, explain
from bundlerec.gateway.model import Context, HistoryStep, PageItem, Requester, Scored
from bundlerec.privacy import SensitiveCategories
from bundlerec.sources import Source
from bundlerec.v1 import gateway_pb2, profile_pb2
from tests.harness.shops import Suite, copied, running_suite

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")

CATALOGUE = {
    "lamp": PageItem("lamp", title="Desk Lamp", category="Home > Office > Lamps"),
    "mattress": PageItem("mattress", title="Linnea Cooling Mattress", category="Home > Bedroom > Mattresses"),
    "pills": PageItem("pills", title="Vitamin D", category="Health > Vitamins"),
    "monitor": PageItem("monitor", title="Monitor", category="Electronics > Monitors"),
}
POLICY = ConsentPolicy(SensitiveCategories(["Health"]), 50)


def allowed(history: tuple[str, ...], sensitive: bool = False):  # type: ignore[no-untyped-def]
    steps = tuple(HistoryStep(i, False, EventType.VIEW, 0, CATALOGUE[i].category) for i in history)
    return POLICY.allowed(Requester("u", False, True, sensitive, steps, ()), answered=True)


MONITOR = Scored("b-1", (CATALOGUE["monitor"],), 1.0, frozenset({Source.CO_OCCURRENCE}), False)


def reason(
    history: tuple[str, ...], pair: tuple[str, float] | None = None, sensitive: bool = False, **kw: float
) -> str:
    """The monitor bundle's reason, when retrieval found the monitor through `pair` (item, strength)."""
    found = {"monitor": pair} if pair else {}
    return explain(MONITOR, Evidence(allowed(history, sensitive), "", Context(), CATALOGUE, found), **kw)


def test_often_bought_with_names_the_item_the_co_occurrence_came_from() -> None:
    # the newest item is the mattress; the monitor was found through the lamp, viewed before it
    assert reason(("lamp", "mattress"), ("lamp", 6.0)) == "often bought with the Desk Lamp you viewed"


def test_a_co_occurrence_source_alone_names_nothing() -> None:
    # the old lie: the bundle came by co-occurrence (with something), and the newest item was named
    assert "often bought with" not in reason(("lamp", "mattress"))


def test_a_weak_pair_or_one_the_request_may_not_use_is_not_claimed() -> None:
    assert "often bought with" not in reason(("lamp",), ("lamp", MIN_CO_OCCURRENCE / 2))
    assert "often bought with" not in reason(("pills",), ("pills", 9.0))  # sensitive, no consent
    assert reason(("pills",), ("pills", 9.0), sensitive=True) == "often bought with the Vitamin D you viewed"
    assert "often bought with" not in reason((), ("lamp", 9.0))  # not in the history
    assert "often bought with" not in reason(("lamp",), min_co_occurrence=1e-9)  # no pair, no claim


CLAIM = re.compile(r"often bought with the (.+) you (viewed|looked at|added to your cart|bought|rated|liked)$")
INTEREST = re.compile(r"matches your interest in (.+)$")


async def test_every_claim_on_the_demo_shops_pages_is_true(suite: Suite, encoder_dir: str, tmp_path: Path) -> None:
    """Every shopper of the demo shop, on the home page and on the product page of their newest
    item: each "often bought with X" pair has a co-occurrence strength of at least the shipped
    minimum in the candidate service's statistics, X is in the shopper's history, and each
    "matches your interest in C" is one of the shopper's affinities."""
    shop = copied(suite, tmp_path)
    weights = co_occurrence(shop)
    titles: dict[str, set[str]] = {}
    for item_id, (_, _, _, title) in shop.items.items():
        titles.setdefault(title, set()).add(item_id)
    claims = interests = 0
    async with running_suite(shop, encoder_dir) as running:
        users = sorted({e.user_id for e in read_dataset(shop.root / "shop").events})
        assert len(users) >= 40
        for user in users:
            got = await running.profile.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user))
            history = {e.target.id for e in got.profile.recent_events}
            affinities = {a.category.split(">")[-1].strip() for a in got.profile.affinities}
            newest = got.profile.recent_events[-1].target.id if got.profile.recent_events else ""
            contexts = [gateway_pb2.RecommendContext(placement=gateway_pb2.PLACEMENT_HOME)]
            if newest in shop.items:
                page = gateway_pb2.PLACEMENT_PRODUCT_PAGE
                contexts.append(gateway_pb2.RecommendContext(placement=page, anchor_item_id=newest))
            for context in contexts:
                request = gateway_pb2.RecommendRequest(user_id=user, context=context, page_size=8)
                for shown in (await running.stub.Recommend(request)).bundles:
                    members = [i.item_id for i in shown.items]
                    if claim := CLAIM.match(shown.explanation):
                        named = titles[claim.group(1)] & history
                        assert named, f"{user}: {shown.explanation!r} names nothing they {claim.group(2)}"
                        strongest = max(weights.get((x, m), 0.0) for x in named for m in members)
                        assert strongest >= MIN_CO_OCCURRENCE, f"{user}: {shown.explanation!r} on {members}"
                        claims += 1
                    if interest := INTEREST.match(shown.explanation):
                        assert interest.group(1) in affinities, f"{user}: {shown.explanation!r}, not {affinities}"
                        interests += 1
    assert claims >= 10 and interests >= 1, (claims, interests)  # the check has something to check


def co_occurrence(shop: Suite) -> dict[tuple[str, str], float]:
    """The candidate service's behaviour statistics: (item, item) → strength, both orders."""
    with sqlite3.connect(make_url(shop.catalogue_url).database) as db:
        return {(a, b): w for a, b, w in db.execute("SELECT item_id, other_id, weight FROM catalogue_cooccurrence")}
