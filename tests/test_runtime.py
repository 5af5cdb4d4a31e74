"""What every service gets from the shared runtime: health, reflection, metrics, error mapping,
graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bundlerec.runtime.server import LIVENESS_SERVICE
from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc, profile_pb2
from tests.harness.factories import event
from tests.harness.processes import BUNDLEREC, free_port, start_profile, start_service, wait_serving
from tests.harness.servers import ProfileServer, eventually, running_profile


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status


async def wait_for_health(channel: grpc.aio.Channel, wanted: int, seconds: float = 10) -> None:
    async def reached() -> bool:
        return await health_status(channel) == wanted

    await eventually(reached, seconds)


async def test_health_reports_serving_for_the_server_and_the_service(profile: ProfileServer) -> None:
    await wait_for_health(profile.channel, health_pb2.HealthCheckResponse.SERVING)

    assert await health_status(profile.channel, "bundlerec.v1.ProfileService") == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_service(profile: ProfileServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(profile.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="bundlerec.v1.ProfileService"),
    ]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests))]

    names = {s.name for s in replies[0].list_services_response.service}
    assert {"bundlerec.v1.ProfileService", "grpc.health.v1.Health"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto


async def test_not_ready_until_the_database_is_migrated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    async with running_profile(url, migrate_on_start=False) as server:
        await wait_for_health(server.channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        before = await health_status(server.channel)
        assert "migrat" in (await server.running.parts.readiness() or "")  # why, in the service's words
        from bundlerec.commands.cli import main

        await asyncio.to_thread(main, ["migrate", "profile", "--database-url", url, "--log-level", "warning"])
        await wait_for_health(server.channel, health_pb2.HealthCheckResponse.SERVING)

    assert before == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_unreachable_database_is_not_serving_and_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    async with running_profile(url, migrate_on_start=False) as server:
        await wait_for_health(server.channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        status = await health_status(server.channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id="u1"))

    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is unavailable" in error.value.details()


async def test_unexpected_errors_are_internal_without_a_stack_trace(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_profile(database_url) as server:

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("SECRET connection string postgres://admin:hunter2@db")

        from bundlerec.profile.store import SqlProfileStore

        monkeypatch.setattr(SqlProfileStore, "profile_snapshot", broken)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id="u1"))

    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "error id" in error.value.details()
    assert "SECRET" not in error.value.details() and "Traceback" not in error.value.details()
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and logged[-1].fields["error"] == "RuntimeError"  # type: ignore[attr-defined]
    assert "SECRET" not in caplog.text, "exception messages may carry payloads: never log them"


async def test_metrics_count_calls_by_method_and_code(database_url: str) -> None:
    port = free_port()
    ok = 'bundlerec_rpc_requests_total{code="OK",method="GetProfile",service="ProfileService"}'
    bad = 'bundlerec_rpc_requests_total{code="INVALID_ARGUMENT",method="GetProfile",service="ProfileService"}'
    timed = 'bundlerec_rpc_duration_seconds_count{method="GetProfile",service="ProfileService"}'

    async def scrape() -> dict[str, float]:
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        )
        values = dict(line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
        return {name: float(values.get(name, 0)) for name in (ok, bad, timed)}

    async with running_profile(database_url, metrics_port=port) as server:
        before = await scrape()
        await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id="metrics-user"))
        with pytest.raises(grpc.aio.AioRpcError):
            await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=""))
        after = await scrape()

    assert after[ok] - before[ok] == 1
    assert after[bad] - before[bad] == 1
    assert after[timed] - before[timed] == 2


async def test_stop_drains_in_flight_calls_and_refuses_new_ones(
    database_url: str, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundlerec.profile.store import SqlProfileStore

    original = SqlProfileStore.record
    writing = asyncio.Event()

    async def slow_record(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        writing.set()
        await asyncio.sleep(1.0)  # an injected slow write, to have a call in flight
        return await original(self, *args, **kwargs)

    async with running_profile(database_url) as server:
        monkeypatch.setattr(SqlProfileStore, "record", slow_record)
        in_flight = asyncio.ensure_future(
            server.stub.RecordEvents(profile_pb2.RecordEventsRequest(events=[event(user_id)]))
        )
        await writing.wait()
        stopping = asyncio.create_task(server.running.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.stub.GetProfile(profile_pb2.GetProfileRequest(user_id=user_id), timeout=2)
        reply = await in_flight
        await stopping

    assert reply.recorded == 1
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_sigterm_exits_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    process, _ = start_profile(f"sqlite:///{tmp_path / 'p.sqlite3'}")

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0


@pytest.mark.slow
def test_serve_help_lists_settings_and_env_names() -> None:
    out = subprocess.run([BUNDLEREC, "serve", "profile", "--help"], capture_output=True, text=True, check=True).stdout

    assert "--database-url" in out and "BUNDLEREC_PROFILE_DATABASE_URL" in out


@pytest.mark.slow
def test_bad_setting_is_a_clear_error_not_a_traceback() -> None:
    process = start_service("profile", {"BUNDLEREC_PROFILE_PORT": "not-a-port"})
    _, err = process.communicate(timeout=30)

    assert process.returncode != 0
    assert b"port" in err and b"Traceback" not in err


@pytest.mark.slow
def test_the_gateway_starts_without_its_services_live_but_not_ready_and_stops_cleanly_on_sigterm() -> None:
    """Downstream services need not be up for the gateway to start; until the candidate service has
    answered it has no page to serve, so it is alive (liveness) but not ready."""
    port = free_port()
    nowhere = f"127.0.0.1:{free_port()}"
    env = {
        "BUNDLEREC_GATEWAY_PORT": str(port),
        "BUNDLEREC_GATEWAY_PROFILE_ADDRESS": nowhere,
        "BUNDLEREC_GATEWAY_CANDIDATE_ADDRESS": nowhere,
        "BUNDLEREC_GATEWAY_RANKER_ADDRESS": nowhere,
    }
    process = start_service("gateway", env)
    wait_serving(f"127.0.0.1:{port}", process, service=LIVENESS_SERVICE)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        ready = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
        page = gateway_pb2_grpc.RecommendationServiceStub(channel).Recommend(
            gateway_pb2.RecommendRequest(user_id="u1"), timeout=5
        )
        assert not page.bundles and {d.stage for d in page.degraded} >= {gateway_pb2.STAGE_CANDIDATES}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_every_services_settings_keep_the_shared_rules() -> None:
    """Kebab-case flags, unknown settings refused, the service's own environment prefix: also for
    the services that mix in the caller settings (gateway, ranker)."""
    from bundlerec.candidate.settings import CandidateSettings
    from bundlerec.gateway.settings import GatewaySettings
    from bundlerec.profile.settings import ProfileSettings
    from bundlerec.ranker.settings import RankerSettings

    for name, settings in (("profile", ProfileSettings), ("candidate", CandidateSettings),
                           ("ranker", RankerSettings), ("gateway", GatewaySettings)):  # fmt: skip
        config = settings.model_config
        assert config["cli_kebab_case"] and config["extra"] == "forbid"
        assert config["env_prefix"] == f"BUNDLEREC_{name.upper()}_"
