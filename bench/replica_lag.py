"""How long a catalogue write made through one candidate replica takes to reach another: two
`bundlerec serve candidate` processes on one database, writes (new item, stock change, delete)
through the first at a steady pace, the second polled until its index reflects each one. The
baseline of the same run is the writing replica itself (its own index changes with the write).

    python bench/replica_lag.py [--writes 40] [--backends postgresql,sqlite]

PostgreSQL: a fresh database on BUNDLEREC_TEST_POSTGRES_URL's server (default the local one, as
the tests use it: tests/harness),
where writes NOTIFY the followers; SQLite: one file, where the followers poll (feed_poll_seconds).
Goal (issue 16): p99 within 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2
from tests.harness.databases import postgres_database
from tests.harness.processes import candidate_settings, serve

ROOT = Path(__file__).resolve().parents[1]
BUNDLEREC = str(Path(sys.executable).with_name("bundlerec"))


def start(url: str, encoder_dir: str, workdir: Path, n: int) -> tuple[subprocess.Popen[bytes], str]:
    """Replica `n` of the candidate service on the catalogue at `url`, waited for until serving."""
    return serve("candidate", candidate_settings(url, encoder_dir, workdir / f"index-{n}"), timeout=120)


async def until(check: Callable[[], Awaitable[bool]], started: float, limit: float = 30.0) -> float:
    while not await check():
        if time.perf_counter() - started > limit:
            return float("inf")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


def probe(
    stub: candidate_pb2_grpc.CandidateServiceStub, request: candidate_pb2.SearchTextRequest, item_id: str, wanted: bool
) -> Callable[[], Awaitable[bool]]:
    """Whether the replica's index shows `item_id` for `request` (or, with wanted False, no more)."""

    async def check() -> bool:
        found = {r.item.item_id for r in (await stub.SearchText(request)).results}
        return (item_id in found) == wanted

    return check


async def measure(addresses: list[str], writes: int, pace: float) -> dict[str, dict[str, list[float]]]:
    lags: dict[str, dict[str, list[float]]] = {}
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = {"writer": candidate_pb2_grpc.CandidateServiceStub(channels[0])}
    stubs["other"] = candidate_pb2_grpc.CandidateServiceStub(channels[1])
    writer = stubs["writer"]
    try:
        for n in range(writes):
            item_id, title = f"lag-{n}-{uuid.uuid4().hex[:6]}", f"Lag probe number {n} {uuid.uuid4().hex[:6]}"
            query = candidate_pb2.SearchTextRequest(query=title, limit=5)
            stocked = candidate_pb2.CandidateFilter(in_stock_only=True)
            gone = candidate_pb2.AvailabilityUpdate(item_id=item_id, availability=common_pb2.Availability())
            steps: list[tuple[str, Callable[[], Awaitable[object]], candidate_pb2.SearchTextRequest, bool]] = [
                ("new item", functools.partial(writer.UpsertItems, candidate_pb2.UpsertItemsRequest(
                    items=[common_pb2.Item(item_id=item_id, title=title)])), query, True),
                ("out of stock", functools.partial(writer.SetAvailability, candidate_pb2.SetAvailabilityRequest(
                    updates=[gone])), candidate_pb2.SearchTextRequest(query=title, limit=5, filter=stocked), False),
                ("delete", functools.partial(writer.DeleteItems, candidate_pb2.DeleteItemsRequest(item_ids=[item_id])),
                 query, False),
            ]  # fmt: skip
            for kind, write, request, wanted in steps:
                await write()
                started = time.perf_counter()
                seen = await asyncio.gather(
                    *(until(probe(s, request, item_id, wanted), started) for s in stubs.values())
                )
                for name, lag in zip(stubs, seen, strict=True):
                    lags.setdefault(kind, {}).setdefault(name, []).append(lag)
                await asyncio.sleep(pace)
    finally:
        for channel in channels:
            await channel.close()
    return lags


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    database = (
        postgres_database() if backend == "postgresql" else nullcontext(f"sqlite:///{workdir / 'catalogue.sqlite3'}")
    )
    processes: list[tuple[subprocess.Popen[bytes], str]] = []
    with database as url:
        try:
            for n in range(2):  # one after the other: the first migrates
                processes.append(start(url, args.encoder_dir, workdir / backend, n))
            lags = await measure([a for _, a in processes], args.writes, args.pace)
        finally:
            for process, _ in processes:
                process.terminate()
                process.wait(timeout=30)
    print(f"\n{backend}: {args.writes} writes of each kind, ms from the write's reply to the index reflecting it")
    print(f"{'write':<14}{'replica':<9}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for kind, by_replica in lags.items():
        for name, values in by_replica.items():
            ms = [v * 1000 for v in values]
            figures = (statistics.median(ms), pct(ms, 0.9), pct(ms, 0.99), max(ms))
            print(f"{kind:<14}{name:<9}" + "".join(f"{f:>8.0f}" for f in figures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--pace", type=float, default=0.2, help="seconds between writes")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--encoder-dir", default="var/bundlerec/encoder")
    args = parser.parse_args()
    if not Path(args.encoder_dir, "manifest.json").exists():
        subprocess.run([BUNDLEREC, "encoder", "export", "--out", args.encoder_dir], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            asyncio.run(run_backend(backend, args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
