"""Drives a service with requests: open loop (a fixed arrival rate), closed loop (N clients), and
the step search for the highest rate that meets a latency objective.

Open loop: request i is due at t0 + i/rate whether or not earlier replies came back, and its
latency is measured from when it was due, not from when it went out. A slow server then shows as
high latency rather than as fewer requests (no coordinated omission); the time from due to sent is
kept too, so a generator that fell behind its schedule is reported rather than hidden.
Closed loop: N clients each send, wait for the reply, and send again; latency from the send.
Every call has a deadline; the first `warmup` seconds of a run are sent but not reported.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bundlerec.loadtest.workload import Planned
from bundlerec.v1 import candidate_pb2_grpc, gateway_pb2, gateway_pb2_grpc, ranker_pb2_grpc

# asyncio sleeps in whole milliseconds, rounded up (epoll): waking half of one early centres the
# send on its due time; a request sent early is timed from its send, one sent late from its due time
EARLY = 0.0005
POOL = 4000  # distinct requests prepared before a run and cycled: none is built while the clock runs
STAGE_NAMES = {v: k.removeprefix("STAGE_").lower() for k, v in gateway_pb2.Stage.items()}


@dataclass(slots=True)
class Sample:
    due: float  # seconds from the run's start: when the request was due (open loop) or sent (closed)
    sent: float  # when it went out
    latency_ms: float  # open loop: from due (or from sent, if sent early) to the reply; closed: from sent
    service_ms: float  # from sent to the reply
    code: str  # "OK" or the gRPC status code's name
    label: str
    degraded: tuple[str, ...] = ()  # "stage:reason" for each stage the gateway replaced by a fallback
    stages: tuple[tuple[str, float], ...] = ()  # the gateway's trace: (stage, ms), on traced requests


@dataclass
class Run:
    mode: str  # "open" or "closed"
    target: str
    rate: float  # offered requests/s (open loop); 0 for closed loop
    concurrency: int  # clients (closed loop); 0 for open loop
    duration: float
    warmup: float
    deadline_ms: float
    samples: list[Sample] = field(default_factory=list)  # after the warm-up
    sent_in_warmup: int = 0


Call = Callable[[Planned], Awaitable[tuple[str, tuple[str, ...], tuple[tuple[str, float], ...]]]]


def make_call(
    channel: grpc.aio.Channel, target: str, deadline_ms: float, metadata: Sequence[tuple[str, str]] = ()
) -> Call:
    """One request to `target` over `channel`: returns (status code name, degradations, trace stages)."""
    if target == "gateway":
        method: Any = gateway_pb2_grpc.RecommendationServiceStub(channel).Recommend
    elif target == "ranker":
        method = ranker_pb2_grpc.RankerServiceStub(channel).Rank
    elif target == "candidate":
        method = candidate_pb2_grpc.CandidateServiceStub(channel).Retrieve
    else:
        raise ValueError(f"unknown target {target!r}")
    timeout = deadline_ms / 1000
    meta = tuple(metadata) or None

    async def call(planned: Planned) -> tuple[str, tuple[str, ...], tuple[tuple[str, float], ...]]:
        try:
            reply = await method(planned.message, timeout=timeout, metadata=meta)
        except grpc.aio.AioRpcError as error:
            return error.code().name, (), ()
        except Exception as error:  # a bug or a closed channel: counted, not fatal to the run
            return f"CLIENT_{type(error).__name__}", (), ()
        if target != "gateway":
            return "OK", (), ()
        degraded = tuple(f"{STAGE_NAMES.get(d.stage, d.stage)}:{d.reason}" for d in reply.degraded)
        stages = tuple((STAGE_NAMES.get(s.stage, str(s.stage)), s.duration_ms) for s in reply.trace.stages)
        return "OK", degraded, stages

    return call


def prepare(requests: Iterator[Planned], count: int) -> Iterator[Planned]:
    """At most POOL requests, built now and then cycled."""
    return itertools.cycle(list(itertools.islice(requests, max(1, min(count, POOL)))))


async def open_loop(
    call: Call,
    requests: Iterator[Planned],
    *,
    rate: float,
    duration: float,
    warmup: float = 0.0,
    deadline_ms: float = 1000.0,
    target: str = "",
) -> Run:
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    total = round(rate * (warmup + duration))
    pool = prepare(requests, total)
    run = Run("open", target, rate, 0, duration, warmup, deadline_ms)
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    pending: set[asyncio.Task[None]] = set()

    warm = round(rate * warmup)  # requests 0 .. warm-1 are the warm-up

    async def one(i: int, planned: Planned, due: float) -> None:
        sent = loop.time()
        code, degraded, stages = await call(planned)
        done = loop.time()
        if i < warm:
            run.sent_in_warmup += 1
            return
        run.samples.append(
            Sample(
                due - t0,
                sent - t0,
                (done - min(due, sent)) * 1000,
                (done - sent) * 1000,
                code,
                planned.label,
                degraded,
                stages,
            )
        )

    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time() - EARLY
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 16 == 0:
            await asyncio.sleep(0)  # behind schedule: send the backlog at once, but let replies in
        task = asyncio.create_task(one(i, next(pool), due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return run


async def closed_loop(
    call: Call,
    requests: Iterator[Planned],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 0.0,
    deadline_ms: float = 1000.0,
    target: str = "",
) -> Run:
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be at least 1 and duration positive")
    pool = prepare(requests, POOL)
    run = Run("closed", target, 0.0, concurrency, duration, warmup, deadline_ms)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = t0 + warmup + duration

    async def client() -> None:
        while (sent := loop.time()) < end:
            planned = next(pool)
            code, degraded, stages = await call(planned)
            done = loop.time()
            if sent - t0 < warmup:
                run.sent_in_warmup += 1
                continue
            latency = (done - sent) * 1000
            run.samples.append(Sample(sent - t0, sent - t0, latency, latency, code, planned.label, degraded, stages))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return run


@dataclass(frozen=True)
class Objective:
    """What a sustainable rate means: p99 within `p99_ms`, at most `max_bad_share` of the requests
    failed or degraded, and the rate achieved at least `min_achieved` of the rate offered."""

    p99_ms: float
    max_bad_share: float = 0.01
    min_achieved: float = 0.95


@dataclass
class StepResult:
    objective: Objective
    steps: list[tuple[float, dict[str, Any], bool, str]]  # (offered rate, summary, met, why not)
    best_rate: float | None  # the highest offered rate that met the objective (None: not even the first)
    best: dict[str, Any] | None


def judge(summary: dict[str, Any], objective: Objective) -> tuple[bool, str]:
    """Whether one open-loop run met the objective, and if not, why."""
    if summary["requests"] == 0:
        return False, "no request completed"
    p99 = summary["latency_ms"]["p99"]
    if p99 > objective.p99_ms:
        return False, f"p99 {p99:.1f} ms > {objective.p99_ms:g} ms"
    bad = (summary["errors"] + summary["degraded"]) / summary["requests"]
    if bad > objective.max_bad_share:
        return False, f"{bad:.1%} of requests failed or degraded > {objective.max_bad_share:.1%}"
    if summary["achieved_rps"] < objective.min_achieved * summary["offered_rps"]:
        return False, f"achieved {summary['achieved_rps']:.0f}/s of {summary['offered_rps']:.0f}/s offered"
    return True, ""


async def step_search(
    run_at: Callable[[float], Awaitable[dict[str, Any]]],
    objective: Objective,
    *,
    start: float,
    factor: float = 1.5,
    max_rate: float = 10_000.0,
    refine: int = 2,
    down: int = 3,
    say: Callable[[str], None] = lambda _: None,
) -> StepResult:
    """Raises the rate by `factor` from `start` until a step misses the objective (or `max_rate`),
    then bisects `refine` times between the last rate that met it and the first that did not. When
    `start` itself misses, lowers it by `factor` (at most `down` times) until a rate meets it.
    `run_at(rate)` runs one open-loop step and returns its summary (report.summarize)."""
    if start <= 0 or factor <= 1:
        raise ValueError("start must be positive and factor above 1")
    steps: list[tuple[float, dict[str, Any], bool, str]] = []
    good: float | None = None
    bad: float | None = None

    async def attempt(rate: float) -> bool:
        summary = await run_at(rate)
        met, why = judge(summary, objective)
        steps.append((rate, summary, met, why))
        p = summary["latency_ms"]
        say(f"  {rate:8.1f}/s  p50 {p['p50']:7.1f} ms  p99 {p['p99']:7.1f} ms  {'ok' if met else 'MISSED: ' + why}")
        return met

    rate = start
    if await attempt(rate):
        good = rate
        while good < max_rate:
            rate = min(round(good * factor, 2), max_rate)
            if not await attempt(rate):
                bad = rate
                break
            good = rate
    else:  # the first rate was already too much: step down until one meets the objective
        bad = rate
        for _ in range(down):
            rate = round(rate / factor, 2)
            if await attempt(rate):
                good = rate
                break
            bad = rate
    if good is not None and bad is not None:
        for _ in range(refine):
            middle = round((good + bad) / 2, 1)
            if middle <= good or middle >= bad:
                break
            if await attempt(middle):
                good = middle
            else:
                bad = middle
    best = next((s for r, s, met, _ in steps if met and r == good), None)
    return StepResult(objective, steps, good, best)
