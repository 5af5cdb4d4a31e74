"""Profile service benchmark: ingestion rate and GetProfile latency on PostgreSQL.

    python bench/profile_ingest.py [--clients 8] [--seconds 10] [--batch 100]

Starts the profile service as its own process on a fresh PostgreSQL database and measures,
in the same run, the floors it is compared against:
- ingest: events/s acknowledged through RecordEvents (batches, concurrent clients) vs the same
  batches written straight into the same tables with psycopg (one transaction per batch);
- reads: GetProfile (50-event sequence) p50/p99 vs a bare gRPC call (health Check) on the same
  server and channel: the first read of each user after the ingest (the write made their
  precomputed profile stale: the read rebuilds it), then a second read of the same users (fresh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.v1 import common_pb2, profile_pb2, profile_pb2_grpc
from tests.harness.processes import start_profile

ADMIN_URL = os.environ.get("BUNDLEREC_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TYPES = (
    [common_pb2.EVENT_TYPE_VIEW] * 6
    + [common_pb2.EVENT_TYPE_CLICK] * 3
    + [common_pb2.EVENT_TYPE_ADD_TO_CART, common_pb2.EVENT_TYPE_PURCHASE]
)


def make_batches(n_batches: int, batch: int, users: int, seed: int) -> list[list[common_pb2.Event]]:
    rng = random.Random(seed)
    now = int(time.time()) - 86_400
    run = uuid.uuid4().hex[:6]
    out = []
    for b in range(n_batches):
        events = []
        for i in range(batch):
            item = rng.randrange(20_000)
            events.append(
                common_pb2.Event(
                    event_id=f"{run}-{b}-{i}",
                    user_id=f"user-{rng.randrange(users)}",
                    type=rng.choice(TYPES),
                    target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=f"item-{item}"),
                    timestamp={"seconds": now + b},
                    category=f"Department {item % 20} > Category {item % 200}",
                    context={"placement": "home"},
                )
            )
        out.append(events)
    return out


async def ingest(
    address: str, batches: list[list[common_pb2.Event]], clients: int, seconds: float
) -> tuple[int, float]:
    requests = [profile_pb2.RecordEventsRequest(events=b) for b in batches]
    queue: asyncio.Queue[profile_pb2.RecordEventsRequest] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        async with grpc.aio.insecure_channel(address) as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            while time.perf_counter() < stop_at and not queue.empty():
                request = queue.get_nowait()
                reply = await stub.RecordEvents(request, timeout=30)
                done += reply.recorded + reply.duplicates + reply.anonymized

    start = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(clients)])
    return done, time.perf_counter() - start


def direct_insert(
    db_url: str, batches: list[list[common_pb2.Event]], clients: int, seconds: float
) -> tuple[int, float]:
    """The floor: the same rows into the same table with psycopg, a transaction per batch."""
    import threading

    sql = (
        "INSERT INTO profile_events (event_id, user_id, event_type, target_type, target_id, occurred_at_us, value,"
        " category, context, recommendation_id, received_at_us) VALUES (%s,%s,%s,'item',%s,%s,NULL,%s,'{}','',0)"
        " ON CONFLICT (event_id) DO NOTHING"
    )
    lock = threading.Lock()
    pending = list(batches)
    done = 0
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal done
        with psycopg.connect(db_url) as conn:
            while time.perf_counter() < stop_at:
                with lock:
                    if not pending:
                        return
                    batch = pending.pop()
                rows = [
                    ("d" + e.event_id, e.user_id, "view", e.target.id, e.timestamp.seconds * 10**6, e.category)
                    for e in batch
                ]
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, rows)
                with lock:
                    done += len(rows)

    with psycopg.connect(db_url) as conn, conn.transaction(), conn.cursor() as cur:  # every user has a row, as ours
        users = sorted({e.user_id for batch in batches for e in batch})
        cur.executemany(
            "INSERT INTO profile_users (user_id, personalization, sensitive_categories, created_at_us)"
            " VALUES (%s, true, false, 0) ON CONFLICT (user_id) DO NOTHING",
            [(u,) for u in users],
        )
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done, time.perf_counter() - start


async def latencies(address: str, users: list[int]) -> tuple[list[float], list[float]]:
    async with grpc.aio.insecure_channel(address) as channel:
        profile = profile_pb2_grpc.ProfileServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        got, bare = [], []
        for user in users:
            t = time.perf_counter()
            await profile.GetProfile(profile_pb2.GetProfileRequest(user_id=f"user-{user}", sequence_length=50))
            got.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            bare.append((time.perf_counter() - t) * 1000)
        return got, bare


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    name = f"bundlerec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    bench_url = make_url(ADMIN_URL).set(database=name)
    process = None
    try:
        process, address = start_profile(bench_url.set(drivername="postgresql+psycopg").render_as_string(False))
        n_batches = int(args.seconds * 20_000 / args.batch) + args.clients  # more than can be sent in time
        print(f"generating {n_batches} batches of {args.batch} events...", file=sys.stderr)
        batches = make_batches(n_batches, args.batch, args.users, seed=1)
        asyncio.run(ingest(address, batches[: args.clients * 3], args.clients, 30))  # warm-up
        events, elapsed = asyncio.run(ingest(address, batches[args.clients * 3 :], args.clients, args.seconds))
        ours_rate = events / elapsed
        readers = random.Random(1).sample(range(args.users), min(args.reads, args.users))
        asyncio.run(latencies(address, readers[:200]))  # warm-up
        # every user's profile changed during the ingest: their first read rebuilds the snapshot
        rebuilt, _ = asyncio.run(latencies(address, readers[200:]))
        got, bare = asyncio.run(latencies(address, readers[200:]))  # read again: the snapshot is fresh
        floor_events, floor_elapsed = direct_insert(
            bench_url.set(drivername="postgresql").render_as_string(False), batches, args.clients, args.seconds
        )
        floor_rate = floor_events / floor_elapsed
    finally:
        if process:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    figures = {
        "ingest_events_per_s": round(ours_rate),
        "floor_direct_insert_events_per_s": round(floor_rate),
        "get_profile_p50_ms": round(pct(got, 50), 3),
        "get_profile_p99_ms": round(pct(got, 99), 3),
        "get_profile_after_write_p50_ms": round(pct(rebuilt, 50), 3),
        "get_profile_after_write_p99_ms": round(pct(rebuilt, 99), 3),
        "floor_grpc_p50_ms": round(pct(bare, 50), 3),
        "floor_grpc_p99_ms": round(pct(bare, 99), 3),
        "clients": args.clients,
        "batch": args.batch,
        "cpus": os.cpu_count(),
    }
    print(f"\nprofile service on PostgreSQL, {args.clients} clients, batches of {args.batch}, {os.cpu_count()} CPUs")
    print(f"{'figure':<34}{'ours':>12}{'floor':>12}{'ratio':>8}")
    ratio = ours_rate / floor_rate
    print(
        f"{'ingest, events/s':<34}{ours_rate:>12,.0f}{floor_rate:>12,.0f}{ratio:>8.2f}  (floor: psycopg into the table)"
    )
    for q in (50, 99):
        ours, floor = figures[f"get_profile_p{q}_ms"], figures[f"floor_grpc_p{q}_ms"]
        label = f"GetProfile p{q}, ms"
        print(f"{label:<34}{ours:>12.2f}{floor:>12.2f}{ours / floor:>8.1f}  (floor: bare gRPC health Check)")
    for q in (50, 99):
        ours, floor = figures[f"get_profile_after_write_p{q}_ms"], figures[f"floor_grpc_p{q}_ms"]
        label = f"  first after a write, p{q}, ms"
        print(f"{label:<34}{ours:>12.2f}{floor:>12.2f}{ours / floor:>8.1f}  (rebuilds the snapshot)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
