"""The floor: what plain Python gRPC costs on this machine, in the suite's own topology.

Four processes, as the real suite runs: an empty gateway whose Recommend calls an empty profile
service (known users only, as the real gateway does), then an empty candidate service, then an
empty ranker, passing its remaining deadline down, and replies with an empty page. Each is a bare
grpc.aio server with the generated servicer base classes: no interceptors, no work. Driven with the
same load as the real services, it shows how much of their latency is the framework's.

With `sized`, every message has the size of the demo shop's (a 50-event profile, 50 history steps
sent to retrieval and to the ranker, 100 item and 100 bundle candidates retrieved, 110 bundles
ranked, a page of 5 bundles): a bare RPC carrying what ours carry, for CPU per service.

    python -m bundlerec.loadtest.floor ROLE [--sized] [--profile ADDR --candidate ADDR --ranker ADDR]

serves ROLE on a free loopback port, prints "listening PORT" and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from bundlerec.v1 import (
    candidate_pb2,
    candidate_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
)

ROLES = ("profile", "candidate", "ranker", "gateway")


@dataclass(frozen=True)
class Messages:
    """What each hop carries: empty, or the demo shop's sizes (sized_messages)."""

    profile: profile_pb2.GetProfileResponse = field(default_factory=profile_pb2.GetProfileResponse)
    retrieve_request: candidate_pb2.RetrieveRequest = field(default_factory=candidate_pb2.RetrieveRequest)
    retrieved: candidate_pb2.RetrieveResponse = field(default_factory=candidate_pb2.RetrieveResponse)
    rank_request: ranker_pb2.RankRequest = field(default_factory=ranker_pb2.RankRequest)
    ranked: ranker_pb2.RankResponse = field(default_factory=ranker_pb2.RankResponse)
    page: gateway_pb2.RecommendResponse = field(default_factory=gateway_pb2.RecommendResponse)


def sized_messages() -> Messages:
    item = [f"sku-{n:05d}" for n in range(1, 601)]
    category = "Electronics > Phones > Smartphones"
    when = {"seconds": 1_760_000_000}
    events = [
        common_pb2.Event(event_id=f"import:demo:{n}", user_id="user-0001", type=common_pb2.EVENT_TYPE_VIEW,
                         target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=item[n]), timestamp=when,
                         category=category)
        for n in range(50)
    ]  # fmt: skip
    profile = profile_pb2.GetProfileResponse(
        profile=profile_pb2.Profile(
            user_id="user-0001",
            consent=common_pb2.Consent(personalization=True),
            recent_events=events,
            affinities=[profile_pb2.CategoryAffinity(category=category, score=1.0 / (n + 1)) for n in range(10)],
            purchased_item_ids=item[:20],
        )
    )
    history = [
        candidate_pb2.RecentInteraction(target=e.target, type=e.type, timestamp=e.timestamp) for e in events
    ]
    sources = [candidate_pb2.CANDIDATE_SOURCE_VECTOR, candidate_pb2.CANDIDATE_SOURCE_CO_OCCURRENCE]
    retrieved = candidate_pb2.RetrieveResponse(
        items=[
            candidate_pb2.Candidate(target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=item[n]),
                                    score=0.5, sources=sources)
            for n in range(100)
        ],
        bundles=[
            candidate_pb2.Candidate(target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_BUNDLE, id=f"bnd-{n:04d}"),
                                    score=0.5, sources=sources, item_ids=item[n : n + 3])
            for n in range(100)
        ],
        index_version="0123abcd.600",
    )  # fmt: skip
    steps = [ranker_pb2.SequenceStep(target=e.target, type=e.type, timestamp=e.timestamp) for e in events]
    candidates = [ranker_pb2.BundleCandidate(bundle_id=f"bnd-{n:04d}", item_ids=item[n : n + 3]) for n in range(110)]
    shown = common_pb2.Item(item_id=item[0], title="Nexon Ultra Dual-SIM Smartphone, 512 GB, Graphite",
                            category=category, brand="Nexon", price=179.99)  # fmt: skip
    page = gateway_pb2.RecommendResponse(
        recommendation_id="0" * 32,
        bundles=[
            gateway_pb2.RecommendedBundle(bundle_id=f"bnd-{n:04d}", items=[shown] * 3, score=1.0,
                                          explanation="often bought with the Smartphone you viewed",
                                          total_price=539.97, sources=[1, 2])
            for n in range(5)
        ],
        model_version="20261202-024717",
        experiment_variant="default",
        personalized=True,
    )  # fmt: skip
    return Messages(
        profile=profile,
        retrieve_request=candidate_pb2.RetrieveRequest(recent=history, item_limit=100, bundle_limit=100),
        retrieved=retrieved,
        rank_request=ranker_pb2.RankRequest(sequence=steps, candidates=candidates),
        ranked=ranker_pb2.RankResponse(scores=[0.5] * 110, model_version="20261202-024717"),
        page=page,
    )


class EmptyProfile(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, messages: Messages) -> None:
        self.messages = messages

    async def GetProfile(self, request: Any, context: Any) -> profile_pb2.GetProfileResponse:
        return self.messages.profile


class EmptyCandidate(candidate_pb2_grpc.CandidateServiceServicer):
    def __init__(self, messages: Messages) -> None:
        self.messages = messages

    async def Retrieve(self, request: Any, context: Any) -> candidate_pb2.RetrieveResponse:
        return self.messages.retrieved


class EmptyRanker(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, messages: Messages) -> None:
        self.messages = messages

    async def Rank(self, request: Any, context: Any) -> ranker_pb2.RankResponse:
        return self.messages.ranked


class EmptyGateway(gateway_pb2_grpc.RecommendationServiceServicer):
    def __init__(
        self, messages: Messages, profile: grpc.aio.Channel, candidate: grpc.aio.Channel, ranker: grpc.aio.Channel
    ) -> None:
        self.messages = messages
        self.profile = profile_pb2_grpc.ProfileServiceStub(profile)
        self.candidate = candidate_pb2_grpc.CandidateServiceStub(candidate)
        self.ranker = ranker_pb2_grpc.RankerServiceStub(ranker)

    async def Recommend(self, request: Any, context: Any) -> gateway_pb2.RecommendResponse:
        m = self.messages
        if request.user_id:
            await self.profile.GetProfile(
                profile_pb2.GetProfileRequest(user_id=request.user_id), timeout=context.time_remaining()
            )
        await self.candidate.Retrieve(m.retrieve_request, timeout=context.time_remaining())
        await self.ranker.Rank(m.rank_request, timeout=context.time_remaining())
        return m.page


async def serve(role: str, downstream: dict[str, str], sized: bool = False) -> None:
    # past its capacity a caller gives up before the reply is sent; grpc logs each such reply as an
    # error with a stack trace, which is noise here: the load generator counts those calls
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    server = grpc.aio.server()
    channels = []
    messages = sized_messages() if sized else Messages()
    if role == "profile":
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(EmptyProfile(messages), server)
    elif role == "candidate":
        candidate_pb2_grpc.add_CandidateServiceServicer_to_server(EmptyCandidate(messages), server)
    elif role == "ranker":
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(EmptyRanker(messages), server)
    else:
        channels = [grpc.aio.insecure_channel(downstream[name]) for name in ("profile", "candidate", "ranker")]
        gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(EmptyGateway(messages, *channels), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    for channel in channels:
        await channel.close()


@contextlib.contextmanager
def floor_services(timeout: float = 30.0, sized: bool = False) -> Iterator[dict[str, str]]:
    """Starts the four empty services as processes; yields {role: address}; stops them after.
    `sized`: their messages have the demo shop's sizes (sized_messages)."""
    processes: list[subprocess.Popen[str]] = []
    addresses: dict[str, str] = {}
    try:
        for role in ROLES:
            command = [sys.executable, "-m", "bundlerec.loadtest.floor", role, *(["--sized"] if sized else [])]
            if role == "gateway":
                command += [f"--{name}={addresses[name]}" for name in ("profile", "candidate", "ranker")]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            processes.append(process)
            addresses[role] = f"127.0.0.1:{_read_port(process, role, timeout)}"
        yield addresses
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _read_port(process: subprocess.Popen[str], role: str, timeout: float) -> int:
    assert process.stdout is not None
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"the empty {role} service did not start within {timeout:g} s")
    line = process.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"the empty {role} service failed to start (exit code {process.poll()})")
    return int(line.split()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bundlerec.loadtest.floor", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--sized", action="store_true", help="messages of the demo shop's sizes, not empty ones")
    for name in ("profile", "candidate", "ranker"):
        parser.add_argument(f"--{name}", default="", help=f"the empty {name} service (gateway only)")
    args = parser.parse_args(argv)
    if args.role == "gateway" and not (args.profile and args.candidate and args.ranker):
        parser.error("the gateway needs --profile, --candidate and --ranker")
    downstream = {"profile": args.profile, "candidate": args.candidate, "ranker": args.ranker}
    asyncio.run(serve(args.role, downstream, args.sized))
    return 0


if __name__ == "__main__":
    sys.exit(main())
