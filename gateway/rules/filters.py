"""The filter rules of a page: which bundles a rule removes, and why. Pure: no I/O, no grpc.

A page asks the same few questions of every item (its category levels, its brand key, whether its
category is excluded, included or rebuyable), and the catalogue repeats the same strings on every
page, so the answers are memoised by string: per process for the pure ones, per list of
prefixes for the category matches (a rules version or a request's overrides).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bundlerec.categories import levels as category_levels
from bundlerec.gateway.rules.schema import EffectiveRules, Rules

if TYPE_CHECKING:
    from bundlerec.gateway.model import PageItem
    from bundlerec.gateway.rules.page import PageBundle

_MEMO_ENTRIES = 65_536  # distinct strings remembered; a catalogue has far fewer categories and brands


@functools.lru_cache(maxsize=_MEMO_ENTRIES)
def category_key(category: str, depth: int) -> tuple[str, ...]:
    """The category as the page counts it: its first `depth` levels (() when unknown)."""
    return category_levels(category)[:depth]


@functools.lru_cache(maxsize=_MEMO_ENTRIES)
def brand_key(brand: str) -> str:
    """A brand as rules compare it: trimmed and case-folded ("" when unknown)."""
    return brand.strip().casefold()


class CategoryMatcher(dict[str, bool]):
    """Category path -> whether it starts with one of some prefixes (whole levels); a path's answer
    is worked out on its first lookup, so a page's lookups are plain dict hits."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        super().__init__()
        self.prefixes = frozenset(category_levels(p) for p in prefixes)
        self.lengths = sorted({len(p) for p in self.prefixes})

    def __missing__(self, category: str) -> bool:
        levels = category_levels(category)
        answer = any(levels[:n] in self.prefixes for n in self.lengths)
        if len(self) >= _MEMO_ENTRIES:
            self.clear()
        self[category] = answer
        return answer


@functools.lru_cache(maxsize=256)  # one per list of prefixes in use: the rules file's and requests' overrides
def category_matcher(prefixes: tuple[str, ...]) -> CategoryMatcher:
    return CategoryMatcher(prefixes)


class Filters:
    """The filter rules, compiled once per page; each check runs only when its rule is set."""

    def __init__(self, rules: Rules, purchased: frozenset[str]) -> None:
        self.purchased = purchased if rules.exclude_purchased else frozenset()
        self.budget = rules.budget if isinstance(rules, EffectiveRules) else None
        self.blocked_items = frozenset(rules.blocklist_items)
        self.blocked_bundles = frozenset(rules.blocklist_bundles)
        self.min_size, self.max_size = rules.min_bundle_size, rules.max_bundle_size
        self.in_stock_only = rules.in_stock_only
        self.min_price, self.max_price = rules.min_price, rules.max_price
        self.checks_price = rules.min_price is not None or rules.max_price is not None
        self.rebuyable = category_matcher(tuple(rules.rebuyable_categories))
        self.include_categories = category_matcher(tuple(rules.include_categories))
        self.exclude_categories = category_matcher(tuple(rules.exclude_categories))
        self.include_brands = frozenset(b.strip().casefold() for b in rules.include_brands)
        self.exclude_brands = frozenset(b.strip().casefold() for b in rules.exclude_brands)
        self.checks_categories = bool(self.include_categories.prefixes or self.exclude_categories.prefixes)
        self.checks_brands = bool(self.include_brands or self.exclude_brands)

    def verdict(self, bundle: PageBundle) -> tuple[str, str] | None:
        """(rule, why) of the first rule that removes the bundle, or None when it may be shown."""
        items = bundle.items
        if bundle.bundle_id in self.blocked_bundles:
            return "blocklist", "the bundle is blocklisted"
        if self.blocked_items:
            for item in items:
                if item.item_id in self.blocked_items:
                    return "blocklist", f"item {item.item_id} is blocklisted"
        if not self.min_size <= len(items) <= self.max_size:
            return "bundle_size", f"{len(items)} items, allowed {self.min_size} to {self.max_size}"
        if self.in_stock_only:
            for item in items:
                if not item.in_stock:
                    return "in_stock_only", f"item {item.item_id} is out of stock"
        if self.purchased:
            for item in items:
                if item.item_id in self.purchased and not self.rebuyable[item.category]:
                    return "exclude_purchased", f"item {item.item_id} was already purchased"
        if self.checks_price:
            for item in items:
                if item.price is None:
                    continue  # unknown: no reason to hide it
                if (self.min_price is not None and item.price < self.min_price) or (
                    self.max_price is not None and item.price > self.max_price
                ):
                    return "price_range", f"item {item.item_id} costs {item.price:g}"
        if self.budget is not None:
            total = sum(item.price or 0.0 for item in items)
            if total > self.budget:
                return "budget", f"total {total:g} is above the budget {self.budget:g}"
        if self.checks_categories and (removed := self._categories(items)):
            return removed
        if self.checks_brands:
            return self._brands(items)
        return None

    def _categories(self, items: tuple[PageItem, ...]) -> tuple[str, str] | None:
        if self.exclude_categories.prefixes:
            for item in items:
                if self.exclude_categories[item.category]:
                    return "categories", f"item {item.item_id} is in an excluded category"
        if self.include_categories.prefixes and not any(self.include_categories[item.category] for item in items):
            return "categories", "no item is in an included category"
        return None

    def _brands(self, items: tuple[PageItem, ...]) -> tuple[str, str] | None:
        for item in items:
            if brand_key(item.brand) in self.exclude_brands:
                return "brands", f"item {item.item_id} is of an excluded brand"
        if self.include_brands and not any(brand_key(item.brand) in self.include_brands for item in items):
            return "brands", "no item is of an included brand"
        return None
