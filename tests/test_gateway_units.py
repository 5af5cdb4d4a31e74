"""The gateway's own logic without servers: built bundles, experiments, deadlines, the circuit
breaker, the impression log."""

from __future__ import annotations

import collections

import pytest
from pydantic import ValidationError

from bundlerec.gateway.builder import BuildLimits, build_bundles, near_duplicates
from bundlerec.gateway.experiments import Experiments, Variant
from bundlerec.gateway.model import PageItem
from bundlerec.gateway.ports import StageFailed
from bundlerec.gateway.resilience import BreakerState, CircuitBreaker, Deadline

PHONE = PageItem("phone", "Smartphone 128 GB", "Electronics > Phones", "Vireo", 300.0)
COMPLEMENTS = [
    PageItem("phone-2", "Smartphone 256 GB", "Electronics > Phones", "Vireo", 400.0),  # the same kind of thing
    PageItem("case", "Shockproof case", "Electronics > Phone accessories > Cases", "Vireo", 20.0),
    PageItem("case-2", "Leather case", "Electronics > Phone accessories > Cases", "Hide", 30.0),
    PageItem("charger", "65 W charger", "Electronics > Chargers", "Voltix", 35.0),
    PageItem("earbuds", "Wireless earbuds", "Electronics > Audio", "Sono", 90.0),
    PageItem("sold-out", "Screen protector", "Electronics > Screen protectors", "Vireo", 9.0, in_stock=False),
]


def test_built_bundles_hold_the_seed_and_complements_of_other_categories() -> None:
    built = build_bundles(PHONE, COMPLEMENTS, BuildLimits(max_size=3, max_bundles=5))
    assert built and len({frozenset(i.item_id for i in b) for b in built}) == len(built)  # all different
    for bundle in built:
        assert bundle[0] is PHONE and 2 <= len(bundle) <= 3
        categories = [i.category for i in bundle]
        assert len(set(categories)) == len(categories)
        assert "phone-2" not in {i.item_id for i in bundle} and "sold-out" not in {i.item_id for i in bundle}
    assert [i.item_id for i in built[0]] == ["phone", "case", "charger"]  # candidates in the order given


def test_built_bundles_keep_to_the_budget_and_sizes() -> None:
    built = build_bundles(PHONE, COMPLEMENTS, BuildLimits(min_size=2, max_size=4, budget=360.0))
    assert built and all(sum(i.price or 0 for i in b) <= 360.0 for b in built)
    assert build_bundles(PHONE, COMPLEMENTS, BuildLimits(budget=250.0)) == []  # the seed alone is over
    assert build_bundles(PHONE, COMPLEMENTS[:1], BuildLimits()) == []  # nothing complements it
    assert all(len(b) == 2 for b in build_bundles(PHONE, COMPLEMENTS, BuildLimits(max_size=2)))


def test_near_duplicates_are_same_category_or_mostly_the_same_words() -> None:
    assert near_duplicates(PHONE, COMPLEMENTS[0])
    other = PageItem("x", "Smartphone 128 GB refurbished", "Refurbished", "", 1.0)
    assert near_duplicates(PHONE, other)
    assert not near_duplicates(PHONE, COMPLEMENTS[1])


def test_variants_are_stable_per_user_and_follow_their_shares() -> None:
    experiments = Experiments(
        salt="s", variants=(Variant(name="a", share=0.2, model_version="v1"), Variant(name="b", share=0.8))
    )
    users = [f"user-{n}" for n in range(5000)]
    first = [experiments.assign(u).name for u in users]
    assert first == [experiments.assign(u).name for u in users]
    assert collections.Counter(first)["a"] / len(users) == pytest.approx(0.2, abs=0.03)
    reshuffled = Experiments(salt="t", variants=experiments.variants)
    assert [reshuffled.assign(u).name for u in users] != first
    assert Experiments().assign("anyone").name == "default"
    with pytest.raises(ValidationError, match="sum to"):
        Experiments(variants=(Variant(name="a", share=0.5),))


def test_the_deadline_gives_each_stage_its_share_and_keeps_a_reserve() -> None:
    now = [0.0]
    deadline = Deadline(0.1, clock=lambda: now[0])
    assert deadline.budget(0.2, reserve=0.7) == pytest.approx(0.02)
    now[0] = 0.05  # the first stage overran
    assert deadline.budget(0.4, reserve=0.3) == pytest.approx(0.02)  # what is left, minus the reserve
    now[0] = 0.2
    assert deadline.remaining() == 0 and deadline.budget(0.3) == 0


def test_the_breaker_opens_after_failures_and_probes_once() -> None:
    now = [0.0]
    breaker = CircuitBreaker("ranker", failures=2, reset_seconds=5, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow()
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 6.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failed()  # the probe failed: open again
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 12.0
    assert breaker.allow()
    breaker.release()  # the probe made no call (no budget left, or cancelled): another may probe
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


class _CatalogueDown:
    """A candidate port whose bundle lookup fails (a fault injected for this test)."""

    async def bundles(self, bundle_ids, seconds):  # type: ignore[no-untyped-def]
        raise StageFailed("unavailable")


async def test_a_failed_promotion_lookup_keeps_the_retrieval_and_adds_what_it_can() -> None:
    from bundlerec.gateway.model import Found, Retrieved, Source
    from bundlerec.gateway.rules import Rules
    from bundlerec.gateway.rules.promotions import with_promoted

    found = Retrieved((Found("a", False, 1.0, frozenset({Source.VECTOR}), ("a",)),), ())
    rules = Rules.model_validate(
        {
            "promotions": [
                {"name": "kit", "bundle_id": "kit", "kind": "pin", "position": 0},
                {"name": "new", "item_id": "n1", "kind": "boost", "boost": 0.2},
            ]
        }
    )
    out = await with_promoted(found, rules, _CatalogueDown(), 0.1)  # type: ignore[arg-type]
    assert out.bundles == () and [f.target_id for f in out.items] == ["a", "n1"]
    assert out.items[1].sources == frozenset()  # no retrieval source: "featured"
