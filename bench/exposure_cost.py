"""What recording every page in the exposure log costs a page: two gateways in front of the same
three services, one recording (the default) and one not (record_exposures=false), measured in turns
in one run with the load generator at a fixed rate.

    python bench/exposure_cost.py [--workdir var/demo] [--rate 30] [--seconds 20] [--turns 3]

The demo's data (`bundlerec demo`'s steps 1-3); the gateways have the shipped 100 ms deadline and
exploration off (so the two serve the same pages). Each turn measures the recording gateway, then
the other, each after a short warm-up; the turns alternate which goes first. Prints p50, p90 and p99
per gateway and turn, their medians, the difference of the medians and the per-turn differences
(the order in a turn matters on a shared 2-core machine: hence the alternation), and how many pages
the log holds against the pages the recording gateway served; writes OUT/exposure_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_gateway, start_services, stop_services
from bundlerec.commands.experiments import read_pages
from bundlerec.loadtest.command import Plan, machine, measure
from bundlerec.loadtest.workload import Workload, WorkloadSettings, load_dataset
from bundlerec.runtime.tls import ChannelSecurity


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/demo", help="the demo's data (default: %(default)s)")
    parser.add_argument("--out", default="var/bench/exposure_cost", help="(default: %(default)s)")
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement (default: %(default)s)")
    parser.add_argument("--turns", type=int, default=3, help="(default: %(default)s)")
    args = parser.parse_args()
    command = shlex.join(["python", "bench/exposure_cost.py", *sys.argv[1:]])
    root, out = Path(args.workdir).resolve(), Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if prepare_demo(root) != 0:
        return 1
    data = load_dataset(str(root / "shop"))
    workload = lambda: Workload(data, "gateway", WorkloadSettings())  # noqa: E731
    common = {"BUNDLEREC_GATEWAY_DEADLINE_MS": "100", "BUNDLEREC_GATEWAY_EXPLORATION_SHARE": "0"}
    services = start_services(root, overrides=common)
    quiet = start_gateway(root, services, {**common, "BUNDLEREC_GATEWAY_RECORD_EXPOSURES": "false"})
    gateways = {"recording": services[-1].address, "not recording": quiet.address}
    before = sum(1 for _ in read_pages(services[0].address, ChannelSecurity(), None, None, 0))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in gateways}
    try:
        for address in gateways.values():  # warm-up: first model runs, connections, caches
            asyncio.run(measure(address, "gateway", workload, Plan(rate=10, duration=8, warmup=0)))
        for turn in range(args.turns):
            order = list(gateways) if turn % 2 == 0 else list(reversed(gateways))
            for name in order:
                plan = Plan(rate=args.rate, duration=args.seconds, warmup=3.0)
                outcome = asyncio.run(measure(gateways[name], "gateway", workload, plan))
                s = outcome.summary
                runs[name].append({"latency_ms": s["latency_ms"], "requests": s["requests"],
                                   "errors": s["errors"], "degraded": s["degraded"]})  # fmt: skip
                p = s["latency_ms"]
                print(f"turn {turn + 1} {name:>14}: p50 {p['p50']:.2f} ms  p90 {p['p90']:.2f} ms  "
                      f"p99 {p['p99']:.2f} ms  ({s['requests']} requests, {s['degraded']} degraded)", flush=True)
        time.sleep(1.0)  # the last batch
        logged = sum(1 for _ in read_pages(services[0].address, ChannelSecurity(), None, None, 0)) - before
    finally:
        stop_services([*services, quiet])
    medians = {
        name: {q: round(statistics.median(r["latency_ms"][q] for r in rs), 2) for q in ("p50", "p90", "p99")}
        for name, rs in runs.items()
    }
    served = sum(r["requests"] - r["errors"] for r in runs["recording"])
    paired = [  # recording minus not, per turn: the turns alternate which goes first
        round(a["latency_ms"]["p50"] - b["latency_ms"]["p50"], 2)
        for a, b in zip(runs["recording"], runs["not recording"], strict=True)
    ]
    doc = {
        "command": command,
        "machine": machine(),
        "rate": args.rate,
        "turns": runs,
        "median": medians,
        "p50_difference_ms": round(medians["recording"]["p50"] - medians["not recording"]["p50"], 2),
        "p50_difference_by_turn_ms": paired,
        "p50_difference_median_of_turns_ms": statistics.median(paired),
        "p99_difference_ms": round(medians["recording"]["p99"] - medians["not recording"]["p99"], 2),
        "pages_logged": logged,
        "pages_served_by_the_recording_gateway_in_the_turns": served,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "exposure_cost.json").write_text(json.dumps(doc, indent=2) + "\n")
    for name, m in medians.items():
        print(f"median {name:>14}: p50 {m['p50']} ms  p90 {m['p90']} ms  p99 {m['p99']} ms")
    print(f"p50 difference by turn (recording - not): {paired}, median {statistics.median(paired)} ms")
    print(f"recording costs {doc['p50_difference_ms']} ms at p50, {doc['p99_difference_ms']} ms at p99; "
          f"the log holds {logged} pages (the recording gateway served {served} in the turns, "
          f"and its warm-up)")  # fmt: skip
    print(f"wrote {out / 'exposure_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
