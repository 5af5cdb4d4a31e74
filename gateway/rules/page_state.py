"""What the page assembly (page.py) keeps: each surviving bundle as the diversity fill compares
it, and the page so far as its caps need it. Pure: no I/O, no grpc.

A page of ~10 reads only the best part of its ~100 input bundles, so a bundle's filter verdict,
relevance and keys are worked out the first time the page looks at it (Candidates), best score
first. A page numbers the items and category keys it meets, so that a bundle's items and
categories are the bits of two ints: the similarity of two bundles is then a few integer
operations rather than set algebra over tuples, and each item's category is cut to its key once
per page, not per pair. The brands and category keys themselves are worked out only for the few
bundles that reach the caps (the picks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bundlerec.gateway.rules.filters import Filters, brand_key, category_key
from bundlerec.gateway.rules.schema import Promotion, Rules

if TYPE_CHECKING:
    from bundlerec.gateway.rules.page import PageBundle


@dataclass(slots=True, eq=False)
class Candidate:
    """A bundle that passed the filters, with what the page fill compares."""

    bundle: PageBundle
    order: int  # position in the input: breaks ties
    item_bits: int  # its items and category keys as bits of the page's numbering (PageKeys)
    category_bits: int
    relevance: float = 0.0
    boost: float = 0.0
    boosted_by: tuple[str, ...] = ()
    max_similarity: float = 0.0
    chosen_relevance: float = 0.0  # the relevance it was chosen with (boost included while the share lasted)
    caps: tuple[frozenset[str], frozenset[tuple[str, ...]]] | None = None  # see cap_keys

    @property
    def item_ids(self) -> frozenset[str]:
        return frozenset([item.item_id for item in self.bundle.items])

    def cap_keys(self, depth: int) -> tuple[frozenset[str], frozenset[tuple[str, ...]]]:
        """Its brands and category keys, worked out for the few bundles that reach the page's caps."""
        if self.caps is None:
            items = self.bundle.items
            brands = frozenset([b for item in items if (b := brand_key(item.brand))])
            self.caps = brands, frozenset([c for item in items if (c := category_key(item.category, depth))])
        return self.caps


class PageKeys:
    """Numbers the items and category keys met on one page, so that a bundle's items and its
    categories are the bits of two ints (apart: no item shares a bit with a category): the
    similarity of two bundles is then a few integer operations, and each item's category is cut
    to its key once per page, not once per pair."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.item_bit: dict[str, int] = {}
        self.category_bit: dict[str, int] = {}  # category path -> the bit of its key; 0: no category
        self.key_bit: dict[tuple[str, ...], int] = {}
        self.used = 0  # bits given out

    def candidate(self, bundle: PageBundle, order: int) -> Candidate:
        item_bits = category_bits = 0
        for item in bundle.items:
            bit = self.item_bit.get(item.item_id)
            if bit is None:
                bit = self.item_bit[item.item_id] = self._new_bit()
            item_bits |= bit
            bit = self.category_bit.get(item.category)
            if bit is None:
                bit = self.category_bit[item.category] = self._key_bit(item.category)
            category_bits |= bit
        return Candidate(bundle, order, item_bits, category_bits)

    def _key_bit(self, category: str) -> int:
        key = category_key(category, self.depth)
        if not key:
            return 0
        bit = self.key_bit.get(key)
        if bit is None:
            bit = self.key_bit[key] = self._new_bit()
        return bit

    def _new_bit(self) -> int:
        self.used += 1
        return 1 << (self.used - 1)


def promotes(promotion: Promotion, bundle: PageBundle) -> bool:
    if promotion.bundle_id:
        return bundle.bundle_id == promotion.bundle_id
    item_id = promotion.item_id
    for item in bundle.items:
        if item.item_id == item_id:
            return True
    return False


class Candidates:
    """The input bundles as the page meets them: a bundle's filter verdict, and for a survivor its
    Candidate (keys, relevance, boosts), are worked out on the page's first look at it.

    Relevance is the score min-max normalised over the survivors (all equal: 1), so that boosts
    and the diversity weight mean the same whatever scale the ranker's scores have. `by_score`
    holds the input positions best score first (the first of equals first), the order in which
    the page fill looks at them; None when a score (or their span) is not finite, and then the
    fill looks at all of them.
    """

    def __init__(self, ranked: Sequence[PageBundle], rules: Rules, filters: Filters, passed: list[bool | None]) -> None:
        self.ranked = ranked
        self.filters = filters
        self.passed = passed  # per input position: a survivor? None: not asked yet
        self.keys = PageKeys(rules.category_depth)
        self.boosts = [p for p in rules.promotions if p.kind == "boost"]
        self.boosted = _promoted(ranked, self.boosts)  # input positions a boost names, ascending
        self.boosted_at = frozenset(self.boosted)
        self.made: dict[int, Candidate] = {}
        self.scores = [bundle.score for bundle in ranked]
        self.low, self.span, self.by_score = self._scale()

    def survives(self, i: int) -> bool:
        passed = self.passed[i]
        if passed is None:
            passed = self.passed[i] = self.filters.verdict(self.ranked[i]) is None
        return passed

    def get(self, i: int) -> Candidate | None:
        """The candidate at input position i; None when the filters (or a duplicate) removed it."""
        c = self.made.get(i)
        if c is not None:
            return c
        passed = self.passed[i]
        if passed is None:
            passed = self.passed[i] = self.filters.verdict(self.ranked[i]) is None
        if not passed:
            return None
        bundle = self.ranked[i]
        c = self.made[i] = self.keys.candidate(bundle, i)
        c.relevance = self.relevance(bundle.score)
        if i in self.boosted_at:
            for promotion in self.boosts:
                if promotes(promotion, bundle):
                    c.boost += promotion.boost
                    c.boosted_by += (promotion.name,)
        return c

    def relevance(self, score: float) -> float:
        return (score - self.low) / self.span if self.span > 0 else 1.0

    def _scale(self) -> tuple[float, float, list[int] | None]:
        """(lowest score, highest - lowest) over the survivors, and by_score.

        The same values as min() and max() over the survivors in input order, which keep the
        first of equal scores (0.0 and -0.0 are equal), asking the filters only from either end
        of by_score until a survivor."""
        scores, n, survives = self.scores, len(self.scores), self.survives
        if all(map(math.isfinite, scores)):
            by_score = sorted(range(n), key=scores.__getitem__, reverse=True)  # stable: the first of equals first
            high = next((scores[i] for i in by_score if survives(i)), None)
            if high is None:
                return 0.0, 0.0, by_score
            last = next(k for k in range(n - 1, -1, -1) if survives(by_score[k]))
            first = last  # of the equal lowest scores, whose survivors are in input order
            while first > 0 and scores[by_score[first - 1]] == scores[by_score[last]]:
                first -= 1
            low = next(scores[i] for i in by_score[first : last + 1] if survives(i))
            if math.isfinite(high - low):
                return low, high - low, by_score
        survivors = [scores[i] for i in range(n) if survives(i)]
        if not survivors:
            return 0.0, 0.0, None
        low = min(survivors)
        return low, max(survivors) - low, None


def _promoted(ranked: Sequence[PageBundle], boosts: Sequence[Promotion]) -> list[int]:
    if not boosts:
        return []
    bundle_ids = {p.bundle_id for p in boosts if p.bundle_id}
    item_ids = {p.item_id for p in boosts if not p.bundle_id}
    return [
        i
        for i, bundle in enumerate(ranked)
        if bundle.bundle_id in bundle_ids or not item_ids.isdisjoint([item.item_id for item in bundle.items])
    ]


def similarity(a: Candidate, b: Candidate) -> float:
    """1 when the bundles share an item, else the Jaccard index of their category keys."""
    if a.item_bits & b.item_bits:
        return 1.0
    union = (a.category_bits | b.category_bits).bit_count()
    return (a.category_bits & b.category_bits).bit_count() / union if union else 0.0


class PageState:
    """What is on the page so far, for unique_items and the per-brand and per-category caps."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.chosen: list[Candidate] = []
        self.items: set[str] = set()
        self.item_bits = 0  # the same items, as PageKeys numbers them
        self.brands: dict[str, int] = {}  # brand -> bundles on the page with it
        self.categories: dict[tuple[str, ...], int] = {}

    def conflict(self, c: Candidate, *, caps: bool = True) -> tuple[str, str] | None:
        r = self.rules
        if r.unique_items and c.item_bits & self.item_bits:
            return "unique_items", f"item {min(c.item_ids & self.items)} is already on the page"
        if not caps:
            return None
        brands, categories = c.cap_keys(r.category_depth)
        if r.max_per_brand is not None:
            for brand in sorted(brands):
                if self.brands.get(brand, 0) >= r.max_per_brand:
                    return "max_per_brand", f"brand {brand} is already on {r.max_per_brand} bundles"
        if r.max_per_category is not None:
            for category in sorted(categories):
                if self.categories.get(category, 0) >= r.max_per_category:
                    return "max_per_category", f"{' > '.join(category)} is already on {r.max_per_category} bundles"
        return None

    def add(self, c: Candidate) -> None:
        self.chosen.append(c)
        self.items |= c.item_ids
        self.item_bits |= c.item_bits
        brands, categories = c.cap_keys(self.rules.category_depth)
        for brand in brands:
            self.brands[brand] = self.brands.get(brand, 0) + 1
        for category in categories:
            self.categories[category] = self.categories.get(category, 0) + 1
