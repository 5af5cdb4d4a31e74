"""Checks of catalogue writes: every field named in the error (INVALID_ARGUMENT)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bundlerec import validation
from bundlerec.candidate.model import Bundle, Item
from bundlerec.errors import InvalidArgument

MAX_BATCH = 1000
MAX_AVAILABILITY = 10_000


def items(items: Sequence[Item], external_dim: int) -> None:
    batch("items", items)
    seen: set[str] = set()
    for i, it in enumerate(items):
        item(f"items[{i}]", it, external_dim)
        if it.item_id in seen:
            raise InvalidArgument(f"items[{i}].item_id", f"repeats {it.item_id!r}")
        seen.add(it.item_id)


def item(field: str, item: Item, external_dim: int) -> None:
    validation.identifier(f"{field}.item_id", item.item_id)
    validation.text(f"{field}.title", item.title, max_length=1024)
    validation.text(f"{field}.category", item.category, max_length=512)
    validation.text(f"{field}.brand", item.brand, max_length=256)
    if item.price is not None:
        validation.finite(f"{field}.price", item.price)
        if item.price < 0:
            raise InvalidArgument(f"{field}.price", "must not be negative")
    if len(item.attributes) > 64:
        raise InvalidArgument(f"{field}.attributes", "at most 64 attributes")
    for j, attribute in enumerate(item.attributes):
        validation.text(f"{field}.attributes[{j}]", attribute, max_length=128)
    if item.stock_count is not None and item.stock_count < 0:
        raise InvalidArgument(f"{field}.availability.stock_count", "must not be negative")
    if item.external_vector:
        expected = external_dim
        if len(item.external_vector) != expected:
            problem = (
                "external vectors are disabled (external_vector_dim=0)"
                if not expected
                else (f"has {len(item.external_vector)} dimensions; this catalogue uses {expected}")
            )
            raise InvalidArgument(f"{field}.external_vector", problem)
        if not all(math.isfinite(x) for x in item.external_vector):
            raise InvalidArgument(f"{field}.external_vector", "must contain only finite numbers")


def bundles(bundles: Sequence[Bundle]) -> None:
    batch("bundles", bundles)
    seen: set[str] = set()
    for i, bundle in enumerate(bundles):
        validation.identifier(f"bundles[{i}].bundle_id", bundle.bundle_id)
        validation.text(f"bundles[{i}].title", bundle.title, max_length=1024)
        if not bundle.item_ids:
            raise InvalidArgument(f"bundles[{i}].item_ids", "a bundle needs at least one item")
        validation.identifiers(f"bundles[{i}].item_ids", bundle.item_ids, max_count=100)
        if bundle.bundle_id in seen:
            raise InvalidArgument(f"bundles[{i}].bundle_id", f"repeats {bundle.bundle_id!r}")
        seen.add(bundle.bundle_id)


def availability(updates: Sequence[tuple[str, bool, int | None]]) -> None:
    if not updates:
        raise InvalidArgument("updates", "must contain at least one update")
    if len(updates) > MAX_AVAILABILITY:
        raise InvalidArgument("updates", f"has {len(updates)} updates; at most {MAX_AVAILABILITY}")
    for i, (item_id, _, count) in enumerate(updates):
        validation.identifier(f"updates[{i}].item_id", item_id)
        if count is not None and count < 0:
            raise InvalidArgument(f"updates[{i}].availability.stock_count", "must not be negative")


def batch(field: str, values: Sequence[object]) -> None:
    if not values:
        raise InvalidArgument(field, "must contain at least one entry")
    if len(values) > MAX_BATCH:
        raise InvalidArgument(field, f"has {len(values)} entries; at most {MAX_BATCH} per request")
