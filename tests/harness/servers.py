"""The services as real gRPC servers on port 0 in the test's process, with a channel to each, and
`eventually` for conditions that become true in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from bundlerec.candidate.server import build as build_candidate
from bundlerec.candidate.settings import CandidateSettings
from bundlerec.profile.server import build as build_profile
from bundlerec.profile.settings import ProfileSettings
from bundlerec.ranker.server import build as build_ranker
from bundlerec.ranker.settings import RankerSettings
from bundlerec.runtime.server import RunningServer, start_server
from bundlerec.v1 import candidate_pb2_grpc, profile_pb2_grpc, ranker_pb2, ranker_pb2_grpc


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0, every: float = 0.05) -> None:
    """Waits until `check()` is true, failing after `seconds`: for what a service does in the
    background (a reload, a rebuild, a breaker's reset), instead of a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(every)


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The field the error's google.rpc.BadRequest detail names."""
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError(f"no BadRequest detail in {error}")


@dataclass
class ProfileServer:
    running: RunningServer
    channel: grpc.aio.Channel
    stub: profile_pb2_grpc.ProfileServiceStub
    settings: ProfileSettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


def profile_settings(database_url: str, **overrides: object) -> ProfileSettings:
    values: dict[str, object] = {
        "port": 0,
        "metrics_port": 0,
        "database_url": database_url,
        "grace_seconds": 5.0,
        "health_interval_seconds": 0.2,
        **overrides,
    }
    return ProfileSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_profile(database_url: str, **overrides: object) -> AsyncIterator[ProfileServer]:
    settings = profile_settings(database_url, **overrides)
    running = await start_server(settings, await build_profile(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield ProfileServer(running, channel, profile_pb2_grpc.ProfileServiceStub(channel), settings)
    finally:
        await channel.close()
        await running.stop()


@dataclass
class CandidateServer:
    running: RunningServer
    stub: candidate_pb2_grpc.CandidateServiceStub
    settings: CandidateSettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@contextlib.asynccontextmanager
async def running_candidate(database_url: str, encoder_dir: str, **overrides: object) -> AsyncIterator[CandidateServer]:
    values: dict[str, object] = {
        "port": 0,
        "metrics_port": 0,
        "database_url": database_url,
        "encoder_dir": encoder_dir,
        "index_dir": "",
        "models_dir": "",
        "health_interval_seconds": 0.2,
        **overrides,
    }
    settings = CandidateSettings(**values)  # type: ignore[arg-type]
    running = await start_server(settings, await build_candidate(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield CandidateServer(running, candidate_pb2_grpc.CandidateServiceStub(channel), settings)
    finally:
        await channel.close()
        await running.stop()


@dataclass
class RankerServer:
    running: RunningServer
    stub: ranker_pb2_grpc.RankerServiceStub
    health: health_pb2_grpc.HealthStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def version(self) -> str:
        return (await self.stub.GetModelInfo(ranker_pb2.GetModelInfoRequest())).model.version

    async def status(self) -> int:
        return (await self.health.Check(health_pb2.HealthCheckRequest())).status


@contextlib.asynccontextmanager
async def running_ranker(models_dir: Path, **overrides: object) -> AsyncIterator[RankerServer]:
    values: dict[str, object] = {
        "port": 0,
        "metrics_port": 0,
        "models_dir": str(models_dir),
        "poll_seconds": 0,
        "health_interval_seconds": 0.1,
        "providers": "cpu",
        **overrides,
    }
    settings = RankerSettings(**values)  # type: ignore[arg-type]
    running = await start_server(settings, await build_ranker(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield RankerServer(running, ranker_pb2_grpc.RankerServiceStub(channel), health_pb2_grpc.HealthStub(channel))
    finally:
        await channel.close()
        await running.stop()
