"""A synthetic shop in the import format, for demos and tests that must not ship research data.

The point is realistic structure, not realistic numbers: a catalogue where phones sell with cases
and cameras with lenses (demo_catalogue.py), curated bundles of such complements, and shoppers with
stable tastes (1-3 favourite departments, a price level) whose sessions run view → click →
add_to_cart → purchase, buy bundles, and come back days later for the accessories of what they
bought. A model that learns nothing from this data is broken; one that learns it is not proven good.

Everything is drawn from one random.Random(seed) in a fixed order, no set is ever iterated, and
time starts at a fixed date, so the same seed always writes the same bytes (on the same Python
minor version: `random` promises stable sequences only for random() itself).
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from bundlerec.datasets.demo_catalogue import DEPARTMENTS, MULTIPACK_INTENT
from bundlerec.datasets.demo_items import TIERS, price_of, title_of
from bundlerec.datasets.format import Bundle, Event, EventType, HeldOut, Item, TargetType, dataset_counts
from bundlerec.datasets.writer import write_dataset

START = 1_709_251_200  # 2024-03-01 00:00:00 UTC; fixed so the output never depends on today's date
TIER_AFFINITY = (1.0, 0.35, 0.1)  # how much a shopper likes items 0, 1 or 2 price tiers from their own
MIN_PURCHASES_TO_HOLD_OUT = 3  # valid and test take two; at least one stays as history

PROTOCOL = (
    "next_item, leave-one-out (FORMAT.md): valid.csv holds each held-out user's second-to-last purchased item "
    "and test.csv the last (item purchases only; bundle purchases are history, not targets). Rank every item "
    "in items.csv, excluding items already in the user's history; report HR@10 and NDCG@10 (full ranking). "
    "When scoring test.csv the history is events.csv plus the user's valid.csv row; when scoring valid.csv it "
    "is events.csv alone. For held-out users events.csv keeps only events before the second-to-last purchase "
    "and none on either held-out item, so targets never leak into the history. Users with fewer than "
    f"{MIN_PURCHASES_TO_HOLD_OUT} item purchases keep all their events and are not held out."
)


DRIFT_PROTOCOL = (
    "by time: nothing is held out; train on the events before a day and evaluate on what each shopper "
    "bought that day (bundlerec retrain's split), ranking every item and excluding those already bought."
)
LAUNCHED_PRODUCTS, LAUNCHED_BUNDLES = 0.1, 0.2  # shares launched during a drifting shop's second half
LAUNCH_PULL = 0.25  # chance a pick goes to a live launched product (bundle) of the category (department)
SHIFTING_SHOPPERS = 0.5


@dataclass(slots=True)
class _Product:
    item: Item
    dept: int
    cat: int  # 0 = the department's anchor category, 1.. = its complements
    tier: int
    noun: str
    popularity: float


@dataclass(slots=True)
class _Shop:
    products: list[_Product]
    by_cat: dict[tuple[int, int], list[int]]  # (dept, cat) -> product indexes
    # (dept, cat, shopper tier) -> cumulative weights over by_cat[(dept, cat)], for _choose
    weights: dict[tuple[int, int, int], list[float]]
    bundles: list[Bundle]
    bundles_by_dept: dict[int, list[int]]
    bundle_weights: dict[int, list[float]]
    # a drifting shop's launch times (0: on sale from the start), and what launches, by category / department
    launch: list[int] = field(default_factory=list)
    bundle_launch: list[int] = field(default_factory=list)
    launched_by_cat: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    launched_by_dept: dict[int, list[int]] = field(default_factory=dict)
    drift_days: int = 0


def generate_demo_shop(
    out_dir: str | Path,
    *,
    seed: int,
    users: int = 500,
    items: int = 2000,
    bundles: int = 300,
    days: int = 90,
    drift: bool = False,
) -> dict[str, Any]:
    """Writes the demo shop to `out_dir` and returns a summary (counts as in dataset.json).

    `drift`: a shop that changes while it is recorded (for retraining, bench/freshness.py): a
    tenth of the products and a fifth of the bundles launch during the second half and sell well
    from their launch (new things draw shoppers), and half the shoppers move to other favourite
    departments somewhere between 40 % and 80 % of the period. Nothing is held out: events.csv keeps
    everything, for splits by time (valid.csv and test.csv are empty)."""
    rng = random.Random(seed)
    shop = _catalogue(rng, items)
    _curate_bundles(rng, shop, bundles)
    if drift:
        _schedule_launches(rng, shop, days)
    history = [_shopper(rng, shop, f"u{n:04d}", days) for n in range(1, users + 1)]
    events: list[Event] = []
    valid: list[HeldOut] = []
    test: list[HeldOut] = []
    for user_events in history:
        kept, held = _leave_one_out(user_events) if not drift else (user_events, [])
        events.extend(kept)
        if held:
            valid.append(held[0])
            test.append(held[1])
    catalogue = [p.item for p in shop.products]
    counts = dataset_counts(
        items=len(catalogue),
        bundles=shop.bundles,
        events=events,
        valid=valid,
        test=test,
        bundle_info_rows=len(shop.bundles),
    )
    info = {
        "name": "demo-shop",
        "task": "next_item",
        "source": f"bundlerec.datasets.demo.generate_demo_shop(seed={seed}, users={users}, items={items}, "
        f"bundles={bundles}, days={days}{', drift=True' if drift else ''})",
        "licence": "generated",
        "timestamps": "unix",
        "protocol": DRIFT_PROTOCOL if drift else PROTOCOL,
        "counts": counts,
        "reference_results": [],
        "notes": [
            f"Synthetic: {len(DEPARTMENTS)} departments, each an anchor category and its complements; "
            "brands come in budget, mid-range and premium tiers that set prices.",
            "Bundles are curated from an anchor item and complements of the same department (a few are "
            "single-category value packs); bundle_info.csv holds their intent.",
            "Shoppers have 1-3 favourite departments and a price level; sessions run view, click, add_to_cart, "
            "purchase; buying an anchor item often brings them back for its complements days later.",
            f"Time starts at {START} (2024-03-01 UTC) and runs {days} days; events.csv is grouped by user in "
            "chronological order.",
        ],
        "format": "FORMAT.md v1",
    }
    write_dataset(out_dir, items=catalogue, bundles=shop.bundles, events=events, valid=valid, test=test, info=info)
    return {
        "path": str(out_dir),
        "seed": seed,
        "departments": len(DEPARTMENTS),
        "categories": len(shop.by_cat),
        **counts,
    }


# -- catalogue ------------------------------------------------------------------------------------


def _catalogue(rng: random.Random, n_items: int) -> _Shop:
    specs = [
        (d, c, spec) for d, dept in enumerate(DEPARTMENTS) for c, spec in enumerate((dept.anchor, *dept.complements))
    ]
    total_share = sum(spec.share for _, _, spec in specs)
    sizes = [max(3, round(n_items * spec.share / total_share)) for _, _, spec in specs]
    for i in range(abs(n_items - sum(sizes))):  # make the total exact, a little from each category
        sizes[i % len(sizes)] += 1 if n_items > sum(sizes) else (-1 if sizes[i % len(sizes)] > 3 else 0)
    products: list[_Product] = []
    by_cat: dict[tuple[int, int], list[int]] = {}
    titles: set[str] = set()
    for (d, c, spec), size in zip(specs, sizes, strict=True):
        brands = DEPARTMENTS[d].brands
        for _ in range(size):
            b = rng.randrange(len(brands))
            tier = b * len(TIERS) // len(brands)
            title, noun, attributes = title_of(rng, spec, brands[b], titles)
            price = price_of(rng, spec, tier)
            item = Item(f"sku-{len(products) + 1:05d}", title, spec.path, brands[b], price, attributes)
            by_cat.setdefault((d, c), []).append(len(products))
            products.append(_Product(item, d, c, tier, noun, rng.paretovariate(1.3)))
    weights = {
        (d, c, tier): list(
            accumulate(products[i].popularity * TIER_AFFINITY[abs(products[i].tier - tier)] for i in members)
        )
        for (d, c), members in by_cat.items()
        for tier in range(len(TIERS))
    }
    return _Shop(products, by_cat, weights, [], {}, {}, launch=[0] * len(products))


# -- bundles --------------------------------------------------------------------------------------


def _pick(rng: random.Random, shop: _Shop, dept: int, cat: int, tier: int) -> int:
    members = shop.by_cat[(dept, cat)]
    return _choose(rng, members, shop.weights[(dept, cat, tier)])


def _choose(rng: random.Random, population: list[int], cum_weights: list[float]) -> int:
    """rng.choices(population, cum_weights=cum_weights)[0]: the same draw from the same random(),
    without the checks and the list, since shops of 200k shoppers make it millions of times."""
    return population[bisect_right(cum_weights, rng.random() * (cum_weights[-1] + 0.0), 0, len(population) - 1)]


def _curate_bundles(rng: random.Random, shop: _Shop, n_bundles: int) -> None:
    """Anchor + 1-4 complements of one department, mostly in one price tier; ~8% single-category packs."""
    seen: set[frozenset[int]] = set()
    n = 0
    while n < n_bundles:
        dept = n % len(DEPARTMENTS)
        spec = DEPARTMENTS[dept]
        tier = rng.choices(range(len(TIERS)), weights=(0.35, 0.45, 0.2))[0]
        if rng.random() < 0.08:
            cat = rng.randrange(1, len(spec.complements) + 1)
            chosen = {_pick(rng, shop, dept, cat, tier) for _ in range(rng.randint(2, 4))}
            leaf = (spec.complements[cat - 1]).path.rsplit(" > ", 1)[-1]
            title = MULTIPACK_INTENT.format(count=len(chosen), noun=leaf)
            members = sorted(chosen)
        else:
            anchor = _pick(rng, shop, dept, 0, tier)
            k = rng.choices((1, 2, 3, 4), weights=(0.3, 0.35, 0.25, 0.1))[0]
            cats = rng.sample(range(1, len(spec.complements) + 1), min(k, len(spec.complements)))
            members = [anchor] + [_pick(rng, shop, dept, c, tier) for c in sorted(cats)]
            anchor_p = shop.products[anchor]
            nouns = [shop.products[m].noun for m in members[1:]]
            with_text = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
            anchor_name = f"{anchor_p.item.brand} {anchor_p.noun}"
            title = rng.choice(spec.intents).format(anchor=anchor_name, **{"with": with_text})
        key = frozenset(members)
        if len(key) < 2 or key in seen:
            continue
        seen.add(key)
        n += 1
        bundle = Bundle(f"bnd-{n:04d}", tuple(shop.products[m].item.item_id for m in members), title)
        shop.bundles_by_dept.setdefault(dept, []).append(len(shop.bundles))
        shop.bundles.append(bundle)
        appeal = sum(shop.products[m].popularity for m in members) / len(members) * rng.lognormvariate(0, 0.5)
        shop.bundle_weights.setdefault(dept, []).append(appeal)
    for dept, appeal in shop.bundle_weights.items():
        shop.bundle_weights[dept] = list(accumulate(appeal))
    shop.bundle_launch = [0] * len(shop.bundles)


def _schedule_launches(rng: random.Random, shop: _Shop, days: int) -> None:
    half = START + days * 86_400 // 2
    span = days * 86_400 - days * 86_400 // 2
    for n, product in enumerate(shop.products):
        if product.cat and rng.random() < LAUNCHED_PRODUCTS:  # anchors stay: bundles are built on them
            shop.launch[n] = half + rng.randrange(span)
            shop.launched_by_cat.setdefault((product.dept, product.cat), []).append(n)
    by_id = {p.item.item_id: n for n, p in enumerate(shop.products)}
    for dept, indexes in shop.bundles_by_dept.items():
        for index in indexes:
            own = half + rng.randrange(span) if rng.random() < LAUNCHED_BUNDLES else 0
            # a bundle goes on sale no earlier than its newest member
            shop.bundle_launch[index] = max([own] + [shop.launch[by_id[i]] for i in shop.bundles[index].item_ids])
            if shop.bundle_launch[index]:
                shop.launched_by_dept.setdefault(dept, []).append(index)
    shop.drift_days = days


# -- behaviour ------------------------------------------------------------------------------------


def _shopper(rng: random.Random, shop: _Shop, user: str, days: int) -> list[Event]:
    """One shopper's whole history, in time order."""
    n_depts = len(DEPARTMENTS)
    favourites = rng.sample(range(n_depts), rng.choices((1, 2, 3), weights=(0.45, 0.4, 0.15))[0])
    favourite_weights = (0.6, 0.28, 0.12)[: len(favourites)]
    tier = rng.choices(range(len(TIERS)), weights=(0.35, 0.45, 0.2))[0]
    shift_at, moved_to = 0, favourites  # a drifting shop's shopper may move to other departments
    if shop.drift_days and rng.random() < SHIFTING_SHOPPERS:
        shift_at = START + round(rng.uniform(0.4, 0.8) * days * 86_400)
        moved_to = rng.sample(range(n_depts), len(favourites))
    n_sessions = min(40, max(3, round(rng.lognormvariate(math.log(11), 0.6))))
    end = START + days * 86_400
    # (start time, tie-breaker, follow-up anchor product or -1)
    agenda = [(START + rng.randrange(days * 86_400), i, -1) for i in range(n_sessions)]
    heapq.heapify(agenda)
    events: list[Event] = []
    later: list[Event] = []  # ratings, written days after the purchase
    bought: set[int] = set()
    clock = START
    seq = n_sessions

    def emit(kind: EventType, target: TargetType, target_id: str, gap: tuple[int, int]) -> None:
        nonlocal clock
        clock += rng.randint(*gap)
        events.append(Event(user, kind, target, target_id, clock))

    while agenda:
        start, _, follow_up = heapq.heappop(agenda)
        clock = max(start, clock + 1_800)
        if clock >= end:
            break
        if follow_up >= 0:
            dept = shop.products[follow_up].dept
        elif rng.random() < 0.85:
            dept = rng.choices(moved_to if shift_at and clock >= shift_at else favourites, weights=favourite_weights)[0]
        else:
            dept = rng.randrange(n_depts)
        n_complements = len(DEPARTMENTS[dept].complements)
        carted: list[int] = []
        viewed: set[int] = set()
        for _ in range(rng.randint(2, 9)):
            cat = rng.randint(1, n_complements) if follow_up >= 0 or rng.random() < 0.55 else 0
            product = _pick_live(rng, shop, dept, cat, tier, clock)
            if product in viewed:
                continue
            viewed.add(product)
            item_id = shop.products[product].item.item_id
            emit("view", "item", item_id, (20, 300))
            if rng.random() < 0.45:
                emit("click", "item", item_id, (5, 90))
                if rng.random() < (0.55 if follow_up >= 0 else 0.38):
                    emit("add_to_cart", "item", item_id, (10, 180))
                    carted.append(product)
        if dept in shop.bundles_by_dept and rng.random() < (0.3 if follow_up >= 0 else 0.15):
            index = _bundle_live(rng, shop, dept, clock)
            bundle_id = shop.bundles[index].bundle_id
            emit("view", "bundle", bundle_id, (20, 300))
            if rng.random() < 0.5:
                emit("click", "bundle", bundle_id, (5, 90))
                if rng.random() < 0.4:
                    emit("add_to_cart", "bundle", bundle_id, (10, 180))
                    if rng.random() < 0.7:
                        emit("purchase", "bundle", bundle_id, (30, 400))
        for product in carted:
            if product in bought or rng.random() > 0.65:
                continue
            bought.add(product)
            emit("purchase", "item", shop.products[product].item.item_id, (30, 400))
            if rng.random() < 0.15:
                stars = rng.choices((1, 2, 3, 4, 5), weights=(0.04, 0.06, 0.15, 0.35, 0.4))[0]
                when = clock + rng.randint(2, 14) * 86_400
                if when < end:
                    later.append(Event(user, "rating", "item", shop.products[product].item.item_id, when, float(stars)))
            if shop.products[product].cat == 0 and rng.random() < 0.6:
                seq += 1
                heapq.heappush(agenda, (clock + rng.randint(2 * 3_600, 10 * 86_400), seq, product))
    return sorted(events + later, key=lambda e: e.timestamp)  # stable: ties keep session order


def _pick_live(rng: random.Random, shop: _Shop, dept: int, cat: int, tier: int, clock: int) -> int:
    """_pick among what is on sale at `clock`; in a drifting shop, launched products draw shoppers."""
    if not shop.drift_days:
        return _pick(rng, shop, dept, cat, tier)  # the same draws as always: the same seed, the same shop
    live = [n for n in shop.launched_by_cat.get((dept, cat), ()) if shop.launch[n] <= clock]
    if live and rng.random() < LAUNCH_PULL:
        return rng.choice(live)
    for _ in range(100):  # a tenth launches late: nearly always a draw or two
        product = _pick(rng, shop, dept, cat, tier)
        if shop.launch[product] <= clock:
            break
    return product


def _bundle_live(rng: random.Random, shop: _Shop, dept: int, clock: int) -> int:
    if not shop.drift_days:
        return _choose(rng, shop.bundles_by_dept[dept], shop.bundle_weights[dept])
    live = [n for n in shop.launched_by_dept.get(dept, ()) if shop.bundle_launch[n] <= clock]
    if live and rng.random() < LAUNCH_PULL * 2:
        return rng.choice(live)
    for _ in range(50):
        index = _choose(rng, shop.bundles_by_dept[dept], shop.bundle_weights[dept])
        if shop.bundle_launch[index] <= clock:
            return index
    return index  # a department whose bundles nearly all launch later: rare, and only early on


def _leave_one_out(events: list[Event]) -> tuple[list[Event], list[HeldOut]]:
    """Holds out the last two item purchases (valid, test) and cuts the history before them."""
    purchases = [e for e in events if e.event_type == "purchase" and e.target_type == "item"]
    if len(purchases) < MIN_PURCHASES_TO_HOLD_OUT:
        return events, []
    valid, test = purchases[-2], purchases[-1]
    targets = {valid.target_id, test.target_id}
    kept = [
        e for e in events if e.timestamp < valid.timestamp and not (e.target_type == "item" and e.target_id in targets)
    ]
    return kept, [HeldOut(valid.user_id, valid.target_id), HeldOut(test.user_id, test.target_id)]
