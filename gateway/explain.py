"""Short human-readable reasons for a bundle, from the evidence the pipeline has, never more.

Privacy: an explanation names an item of the requester's history or a category of their interest
only when the request is personalized, and never one in a sensitive category unless the requester
allowed sensitive categories. The anchor of the page is the request's own context, not history.
"""

from __future__ import annotations

from collections.abc import Mapping

from bundlerec.events import EventType
from bundlerec.gateway.model import Context, Requester, Scored, Source
from bundlerec.gateway.page import PageItem
from bundlerec.privacy import SensitiveCategories

_VERBS = {
    EventType.VIEW: "viewed",
    EventType.CLICK: "looked at",
    EventType.ADD_TO_CART: "added to your cart",
    EventType.PURCHASE: "bought",
    EventType.RATING: "rated",
    EventType.LIKE: "liked",
}


def usable_evidence(category: str, requester: Requester, sensitive: SensitiveCategories) -> bool:
    """Whether something of this category may be named or used as evidence for this requester."""
    return requester.sensitive_allowed or category not in sensitive


def explain(
    bundle: Scored,
    requester: Requester,
    anchor_id: str,
    context: Context,
    catalogue: Mapping[str, PageItem],
    sensitive: SensitiveCategories,
) -> str:
    """`anchor_id` is the item the request's bundles were built around: the page's, the cart's
    newest, or the history's newest (pipeline.Recommender._anchor)."""
    members = {item.item_id for item in bundle.items}
    anchor = catalogue.get(anchor_id)
    where = _where(anchor_id, context)
    if anchor is not None and where and anchor_id in members:
        return f"goes with the {anchor.title or 'item'} {where}"
    if requester.personalized:
        for step in reversed(requester.history):  # newest first
            item = catalogue.get(step.target_id)
            if step.is_bundle or item is None or not usable_evidence(item.category, requester, sensitive):
                continue
            verb = _VERBS.get(step.kind, "viewed")
            if step.target_id in members:
                return f"completes the {item.title or 'item'} you {verb}"
            if Source.CO_OCCURRENCE in bundle.sources or bundle.evidence == step.target_id:
                return f"often bought with the {item.title or 'item'} you {verb}"
            break
    if anchor is not None and where and Source.ANCHOR in bundle.sources:
        return f"goes with the {anchor.title or 'item'} {where}"
    if requester.personalized and (Source.VECTOR in bundle.sources or Source.TWO_TOWER in bundle.sources):
        for category, _ in requester.affinities:
            if category and usable_evidence(category, requester, sensitive):
                if any(item.category.startswith(category) for item in bundle.items):
                    return f"matches your interest in {category.split('>')[-1].strip()}"
    if not bundle.sources:  # no retrieval source: added for a promotion
        return "featured"
    if Source.POPULARITY in bundle.sources or not requester.personalized:
        return "popular right now"
    return "picked for you"


def _where(anchor_id: str, context: Context) -> str:
    """How to name the anchor when it is the request's context; "" when it came from the history."""
    if anchor_id and anchor_id == context.anchor_item_id:
        return "you're looking at"
    if anchor_id and anchor_id in context.cart_item_ids:
        return "in your cart"
    return ""
