"""A page at idle: end-to-end latency of one Recommend at a time, and each stage's share of it.

    python bench/idle_page.py [--workdir var/demo] [--pages 300] [--out var/bench/idle]

The demo's data (`bundlerec demo`'s steps 1-3; what is there is kept), the four services as
processes, then `--pages` Recommend calls with `debug` set (what `bundlerec recommend --debug`
sends), one at a time with a pause between them so each meets idle services: the load test's
requests (its placement mix, 20 % anonymous visitors, bundlerec/loadtest/workload.py). Prints p50/p90/p99 end to end
(as the caller measures it, over one warm channel) and per stage (the gateway's own trace), beside
a bare gRPC call (health `Check`) to the gateway over the same channel. Writes OUT/idle.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.client import STAGES
from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.loadtest.workload import Workload, WorkloadSettings, load_dataset
from bundlerec.v1 import gateway_pb2_grpc

PAUSE_S = 0.05  # between pages: long enough for every service to go idle again


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(statistics.median(ordered), 2), "p90": round(pick(0.9), 2), "p99": round(pick(0.99), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/demo", help="the demo's data (default: %(default)s)")
    parser.add_argument("--pages", type=int, default=300, help="pages measured (default: %(default)s)")
    parser.add_argument("--out", default="var/bench/idle", help="idle.json (default: %(default)s)")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if prepare_demo(root) != 0:
        return 1
    workload = Workload(load_dataset(str(root / "shop")), "gateway", WorkloadSettings())
    services = start_services(root)
    try:
        with grpc.insecure_channel(services[-1].address) as channel:
            recommend = gateway_pb2_grpc.RecommendationServiceStub(channel).Recommend
            health = health_pb2_grpc.HealthStub(channel)
            requests = [workload.next().message for _ in range(args.pages + 20)]
            for request in requests:
                request.debug = True
            for request in requests[:20]:  # warm-up: caches, channels, first inferences
                recommend(request, timeout=5)
            pages, stages, bare, degraded = [], {}, [], 0
            for request in requests[20:]:
                time.sleep(PAUSE_S)
                started = time.perf_counter()
                response = recommend(request, timeout=5)
                pages.append((time.perf_counter() - started) * 1000)
                degraded += bool(response.degraded)
                for stage in response.trace.stages:
                    stages.setdefault(STAGES[stage.stage], []).append(stage.duration_ms)
                time.sleep(PAUSE_S)
                started = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                bare.append((time.perf_counter() - started) * 1000)
    finally:
        stop_services(services)
    doc = {
        "command": " ".join(["python", "bench/idle_page.py", *sys.argv[1:]]),
        "pages": len(pages),
        "degraded": degraded,
        "page_ms": percentiles(pages),
        "bare_call_ms": percentiles(bare),
        "stage_ms": {name: percentiles(values) for name, values in stages.items()},
        "goal_p50_ms": 8.0,
    }
    print(f"\nidle page, {len(pages)} pages one at a time ({degraded} degraded):")
    print(f"  {'':12} {'p50':>7} {'p90':>7} {'p99':>7}  ms")
    for name, figures in [("page", doc["page_ms"]), ("bare call", doc["bare_call_ms"]), *doc["stage_ms"].items()]:
        print(f"  {name:12} {figures['p50']:7.2f} {figures['p90']:7.2f} {figures['p99']:7.2f}")
    verdict = "met" if doc["page_ms"]["p50"] <= doc["goal_p50_ms"] else "NOT met"
    print(f"  goal: page p50 <= {doc['goal_p50_ms']:g} ms: {verdict}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "idle.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out / 'idle.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
