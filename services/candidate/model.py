"""The catalogue and retrieval domain: plain data, no grpc, no SQL, no FAISS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bundlerec.events import EventType
from bundlerec.sources import Source

if TYPE_CHECKING:
    from bundlerec.candidate.ranking import Found

MAX_BUNDLE_FOR_PAIRS = 8  # larger bundles (reading lists...) say little about pairs of their items


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str = ""
    category: str = ""  # path, levels joined by " > "
    brand: str = ""
    price: float | None = None
    attributes: tuple[str, ...] = ()
    in_stock: bool = True
    stock_count: int | None = None
    external_vector: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Bundle:
    bundle_id: str
    item_ids: tuple[str, ...]
    title: str = ""


# How strongly a recent interaction says "more like this" when building the query.
INTERACTION_WEIGHTS = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 1.5,
    EventType.RATING: 1.5,
    EventType.LIKE: 2.0,
    EventType.ADD_TO_CART: 2.5,
    EventType.PURCHASE: 3.0,
}


@dataclass(frozen=True, slots=True)
class RecentInteraction:
    target_id: str
    is_bundle: bool
    kind: EventType
    at_us: int = 0


@dataclass(frozen=True, slots=True)
class Filter:
    in_stock_only: bool = False
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    include_brands: tuple[str, ...] = ()
    exclude_brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    exclude_item_ids: frozenset[str] = frozenset()
    exclude_bundle_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RetrievalRequest:
    recent: tuple[RecentInteraction, ...] = ()
    user_vector: tuple[float, ...] = ()
    anchor_item_id: str = ""
    item_limit: int = 200
    bundle_limit: int = 200
    filter: Filter = Filter()
    sources: frozenset[Source] = frozenset(Source)
    co_occurrence_floor: float = 0.0  # above 0: name what co-occurrence found items through (explanations)


@dataclass(slots=True)
class Candidate:
    target_id: str
    is_bundle: bool
    score: float
    sources: frozenset[Source] = frozenset()
    item_ids: tuple[str, ...] = ()


SOURCE_SETS = tuple(frozenset(s for s in Source if bits & (1 << s)) for bits in range(1 << (max(Source) + 1)))
"""By source bits (bit s set: source s found the candidate): the set of sources."""


@dataclass(frozen=True, slots=True)
class Retrieved:
    found_items: Found
    found_bundles: Found
    index_version: str

    @property
    def items(self) -> list[Candidate]:
        return self.found_items.candidates()

    @property
    def bundles(self) -> list[Candidate]:
        return self.found_bundles.candidates()
