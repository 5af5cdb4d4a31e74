"""`bundlerec loadtest`: drive a running gateway, ranker or candidate service and report.

    bundlerec loadtest --address 127.0.0.1:50050 --data var/demo/shop --rate 100 --duration 20 --floor

Writes OUT/loadtest.json and OUT/loadtest.png (default OUT: var/loadtest) and prints a table.
See docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bundlerec.client import add_security_flags, security_from
from bundlerec.loadtest import report
from bundlerec.loadtest.channel import open_channel
from bundlerec.loadtest.driver import Objective, Run, closed_loop, make_call, open_loop, step_search
from bundlerec.loadtest.floor import floor_services
from bundlerec.loadtest.workload import TARGETS, Workload, WorkloadSettings, load_dataset
from bundlerec.runtime.tls import ChannelSecurity

DEFAULT_ADDRESSES = {"gateway": "127.0.0.1:50050", "candidate": "127.0.0.1:50052", "ranker": "127.0.0.1:50053"}


@dataclass(frozen=True)
class Plan:
    mode: str = "open"  # "open", "closed" or "step"
    rate: float = 100.0  # open loop; the first rate of a step search
    concurrency: int = 8  # closed loop
    duration: float = 20.0
    warmup: float = 5.0
    deadline_ms: float = 1000.0
    objective_p99_ms: float = 50.0  # step search
    max_bad_share: float = 0.01
    factor: float = 1.5
    max_rate: float = 5000.0
    refine: int = 2
    down: int = 3  # when the first rate misses: how many times to lower it by `factor`
    step_duration: float = 8.0
    step_warmup: float = 2.0
    step_min_requests: int = 100  # a step lasts long enough for this many requests: p99 is not just the max


@dataclass
class Outcome:
    run: Run  # the fixed-load run, or the step search's best step (its last step when none met it)
    summary: dict[str, Any]
    steps: dict[str, Any] | None = None


async def measure(
    address: str,
    target: str,
    workload: Callable[[], Workload],
    plan: Plan,
    *,
    security: ChannelSecurity | None = None,
    say: Callable[[str], None] = lambda _: None,
    connect_timeout: float = 10.0,
) -> Outcome:
    """Runs `plan` against the service at `address` with requests from a fresh `workload()`."""
    channel, metadata = open_channel(address, security)
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=connect_timeout)
        except TimeoutError:
            raise SystemExit(f"bundlerec loadtest: nothing answers at {address} (is the {target} running?)") from None
        call = make_call(channel, target, plan.deadline_ms, metadata)
        requests = iter(workload())
        if plan.mode == "closed":
            run = await closed_loop(
                call,
                requests,
                concurrency=plan.concurrency,
                duration=plan.duration,
                warmup=plan.warmup,
                deadline_ms=plan.deadline_ms,
                target=target,
            )
            return Outcome(run, report.summarize(run))
        if plan.mode == "open":
            run = await open_loop(
                call,
                requests,
                rate=plan.rate,
                duration=plan.duration,
                warmup=plan.warmup,
                deadline_ms=plan.deadline_ms,
                target=target,
            )
            return Outcome(run, report.summarize(run))
        runs: dict[float, Run] = {}

        async def run_at(rate: float) -> dict[str, Any]:
            runs[rate] = await open_loop(
                call,
                requests,
                rate=rate,
                duration=max(plan.step_duration, plan.step_min_requests / rate),
                warmup=plan.step_warmup,
                deadline_ms=plan.deadline_ms,
                target=target,
            )
            return report.summarize(runs[rate])

        objective = Objective(plan.objective_p99_ms, plan.max_bad_share)
        result = await step_search(
            run_at,
            objective,
            start=plan.rate,
            factor=plan.factor,
            max_rate=plan.max_rate,
            refine=plan.refine,
            say=say,
            down=plan.down,
        )
        chosen = result.best_rate if result.best_rate is not None else result.steps[-1][0]
        return Outcome(runs[chosen], report.summarize(runs[chosen]), report.step_summary(result))
    finally:
        await channel.close()


async def measure_floor(
    target: str, workload: Callable[[], Workload], plan: Plan, say: Callable[[str], None]
) -> Outcome:
    """The same plan against the empty-handler topology (floor.py), started here and stopped after."""
    with floor_services() as addresses:
        return await measure(addresses[target], target, workload, plan, say=say)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def document(
    command: str, target: str, address: str, plan: Plan, ours: Outcome, floor: Outcome | None, dataset: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "command": command,
        "target": target,
        "address": address,
        "machine": machine(),
        "dataset": dataset,
        "plan": asdict(plan),
        "result": ours.summary,
        "step": ours.steps,
    }
    if floor is not None:
        out["floor"] = {"result": floor.summary, "step": floor.steps}
        out["ratio_to_floor"] = report.ratios(ours.summary, floor.summary)
        if ours.steps and floor.steps and ours.steps["best_rate"] and floor.steps["best_rate"]:
            out["ratio_to_floor"]["best_rate"] = round(ours.steps["best_rate"] / floor.steps["best_rate"], 3)
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Drive a running gateway (or the ranker or candidate service) with requests drawn from a dataset: open loop "
        "at --rate (default), closed loop with --concurrency, or a step search with --step-p99-ms; --floor also "
        "measures four empty gRPC services under the same load. Writes OUT/loadtest.json and OUT/loadtest.png. "
        "See docs/loadtest.md."
    )
    p = parser.add_argument
    p("--target", choices=TARGETS, default="gateway", help="the service to drive (default: %(default)s)")
    p("--address", help="host:port (default: the target's default port, gateway 127.0.0.1:50050)")
    p("--data", help="a dataset directory in the import format; default: the demo shop `bundlerec demo` imports")
    p("--rate", type=float, default=100.0, help="open loop: requests/s; step mode: the first rate (default: 100)")
    p("--concurrency", type=int, help="closed loop instead: this many clients, each waiting for its reply")
    p("--duration", type=float, default=20.0, help="seconds measured (default: %(default)s)")
    p("--warmup", type=float, default=5.0, help="seconds sent first and not reported (default: %(default)s)")
    p("--deadline-ms", type=float, default=1000.0, help="every call's deadline (default: %(default)s)")
    p("--connect-timeout", type=float, default=10.0, help="seconds to wait for the service to answer at all")
    p(
        "--step-p99-ms",
        type=float,
        help="step mode: raise the rate until p99 exceeds this; report the highest rate "
        "that kept it (and at most --max-bad-share failed or degraded)",
    )
    p("--step-factor", type=float, default=1.5, help="step mode: rate multiplier per step (default: %(default)s)")
    p("--step-duration", type=float, default=8.0, help="step mode: seconds measured per step (default: %(default)s)")
    p("--step-warmup", type=float, default=2.0, help="step mode: warm-up seconds per step (default: %(default)s)")
    p("--max-rate", type=float, default=5000.0, help="step mode: the highest rate tried (default: %(default)s)")
    p(
        "--step-min-requests",
        type=int,
        default=100,
        help="step mode: a slow step lasts long enough for this many requests (default: %(default)s)",
    )
    p("--refine", type=int, default=2, help="step mode: bisections after the first miss (default: %(default)s)")
    p("--max-bad-share", type=float, default=0.01, help="step mode: share of requests allowed to fail or degrade")
    p("--anonymous-share", type=float, default=0.2, help="share of anonymous sessions (default: %(default)s)")
    p(
        "--trace-share",
        type=float,
        default=0.1,
        help="gateway: share of requests sent with debug=true; their trace gives the time per stage",
    )
    p("--page-size", type=int, default=10, help="gateway: bundles per page (default: %(default)s)")
    p("--candidates", type=int, default=100, help="ranker: candidate bundles per request; candidate: limits")
    p("--seed", type=int, default=1, help="same seed, same requests (default: %(default)s)")
    p("--floor", action="store_true", help="also measure the floor: the same load on four empty gRPC services")
    p("--out", default="var/loadtest", help="directory for loadtest.json and loadtest.png (default: %(default)s)")
    add_security_flags(parser)


def plan_from(args: argparse.Namespace) -> Plan:
    mode = "step" if args.step_p99_ms else ("closed" if args.concurrency else "open")
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.deadline_ms <= 0:
        raise SystemExit("bundlerec loadtest: --rate, --duration and --deadline-ms must be positive")
    return Plan(
        mode=mode,
        rate=args.rate,
        concurrency=args.concurrency or 0,
        duration=args.duration,
        warmup=args.warmup,
        deadline_ms=args.deadline_ms,
        objective_p99_ms=args.step_p99_ms or 0.0,
        max_bad_share=args.max_bad_share,
        factor=args.step_factor,
        max_rate=args.max_rate,
        refine=args.refine,
        step_duration=args.step_duration,
        step_warmup=args.step_warmup,
        step_min_requests=args.step_min_requests,
    )


def run_loadtest(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    plan = plan_from(args)
    address = args.address or DEFAULT_ADDRESSES[args.target]
    security = security_from(args)
    data = load_dataset(args.data)
    settings = WorkloadSettings(args.anonymous_share, args.trace_share, args.page_size, 0.1, args.candidates, args.seed)
    workload = lambda: Workload(data, args.target, settings)  # noqa: E731
    say = lambda line: print(line, flush=True)  # noqa: E731
    command = "bundlerec " + shlex.join(argv if argv is not None else sys.argv[1:])
    say(
        f"{args.target} at {address}: {describe(plan)}; requests from {data.path if args.data else 'the demo shop'} "
        f"({workload().users} users, {args.anonymous_share:.0%} anonymous)"
    )
    ours = asyncio.run(
        measure(address, args.target, workload, plan, security=security, say=say, connect_timeout=args.connect_timeout)
    )
    floor = None
    if args.floor:
        say("the floor: the same load on four empty gRPC services")
        floor = asyncio.run(measure_floor(args.target, workload, plan, say))
    dataset = {"path": str(data.path) if args.data else "demo shop (generated)", "users": workload().users}
    doc = document(command, args.target, address, plan, ours, floor, dataset)
    show(doc, ours, floor, Path(args.out), sys.stdout)
    return 0


def describe(plan: Plan) -> str:
    if plan.mode == "closed":
        return f"closed loop, {plan.concurrency} clients, {plan.duration:g} s after {plan.warmup:g} s warm-up"
    if plan.mode == "open":
        return f"open loop at {plan.rate:g}/s, {plan.duration:g} s after {plan.warmup:g} s warm-up"
    return (
        f"step search from {plan.rate:g}/s x{plan.factor:g} until p99 > {plan.objective_p99_ms:g} ms, "
        f"{plan.step_duration:g} s per step"
    )


def show(doc: dict[str, Any], ours: Outcome, floor: Outcome | None, out: Path, stream: Any) -> None:
    """Prints the report and writes out/loadtest.json and out/loadtest.png."""
    print(file=stream)
    if ours.steps:
        report.print_steps(ours.steps, stream, name=doc["target"])
        if floor is not None and floor.steps:
            report.print_steps(floor.steps, stream, name="floor")
        print(file=stream)
    which = ""
    if ours.steps:
        which = " (the best step)" if ours.steps["best_rate"] is not None else " (the first step, which missed)"
    title = f"{doc['target']} at {doc['address']}{which}"
    report.print_table(ours.summary, stream, title=title, floor=floor.summary if floor else None)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(doc, out / "loadtest.json")
    why = report.write_png(
        out / "loadtest.png",
        ours.run,
        floor=floor.run if floor and not ours.steps else None,  # steps: the best ones ran at different rates
        steps=ours.steps,
        floor_steps=floor.steps if floor else None,
        title=doc["command"],
    )
    print(f"\nwrote {out / 'loadtest.json'}" + (f"; {why}" if why else f" and {out / 'loadtest.png'}"), file=stream)
