"""CPU per page: what each of the four services spends on one page, at a fixed rate, beside the floor.

    python bench/cpu_per_page.py [--workdir var/demo] [--rate 40] [--duration 30] [--flamegraphs DIR]

1. The demo's data (as bench/loadtest.py: `bundlerec demo`'s steps 1-3, what is there is kept), the
   four services as processes with the shipped 100 ms deadline, a warm-up at the rate.
2. `--duration` seconds of open-loop load at `--rate` pages/s (the load test's workload: demo shoppers,
   20 % anonymous, the placement mix). Each service's user+system CPU time is read from
   /proc/PID/stat before and after: CPU per page = its CPU seconds / pages answered.
3. The same load on the floor (bundlerec/loadtest/floor.py: four empty gRPC processes in the same
   topology, whose requests and replies have the demo shop's sizes: 50-event profiles, 200
   retrieved candidates, 110 ranked bundles, a 5-bundle page), so each service's figure stands
   beside what bare RPCs carrying the same messages cost (`--empty-floor`: empty messages).
4. With `--flamegraphs DIR`, a second window at the same rate with py-spy recording every service
   (sampling slows what it samples, so the CPU figures come from the first window, not this one):
   DIR/<service>.svg, and DIR/<service>.txt with the hottest functions by own time.

Prints a table and writes OUT/cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.commands.demo import prepare_demo, start_services, stop_services
from bundlerec.loadtest.command import Plan, measure
from bundlerec.loadtest.floor import floor_services
from bundlerec.loadtest.workload import Workload, WorkloadSettings, load_dataset

SERVICES = ("profile", "candidate", "ranker", "gateway")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def window(address: str, pids: dict[str, int], workload: Any, rate: float, duration: float) -> dict[str, Any]:
    """CPU ms per answered page of each process during `duration` s of load at `rate`."""
    before = {name: cpu_of(pid) for name, pid in pids.items()}
    started = time.monotonic()
    outcome = asyncio.run(measure(address, "gateway", workload, Plan(rate=rate, duration=duration, warmup=0)))
    wall = time.monotonic() - started
    after = {name: cpu_of(pid) for name, pid in pids.items()}
    s = outcome.summary
    pages = max(1, s["requests"] - s["errors"])
    per_page = {name: round((after[name] - before[name]) * 1000 / pages, 2) for name in pids}
    return {
        "pages": pages,
        "errors": s["errors"],
        "degraded": s["degraded"],
        "wall_s": round(wall, 1),
        "p50_ms": s["latency_ms"]["p50"],
        "p99_ms": s["latency_ms"]["p99"],
        "cpu_ms_per_page": per_page,
        "total_cpu_ms_per_page": round(sum(per_page.values()), 2),
    }


def flamegraphs(pids: dict[str, int], out: Path, seconds: float, load: Any) -> None:
    """py-spy records each service while `load()` runs (non-blocking, so it never pauses a service):
    DIR/<service>.svg, and DIR/<service>.txt with the functions taking the most CPU of their own."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "folded")):
            command = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
                       "--nonblocking", "--format", fmt, "--output", str(out / f"{name}.{suffix}")]  # fmt: skip
            recorders.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    load()
    for recorder in recorders:
        recorder.wait(timeout=seconds + 60)
    for name in pids:
        folded = out / f"{name}.folded"
        if folded.is_file():
            (out / f"{name}.txt").write_text(top_functions(folded.read_text()))
            folded.unlink()


def top_functions(folded: str, count: int = 30) -> str:
    """The functions with the most samples, from folded stacks: at the top of the stack (own time),
    and anywhere on it (inclusive: the function and what it called)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + int(n)
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:  # any line of it
            inclusive[function] = inclusive.get(function, 0) + int(n)
        total += int(n)
    out = []
    for title, table in (("own time", own), ("inclusive time", inclusive)):
        out.append(f"# {title} (share of {total} samples)\n")
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:count]
        out.extend(f"{n / max(1, total):6.1%}  {frame}\n" for frame, n in rows)
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/demo", help="the demo's data (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=40.0, help="pages/s (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (default: %(default)s)")
    parser.add_argument("--flamegraphs", default="", help="a folder for py-spy flame graphs (optional)")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor")
    parser.add_argument("--empty-floor", action="store_true", help="the floor's messages empty, not page-sized")
    parser.add_argument("--out", default="var/bench/cpu", help="cpu.json (default: %(default)s)")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if prepare_demo(root) != 0:
        return 1
    data = load_dataset(str(root / "shop"))
    workload = lambda: Workload(data, "gateway", WorkloadSettings())  # noqa: E731
    doc: dict[str, Any] = {"command": " ".join(["python", "bench/cpu_per_page.py", *sys.argv[1:]]), "rate": args.rate}
    services = start_services(root, overrides={"BUNDLEREC_GATEWAY_DEADLINE_MS": "100"})
    try:
        pids = {s.name: s.process.pid for s in services}
        gateway = services[-1].address
        asyncio.run(measure(gateway, "gateway", workload, Plan(rate=args.rate, duration=10, warmup=0)))
        doc["ours"] = window(gateway, pids, workload, args.rate, args.duration)
        if args.flamegraphs:
            load = lambda: window(gateway, pids, workload, args.rate, args.duration)  # noqa: E731
            flamegraphs(pids, Path(args.flamegraphs), args.duration, load)
    finally:
        stop_services(services)
    if not args.no_floor:
        with floor_services(sized=not args.empty_floor) as floor:
            floor_pids = {name: _pid_listening(address) for name, address in floor.items()}
            asyncio.run(measure(floor["gateway"], "gateway", workload, Plan(rate=args.rate, duration=5, warmup=0)))
            doc["floor"] = window(floor["gateway"], floor_pids, workload, args.rate, args.duration)
            doc["floor"]["messages"] = "empty" if args.empty_floor else "page-sized"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(doc, indent=2) + "\n")
    show(doc)
    return 0


def _pid_listening(address: str) -> int:
    """The pid of the process listening on a loopback address (the floor's processes)."""
    port = int(address.rsplit(":", 1)[1])
    found = subprocess.run(["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(found.split("pid=", 1)[1].split(",", 1)[0])


def show(doc: dict[str, Any]) -> None:
    ours, floor = doc["ours"], doc.get("floor")
    print(f"\nCPU ms per page at {doc['rate']:g} pages/s ({ours['pages']} pages, p50 {ours['p50_ms']:.1f} ms, "
          f"p99 {ours['p99_ms']:.1f} ms, {ours['degraded']} degraded, {ours['errors']} errors)")  # fmt: skip
    print(f"  {'service':<10} {'ours':>7} {'floor':>7} {'ratio':>6}")
    for name in (*SERVICES, "total"):
        mine = ours["total_cpu_ms_per_page"] if name == "total" else ours["cpu_ms_per_page"][name]
        bare = None
        if floor:
            bare = floor["total_cpu_ms_per_page"] if name == "total" else floor["cpu_ms_per_page"][name]
        ratio = f"{mine / bare:6.1f}" if bare else "     -"
        print(f"  {name:<10} {mine:7.2f} {bare if bare is not None else '-':>7} {ratio}")
    print(f"  command: {doc['command']}")


if __name__ == "__main__":
    sys.exit(main())
