"""The README's headline figures: the four real services and the load generator on one machine.

    python bench/loadtest.py [--workdir var/demo] [--out var/bench/loadtest] [--quick] [--runs N]

1. The demo's data (`bundlerec demo`'s steps 1-3: the demo shop, imported into SQLite, a trained
   model; what is there already is kept), then the four services as processes on free ports, as
   `bundlerec serve NAME` runs them, with the gateway's shipped default deadline (100 ms).
2. Step search on the gateway, open loop: the highest rate whose p99 stays within 50 ms with at
   most 1 % of requests failed or degraded; then 100 requests/s for 20 s: p50 and p99.
3. The services stopped, the floor (four empty gRPC processes, bundlerec/loadtest/floor.py) gets the
   same two measurements, and every figure is printed as a ratio to it.

Requests as `bundlerec loadtest` sends them (users of the demo shop, 20 % anonymous, the placement
mix of workload.py, 10 % traced). Everything shares this machine's cores, the generator included:
that is what is measured. What other processes took of the cores meanwhile is printed too (figures
taken while something else was busy are not the headline). Writes OUT/loadtest.json and PNGs;
with --runs N, N whole measurements in a row (OUT/run-K/), each reported, and their median
(OUT/runs.json): quote the spread, not the best run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.loadtest import report
from bundlerec.loadtest.command import Outcome, Plan, machine, measure
from bundlerec.loadtest.floor import floor_services
from bundlerec.loadtest.workload import Workload, WorkloadSettings, load_dataset

OBJECTIVE_MS = 50.0
FIXED_RATE = 100.0
WARMUP_S = 10.0


def plans(quick: bool) -> tuple[Plan, Plan, Plan, Plan]:
    """(ours: step, ours: 100/s, floor: step, floor: 100/s)."""
    seconds = 4.0 if quick else 8.0
    step = Plan(mode="step", objective_p99_ms=OBJECTIVE_MS, max_bad_share=0.01, step_duration=seconds,
                step_warmup=2.0, deadline_ms=1000.0, refine=1 if quick else 2)  # fmt: skip
    fixed = Plan(mode="open", rate=FIXED_RATE, duration=10.0 if quick else 20.0, warmup=3.0 if quick else 5.0)
    ours_step = Plan(**{**asdict(step), "rate": 8.0, "factor": 1.5, "max_rate": 2000.0, "down": 2})
    floor_step = Plan(**{**asdict(step), "rate": 50.0, "factor": 2.0, "max_rate": 5000.0})
    return ours_step, fixed, floor_step, fixed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/demo", help="the demo's data (default: %(default)s)")
    parser.add_argument("--out", default="var/bench/loadtest", help="JSON and PNGs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="shorter steps (a smoke run, not the figures)")
    parser.add_argument("--runs", type=int, default=1, help="whole measurements in a row, each reported, and "
                        "their median (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()
    command = shlex.join(["python", "bench/loadtest.py", *sys.argv[1:]])
    root, out = Path(args.workdir).resolve(), Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    if prepare_demo(root) != 0:
        return 1
    docs = []
    for run in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"\n=== run {run} of {args.runs} ===", flush=True)
        docs.append(measure_once(command, root, out / f"run-{run}" if args.runs > 1 else out, args.quick))
    if args.runs > 1:
        summary = spread(command, docs)
        (out / "runs.json").write_text(json.dumps(summary, indent=2) + "\n")
        print_spread(summary)
        print(f"wrote {out / 'runs.json'}")
    return 0


def measure_once(command: str, root: Path, out: Path, quick: bool) -> dict[str, Any]:
    """One whole measurement: the four services, then the floor; writes OUT/loadtest.json and PNGs."""
    started = time.monotonic()
    load = {"before": os.getloadavg()[0]}
    cpu = [cpu_seconds()]  # other work on the machine during each measurement shows here
    data = load_dataset(str(root / "shop"))
    workload = lambda: Workload(data, "gateway", WorkloadSettings())  # noqa: E731
    say = lambda line: print(line, flush=True)  # noqa: E731
    ours_step, ours_fixed, floor_step, floor_fixed = plans(quick)

    say("the four services (gateway deadline 100 ms, the shipped default)")
    services = start_services(root, overrides={"BUNDLEREC_GATEWAY_DEADLINE_MS": "100"})
    try:
        gateway = services[-1].address
        say(f"warming up: {WARMUP_S:g} s at 10 requests/s")
        asyncio.run(measure(gateway, "gateway", workload, Plan(rate=10, duration=WARMUP_S, warmup=0)))
        say(f"step search on the gateway: p99 <= {OBJECTIVE_MS:g} ms")
        step = asyncio.run(measure(gateway, "gateway", workload, ours_step, say=say))
        say(f"the gateway at {FIXED_RATE:g} requests/s")
        fixed = asyncio.run(measure(gateway, "gateway", workload, ours_fixed))
    finally:
        codes = stop_services(services)
    load["services"] = os.getloadavg()[0]
    cpu.append(cpu_seconds())
    say(f"services stopped: {codes}")
    with floor_services() as floor:
        say(f"the floor: four empty gRPC processes; warming up: {WARMUP_S:g} s at 50 requests/s")
        asyncio.run(measure(floor["gateway"], "gateway", workload, Plan(rate=50, duration=WARMUP_S, warmup=0)))
        say(f"step search on the floor: p99 <= {OBJECTIVE_MS:g} ms")
        floor_steps = asyncio.run(measure(floor["gateway"], "gateway", workload, floor_step, say=say))
        say(f"the floor at {FIXED_RATE:g} requests/s")
        floor_fixed_run = asyncio.run(measure(floor["gateway"], "gateway", workload, floor_fixed))
    load["floor"] = os.getloadavg()[0]
    cpu.append(cpu_seconds())

    doc = headline(command, step, fixed, floor_steps, floor_fixed_run, time.monotonic() - started)
    doc["load_average_1min"] = load
    doc["other_cpu"] = {"services": others(cpu[0], cpu[1]), "floor": others(cpu[1], cpu[2])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "loadtest.json").write_text(json.dumps(doc, indent=2) + "\n")
    step_title = f"{command}: step search, p99 <= {OBJECTIVE_MS:g} ms (top: our best step, else our lowest)"
    report.write_png(out / "step.png", step.run, steps=step.steps, floor_steps=floor_steps.steps, title=step_title)
    report.write_png(out / "fixed-100.png", fixed.run, floor=floor_fixed_run.run,
                     title=f"{command}: the gateway at {FIXED_RATE:g} requests/s")  # fmt: skip
    print()
    report.print_steps(step.steps or {}, sys.stdout, name="gateway")
    report.print_steps(floor_steps.steps or {}, sys.stdout, name="floor")
    print()
    report.print_table(
        fixed.summary, sys.stdout, title=f"the gateway at {FIXED_RATE:g}/s", floor=floor_fixed_run.summary
    )
    print()
    print_headline(doc)
    print(f"\nwrote {out / 'loadtest.json'}, {out / 'step.png'}, {out / 'fixed-100.png'}")
    return doc


def spread(command: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run's headline, and the median of each figure across runs."""
    keys = ("highest_rate_rps", "floor_highest_rate_rps", "p50_ms", "p99_ms", "degraded", "errors", "requests")
    runs = [{k: d["headline"][k] for k in keys} for d in docs]
    median = {}
    for k in keys:
        values = [r[k] for r in runs if r[k] is not None]
        median[k] = statistics.median(values) if values else None
    return {"command": command, "runs": runs, "median": median}


def print_spread(summary: dict[str, Any]) -> None:
    print(f"\n{len(summary['runs'])} runs of {summary['command']}")
    print(f"  {'run':<8}{'best rate/s':>12}{'floor/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'degraded':>10}{'errors':>8}")
    rows = [(str(n), r) for n, r in enumerate(summary["runs"], 1)] + [("median", summary["median"])]
    for name, r in rows:
        best = "-" if r["highest_rate_rps"] is None else f"{r['highest_rate_rps']:g}"
        floor = "-" if r["floor_highest_rate_rps"] is None else f"{r['floor_highest_rate_rps']:g}"
        print(f"  {name:<8}{best:>12}{floor:>10}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['degraded']:>10g}{r['errors']:>8g}")  # fmt: skip


def cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, CPU-s the whole machine was busy, CPU-s of this process and its reaped children:
    the services and the floor, once stopped)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    t = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def others(start: tuple[float, float, float], end: tuple[float, float, float]) -> dict[str, float]:
    """CPU time other processes took between two snapshots, out of what the cores could give."""
    available = (end[0] - start[0]) * (os.cpu_count() or 1)
    used = max(0.0, (end[1] - start[1]) - (end[2] - start[2]))
    return {"cpu_s": round(used, 1), "available_s": round(available, 1), "share": round(used / available, 4)}


def headline(command: str, step: Outcome, fixed: Outcome, floor_step: Outcome, floor_fixed: Outcome,
             seconds: float) -> dict[str, Any]:  # fmt: skip
    best, floor_best = (step.steps or {}).get("best_rate"), (floor_step.steps or {}).get("best_rate")
    f, ff = fixed.summary["latency_ms"], floor_fixed.summary["latency_ms"]
    return {
        "command": command,
        "machine": machine(),
        "seconds": round(seconds),
        "headline": {
            "objective_p99_ms": OBJECTIVE_MS,
            "highest_rate_rps": best,
            "floor_highest_rate_rps": floor_best,
            "rate_ratio_to_floor": round(best / floor_best, 3) if best and floor_best else None,
            "at_rps": FIXED_RATE,
            "p50_ms": f["p50"],
            "p99_ms": f["p99"],
            "floor_p50_ms": ff["p50"],
            "floor_p99_ms": ff["p99"],
            "p50_ratio_to_floor": round(f["p50"] / ff["p50"], 1) if ff["p50"] else None,
            "p99_ratio_to_floor": round(f["p99"] / ff["p99"], 1) if ff["p99"] else None,
            "achieved_rps": fixed.summary["achieved_rps"],
            "requests": fixed.summary["requests"],
            "errors": fixed.summary["errors"],
            "degraded": fixed.summary["degraded"],
        },
        "step": step.steps,
        "floor_step": floor_step.steps,
        "fixed": fixed.summary,
        "floor_fixed": floor_fixed.summary,
    }


def print_headline(doc: dict[str, Any]) -> None:
    h = doc["headline"]
    m = doc["machine"]
    print(f"headline ({m['cpus']} CPUs, Python {m['python']}, grpcio {m['grpcio']}; four services and the "
          f"generator on this machine; measured in {doc['seconds']} s):")  # fmt: skip
    best = f"{h['highest_rate_rps']:g}/s" if h["highest_rate_rps"] is not None else "none (the first step missed)"
    floor = f"{h['floor_highest_rate_rps']:g}/s" if h["floor_highest_rate_rps"] is not None else "none"
    ratio = f", {h['rate_ratio_to_floor']:.1%} of the floor" if h["rate_ratio_to_floor"] else ""
    print(f"  highest rate with gateway p99 <= {h['objective_p99_ms']:g} ms: {best} (floor {floor}{ratio})")
    if h["highest_rate_rps"] is None:
        low = min(doc["step"]["steps"], key=lambda s: s["offered_rps"])
        print(f"    (missed at every rate tried: at {low['offered_rps']:g}/s, the lowest, p50 "
              f"{low['latency_ms']['p50']:.1f} ms and p99 {low['latency_ms']['p99']:.1f} ms)")  # fmt: skip
    share = h["degraded"] / max(1, h["requests"])
    print(f"  at {h['at_rps']:g} requests/s: p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms "
          f"(floor p50 {h['floor_p50_ms']:.2f} ms, p99 {h['floor_p99_ms']:.2f} ms: x{h['p50_ratio_to_floor']} and "
          f"x{h['p99_ratio_to_floor']}); achieved {h['achieved_rps']:g} OK/s, {h['errors']} errors, "
          f"{h['degraded']} of {h['requests']} pages degraded ({share:.0%})")  # fmt: skip
    print(f"  command: {doc['command']}")
    for phase, o in doc["other_cpu"].items():
        name = "the four services were" if phase == "services" else "the floor was"
        print(f"  CPU used by other processes on the machine while {name} measured: "
              f"{o['cpu_s']:.0f} CPU-s of {o['available_s']:.0f} ({o['share']:.1%})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
