"""Short human-readable reasons for a bundle, from the evidence the pipeline has, never more.

Privacy: an explanation names only what the request may use (consent.Allowed): an item of the
history or a category of interest only when the request is personalized, never one in a sensitive
category without that consent. The anchor of the page is the request's own context, not history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bundlerec import categories
from bundlerec.events import EventType
from bundlerec.gateway.consent import Allowed
from bundlerec.gateway.model import Context, PageItem, Scored
from bundlerec.sources import Source

MIN_CO_OCCURRENCE = 3.0  # the least pair strength "often bought with" claims (the gateway's setting's default)
_VERBS = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "looked at",
    EventType.ADD_TO_CART: "added to your cart",
    EventType.PURCHASE: "bought",
    EventType.RATING: "rated",
    EventType.LIKE: "liked",
}


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one request's explanations may draw on."""

    allowed: Allowed  # what the request may use of who asks (consent)
    anchor_id: str  # the item its bundles were built around (pipeline.Recommender._anchor)
    context: Context
    catalogue: Mapping[str, PageItem]
    # item → (the request's item co-occurrence found it through, the pair's strength): Retrieved.bought_with
    bought_with: Mapping[str, tuple[str, float]] = field(default_factory=dict)


def explain(bundle: Scored, evidence: Evidence, min_co_occurrence: float = MIN_CO_OCCURRENCE) -> str:
    """One bundle's reason. "Often bought with X" is said only when retrieval found a member through
    its co-occurrence with X (an item of the history the request may use) and the pair's strength
    in the shop's behaviour is at least `min_co_occurrence`."""
    allowed, anchor_id, catalogue = evidence.allowed, evidence.anchor_id, evidence.catalogue
    if bundle.explored:  # shown little: on the page to learn whether shoppers like it
        return "new: we think it may suit you"
    members = {item.item_id for item in bundle.items}
    anchor = catalogue.get(anchor_id)
    where = _where(anchor_id, evidence.context)
    if anchor is not None and where and anchor_id in members:
        return f"goes with the {anchor.title or 'item'} {where}"
    if allowed.personalized:
        usable = [
            (step, item)
            for step in reversed(allowed.history)  # newest first
            if not step.is_bundle
            and (item := catalogue.get(step.target_id)) is not None
            and allowed.evidence(item.category)
        ]
        if usable and usable[0][0].target_id in members:
            step, item = usable[0]
            return f"completes the {item.title or 'item'} you {_VERBS.get(step.kind, 'viewed')}"
        paired = _paired(bundle, evidence.bought_with, min_co_occurrence)
        for step, item in usable:
            if step.target_id in paired:
                return f"often bought with the {item.title or 'item'} you {_VERBS.get(step.kind, 'viewed')}"
    if anchor is not None and where and Source.ANCHOR in bundle.sources:
        return f"goes with the {anchor.title or 'item'} {where}"
    if allowed.personalized and (Source.VECTOR in bundle.sources or Source.TWO_TOWER in bundle.sources):
        for category, _ in allowed.affinities:
            if category and allowed.evidence(category):
                if any(categories.within(item.category, category) for item in bundle.items):
                    return f"matches your interest in {category.split('>')[-1].strip()}"
    if not bundle.sources:  # no retrieval source: added for a promotion
        return "featured"
    if Source.POPULARITY in bundle.sources or not allowed.personalized:
        return "popular right now"
    return "picked for you"


def _paired(bundle: Scored, bought_with: Mapping[str, tuple[str, float]], least: float) -> set[str]:
    """The request's items a member of `bundle` was found through, at a strength of at least `least`."""
    found = (bought_with.get(item.item_id) for item in bundle.items)
    return {through for through, strength in filter(None, found) if strength >= least}


def _where(anchor_id: str, context: Context) -> str:
    """How to name the anchor when it is the request's context; "" when it came from the history."""
    if anchor_id and anchor_id == context.anchor_item_id:
        return "you're looking at"
    if anchor_id and anchor_id in context.cart_item_ids:
        return "in your cart"
    return ""
