"""Whether the live statistics keep up with what the shop records: the profile service and a
candidate service reading its behaviour log, as processes on fresh PostgreSQL databases.

1. the ceiling: the profile service's own ingest rate (8 clients, batches of 100, as fast as it
   acknowledges), the number the learner can never need to beat;
2. the learner's own rate: a candidate service started on that backlog, timed until it has
   counted all of it;
3. sustained ingest at --rate events/s (default 5,000, or 80 % of the ceiling when that is lower),
   with a marker every 0.5 s (a new pair bought by one shopper): the lag from the marker's
   acknowledgement to a Retrieve returning the pair through co-occurrence, p50/p99.

    python bench/live_statistics.py [--rate 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, profile_pb2, profile_pb2_grpc
from tests.harness.databases import postgres_database
from tests.harness.processes import candidate_settings, free_port, serve, wait_serving

BUNDLEREC = str(Path(sys.executable).with_name("bundlerec"))
ITEMS = [f"i{n}" for n in range(2000)]
KINDS = [common_pb2.EVENT_TYPE_VIEW] * 6 + [common_pb2.EVENT_TYPE_CLICK] * 2 + [common_pb2.EVENT_TYPE_PURCHASE]


def event(user: str, item: str, kind: int, at: float) -> common_pb2.Event:
    return common_pb2.Event(
        event_id=uuid.uuid4().hex,
        user_id=user,
        type=kind,
        target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=item),
        timestamp={"seconds": int(at), "nanos": int(at % 1 * 1e9)},
    )


def batch(rng: random.Random, size: int = 100) -> profile_pb2.RecordEventsRequest:
    now = time.time()
    return profile_pb2.RecordEventsRequest(
        events=[event(f"u{rng.randrange(20_000)}", rng.choice(ITEMS), rng.choice(KINDS), now) for _ in range(size)]
    )


async def ceiling(stub: profile_pb2_grpc.ProfileServiceStub, events: int) -> float:
    rng, sent, started = random.Random(1), 0, time.perf_counter()

    async def client() -> None:
        nonlocal sent
        while sent < events:
            sent += 100
            await stub.RecordEvents(batch(rng), timeout=30)

    await asyncio.gather(*(client() for _ in range(8)))
    return sent / (time.perf_counter() - started)


async def marker(profile: profile_pb2_grpc.ProfileServiceStub, candidate: candidate_pb2_grpc.CandidateServiceStub,
                 items: tuple[str, str]) -> float:  # fmt: skip
    """Records one shopper buying a new pair; seconds until a Retrieve finds the pair by co-occurrence."""
    user, now = f"m-{uuid.uuid4().hex[:8]}", time.time()
    a, b = items
    await profile.RecordEvents(
        profile_pb2.RecordEventsRequest(
            events=[
                event(user, a, common_pb2.EVENT_TYPE_PURCHASE, now),
                event(user, b, common_pb2.EVENT_TYPE_PURCHASE, now),
            ]
        )
    )
    acked = time.perf_counter()
    request = candidate_pb2.RetrieveRequest(
        recent=[candidate_pb2.RecentInteraction(target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=a),
                                                type=common_pb2.EVENT_TYPE_VIEW)],
        item_limit=10, sources=[candidate_pb2.CANDIDATE_SOURCE_CO_OCCURRENCE])  # fmt: skip
    while time.perf_counter() - acked < 120:
        if b in {c.target.id for c in (await candidate.Retrieve(request)).items}:
            return time.perf_counter() - acked
        await asyncio.sleep(0.02)
    return float("inf")


async def counting_rate(metrics_port: int, events: int) -> float:
    """Events/s the candidate service counts, from its first counted batch to `events` counted
    (its bundlerec_candidate_behaviour_counted_total)."""
    import urllib.request

    def counted() -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).read().decode()
        except OSError:
            return 0.0
        lines = [line for line in text.splitlines() if line.startswith("bundlerec_candidate_behaviour_counted_total")]
        return float(lines[0].split()[-1]) if lines else 0.0

    first = None
    for _ in range(12_000):
        value = await asyncio.to_thread(counted)
        if value and first is None:
            first = (time.perf_counter(), value)
        if first and value >= events:
            return (value - first[1]) / max(1e-9, time.perf_counter() - first[0])
        await asyncio.sleep(0.01)
    raise SystemExit("the learner never counted the backlog")


async def run(args: argparse.Namespace, workdir: Path, urls: list[str]) -> None:
    """`urls`: fresh PostgreSQL databases for the profile store and the catalogue."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        profile_process, profile_address = serve("profile", {"BUNDLEREC_PROFILE_DATABASE_URL": urls[0]}, timeout=120)
        processes.append(profile_process)
        markers = [(f"ma{n}", f"mb{n}") for n in range(200)]
        candidate_env = {
            **candidate_settings(urls[1], args.encoder_dir, workdir / "index"),
            "BUNDLEREC_CANDIDATE_PROFILE_ADDRESS": profile_address,
        }
        # the catalogue first (the learner counts only items it knows), then the candidate service stops
        candidate_process, candidate_address = serve("candidate", candidate_env, timeout=120)
        async with grpc.aio.insecure_channel(candidate_address) as candidate_channel:
            candidate = candidate_pb2_grpc.CandidateServiceStub(candidate_channel)
            catalogue = ITEMS + [i for pair in markers for i in pair]
            for start in range(0, len(catalogue), 1000):
                chunk = [common_pb2.Item(item_id=i, title=f"thing {i}") for i in catalogue[start : start + 1000]]
                await candidate.UpsertItems(candidate_pb2.UpsertItemsRequest(items=chunk))
        candidate_process.terminate()
        candidate_process.wait(timeout=30)
        async with grpc.aio.insecure_channel(profile_address) as profile_channel:
            profile = profile_pb2_grpc.ProfileServiceStub(profile_channel)
            await profile.RecordEvents(batch(random.Random(0)))  # warm up
            rate = await ceiling(profile, args.backlog)
            print(f"1. profile service ingest (the ceiling): {rate:,.0f} events/s ({args.backlog:,} events, 8 x 100)")

            metrics_port = free_port()
            candidate_env["BUNDLEREC_CANDIDATE_METRICS_PORT"] = str(metrics_port)
            candidate_process, candidate_address = serve("candidate", candidate_env, wait=False)
            processes.append(candidate_process)
            learner = await counting_rate(metrics_port, args.backlog)
            print(
                f"2. the learner alone through that backlog: {learner:,.0f} events/s (from its first count to its last)"
            )
            wait_serving(candidate_address, candidate_process, timeout=120)
            async with grpc.aio.insecure_channel(candidate_address) as candidate_channel:
                candidate = candidate_pb2_grpc.CandidateServiceStub(candidate_channel)
                target = min(args.rate, 0.8 * rate)
                print(f"3. sustained ingest at {target:,.0f} events/s for {args.seconds} s, a marker every 0.5 s")
                rng, acked, began = random.Random(2), 0, time.perf_counter()

                async def client() -> None:  # 8 of them, each at an eighth of the rate, as fast as acked when behind
                    nonlocal acked
                    sent = 0
                    while (elapsed := time.perf_counter() - began) < args.seconds:
                        if sent < elapsed * target / 8:
                            await profile.RecordEvents(batch(rng), timeout=30)
                            sent += 100
                            acked += 100
                        else:
                            await asyncio.sleep(0.005)

                async def markers_every_half_second() -> list[float]:
                    found = []
                    for pair in markers[1 : 1 + int(args.seconds * 2)]:
                        found.append(asyncio.ensure_future(marker(profile, candidate, pair)))
                        await asyncio.sleep(0.5)
                    return list(await asyncio.gather(*found))

                results = await asyncio.gather(markers_every_half_second(), *(client() for _ in range(8)))
                achieved = acked / args.seconds
                lags = results[0]
                ms = sorted(x * 1000 for x in lags)
                p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
                print(f"   acknowledged {achieved:,.0f} events/s; from acknowledgement to Retrieve, {len(ms)} markers:")
                print(f"   p50 {statistics.median(ms):,.0f} ms, p99 {p99:,.0f} ms, max {ms[-1]:,.0f} ms")
                if args.verbose:
                    print("   in order:", " ".join(f"{x * 1000:.0f}" for x in lags))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rate", type=float, default=5000.0, help="sustained events/s (capped at 80 %% of the ceiling)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--verbose", action="store_true", help="every marker's lag, in order")
    parser.add_argument(
        "--backlog", type=int, default=30_000, help="events of the ceiling run, then the learner's backlog"
    )
    parser.add_argument("--encoder-dir", default="var/bundlerec/encoder")
    args = parser.parse_args()
    if not Path(args.encoder_dir, "manifest.json").exists():
        subprocess.run([BUNDLEREC, "encoder", "export", "--out", args.encoder_dir], check=True)
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as profile, postgres_database() as catalogue:
        asyncio.run(run(args, Path(tmp), [profile, catalogue]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
