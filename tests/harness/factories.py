"""Builders of valid API messages, so each test states only what it is about."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import pytest

from bundlerec.datasets import Dataset, read_dataset
from bundlerec.v1 import candidate_pb2, common_pb2, exposures_pb2

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the checkout
SCIENTIFIC = SHARED_DATA / "amazon-scientific"
YOUSHU = SHARED_DATA / "youshu"


def event(
    user_id: str,
    target_id: str = "item-1",
    *,
    kind: int = common_pb2.EVENT_TYPE_VIEW,
    target_type: int = common_pb2.TARGET_TYPE_ITEM,
    event_id: str | None = None,
    at: float | None = None,
    category: str = "",
    **fields: object,
) -> common_pb2.Event:
    seconds = time.time() if at is None else at
    return common_pb2.Event(
        event_id=event_id or uuid.uuid4().hex,
        user_id=user_id,
        type=kind,
        target=common_pb2.TargetRef(type=target_type, id=target_id),
        timestamp={"seconds": int(seconds), "nanos": int((seconds % 1) * 1e9)},
        category=category,
        **fields,
    )


def recent(*item_ids: str, kind: int = common_pb2.EVENT_TYPE_VIEW) -> list[candidate_pb2.RecentInteraction]:
    """A Retrieve request's recent interactions: these items, oldest first."""
    item = common_pb2.TARGET_TYPE_ITEM
    return [candidate_pb2.RecentInteraction(target=common_pb2.TargetRef(type=item, id=i), type=kind) for i in item_ids]


def exposure_page(
    requester: str,
    *,
    rec: str | None = None,
    at: float | None = None,
    anonymous: bool = False,
    variant: str = "a",
    bundles: list[tuple[str, list[str], list[float]]] | None = None,
) -> exposures_pb2.Exposure:
    shown = bundles or [("b-1", ["i-1", "i-2"], [10.0, 5.0]), ("", ["i-3", "i-4"], [3.0, 4.0])]
    seconds = time.time() if at is None else at
    return exposures_pb2.Exposure(
        recommendation_id=rec or uuid.uuid4().hex,
        requester_id=requester,
        anonymous=anonymous,
        variant=variant,
        variant_share=0.5,
        model_version="v1",
        placement="home",
        served_at={"seconds": int(seconds)},
        bundles=[
            exposures_pb2.ExposedBundle(
                position=n,
                bundle_id=bundle_id,
                item_ids=items,
                item_prices=prices,
                kind=common_pb2.BUNDLE_KIND_CURATED if bundle_id else common_pb2.BUNDLE_KIND_BUILT,
            )
            for n, (bundle_id, items, prices) in enumerate(shown)
        ],
        personalized=True,
    )


def youshu_sample(users: int = 150) -> Dataset:
    """The first `users` users of Youshu with every bundle and item: bundle data, where held-out
    bundles the sample never interacted with have no row of their own (scored by their members)."""
    if not YOUSHU.is_dir():
        pytest.skip("../shared/data/youshu is not available")
    full = read_dataset(YOUSHU)
    keep = set(sorted({e.user_id for e in full.events})[:users])
    return dataclasses.replace(
        full,
        events=[e for e in full.events if e.user_id in keep],
        valid=[r for r in full.valid if r.user_id in keep],
        test=[r for r in full.test if r.user_id in keep],
    )
