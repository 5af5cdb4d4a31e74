"""`bundlerec simulate`: synthetic shoppers (bundlerec/online/simulator.py) against a running gateway.

    bundlerec simulate --gateway 127.0.0.1:50050 --shoppers 200 --days 7 --seed 1

Each shopper gets pages through Recommend and Search and answers through Track, with the page's
recommendation id, so the exposure log attributes what they did; then `bundlerec experiments report`
tells what each experiment variant's pages drew. Prints the simulator's own count per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import grpc

from bundlerec.client import add_security_flags, security_from
from bundlerec.online.simulator import (
    Action,
    ShownBundle,
    ShownItem,
    ShownPage,
    Simulation,
    SimulationSettings,
    simulate,
)
from bundlerec.runtime.tls import ChannelSecurity, open_channel
from bundlerec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from bundlerec.v1_events import BUNDLE_KINDS

TIMEOUT_S = 10.0
PLACEMENTS = {"home": gateway_pb2.PLACEMENT_HOME, "product_page": gateway_pb2.PLACEMENT_PRODUCT_PAGE}
EVENT_TYPES = {
    "view": common_pb2.EVENT_TYPE_VIEW,
    "click": common_pb2.EVENT_TYPE_CLICK,
    "add_to_cart": common_pb2.EVENT_TYPE_ADD_TO_CART,
    "purchase": common_pb2.EVENT_TYPE_PURCHASE,
}


def _item(pb: common_pb2.Item) -> ShownItem:
    return ShownItem(pb.item_id, pb.category, pb.brand, pb.price)


RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class GatewayShop:
    """The simulator's shop (simulator.ShopPort): the gateway's public API. A call the gateway
    could not serve (UNAVAILABLE, DEADLINE_EXCEEDED) is retried twice, as a shop's client would
    (event and impression ids make a retried Track safe); `retries` counts them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        self.retries = 0

    async def _call(self, method, request):  # type: ignore[no-untyped-def]
        for attempt in range(3):
            try:
                return await method(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED or attempt == 2:
                    raise
                self.retries += 1
                await asyncio.sleep(0.5 * 2**attempt)

    async def recommend(self, user_id: str, placement: str, anchor: str, page_size: int) -> ShownPage:
        context = gateway_pb2.RecommendContext(placement=PLACEMENTS[placement], anchor_item_id=anchor)
        request = gateway_pb2.RecommendRequest(user_id=user_id, context=context, page_size=page_size)
        reply = await self._call(self.stub.Recommend, request)
        bundles = tuple(
            ShownBundle(b.bundle_id, tuple(_item(i) for i in b.items), BUNDLE_KINDS.get(b.kind, "curated"))
            for b in reply.bundles
        )
        return ShownPage(reply.recommendation_id, reply.experiment_variant, bundles)

    async def search(self, user_id: str, query: str, page_size: int) -> list[ShownItem]:
        request = gateway_pb2.SearchRequest(user_id=user_id, query=query, page_size=page_size)
        reply = await self._call(self.stub.Search, request)
        return [_item(r.item) for r in reply.results]

    async def track(self, actions: Sequence[Action], impressions: Sequence[tuple[str, str, ShownBundle, int]]) -> None:
        if not actions and not impressions:
            return
        request = gateway_pb2.TrackRequest(
            events=[
                common_pb2.Event(
                    event_id=uuid.uuid4().hex,
                    user_id=a.user_id,
                    type=EVENT_TYPES[a.kind],
                    target=common_pb2.TargetRef(
                        type=common_pb2.TARGET_TYPE_BUNDLE if a.is_bundle else common_pb2.TARGET_TYPE_ITEM,
                        id=a.target_id,
                    ),
                    category=a.category,
                    recommendation_id=a.recommendation_id,
                )
                for a in actions
            ],
            impressions=[
                gateway_pb2.Impression(
                    impression_id=f"{rec}:{position}",
                    user_id=user,
                    recommendation_id=rec,
                    bundle_id=bundle.bundle_id,
                    item_ids=[i.item_id for i in bundle.items],
                    position=position,
                )
                for user, rec, bundle, position in impressions
            ],
        )
        await self._call(self.stub.Track, request)


def add_simulate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default="127.0.0.1:50050", help="the gateway (default: %(default)s)")
    parser.add_argument("--shoppers", type=int, default=100, help="simulated shoppers (default: %(default)s)")
    parser.add_argument("--days", type=int, default=7, help="days, each a round of visits (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same shoppers (default: %(default)s)")
    parser.add_argument("--page-size", type=int, default=6, help="bundles per page (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="shoppers visiting at once (default: %(default)s)")
    parser.add_argument("--json", default="", help="write every page seen and what was done with it here")
    add_security_flags(parser)


def run_simulate(args: argparse.Namespace) -> int:
    problems = [
        f"--{name} must be {rule}"
        for name, ok, rule in (
            ("shoppers", 1 <= args.shoppers <= 1_000_000, "1 to 1000000"),
            ("days", 1 <= args.days <= 365, "1 to 365"),
            ("page-size", 1 <= args.page_size <= 50, "1 to 50"),
            ("concurrency", 1 <= args.concurrency <= 256, "1 to 256"),
        )
        if not ok
    ]
    if problems:
        print(f"bundlerec simulate: {'; '.join(problems)}", file=sys.stderr)
        return 2
    settings = SimulationSettings(
        shoppers=args.shoppers, days=args.days, seed=args.seed, page_size=args.page_size, concurrency=args.concurrency
    )
    try:
        result = asyncio.run(run_simulation(args.gateway, security_from(args), settings))
    except grpc.RpcError as error:
        print(f"bundlerec simulate: the gateway said {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    for variant, row in sorted(result.by_variant().items()):
        print(f"{variant}: {row['pages']:,.0f} pages, click-through {row['click_through']:.3f}, "
              f"purchases per page {row['purchase_rate']:.3f}, revenue {row['revenue']:,.2f}")  # fmt: skip
    print("what the exposure log attributed, with intervals: bundlerec experiments report")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in result.pages]) + "\n")
        print(f"wrote {args.json}")
    return 0


async def run_simulation(
    address: str,
    security: ChannelSecurity,
    settings: SimulationSettings,
    before_day: Callable[[int], Awaitable[None]] | None = None,
) -> Simulation:
    """The simulation against the gateway at `address` (simulator.simulate; `before_day` too)."""
    channel = open_channel(address, security)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(f"bundlerec simulate: nothing answers at {address} (is the gateway running?)") from None
        shop = GatewayShop(channel)
        result = await simulate(shop, settings, before_day)
        if shop.retries:
            print(f"{shop.retries} calls retried (the gateway answered UNAVAILABLE or late)", file=sys.stderr)
        return result
    finally:
        await channel.close()
