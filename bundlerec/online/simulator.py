"""A closed-loop shopper simulator: synthetic shoppers with hidden tastes visit the shop through the
real gateway, get pages, and answer them the way the demo shop's shoppers behave, sending what they
did back through Track with the page's recommendation id. What the gateway learns from them changes
their next pages; the exposure log and the experiment report measure it.

Tastes come from the demo shop's generator (datasets/demo_catalogue.py, demo.py): 1 to 3 favourite
departments and a price tier. An item appeals to a shopper by its department (favourites weigh
0.6, 0.28, 0.12; any other 0.02) and its brand's price tier (TIER_AFFINITY); a bundle by the mean
of its items. A bundle listed as `loved` (a launch the bench wants found) appeals at `boost` to the
shoppers whose favourites hold its department.

A visit: the home page; half the time, then, a search for a favourite department's main product,
a view of the result that appeals most, and that product's page. On each page a shopper examines
position p with chance 1/(1+p)^0.5, clicks an examined bundle with chance CLICK_SCALE × appeal,
adds a clicked one to the cart with chance 0.5 and buys an added one with chance 0.6 (less when its
price tier is above theirs). A visit ends at the first purchase.

Deterministic by seed: tastes, visits and every draw come from random.Random((seed, shopper, day)),
so the same pages get the same answers. The pages themselves come from the gateway (its model, its
exploration), so two runs differ only where the gateway does.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bundlerec.datasets.demo import TIER_AFFINITY
from bundlerec.datasets.demo_catalogue import DEPARTMENTS
from bundlerec.datasets.demo_items import TIERS

FAVOURITE_WEIGHTS = (0.6, 0.28, 0.12)
OTHER_DEPARTMENT = 0.02
CLICK_SCALE = 0.5
ADD_CHANCE, BUY_CHANCE = 0.5, 0.6
DEPARTMENT_OF = {spec.path: d for d, dept in enumerate(DEPARTMENTS) for spec in (dept.anchor, *dept.complements)}


@dataclass(frozen=True, slots=True)
class ShownItem:
    item_id: str
    category: str
    brand: str
    price: float


@dataclass(frozen=True, slots=True)
class ShownBundle:
    bundle_id: str  # "" for a bundle built for the request
    items: tuple[ShownItem, ...]
    kind: str


@dataclass(frozen=True, slots=True)
class ShownPage:
    recommendation_id: str
    variant: str
    bundles: tuple[ShownBundle, ...]


@dataclass(frozen=True, slots=True)
class Action:
    """What a shopper did: sent through Track, with the page's recommendation id when it follows one."""

    user_id: str
    kind: str  # "view", "click", "add_to_cart", "purchase"
    target_id: str
    is_bundle: bool
    category: str
    recommendation_id: str = ""


class ShopPort(Protocol):
    async def recommend(self, user_id: str, placement: str, anchor: str, page_size: int) -> ShownPage: ...
    async def search(self, user_id: str, query: str, page_size: int) -> list[ShownItem]: ...
    async def track(self, actions: Sequence[Action], impressions: Sequence[tuple[str, str, ShownBundle, int]]) -> None:
        """Events, and impressions as (user, recommendation id, bundle, position)."""
        ...


@dataclass(frozen=True, slots=True)
class Taste:
    departments: tuple[int, ...]
    tier: int

    def item(self, item: ShownItem) -> float:
        department = DEPARTMENT_OF.get(item.category)
        if department is None:
            return OTHER_DEPARTMENT
        weight = OTHER_DEPARTMENT
        if department in self.departments:
            weight = FAVOURITE_WEIGHTS[self.departments.index(department)]
        return weight * TIER_AFFINITY[abs(tier_of(department, item.brand, self.tier) - self.tier)]


def tier_of(department: int, brand: str, default: int) -> int:
    brands = DEPARTMENTS[department].brands
    return brands.index(brand) * len(TIERS) // len(brands) if brand in brands else default


def taste_of(seed: int, shopper: int) -> Taste:
    """As the demo shop draws its shoppers' tastes."""
    rng = random.Random(f"taste:{seed}:{shopper}")
    count = rng.choices((1, 2, 3), weights=(0.45, 0.4, 0.15))[0]
    departments = tuple(rng.sample(range(len(DEPARTMENTS)), count))
    return Taste(departments, rng.choices(range(len(TIERS)), weights=(0.35, 0.45, 0.2))[0])


@dataclass(frozen=True)
class SimulationSettings:
    shoppers: int = 100
    days: int = 7
    seed: int = 1
    visit_chance: float = 0.6  # per shopper and day
    page_size: int = 6
    concurrency: int = 8  # shoppers visiting at once
    loved: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # bundle id → (department, appeal)


@dataclass(frozen=True, slots=True)
class PageSeen:
    """A page a simulated shopper got, and what they did with it."""

    day: int
    shopper: int
    departments: tuple[int, ...]
    placement: str
    topic: int  # the department the page is about: its product's, or the shopper's first favourite
    variant: str
    recommendation_id: str
    bundle_ids: tuple[str, ...]
    kinds: tuple[str, ...]
    clicked: bool
    bought: bool
    revenue: float


@dataclass
class Simulation:
    pages: list[PageSeen] = field(default_factory=list)

    def by_variant(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for page in self.pages:
            row = out.setdefault(page.variant, {"pages": 0, "clicked": 0, "bought": 0, "revenue": 0.0})
            row["pages"] += 1
            row["clicked"] += page.clicked
            row["bought"] += page.bought
            row["revenue"] += page.revenue
        for row in out.values():
            row["click_through"] = row["clicked"] / row["pages"]
            row["purchase_rate"] = row["bought"] / row["pages"]
        return out


def user_id(seed: int, shopper: int) -> str:
    return f"sim-{seed}-{shopper:05d}"


async def simulate(
    shop: ShopPort,
    settings: SimulationSettings,
    before_day: Callable[[int], Awaitable[None]] | None = None,
) -> Simulation:
    """Runs the days in order (`before_day(day)` first: a launch, a retrain), shoppers concurrently."""
    result = Simulation()
    tastes = [taste_of(settings.seed, n) for n in range(settings.shoppers)]
    gate = asyncio.Semaphore(settings.concurrency)
    for day in range(settings.days):
        if before_day is not None:
            await before_day(day)

        async def visit(n: int, day: int = day) -> None:
            rng = random.Random(f"visit:{settings.seed}:{n}:{day}")
            if rng.random() >= settings.visit_chance:
                return
            async with gate:
                await _visit(shop, settings, n, tastes[n], day, rng, result)

        await asyncio.gather(*(visit(n) for n in range(settings.shoppers)))
    return result


async def _visit(
    shop: ShopPort, settings: SimulationSettings, n: int, taste: Taste, day: int, rng: random.Random, out: Simulation
) -> None:
    user = user_id(settings.seed, n)
    if await _answer(shop, settings, n, taste, day, rng, out, "home", ""):
        return
    if rng.random() < 0.5:
        department = DEPARTMENTS[rng.choice(taste.departments)]
        found = await shop.search(user, department.anchor.nouns[0], 10)
        if found:
            product = max(found, key=lambda item: (taste.item(item), -found.index(item)))
            await shop.track([Action(user, "view", product.item_id, False, product.category)], [])
            topic = DEPARTMENT_OF.get(product.category, -1)
            await _answer(shop, settings, n, taste, day, rng, out, "product_page", product.item_id, topic)


async def _answer(
    shop: ShopPort,
    settings: SimulationSettings,
    n: int,
    taste: Taste,
    day: int,
    rng: random.Random,
    out: Simulation,
    placement: str,
    anchor: str,
    topic: int | None = None,
) -> bool:
    """One page and the shopper's answer to it; whether they bought."""
    user = user_id(settings.seed, n)
    page = await shop.recommend(user, placement, anchor, settings.page_size)
    actions: list[Action] = []
    clicked = bought = False
    revenue = 0.0
    for position, bundle in enumerate(page.bundles):
        if rng.random() >= (1 + position) ** -0.5:  # not examined
            continue
        appeal = _appeal(taste, bundle, settings.loved)
        if rng.random() >= CLICK_SCALE * appeal:
            continue
        clicked = True
        target, is_bundle = (bundle.bundle_id, True) if bundle.bundle_id else (bundle.items[0].item_id, False)
        category = bundle.items[0].category
        actions.append(Action(user, "click", target, is_bundle, category, page.recommendation_id))
        if rng.random() >= ADD_CHANCE:
            continue
        actions.append(Action(user, "add_to_cart", target, is_bundle, category, page.recommendation_id))
        dearer = max(0, max(_tier(item, taste) for item in bundle.items) - taste.tier)
        if rng.random() < BUY_CHANCE * TIER_AFFINITY[min(dearer, 2)]:
            actions.append(Action(user, "purchase", target, is_bundle, category, page.recommendation_id))
            bought, revenue = True, sum(item.price for item in bundle.items)
            break
    impressions = [(user, page.recommendation_id, b, p) for p, b in enumerate(page.bundles)]
    await shop.track(actions, impressions)
    out.pages.append(
        PageSeen(
            day, n, taste.departments, placement, taste.departments[0] if topic is None else topic,
            page.variant, page.recommendation_id,
            tuple(b.bundle_id for b in page.bundles), tuple(b.kind for b in page.bundles), clicked, bought, revenue,
        )
    )  # fmt: skip
    return bought


def _appeal(taste: Taste, bundle: ShownBundle, loved: Mapping[str, tuple[int, float]]) -> float:
    appeal = sum(taste.item(item) for item in bundle.items) / max(1, len(bundle.items))
    if bundle.bundle_id in loved:
        department, boost = loved[bundle.bundle_id]
        if department in taste.departments:
            appeal = max(appeal, boost)
    return appeal


def _tier(item: ShownItem, taste: Taste) -> int:
    department = DEPARTMENT_OF.get(item.category)
    return taste.tier if department is None else tier_of(department, item.brand, taste.tier)
