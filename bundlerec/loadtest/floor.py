"""The floor: what plain Python gRPC costs on this machine, in the suite's own topology.

Four processes, as the real suite runs: an empty gateway whose Recommend calls an empty profile
service (known users only, as the real gateway does), then an empty candidate service, then an
empty ranker, passing its remaining deadline down, and replies with an empty page. Each is a bare
grpc.aio server with the generated servicer base classes: no interceptors, no work. Driven with the
same load as the real services, it shows how much of their latency is the framework's.

    python -m bundlerec.loadtest.floor ROLE [--profile ADDR --candidate ADDR --ranker ADDR]

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
from typing import Any

import grpc

from bundlerec.v1 import (
    candidate_pb2,
    candidate_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
)

ROLES = ("profile", "candidate", "ranker", "gateway")


class EmptyProfile(profile_pb2_grpc.ProfileServiceServicer):
    async def GetProfile(self, request: Any, context: Any) -> profile_pb2.GetProfileResponse:
        return profile_pb2.GetProfileResponse()


class EmptyCandidate(candidate_pb2_grpc.CandidateServiceServicer):
    async def Retrieve(self, request: Any, context: Any) -> candidate_pb2.RetrieveResponse:
        return candidate_pb2.RetrieveResponse()


class EmptyRanker(ranker_pb2_grpc.RankerServiceServicer):
    async def Rank(self, request: Any, context: Any) -> ranker_pb2.RankResponse:
        return ranker_pb2.RankResponse()


class EmptyGateway(gateway_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, profile: grpc.aio.Channel, candidate: grpc.aio.Channel, ranker: grpc.aio.Channel) -> None:
        self.profile = profile_pb2_grpc.ProfileServiceStub(profile)
        self.candidate = candidate_pb2_grpc.CandidateServiceStub(candidate)
        self.ranker = ranker_pb2_grpc.RankerServiceStub(ranker)

    async def Recommend(self, request: Any, context: Any) -> gateway_pb2.RecommendResponse:
        if request.user_id:
            await self.profile.GetProfile(
                profile_pb2.GetProfileRequest(user_id=request.user_id), timeout=context.time_remaining()
            )
        await self.candidate.Retrieve(candidate_pb2.RetrieveRequest(), timeout=context.time_remaining())
        await self.ranker.Rank(ranker_pb2.RankRequest(), timeout=context.time_remaining())
        return gateway_pb2.RecommendResponse()


async def serve(role: str, downstream: dict[str, str]) -> None:
    # past its capacity a caller gives up before the reply is sent; grpc logs each such reply as an
    # error with a stack trace, which is noise here: the load generator counts those calls
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.CRITICAL)
    server = grpc.aio.server()
    channels = []
    if role == "profile":
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(EmptyProfile(), server)
    elif role == "candidate":
        candidate_pb2_grpc.add_CandidateServiceServicer_to_server(EmptyCandidate(), server)
    elif role == "ranker":
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(EmptyRanker(), server)
    else:
        channels = [grpc.aio.insecure_channel(downstream[name]) for name in ("profile", "candidate", "ranker")]
        gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(EmptyGateway(*channels), server)
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
def floor_services(timeout: float = 30.0) -> Iterator[dict[str, str]]:
    """Starts the four empty services as processes; yields {role: address}; stops them after."""
    processes: list[subprocess.Popen[str]] = []
    addresses: dict[str, str] = {}
    try:
        for role in ROLES:
            command = [sys.executable, "-m", "bundlerec.loadtest.floor", role]
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
    for name in ("profile", "candidate", "ranker"):
        parser.add_argument(f"--{name}", default="", help=f"the empty {name} service (gateway only)")
    args = parser.parse_args(argv)
    if args.role == "gateway" and not (args.profile and args.candidate and args.ranker):
        parser.error("the gateway needs --profile, --candidate and --ranker")
    asyncio.run(serve(args.role, {"profile": args.profile, "candidate": args.candidate, "ranker": args.ranker}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
