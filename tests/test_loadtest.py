"""`bundlerec loadtest`: real gRPC servers on port 0 (in this process, or the floor's four processes)
and real channels. What is checked can fail: an open loop that waits for slow replies sends fewer
requests; a closed loop that ignores its concurrency shows it; percentiles off by one rank show."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.loadtest import floor, report
from bundlerec.loadtest.channel import open_channel
from bundlerec.loadtest.driver import Objective, closed_loop, make_call, open_loop, step_search
from bundlerec.loadtest.floor import floor_services
from bundlerec.loadtest.workload import Workload, WorkloadSettings
from bundlerec.runtime.tls import ChannelSecurity as Security
from bundlerec.v1 import candidate_pb2_grpc, gateway_pb2, gateway_pb2_grpc, profile_pb2_grpc, ranker_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


class FakeGateway(gateway_pb2_grpc.RecommendationServiceServicer):
    """Answers Recommend after `delay` seconds; `serial` makes it answer one call at a time (a server
    of fixed capacity 1/delay). Every `fail_every`-th call fails UNAVAILABLE, every `slow_every`-th
    sleeps past any deadline; degraded and traced replies as the real gateway sends them."""

    def __init__(self, delay: float = 0.0, *, serial: bool = False, fail_every: int = 0, slow_every: int = 0):
        self.delay, self.fail_every, self.slow_every = delay, fail_every, slow_every
        self.lock = asyncio.Lock() if serial else None
        self.calls = self.in_flight = self.most_in_flight = 0
        self.metadata: list[tuple[str, str]] = []

    async def Recommend(self, request: Any, context: Any) -> gateway_pb2.RecommendResponse:
        self.calls += 1
        n = self.calls
        self.metadata = [(m.key, m.value) for m in context.invocation_metadata()]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.fail_every and n % self.fail_every == 0:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
            if self.slow_every and n % self.slow_every == 0:
                await asyncio.sleep(5)
            if self.lock is not None:
                async with self.lock:
                    await asyncio.sleep(self.delay)
            elif self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        reply = gateway_pb2.RecommendResponse()
        if request.user_id and n % 2 == 0:
            reply.degraded.add(stage=gateway_pb2.STAGE_RANKER, reason="deadline_exceeded", fallback="candidate_order")
        if request.debug:
            reply.trace.stages.add(stage=gateway_pb2.STAGE_PROFILE, duration_ms=1.5)
            reply.trace.stages.add(stage=gateway_pb2.STAGE_RANKER, duration_ms=4.0)
        return reply


@contextlib.asynccontextmanager
async def serving(servicer: FakeGateway) -> AsyncIterator[str]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop")
    generate_demo_shop(path, seed=3, users=40, items=120, bundles=20)
    return path


@pytest.fixture(scope="module")
def workload(shop: Path) -> Workload:
    return Workload(read_dataset(shop), "gateway", WorkloadSettings(trace_share=0.5))


def fresh(shop: Path, target: str = "gateway", **settings: Any) -> Workload:
    return Workload(read_dataset(shop), target, WorkloadSettings(**settings))


def test_percentiles_are_nearest_rank_on_known_data() -> None:
    values = [float(v) for v in range(1, 1001)]
    d = report.distribution(list(reversed(values)))
    assert (d["p50"], d["p90"], d["p99"], d["p99.9"], d["max"]) == (500, 900, 990, 999, 1000)
    assert report.percentile([7.0], 99.9) == 7.0
    assert report.percentile([1.0, 2.0], 50) == 1.0 and report.percentile([1.0, 2.0], 51) == 2.0
    assert report.percentile([], 50) == 0.0


def test_the_workload_mixes_placements_and_anonymous_visitors_from_the_dataset(shop: Path) -> None:
    dataset = read_dataset(shop)
    w = fresh(shop, anonymous_share=0.25, trace_share=0.1)
    requests = [w.next() for _ in range(4000)]
    messages = [r.message for r in requests]
    anonymous = [m for m in messages if m.session_id]
    assert 0.21 < len(anonymous) / len(messages) < 0.29
    assert all(not m.user_id for m in anonymous)
    users = {e.user_id for e in dataset.events}
    assert {m.user_id for m in messages if m.user_id} <= users
    placements = {m.context.placement for m in messages}
    assert placements == {1, 2, 3, 4, 5}
    product = [m for m in messages if m.context.placement == gateway_pb2.PLACEMENT_PRODUCT_PAGE]
    assert 0.3 < len(product) / len(messages) < 0.4
    assert all(m.context.anchor_item_id in dataset.items for m in product)
    assert 0.07 < sum(r.traced for r in requests) / len(requests) < 0.13
    assert all(m.debug == r.traced for m, r in zip(messages, requests, strict=True))
    again = fresh(shop, anonymous_share=0.25, trace_share=0.1)
    assert [again.next().message for _ in range(50)] == messages[:50]  # same seed, same requests

    ranker = fresh(shop, "ranker", candidates=30).next().message
    assert len(ranker.candidates) == 30
    assert all(c.bundle_id in dataset.bundles for c in ranker.candidates)
    retrieve = fresh(shop, "candidate", anonymous_share=0.0).next().message
    assert retrieve.item_limit == 100 and 1 <= len(retrieve.recent) <= 50


async def test_open_loop_keeps_its_rate_when_the_server_is_slow(workload: Workload) -> None:
    """A server that answers one call per 20 ms (50/s) offered 100/s: the open loop still sends 100/s
    and the backlog shows as latency; a closed loop on the same server sends only what it is let."""
    server = FakeGateway(0.02, serial=True)
    async with serving(server) as address:
        channel, _ = open_channel(address)
        call = make_call(channel, "gateway", deadline_ms=10_000)
        run = await open_loop(call, iter(workload), rate=100, duration=1.5, deadline_ms=10_000, target="gateway")
        closed = await closed_loop(call, iter(workload), concurrency=1, duration=1.5, target="gateway")
        await channel.close()
    s, c = report.summarize(run), report.summarize(closed)
    assert s["requests"] == 150  # every request due in the window was sent, none waited for a reply
    assert 90 < s["sent_rps"] < 110
    assert s["achieved_rps"] < 60  # the server's capacity
    assert s["latency_ms"]["p99"] > 600  # the last ones waited for ~75 before them
    assert s["latency_ms"]["p50"] > 300  # request i waits for the i/2 before it: ~0.77 s at the median
    assert c["requests"] < 90 and c["latency_ms"]["p99"] < 200  # coordinated omission hides the backlog


async def test_closed_loop_runs_exactly_the_asked_concurrency(workload: Workload) -> None:
    server = FakeGateway(0.01)
    async with serving(server) as address:
        channel, _ = open_channel(address)
        run = await closed_loop(make_call(channel, "gateway", 1000), iter(workload), concurrency=3, duration=0.6)
        await channel.close()
    assert server.most_in_flight == 3
    s = report.summarize(run)
    assert s["concurrency"] == 3 and s["mode"] == "closed"
    assert 30 < s["requests"] < 190  # 3 clients x ~60 calls of 10 ms, on a busy machine fewer


async def test_errors_are_counted_by_status_code_and_degraded_pages_by_reason(workload: Workload) -> None:
    server = FakeGateway(fail_every=4, slow_every=5)
    async with serving(server) as address:
        channel, _ = open_channel(address)
        call = make_call(channel, "gateway", deadline_ms=150)
        run = await open_loop(call, iter(workload), rate=100, duration=1.0, deadline_ms=150, target="gateway")
        await channel.close()
    s = report.summarize(run)
    assert s["requests"] == 100
    codes = s["errors_by_code"]
    assert 20 <= codes["UNAVAILABLE"] <= 30  # every 4th of 100 calls
    assert 10 <= codes["DEADLINE_EXCEEDED"] <= 25  # every 5th not already failed
    assert s["errors"] == codes["UNAVAILABLE"] + codes["DEADLINE_EXCEEDED"]
    assert s["latency_ms"]["max"] >= 150  # a call that ran into its deadline counts at the deadline
    assert s["degraded"] > 0 and set(s["degraded_by_reason"]) == {"ranker:deadline_exceeded"}
    assert set(s["stages_ms"]) == {"profile", "ranker"}
    assert s["stages_ms"]["ranker"]["p50"] == 4.0
    assert s["traced"] > 0


async def test_step_search_stops_at_the_first_rate_over_the_objective_and_refines() -> None:
    tried: list[float] = []

    async def run_at(rate: float) -> dict[str, Any]:  # p99 = rate / 10 ms: 500/s is exactly 50 ms
        tried.append(rate)
        return {
            "requests": 100, "errors": 0, "degraded": 0, "achieved_rps": rate, "offered_rps": rate,
            "latency_ms": {"p50": rate / 20, "p99": rate / 10}, "generator_behind": False,
        }  # fmt: skip

    result = await step_search(run_at, Objective(50.0), start=100, factor=2, refine=2)
    assert tried == [100, 200, 400, 800, 600, 500]
    assert result.best_rate == 500
    assert [met for _, _, met, _ in result.steps] == [True, True, True, False, False, True]
    assert "p99 80.0 ms > 50 ms" in result.steps[3][3]
    summary = report.step_summary(result)
    assert summary["best_rate"] == 500 and len(summary["steps"]) == 6

    tried.clear()  # a first rate already over the objective: down by the factor, then refine upwards
    result = await step_search(run_at, Objective(50.0), start=1000, factor=2, refine=2)
    assert tried == [1000, 500, 750, 625] and result.best_rate == 500
    tried.clear()
    result = await step_search(run_at, Objective(1.0), start=1000, factor=2, refine=2, down=2)
    assert tried == [1000, 500, 250] and result.best_rate is None and result.best is None


async def test_step_search_on_a_server_of_fixed_capacity_finds_a_rate_below_it(workload: Workload) -> None:
    server = FakeGateway(0.01, serial=True)  # 100 calls/s at most
    async with serving(server) as address:
        channel, _ = open_channel(address)
        call = make_call(channel, "gateway", 2000)

        async def run_at(rate: float) -> dict[str, Any]:
            return report.summarize(await open_loop(call, iter(workload), rate=rate, duration=1.0, warmup=0.2))

        result = await step_search(run_at, Objective(60.0, max_bad_share=1.0), start=25, factor=2, refine=0)
        await channel.close()
    rates = [rate for rate, *_ in result.steps]
    assert rates[-1] >= 100 and not result.steps[-1][2]  # it stopped at the first rate over capacity
    assert result.best_rate is not None and 25 <= result.best_rate < 100


async def test_a_token_travels_as_a_bearer_header_on_a_plaintext_channel(workload: Workload, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    server = FakeGateway()
    async with serving(server) as address:
        channel, metadata = open_channel(address, Security(token_file=str(tmp_path / "token")))
        code, _, _ = await make_call(channel, "gateway", 1000, metadata)(workload.next())
        await channel.close()
    assert code == "OK"
    assert ("authorization", "Bearer s3cret") in server.metadata


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (key, certificate)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_tls_with_a_token_sends_it_along(
    workload: Workload, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    key, cert = certificate
    (tmp_path / "token").write_text("tls-token")
    servicer = FakeGateway()
    server = grpc.aio.server()
    gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        security = Security(ca_file=str(cert), token_file=str(tmp_path / "token"))
        channel, metadata = open_channel(f"127.0.0.1:{port}", security)
        code, _, _ = await make_call(channel, "gateway", 2000, metadata)(workload.next())
        await channel.close()
        plain, _ = open_channel(f"127.0.0.1:{port}")  # no CA: plaintext against a TLS server fails
        refused, _, _ = await make_call(plain, "gateway", 500)(workload.next())
        await plain.close()
    finally:
        await server.stop(0)
    assert code == "OK" and ("authorization", "Bearer tls-token") in servicer.metadata
    assert refused in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@pytest.mark.parametrize("sized", [False, True], ids=["empty", "page-sized"])
async def test_the_empty_gateway_calls_profile_for_users_then_candidates_then_ranker(
    workload: Workload, sized: bool
) -> None:
    messages = floor.sized_messages() if sized else floor.Messages()
    sizes: list[int] = []
    calls: list[str] = []
    remaining: list[float | None] = []

    class Profile(floor.EmptyProfile):
        async def GetProfile(self, request: Any, context: Any) -> Any:
            calls.append("profile")
            return await super().GetProfile(request, context)

    class Candidate(floor.EmptyCandidate):
        async def Retrieve(self, request: Any, context: Any) -> Any:
            calls.append("candidate")
            remaining.append(context.time_remaining())
            return await super().Retrieve(request, context)

    class Ranker(floor.EmptyRanker):
        async def Rank(self, request: Any, context: Any) -> Any:
            calls.append("ranker")
            sizes.append(len(request.candidates))
            return await super().Rank(request, context)

    server = grpc.aio.server()
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(Profile(messages), server)
    candidate_pb2_grpc.add_CandidateServiceServicer_to_server(Candidate(messages), server)
    ranker_pb2_grpc.add_RankerServiceServicer_to_server(Ranker(messages), server)
    downstream = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{downstream}") for _ in range(3)]
    gateway = grpc.aio.server()
    gateway_pb2_grpc.add_RecommendationServiceServicer_to_server(floor.EmptyGateway(messages, *channels), gateway)
    port = gateway.add_insecure_port("127.0.0.1:0")
    await gateway.start()
    try:
        channel, _ = open_channel(f"127.0.0.1:{port}")
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        await stub.Recommend(gateway_pb2.RecommendRequest(user_id="u1"), timeout=2)
        known = list(calls)
        calls.clear()
        await stub.Recommend(gateway_pb2.RecommendRequest(session_id="s1"), timeout=2)
        await channel.close()
    finally:
        await gateway.stop(0)
        for c in channels:
            await c.close()
        await server.stop(0)
    assert known == ["profile", "candidate", "ranker"]
    assert calls == ["candidate", "ranker"]  # an anonymous visitor has no profile to read
    assert all(r is not None and 0 < r < 2.5 for r in remaining)  # the caller's 2 s deadline went down
    assert sizes == ([110, 110] if sized else [0, 0])  # the ranker got a page's candidates, or none


def test_the_command_drives_the_floor_and_writes_json_and_png(shop: Path, tmp_path: Path) -> None:
    """The whole command as a user runs it, against the floor's empty gateway (four real
    processes), with the floor measured beside it."""
    pytest.importorskip("matplotlib")
    with floor_services() as addresses:
        out = tmp_path / "report"
        command = [sys.executable, "-m", "bundlerec", "loadtest", "--address", addresses["gateway"]]
        command += ["--data", str(shop), "--rate", "60", "--duration", "1.5", "--warmup", "0.3", "--floor"]
        command += ["--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x floor" in result.stdout and "p99.9" in result.stdout
    doc = json.loads((out / "loadtest.json").read_text())
    r = doc["result"]
    assert r["requests"] == 90 and r["errors"] == 0 and r["offered_rps"] == 60
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        assert r["latency_ms"][key] > 0
    assert {"achieved_rps", "errors_by_code", "degraded_by_reason", "stages_ms", "send_lag_ms"} <= set(r)
    assert doc["floor"]["result"]["requests"] == 90
    assert doc["ratio_to_floor"]["p50"] > 0
    assert doc["command"].startswith("bundlerec loadtest --address")
    png = (out / "loadtest.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_step_mode_from_the_command_line_reports_the_highest_rate(shop: Path, tmp_path: Path) -> None:
    with floor_services() as addresses:
        command = [sys.executable, "-m", "bundlerec", "loadtest", "--address", addresses["gateway"]]
        command += ["--data", str(shop), "--rate", "50", "--step-p99-ms", "0.001", "--step-duration", "0.5"]
        command += ["--step-warmup", "0.1", "--step-min-requests", "10", "--out", str(tmp_path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "highest sustainable rate: none (the first step missed)" in result.stdout  # 1 µs: nothing meets it
    doc = json.loads((tmp_path / "loadtest.json").read_text())
    assert doc["step"]["best_rate"] is None
    assert [s["offered_rps"] for s in doc["step"]["steps"]] == [50, 33.33, 22.22, 14.81]  # then it gave up


def test_nothing_listening_is_a_clear_error(tmp_path: Path, shop: Path) -> None:
    from tests.harness.processes import free_port

    command = [sys.executable, "-m", "bundlerec", "loadtest", "--address", f"127.0.0.1:{free_port()}"]
    command += ["--data", str(shop), "--duration", "1", "--connect-timeout", "1", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert result.returncode != 0
    assert "nothing answers at" in result.stderr


async def test_the_ranker_and_candidate_targets_call_rank_and_retrieve(shop: Path) -> None:
    """Direct to a service: the floor's empty ranker and candidate service answer Rank and Retrieve
    (any other method would fail UNIMPLEMENTED)."""
    with floor_services() as addresses:
        for target in ("ranker", "candidate"):
            channel, _ = open_channel(addresses[target])
            call = make_call(channel, target, 1000)
            run = await open_loop(call, iter(fresh(shop, target)), rate=50, duration=0.5, target=target)
            await channel.close()
            s = report.summarize(run)
            assert s["requests"] == 25 and s["errors"] == 0 and s["target"] == target
