"""`bundlerec recommend`, `track` and `forget`: a running gateway from the command line (and the
demo's way of talking to it). Only the gateway's public API is used."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

import grpc
from google.protobuf import json_format

from bundlerec.runtime.tls import ChannelSecurity, open_sync_channel, token_metadata
from bundlerec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

DEFAULT_GATEWAY = "127.0.0.1:50050"
EVENT_TYPES = {
    "view": common_pb2.EVENT_TYPE_VIEW,
    "click": common_pb2.EVENT_TYPE_CLICK,
    "add_to_cart": common_pb2.EVENT_TYPE_ADD_TO_CART,
    "purchase": common_pb2.EVENT_TYPE_PURCHASE,
    "like": common_pb2.EVENT_TYPE_LIKE,
}  # a rating needs a value: not offered by this one-event command
PLACEMENTS = {
    "home": gateway_pb2.PLACEMENT_HOME,
    "product_page": gateway_pb2.PLACEMENT_PRODUCT_PAGE,
    "cart": gateway_pb2.PLACEMENT_CART,
    "checkout": gateway_pb2.PLACEMENT_CHECKOUT,
    "email": gateway_pb2.PLACEMENT_EMAIL,
}
STAGES = {v: k.removeprefix("STAGE_").lower() for k, v in gateway_pb2.Stage.items()}


def add_client_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    recommend = commands.add_parser("recommend", help="ask a running gateway for a page of bundles")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id")
    who.add_argument("--session", help="an anonymous session id")
    recommend.add_argument("--placement", choices=sorted(PLACEMENTS), default="home")
    recommend.add_argument("--anchor", default="", help="the item on the page (complete the look)")
    recommend.add_argument("--budget", type=float, help="most total price of a bundle")
    recommend.add_argument("--page-size", type=int, default=5)
    recommend.add_argument("--debug", action="store_true", help="print the gateway's trace of every stage")
    recommend.add_argument("--json", action="store_true", help="print the response as JSON")
    track = commands.add_parser("track", help="send one behaviour event through a running gateway")
    track.add_argument("--user", required=True)
    track.add_argument("--item", required=True, help="the item id")
    track.add_argument("--type", choices=sorted(EVENT_TYPES), default="view")
    track.add_argument("--category", default="", help="the item's category path")
    forget = commands.add_parser("forget", help="erase a user everywhere the suite keeps data")
    forget.add_argument("--user", required=True)
    for parser in (recommend, track, forget):
        parser.add_argument("--gateway", default=DEFAULT_GATEWAY, help="host:port (default: %(default)s)")
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
        add_security_flags(parser)


def add_security_flags(parser: argparse.ArgumentParser) -> None:
    """TLS and the caller's token, for a gateway that asks for them (see docs/deploy.md)."""
    parser.add_argument("--ca-file", default="", help="CA of the server's certificate (PEM): TLS")
    parser.add_argument("--cert-file", default="", help="this caller's certificate, for mutual TLS (PEM)")
    parser.add_argument("--key-file", default="", help="the private key of --cert-file (PEM)")
    parser.add_argument("--token-file", default="", help="file holding this caller's bearer token")
    parser.add_argument("--server-name", default="", help="name on the server's certificate, if not the host")


def security_from(args: argparse.Namespace) -> ChannelSecurity:
    return ChannelSecurity(args.ca_file, args.cert_file, args.key_file, args.token_file, args.server_name)


def run_client_command(args: argparse.Namespace) -> int:
    security = security_from(args)
    metadata = token_metadata(security)
    with open_sync_channel(args.gateway, security) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        try:
            if args.command == "recommend":
                request = recommend_request(
                    user=args.user or "",
                    session=args.session or "",
                    placement=args.placement,
                    anchor=args.anchor,
                    budget=args.budget,
                    page_size=args.page_size,
                    debug=args.debug,
                )
                response = stub.Recommend(request, timeout=args.timeout, metadata=metadata)
                if args.json:
                    print(json_format.MessageToJson(response, preserving_proto_field_name=True))
                else:
                    print_page(response, sys.stdout)
            elif args.command == "track":
                event = view_event(args.user, args.item, args.type, args.category)
                reply = stub.Track(gateway_pb2.TrackRequest(events=[event]), timeout=args.timeout, metadata=metadata)
                print(json.dumps(json_format.MessageToDict(reply, preserving_proto_field_name=True)))
            else:
                request = gateway_pb2.ForgetUserRequest(user_id=args.user)
                reply = stub.ForgetUser(request, timeout=args.timeout, metadata=metadata)
                print(f"{args.user}: {'erased' if reply.existed else 'nothing was kept'}")
        except grpc.RpcError as error:
            print(f"bundlerec {args.command}: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    return 0


def recommend_request(
    *,
    user: str = "",
    session: str = "",
    placement: str = "home",
    anchor: str = "",
    budget: float | None = None,
    page_size: int = 5,
    debug: bool = False,
) -> gateway_pb2.RecommendRequest:
    context = gateway_pb2.RecommendContext(placement=PLACEMENTS[placement], anchor_item_id=anchor)
    if budget is not None:
        context.budget = budget
    return gateway_pb2.RecommendRequest(
        user_id=user, session_id=session, context=context, page_size=page_size, debug=debug
    )


def view_event(user: str, item: str, kind: str = "view", category: str = "") -> common_pb2.Event:
    return common_pb2.Event(
        event_id=uuid.uuid4().hex,
        user_id=user,
        type=EVENT_TYPES[kind],
        target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=item),
        category=category,
    )


def print_page(response: gateway_pb2.RecommendResponse, out: TextIO, indent: str = "  ", limit: int = 0) -> None:
    mode = "personalized" if response.personalized else "not personalized"
    version = response.model_version or "none (ranker not used)"
    print(f"{indent}{mode}; model {version}; variant {response.experiment_variant}", file=out)
    for d in response.degraded:
        print(f"{indent}degraded: {STAGES.get(d.stage, d.stage)} ({d.reason}) -> {d.fallback}", file=out)
    for n, bundle in enumerate(response.bundles[: limit or None], 1):
        kind = "built for you" if bundle.generated else bundle.bundle_id
        print(f"{indent}{n}. [{kind}] {bundle.total_price:.2f}  - {bundle.explanation}", file=out)
        for item in bundle.items:
            print(f"{indent}     {item.title or item.item_id}  ({item.category})", file=out)
    if response.HasField("trace"):
        for stage in response.trace.stages:
            counters = ", ".join(f"{k} {v:g}" for k, v in sorted(stage.counters.items()))
            print(f"{indent}trace {STAGES.get(stage.stage)}: {stage.duration_ms:.1f} ms {counters}", file=out)
        for action in response.trace.rule_actions:
            print(f"{indent}rule {action.rule}: {action.action} {action.target.id} ({action.detail})", file=out)


__all__: Sequence[str] = ["add_client_commands", "print_page", "recommend_request", "run_client_command"]
