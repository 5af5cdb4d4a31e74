"""Bundles built for the request: a seed item (the page's anchor, the cart, or the requester's
newest item) plus complementary items among the retrieved candidates.

A complement is an item of another category than every member so far (a phone gets a case and a
charger, not a second phone), in stock, that keeps the bundle within the budget and is not a
near-duplicate of a member (same category, or titles sharing most of their words). It must also be
related to the seed: found through the seed itself (the candidate service's anchor source: bought
with it, or similar items of other categories), or of the seed's department (the first level of
its category path), so that a phone never gets dog food. Anchor complements come first, then
those bought together with the requester's items, then the rest, in retrieval order. Each further bundle
starts its search one complement later, so the built bundles differ rather than repeat one set.
The ranker then scores them like any curated bundle.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bundlerec.categories import department
from bundlerec.gateway.model import Found, PageItem
from bundlerec.sources import Source

NEAR_DUPLICATE_TITLES = 0.6  # Jaccard index of title words at or above which two items are the same thing
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class BuildLimits:
    min_size: int = 2
    max_size: int = 3
    max_bundles: int = 10
    budget: float | None = None


def complements_first(found: Sequence[Found]) -> list[Found]:
    """Item candidates in the order complements are tried: anchor complements, then co-occurrence,
    then the rest; retrieval order within each group."""

    def group(candidate: Found) -> int:
        if Source.ANCHOR in candidate.sources:
            return 0
        return 1 if Source.CO_OCCURRENCE in candidate.sources else 2

    return sorted(found, key=group)  # stable: retrieval order within a group


def related(seed: PageItem, candidate: Found, item: PageItem) -> bool:
    """Whether a candidate may complete a bundle of `seed`: an anchor complement, or same department."""
    return Source.ANCHOR in candidate.sources or department(item.category) == department(seed.category) != ""


def build_bundles(
    seed: PageItem, candidates: Sequence[PageItem], limits: BuildLimits, in_stock_only: bool = True
) -> list[tuple[PageItem, ...]]:
    """Up to `limits.max_bundles` distinct bundles of `seed` plus complements from `candidates`
    (related ones, already in the order to try them)."""
    if limits.max_size < 2 or (in_stock_only and not seed.in_stock):
        return []
    if limits.budget is not None and (seed.price or 0.0) > limits.budget:
        return []
    usable = [c for c in candidates if c.item_id != seed.item_id and (c.in_stock or not in_stock_only)]
    built: list[tuple[PageItem, ...]] = []
    seen: set[frozenset[str]] = set()
    for start in range(len(usable)):
        if len(built) >= limits.max_bundles:
            break
        members = [seed]
        total = seed.price or 0.0
        for item in usable[start:]:
            if len(members) >= limits.max_size:
                break
            price = item.price or 0.0
            if limits.budget is not None and total + price > limits.budget:
                continue
            if any(near_duplicates(item, member) for member in members):
                continue
            members.append(item)
            total += price
        key = frozenset(m.item_id for m in members)
        if len(members) >= max(2, limits.min_size) and key not in seen:
            seen.add(key)
            built.append(tuple(members))
    return built


def near_duplicates(a: PageItem, b: PageItem) -> bool:
    """Same category, or titles that share most of their words: one of the two is enough."""
    if a.category and a.category == b.category:
        return True
    words_a, words_b = title_words(a.title), title_words(b.title)
    if not words_a or not words_b:
        return False
    shared = len(words_a & words_b)
    return shared / (len(words_a) + len(words_b) - shared) >= NEAR_DUPLICATE_TITLES  # Jaccard index


@functools.lru_cache(maxsize=65_536)  # pure; asked of every candidate pair of every request
def title_words(title: str) -> frozenset[str]:
    """The words of a title, lower-cased."""
    return frozenset(_WORD.findall(title.lower()))
