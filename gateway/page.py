"""One page of bundles from the ranker's order and the business rules. Pure: no I/O, no grpc.

The steps, each recording what it did as a RuleAction for the request's trace:

1. Filters remove every bundle a rule forbids (stock, purchases, prices, budget, categories,
   brands, size, blocklists). A bundle is removed whole: showing it without the offending member
   would show a bundle the catalogue or the builder never made.
2. Relevance: the scores of the survivors min-max normalised to [0, 1] (all equal: 1), so that
   boosts and the diversity weight mean the same whatever scale the ranker's scores have.
3. Pins take their slots first (they count toward the caps and the diversity of the rest); a
   pinned bundle must pass the filters too, and one that does not stays off the page.
4. The other slots are filled greedily by maximal marginal relevance,
   `(1 - w) * relevance - w * (max similarity to the bundles already on the page)`,
   skipping a bundle that would break unique_items, max_per_brand or max_per_category.

Similarity of two bundles is 1 when they share an item (the same product twice is the least
diverse page there is), else the Jaccard index of their category keys (category paths cut to
`category_depth` levels; bundles without known categories are not similar). It is cheap, needs
no embeddings, and matches what a shopper sees as "more of the same".

Promotions (pins, then boosts in page order) take at most max(1, floor(max_promoted_share *
page_size)) slots when the share is above 0, none when it is 0: a page of 3 may still carry one
pin. Once the share is used up, further boosted bundles compete with their plain relevance.

Everything is deterministic: ties go to the bundle that came first in the input.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bundlerec.gateway.rules import EffectiveRules, Promotion, Rules, category_levels

TargetKind = Literal["bundle", "item"]
Action = Literal["removed", "moved_down", "pinned", "boosted"]


@dataclass(frozen=True, slots=True)
class PageItem:
    item_id: str
    title: str = ""
    category: str = ""  # path, levels joined by " > "
    brand: str = ""
    price: float | None = None  # None: unknown
    in_stock: bool = True


@dataclass(frozen=True, slots=True)
class PageBundle:
    bundle_id: str  # "" for a bundle built for this request
    items: tuple[PageItem, ...]
    score: float  # higher is better; comparable within one request
    generated: bool = False

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(item.item_id for item in self.items)

    @property
    def key(self) -> str | tuple[str, ...]:
        """Identifies the bundle on a page: its catalogue id, else its members."""
        return self.bundle_id or self.item_ids


@dataclass(frozen=True, slots=True)
class RuleAction:
    rule: str  # the rule's name in the rules file, a promotion's name, or "diversity"/"duplicate"
    target_kind: TargetKind
    target_id: str
    action: Action
    detail: str


@dataclass
class Page:
    bundles: list[PageBundle]
    actions: list[RuleAction] = field(default_factory=list)


def target_of(bundle: PageBundle) -> tuple[TargetKind, str]:
    """What an action names: the catalogue bundle, the item of a one-item entry, else "a+b+c"."""
    if bundle.bundle_id:
        return "bundle", bundle.bundle_id
    if len(bundle.items) == 1:
        return "item", bundle.items[0].item_id
    return "bundle", "+".join(bundle.item_ids)


def promoted_slots(share: float, page_size: int) -> int:
    """How many slots promotions may take: the share rounded down, but one when the share is above 0."""
    return max(1, math.floor(share * page_size + 1e-9)) if share > 0 else 0


def _matches(levels: tuple[str, ...], prefixes: Sequence[tuple[str, ...]]) -> tuple[str, ...] | None:
    return next((p for p in prefixes if levels[: len(p)] == p), None)


class _Filters:
    """The filter rules, compiled once per page."""

    def __init__(self, rules: Rules, purchased: frozenset[str]) -> None:
        self.rules = rules
        self.purchased = purchased if rules.exclude_purchased else frozenset()
        self.budget = rules.budget if isinstance(rules, EffectiveRules) else None
        self.blocked_items = frozenset(rules.blocklist_items)
        self.blocked_bundles = frozenset(rules.blocklist_bundles)
        self.rebuyable = [category_levels(p) for p in rules.rebuyable_categories]
        self.include_categories = [category_levels(p) for p in rules.include_categories]
        self.exclude_categories = [category_levels(p) for p in rules.exclude_categories]
        self.include_brands = frozenset(b.strip().casefold() for b in rules.include_brands)
        self.exclude_brands = frozenset(b.strip().casefold() for b in rules.exclude_brands)

    def verdict(self, bundle: PageBundle) -> tuple[str, str] | None:
        """(rule, why) of the first rule that removes the bundle, or None when it may be shown."""
        r = self.rules
        if bundle.bundle_id in self.blocked_bundles:
            return "blocklist", "the bundle is blocklisted"
        for item in bundle.items:
            if item.item_id in self.blocked_items:
                return "blocklist", f"item {item.item_id} is blocklisted"
        if not r.min_bundle_size <= len(bundle.items) <= r.max_bundle_size:
            return "bundle_size", f"{len(bundle.items)} items, allowed {r.min_bundle_size} to {r.max_bundle_size}"
        for item in bundle.items:
            if r.in_stock_only and not item.in_stock:
                return "in_stock_only", f"item {item.item_id} is out of stock"
        for item in bundle.items:
            if item.item_id in self.purchased and not _matches(category_levels(item.category), self.rebuyable):
                return "exclude_purchased", f"item {item.item_id} was already purchased"
        for item in bundle.items:
            if item.price is None:
                continue  # unknown: no reason to hide it
            if (r.min_price is not None and item.price < r.min_price) or (
                r.max_price is not None and item.price > r.max_price
            ):
                return "price_range", f"item {item.item_id} costs {item.price:g}"
        total = sum(item.price or 0.0 for item in bundle.items)
        if self.budget is not None and total > self.budget:
            return "budget", f"total {total:g} is above the budget {self.budget:g}"
        return self._categories(bundle) or self._brands(bundle)

    def _categories(self, bundle: PageBundle) -> tuple[str, str] | None:
        paths = [(item, category_levels(item.category)) for item in bundle.items]
        for item, levels in paths:
            if _matches(levels, self.exclude_categories):
                return "categories", f"item {item.item_id} is in an excluded category"
        if self.include_categories and not any(_matches(levels, self.include_categories) for _, levels in paths):
            return "categories", "no item is in an included category"
        return None

    def _brands(self, bundle: PageBundle) -> tuple[str, str] | None:
        brands = [(item, item.brand.strip().casefold()) for item in bundle.items]
        for item, brand in brands:
            if brand in self.exclude_brands:
                return "brands", f"item {item.item_id} is of an excluded brand"
        if self.include_brands and not any(brand in self.include_brands for _, brand in brands):
            return "brands", "no item is of an included brand"
        return None


@dataclass(slots=True, eq=False)
class _Candidate:
    """A bundle that passed the filters, with what the page fill compares."""

    bundle: PageBundle
    order: int  # position in the input: breaks ties
    item_ids: frozenset[str]
    brands: frozenset[str]
    categories: frozenset[tuple[str, ...]]
    relevance: float = 0.0
    boost: float = 0.0
    boosted_by: tuple[str, ...] = ()
    max_similarity: float = 0.0
    chosen_relevance: float = 0.0  # the relevance it was chosen with (boost included while the share lasted)

    @classmethod
    def of(cls, bundle: PageBundle, order: int, depth: int) -> _Candidate:
        brands = frozenset(b for item in bundle.items if (b := item.brand.strip().casefold()))
        keys = frozenset(c[:depth] for item in bundle.items if (c := category_levels(item.category)))
        return cls(bundle, order, frozenset(bundle.item_ids), brands, keys)


def similarity(a: _Candidate, b: _Candidate) -> float:
    if a.item_ids & b.item_ids:
        return 1.0
    union = a.categories | b.categories
    return len(a.categories & b.categories) / len(union) if union else 0.0


class _PageState:
    """What is on the page so far, for unique_items and the per-brand and per-category caps."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.chosen: list[_Candidate] = []
        self.items: set[str] = set()
        self.brands: Counter[str] = Counter()
        self.categories: Counter[tuple[str, ...]] = Counter()

    def conflict(self, c: _Candidate, *, caps: bool = True) -> tuple[str, str] | None:
        r = self.rules
        if r.unique_items and (shared := c.item_ids & self.items):
            return "unique_items", f"item {min(shared)} is already on the page"
        if not caps:
            return None
        if r.max_per_brand is not None:
            for brand in sorted(c.brands):
                if self.brands[brand] >= r.max_per_brand:
                    return "max_per_brand", f"brand {brand} is already on {r.max_per_brand} bundles"
        if r.max_per_category is not None:
            for category in sorted(c.categories):
                if self.categories[category] >= r.max_per_category:
                    return "max_per_category", f"{' > '.join(category)} is already on {r.max_per_category} bundles"
        return None

    def add(self, c: _Candidate) -> None:
        self.chosen.append(c)
        self.items |= c.item_ids
        self.brands.update(c.brands)
        self.categories.update(c.categories)


Record = Callable[[str, tuple[TargetKind, str], Action, str], None]


def assemble_page(
    ranked: Sequence[PageBundle],
    rules: Rules,
    *,
    page_size: int,
    purchased_item_ids: frozenset[str] = frozenset(),
) -> Page:
    """The page for ranked bundles (best first) under the rules; `rules` may be EffectiveRules (budget).

    Pins can only place bundles that are among `ranked`: the caller adds pinned targets it did
    not retrieve. The returned bundles are the input objects, in page order.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    actions: list[RuleAction] = []

    def record(rule: str, target: tuple[TargetKind, str], action: Action, detail: str) -> None:
        actions.append(RuleAction(rule, target[0], target[1], action, detail))

    filters = _Filters(rules, purchased_item_ids)
    survivors: list[_Candidate] = []
    removed_by: dict[str | tuple[str, ...], str] = {}  # key -> the rule that removed it
    seen: set[str | tuple[str, ...]] = set()
    for order, bundle in enumerate(ranked):
        verdict = ("duplicate", "already earlier in the list") if bundle.key in seen else filters.verdict(bundle)
        seen.add(bundle.key)
        if verdict is None:
            survivors.append(_Candidate.of(bundle, order, rules.category_depth))
            continue
        removed_by.setdefault(bundle.key, verdict[0])
        record(verdict[0], target_of(bundle), "removed", verdict[1])
    _normalise(survivors)
    _apply_boosts(survivors, [p for p in rules.promotions if p.kind == "boost"])

    state = _PageState(rules)
    quota = promoted_slots(rules.max_promoted_share, page_size)
    pins = _pin(survivors, rules, page_size, quota, state, removed_by, ranked, record)
    pinned = {id(c) for _, c, _ in pins}
    pool = [c for c in survivors if id(c) not in pinned]
    filled = _fill(pool, state, page_size - len(pins), rules.diversity_weight, quota - len(pins), record)

    page = [c.bundle for c in filled]
    for position, candidate, _ in pins:  # ascending positions: each insert keeps the earlier ones in place
        page.insert(min(position, len(page)), candidate.bundle)
    for position, candidate, promotion in pins:
        at = page.index(candidate.bundle)
        shorter = "" if at == position else f" (asked {position}: the page is shorter)"
        record(promotion.name, target_of(candidate.bundle), "pinned", f"at position {at}{shorter}")
    return Page(page, actions)


def _normalise(candidates: Sequence[_Candidate]) -> None:
    """Scores min-max normalised to [0, 1] over the survivors; all equal: 1."""
    if not candidates:
        return
    low = min(c.bundle.score for c in candidates)
    span = max(c.bundle.score for c in candidates) - low
    for c in candidates:
        c.relevance = (c.bundle.score - low) / span if span > 0 else 1.0


def _promotes(promotion: Promotion, bundle: PageBundle) -> bool:
    if promotion.bundle_id:
        return bundle.bundle_id == promotion.bundle_id
    return any(item.item_id == promotion.item_id for item in bundle.items)


def _apply_boosts(candidates: Sequence[_Candidate], boosts: Sequence[Promotion]) -> None:
    for c in candidates:
        for promotion in boosts:
            if _promotes(promotion, c.bundle):
                c.boost += promotion.boost
                c.boosted_by += (promotion.name,)


def _pin(
    survivors: Sequence[_Candidate],
    rules: Rules,
    page_size: int,
    quota: int,
    state: _PageState,
    removed_by: dict[str | tuple[str, ...], str],
    ranked: Sequence[PageBundle],
    record: Record,
) -> list[tuple[int, _Candidate, Promotion]]:
    """The pinned bundles, (position, candidate, promotion) by position; they join `state`.

    An item pin places the best-ranked surviving bundle containing the item (a one-item entry
    is one of them): the ranker's best context for the product, not the product alone unless
    that is what ranked best. Pins ignore the per-brand and per-category caps (a merchandiser
    chose them) but not unique_items.
    """
    pins: list[tuple[int, _Candidate, Promotion]] = []
    for promotion in sorted((p for p in rules.promotions if p.kind == "pin"), key=lambda p: p.position):
        target: tuple[TargetKind, str] = (
            ("bundle", promotion.bundle_id) if promotion.bundle_id else ("item", promotion.item_id)
        )
        if promotion.position >= page_size:
            record(promotion.name, target, "removed", f"position {promotion.position} is beyond the page")
            continue
        options = [c for c in survivors if _promotes(promotion, c.bundle) and all(c is not p for _, p, _ in pins)]
        free = [c for c in options if state.conflict(c, caps=False) is None]
        if not free:
            record(promotion.name, target, "removed", _why_not_pinned(promotion, options, removed_by, ranked, state))
            continue
        if len(pins) >= quota:
            record("max_promoted_share", target, "removed", f"{promotion.name}: no promoted slot left")
            continue
        best = max(free, key=lambda c: c.relevance)  # the first of equals: the input order
        state.add(best)
        pins.append((promotion.position, best, promotion))
    return pins


def _why_not_pinned(
    promotion: Promotion,
    options: Sequence[_Candidate],
    removed_by: dict[str | tuple[str, ...], str],
    ranked: Sequence[PageBundle],
    state: _PageState,
) -> str:
    if options:
        conflict = state.conflict(options[0], caps=False)
        return f"not pinned: {conflict[1] if conflict else 'already pinned'}"
    removers = sorted({removed_by[b.key] for b in ranked if b.key in removed_by and _promotes(promotion, b)})
    if removers:
        return f"not pinned: removed by {', '.join(removers)}"
    return "not pinned: not among the candidates"


def _gain(c: _Candidate, weight: float, boosting: bool) -> float:
    relevance = c.relevance + (c.boost if boosting else 0.0)
    return (1 - weight) * relevance - weight * c.max_similarity


def _fill(
    pool: Sequence[_Candidate], state: _PageState, slots: int, weight: float, quota: int, record: Record
) -> list[_Candidate]:
    """Greedy maximal marginal relevance over the pool (input order), `slots` bundles at most.

    A bundle that would break unique_items or a cap is dropped for good (the page only grows, so
    it would break it later too), recorded only when it was the next pick: the trace explains
    what the page lost, not every low-ranked bundle that never had a chance.
    """
    for c in pool:
        c.max_similarity = max((similarity(c, p) for p in state.chosen), default=0.0)
    remaining = list(pool)
    filled: list[_Candidate] = []
    while remaining and len(filled) < slots:
        boosting = quota > 0
        best_i, best_gain = 0, -math.inf
        for i, c in enumerate(remaining):
            gain = _gain(c, weight, boosting)
            if gain > best_gain:
                best_i, best_gain = i, gain
        best = remaining.pop(best_i)
        conflict = state.conflict(best)
        if conflict is not None:
            record(conflict[0], target_of(best.bundle), "removed", conflict[1])
            continue
        boosted = boosting and best.boost > 0
        best.chosen_relevance = best.relevance + (best.boost if boosted else 0.0)
        if boosted:
            quota -= 1
            for name in best.boosted_by:
                record(name, target_of(best.bundle), "boosted", f"relevance {best.relevance:.3f} + {best.boost:g}")
        state.add(best)
        filled.append(best)
        for c in remaining:
            c.max_similarity = max(c.max_similarity, similarity(c, best))
    if weight > 0:
        _record_moved_down(filled, record)
    return filled


def _record_moved_down(filled: Sequence[_Candidate], record: Record) -> None:
    """A bundle placed lower than the order by relevance of the same bundles would place it."""
    by_relevance = sorted(filled, key=lambda c: (-c.chosen_relevance, c.order))
    rank = {id(c): i for i, c in enumerate(by_relevance)}
    for i, c in enumerate(filled):
        if i > rank[id(c)]:
            detail = f"position {i} instead of {rank[id(c)]} by relevance, counting unpinned bundles only"
            record("diversity", target_of(c.bundle), "moved_down", detail)
