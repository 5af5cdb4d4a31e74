"""The pages of a fixed seed, pinned: the same bundles, in the same order, with the same items and
explanations, for several shoppers and placements of the demo shop (tests/golden/pinned_pages.json).

A change that is meant to leave recommendations alone (a speed-up, a refactoring) must keep this
test green. A change that means to alter them regenerates the file on purpose and says why:

    BUNDLEREC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_pinned_pages.py

Runs on copies of the suite's stores, so no other test's writes (tracked events, consent) and no
earlier page's impressions reach these pages.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bundlerec.v1 import gateway_pb2
from tests.harness.shops import Suite, buyer, copied, running_suite

GOLDEN = Path(__file__).parent / "golden" / "pinned_pages.json"
PLACEMENTS = {
    "home": gateway_pb2.PLACEMENT_HOME,
    "product_page": gateway_pb2.PLACEMENT_PRODUCT_PAGE,
    "cart": gateway_pb2.PLACEMENT_CART,
    "email": gateway_pb2.PLACEMENT_EMAIL,
}


def requests(shop: Suite) -> dict[str, gateway_pb2.RecommendRequest]:
    """Named requests: three shoppers (the heaviest buyer and two others) on every placement, and an
    anonymous visitor on a product page and a cart."""
    users = sorted(shop.purchases)
    shoppers = [buyer(shop), users[0], users[len(users) // 2]]
    items = sorted(shop.items)
    anchor, cart = items[len(items) // 3], [items[5], items[len(items) // 2]]
    out = {}
    for user in shoppers:
        for name, placement in PLACEMENTS.items():
            context = gateway_pb2.RecommendContext(placement=placement)
            if name == "product_page":
                context.anchor_item_id = anchor
            if name == "cart":
                context.cart_item_ids.extend(cart)
            out[f"{user}/{name}"] = gateway_pb2.RecommendRequest(user_id=user, context=context, page_size=8)
    anonymous = gateway_pb2.RecommendContext(placement=gateway_pb2.PLACEMENT_PRODUCT_PAGE, anchor_item_id=anchor)
    out["anonymous/product_page"] = gateway_pb2.RecommendRequest(session_id="s-pinned", context=anonymous, page_size=8)
    in_cart = gateway_pb2.RecommendContext(placement=gateway_pb2.PLACEMENT_CART, cart_item_ids=cart)
    out["anonymous/cart"] = gateway_pb2.RecommendRequest(session_id="s-pinned-2", context=in_cart, page_size=8)
    return out


def page(response: gateway_pb2.RecommendResponse) -> dict[str, object]:
    return {
        "personalized": response.personalized,
        "degraded": [f"{gateway_pb2.Stage.Name(d.stage)}: {d.reason}" for d in response.degraded],
        "bundles": [
            {
                "bundle_id": b.bundle_id,
                "items": [i.item_id for i in b.items],
                "explanation": b.explanation,
                "generated": b.generated,
            }
            for b in response.bundles
        ],
    }


async def test_the_pages_of_a_fixed_seed_are_unchanged(suite: Suite, encoder_dir: str, tmp_path: Path) -> None:
    pages = {}
    async with running_suite(copied(suite, tmp_path), encoder_dir) as running:
        for name, request in requests(suite).items():
            pages[name] = page(await running.stub.Recommend(request))
    degraded = {name: p["degraded"] for name, p in pages.items() if p["degraded"]}
    assert not degraded, f"a stage degraded, the pins would not mean anything: {degraded}"
    assert sum(len(p["bundles"]) for p in pages.values()) >= 5 * len(pages)  # type: ignore[arg-type]
    if os.environ.get("BUNDLEREC_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(pages, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    pinned = json.loads(GOLDEN.read_text())
    assert sorted(pages) == sorted(pinned)
    for name in pinned:
        assert pages[name] == pinned[name], f"the page of {name} changed"
