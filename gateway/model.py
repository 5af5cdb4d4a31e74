"""The gateway's domain: what a recommendation request asks and what a page holds. Plain data,
no grpc. The other services' answers arrive here already translated by the adapters (clients.py)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bundlerec.events import EventType
from bundlerec.sources import Source


class Placement(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    HOME = "home"
    PRODUCT_PAGE = "product_page"
    CART = "cart"
    CHECKOUT = "checkout"
    EMAIL = "email"


class Stage(enum.StrEnum):
    PROFILE = "profile"
    CANDIDATES = "candidates"
    RANKER = "ranker"
    RULES = "rules"


@dataclass(frozen=True, slots=True)
class PageItem:
    """A catalogue item as a page shows it."""

    item_id: str
    title: str = ""
    category: str = ""  # path, levels joined by " > "
    brand: str = ""
    price: float | None = None  # None: unknown
    in_stock: bool = True


@dataclass(frozen=True, slots=True)
class HistoryStep:
    """One event of the requester's history, newest last."""

    target_id: str
    is_bundle: bool
    kind: EventType
    at_us: int
    category: str = ""


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, as the profile service answered (history, affinities, purchases, consent); what
    one request may use of it is ConsentPolicy's decision (consent.Allowed)."""

    user_id: str  # the user id, or the session id of an anonymous visitor
    anonymous: bool
    personalized: bool = False
    sensitive_allowed: bool = False
    history: tuple[HistoryStep, ...] = ()
    affinities: tuple[tuple[str, float], ...] = ()  # (category path, score), strongest first
    purchased: frozenset[str] = frozenset()  # items bought (the profile's whole record, not only `history`)


@dataclass(frozen=True, slots=True)
class Context:
    placement: Placement = Placement.UNSPECIFIED
    anchor_item_id: str = ""
    cart_item_ids: tuple[str, ...] = ()
    budget: float | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate from retrieval: an item (a bundle of one) or a catalogue bundle."""

    target_id: str
    is_bundle: bool
    score: float
    sources: frozenset[Source]
    item_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retrieved:
    items: tuple[Found, ...]
    bundles: tuple[Found, ...]
    # item candidate → the request's item co-occurrence found it through, and the pair's strength
    # in the shop's behaviour (asked with CandidateQuery.co_occurrence_floor): what "often bought
    # with" may claim
    bought_with: Mapping[str, tuple[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scored:
    """A bundle the ranker (or the fallback order) has scored: curated or built for this request."""

    bundle_id: str  # "" for a bundle built for this request
    items: tuple[PageItem, ...]
    score: float
    sources: frozenset[Source]
    generated: bool
    explored: bool = False  # given an exploration slot (exploration.py)
    retrieval_rank: int = 1_000_000  # a curated bundle's place in retrieval's order (0: best)


@dataclass(frozen=True, slots=True)
class Degradation:
    stage: Stage
    # "deadline_exceeded", "unavailable", "circuit_open", "rejected_<status>", "error_<status>"
    reason: str
    fallback: str  # "candidate_order", "cached_popular", "anonymous", "text_order" (Search), "none"


BundleKind = Literal["curated", "built", "featured", "explored"]


@dataclass(frozen=True, slots=True)
class Shown:
    """One bundle of the page, as the caller receives it."""

    bundle_id: str
    items: tuple[PageItem, ...]
    score: float
    explanation: str
    generated: bool
    sources: frozenset[Source]
    kind: BundleKind = "curated"

    @property
    def total_price(self) -> float:
        return sum(item.price or 0.0 for item in self.items)


@dataclass
class Recommendation:
    recommendation_id: str
    bundles: list[Shown]
    model_version: str
    variant: str
    personalized: bool
    degraded: list[Degradation] = field(default_factory=list)
    trace: Trace | None = None


@dataclass
class TraceStage:
    stage: Stage
    duration_ms: float
    counters: dict[str, float] = field(default_factory=dict)


TargetKind = Literal["bundle", "item"]
Action = Literal["removed", "moved_down", "pinned", "boosted"]


@dataclass(frozen=True, slots=True)
class RuleAction:
    """What a rule did to a bundle or an item, for a debug trace."""

    rule: str  # the rule's name in the rules file, a promotion's name, or "diversity"/"duplicate"
    target_kind: TargetKind
    target_id: str
    action: Action
    detail: str


@dataclass
class Trace:
    stages: list[TraceStage] = field(default_factory=list)
    actions: list[RuleAction] = field(default_factory=list)
