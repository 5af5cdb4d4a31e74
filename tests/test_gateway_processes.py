"""The four services as real processes under steady traffic: killing the ranker, then the candidate
service, then the profile service degrades every page and fails none."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest

from bundlerec.v1 import gateway_pb2, gateway_pb2_grpc
from tests.harness.processes import four_services
from tests.harness.servers import eventually
from tests.harness.shops import Suite, buyer

PROFILE, CANDIDATES, RANKER = gateway_pb2.STAGE_PROFILE, gateway_pb2.STAGE_CANDIDATES, gateway_pb2.STAGE_RANKER


@pytest.fixture
def processes(suite: Suite, encoder_dir: str) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], str]]]:
    with four_services(
        suite.profile_url,
        suite.catalogue_url,
        suite.models,
        encoder_dir,
        BUNDLEREC_GATEWAY_DEADLINE_MS="2000",  # a shared 2-core machine: failures, not slowness, are tested
        BUNDLEREC_GATEWAY_BREAKER_RESET_SECONDS="0.5",
    ) as started:
        yield started


@pytest.mark.slow
async def test_killing_each_stage_under_traffic_degrades_pages_and_fails_none(
    processes: dict[str, tuple[subprocess.Popen[bytes], str]],
    suite: Suite,
) -> None:
    user = buyer(suite)
    failures: list[str] = []
    pages: list[tuple[float, gateway_pb2.RecommendResponse]] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(processes["gateway"][1]) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)

        async def client(n: int) -> None:
            while not stop.is_set():
                request = gateway_pb2.RecommendRequest(user_id=user if n % 2 else f"visitor-{n}", page_size=5)
                try:
                    pages.append((time.monotonic(), await stub.Recommend(request, timeout=10)))
                except grpc.aio.AioRpcError as error:
                    failures.append(f"{error.code().name} at {time.monotonic() - began:.1f} s: {error.details()}")
                await asyncio.sleep(0.02)

        def served_after(since: float, count: int = 60) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:  # a window: its first half second settles, then `count` pages
                # (enough for the 5 % tolerance below to be a share, not one or two late pages)
                return sum(at > since + 0.5 for at, _ in pages) >= count

            return check

        began = time.monotonic()
        clients = [asyncio.create_task(client(n)) for n in range(4)]
        marks = {}
        await eventually(served_after(began), seconds=30)
        for name in ("ranker", "candidate", "profile"):
            processes[name][0].send_signal(signal.SIGKILL)
            marks[name] = time.monotonic()
            await eventually(served_after(marks[name]), seconds=30)
        stop.set()
        await asyncio.gather(*clients)

    assert not failures, (failures[:4], {k: round(v - began, 1) for k, v in marks.items()})

    def degraded(since: float, until: float) -> list[dict[int, str]]:
        return [{d.stage: d.reason for d in page.degraded} for at, page in pages if since + 0.5 < at < until]

    def only(stages: dict[int, str], down: set[int]) -> bool:
        return set(stages) <= down

    # a stage that is still up may now and then answer late or busy (the machine is shared with
    # the other services and the test): at most 5 % of the pages of a window
    end = time.monotonic()
    healthy = degraded(0, marks["ranker"] - 0.5)
    assert sum(not only(s, set()) for s in healthy) <= 0.05 * len(healthy), "degraded before any kill"
    windows = {
        "ranker": (degraded(marks["ranker"], marks["candidate"]), {RANKER}),
        "candidate": (degraded(marks["candidate"], marks["profile"]), {RANKER, CANDIDATES}),
        "profile": (degraded(marks["profile"], end), {RANKER, CANDIDATES, PROFILE}),
    }
    for name, (stages, down) in windows.items():
        assert stages, f"no page served after the {name} was killed"
        assert all(down <= set(s) for s in stages), (name, [s for s in stages if not down <= set(s)][:5])
        assert sum(not only(s, down) for s in stages) <= 0.05 * len(stages), (name, stages[:5])
    last = [page for at, page in pages if at > marks["profile"] + 0.5]
    assert all(page.bundles for page in last), "the cached popular bundles stand in for retrieval"
    assert all(not page.personalized for page in last)


@pytest.mark.slow
def test_bundlerec_loadtest_drives_the_four_services_and_reports_them(
    processes: dict[str, tuple[subprocess.Popen[bytes], str]],
    suite: Suite,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """What a new user runs against the demo: the command, its JSON and its PNG."""
    import json

    from tests.harness.processes import BUNDLEREC

    command = [BUNDLEREC, "loadtest", "--target", "gateway", "--address", processes["gateway"][1],
               "--data", str(suite.root / "shop"), "--rate", "20", "--duration", "3", "--warmup", "1",
               "--trace-share", "0.5", "--out", str(tmp_path)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert "p99" in finished.stdout and "time per stage" in finished.stdout
    report = json.loads((tmp_path / "loadtest.json").read_text())
    result = report["result"]
    assert result["requests"] == 60 and result["errors"] == 0  # 20/s for 3 s, every one answered
    assert result["achieved_rps"] > 15
    assert {"profile", "candidates", "ranker", "rules"} <= set(result["stages_ms"])  # from the gateway's traces
    assert (tmp_path / "loadtest.png").stat().st_size > 10_000
