"""The behaviour vocabulary every service shares: what a user did, to what, and how much it says."""

from __future__ import annotations

import enum


class EventType(enum.StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    LIKE = "like"


class TargetType(enum.StrEnum):
    ITEM = "item"
    BUNDLE = "bundle"


# How much each kind of event says about interest: used for affinity, popularity and co-occurrence.
EVENT_WEIGHTS: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 2.0,
    EventType.RATING: 2.0,
    EventType.LIKE: 3.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.PURCHASE: 5.0,
}
