"""The exposure log's domain: pages the gateway served, and which later events count as their
outcomes (attribution). Plain data and rules; the SQL is exposure_store.py.

Attribution. An accepted event that came back with a page's recommendation id is an outcome of
that page when
- it is a click, an add to cart or a purchase,
- its target is a bundle the page showed, or an item of one (the first such bundle on the page),
- it happened no earlier than the page was served (less the clock skew clients are allowed) and
  within the attribution window after it.
A purchase's revenue is the price the page showed for what was bought: the bundle's total, or the
item's. Outcomes are stored as events arrive and matched to their page when read, so an event that
overtakes its page (the gateway records pages in the background) is attributed all the same.

Who a page names. Its requester is kept as a keyed hash (`pseudonym`), and only when they may be
linked: an anonymous session, or a user whose stored consent allows personalization. Any other page
is kept unlinked: it counts in reports, and nothing joins it to a person.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bundlerec.events import EventType, TargetType

OUTCOME_TYPES = (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)
ENGAGED, PURCHASED, SHOWN = "engaged", "purchased", "shown"  # the per-bundle measures exploration reads
PLACEMENTS = ("unspecified", "home", "product_page", "cart", "checkout", "email")
MAX_BUNDLES = 50  # a page's, and a bundle's items


@dataclass(frozen=True, slots=True)
class ExposedBundle:
    position: int
    bundle_id: str  # "" for a bundle built for the request
    item_ids: tuple[str, ...]
    item_prices: tuple[float, ...]  # one per item, 0.0 when unknown
    kind: str  # curated, built (for the request), featured (a promotion), explored

    def row(self) -> list[object]:
        return [self.position, self.bundle_id, list(self.item_ids), list(self.item_prices), self.kind]

    @classmethod
    def of_row(cls, row: Sequence[object]) -> ExposedBundle:
        position, bundle_id, items, prices, kind = row
        return cls(int(position), str(bundle_id), tuple(items), tuple(map(float, prices)), str(kind))  # type: ignore[arg-type, call-overload]


@dataclass(frozen=True, slots=True)
class Exposure:
    """A page as the gateway reports it (checked by the servicer)."""

    recommendation_id: str
    requester_id: str  # user or session id; "" when unknown
    anonymous: bool
    variant: str
    variant_share: float
    model_version: str
    placement: str
    served_at_us: int
    bundles: tuple[ExposedBundle, ...]
    personalized: bool = False
    degraded: bool = False
    segment: str = ""  # what the page was about: its per-segment counts (exploration)


@dataclass(frozen=True, slots=True)
class Outcome:
    type: EventType
    position: int
    revenue: float
    occurred_at_us: int


@dataclass(frozen=True, slots=True)
class ExposedPage:
    """A page as a report reads it: pseudonymous, with its attributed outcomes."""

    recommendation_id: str
    requester: str  # pseudonym, "" when unlinked
    variant: str
    variant_share: float
    model_version: str
    placement: str
    served_at_us: int
    bundles: tuple[ExposedBundle, ...]
    outcomes: tuple[Outcome, ...]
    personalized: bool
    degraded: bool
    seq: int = 0  # its place in the log (the listing's page token)
    segment: str = ""

    def size(self) -> int:
        """About how many bytes its message takes."""
        ids = sum(len(b.bundle_id) + sum(len(i) + 11 for i in b.item_ids) + 12 for b in self.bundles)
        return 200 + len(self.recommendation_id) + len(self.model_version) + ids + 24 * len(self.outcomes)


@dataclass(frozen=True, slots=True)
class RawOutcome:
    """An event with a recommendation id, as stored before it is matched to its page."""

    target_type: TargetType
    target_id: str
    type: EventType
    occurred_at_us: int


@dataclass(frozen=True, slots=True)
class BundleOutcome:
    bundle_id: str
    segment: str  # "": all the bundle's pages
    shown: int
    engaged: int
    purchased: int


def pseudonym(secret: bytes, requester_id: str) -> str:
    """The keyed hash a requester is kept under (its own domain: never equal to an event key)."""
    return hmac.new(secret, b"exposure\0" + requester_id.encode(), hashlib.sha256).hexdigest()[:32]


def attribute(
    bundles: Sequence[ExposedBundle], served_at_us: int, raw: RawOutcome, window_us: int, skew_us: int
) -> Outcome | None:
    """`raw` as an outcome of the page, or None when it is not one (see the module's rules)."""
    if raw.type not in OUTCOME_TYPES:
        return None
    if not served_at_us - skew_us <= raw.occurred_at_us <= served_at_us + window_us:
        return None
    for bundle in bundles:
        if raw.target_type is TargetType.BUNDLE:
            if bundle.bundle_id and bundle.bundle_id == raw.target_id:
                return Outcome(raw.type, bundle.position, _revenue(raw, sum(bundle.item_prices)), raw.occurred_at_us)
        elif raw.target_id in bundle.item_ids:
            price = bundle.item_prices[bundle.item_ids.index(raw.target_id)]
            return Outcome(raw.type, bundle.position, _revenue(raw, price), raw.occurred_at_us)
    return None


def _revenue(raw: RawOutcome, price: float) -> float:
    return price if raw.type is EventType.PURCHASE else 0.0


def credited(bundles: Sequence[ExposedBundle], outcomes: Iterable[Outcome]) -> set[tuple[str, str]]:
    """(catalogue bundle id, measure) pairs these outcomes earn a page: each bundle is engaged or
    purchased at most once per page, however many events it drew (counted for all its pages and
    for the page's segment: exposure_store.per_segment)."""
    at = {b.position: b.bundle_id for b in bundles if b.bundle_id}
    earned: set[tuple[str, str]] = set()
    for outcome in outcomes:
        bundle_id = at.get(outcome.position)
        if bundle_id:
            earned.add((bundle_id, ENGAGED))
            if outcome.type is EventType.PURCHASE:
                earned.add((bundle_id, PURCHASED))
    return earned


def shown_bundles(bundles: Sequence[ExposedBundle]) -> set[str]:
    return {b.bundle_id for b in bundles if b.bundle_id}
