"""Short human-readable reasons for a bundle, from the evidence the pipeline has, never more.

Privacy: an explanation names only what the request may use (consent.Allowed): an item of the
history or a category of interest only when the request is personalized, never one in a sensitive
category without that consent. The anchor of the page is the request's own context, not history.
"""

from __future__ import annotations

from collections.abc import Mapping

from bundlerec import categories
from bundlerec.events import EventType
from bundlerec.gateway.consent import Allowed
from bundlerec.gateway.model import Context, PageItem, Scored
from bundlerec.sources import Source

_VERBS = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "looked at",
    EventType.ADD_TO_CART: "added to your cart",
    EventType.PURCHASE: "bought",
    EventType.RATING: "rated",
    EventType.LIKE: "liked",
}


def explain(
    bundle: Scored, allowed: Allowed, anchor_id: str, context: Context, catalogue: Mapping[str, PageItem]
) -> str:
    """`anchor_id` is the item the request's bundles were built around: the page's, the cart's
    newest, or the history's newest (pipeline.Recommender._anchor)."""
    if bundle.explored:  # shown little: on the page to learn whether shoppers like it
        return "new: we think it may suit you"
    members = {item.item_id for item in bundle.items}
    anchor = catalogue.get(anchor_id)
    where = _where(anchor_id, context)
    if anchor is not None and where and anchor_id in members:
        return f"goes with the {anchor.title or 'item'} {where}"
    if allowed.personalized:
        for step in reversed(allowed.history):  # newest first
            item = catalogue.get(step.target_id)
            if step.is_bundle or item is None or not allowed.evidence(item.category):
                continue
            verb = _VERBS.get(step.kind, "viewed")
            if step.target_id in members:
                return f"completes the {item.title or 'item'} you {verb}"
            if Source.CO_OCCURRENCE in bundle.sources or bundle.evidence == step.target_id:
                return f"often bought with the {item.title or 'item'} you {verb}"
            break
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


def _where(anchor_id: str, context: Context) -> str:
    """How to name the anchor when it is the request's context; "" when it came from the history."""
    if anchor_id and anchor_id == context.anchor_item_id:
        return "you're looking at"
    if anchor_id and anchor_id in context.cart_item_ids:
        return "in your cart"
    return ""
