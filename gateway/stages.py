"""Where the gateway calls a stage: one runner for every call Recommend and Search make to another
service, with everything that surrounds such a call in one place.

- **budgets**: a request has one deadline (resilience.Deadline); each stage gets its share of it,
  never more than what is left once the later stages' shares are set aside;
- **breakers**: one circuit breaker per stage (and per model version for the ranker), so a dead
  service costs nothing while it is open;
- **degradations**: a stage that failed, was late or was skipped returns None, and the request's
  `Run` records what stood in for it (the `Degradation` the response carries);
- **metrics and traces**: time per stage, degradations by reason, a debug trace when asked for.
No grpc here: a stage is any coroutine function of its budget in seconds that raises StageFailed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from bundlerec.gateway import metrics
from bundlerec.gateway.model import Degradation, Stage, Trace, TraceStage
from bundlerec.gateway.ports import StageFailed
from bundlerec.gateway.resilience import BreakerState, CircuitBreaker, Deadline

log = logging.getLogger("bundlerec.gateway")
MIN_BUDGET_SECONDS = 0.0005  # below this a call cannot succeed: the stage is skipped as late
LAST_RESERVE = 0.05  # kept after the last downstream stage, for the rules and the page
T = TypeVar("T")


@dataclass(frozen=True)
class StageSettings:
    deadline_seconds: float = 0.1
    # shares of the deadline per stage; what is left after the ranker is for rules and the page
    profile_share: float = 0.2
    candidates_share: float = 0.4
    ranker_share: float = 0.3
    breaker_failures: int = 5
    breaker_reset_seconds: float = 5.0

    def share(self, stage: Stage) -> float:
        if stage is Stage.PROFILE:
            return self.profile_share
        return self.candidates_share if stage is Stage.CANDIDATES else self.ranker_share

    def reserve_after(self, stage: Stage) -> float:
        """The shares kept for the stages after `stage` when it is given its budget."""
        if stage is Stage.PROFILE:
            return self.candidates_share + self.ranker_share
        if stage is Stage.CANDIDATES:
            return self.ranker_share
        return LAST_RESERVE


@dataclass
class Run:
    """One request's passage through the stages: its deadline, trace and degradations."""

    deadline: Deadline
    trace: Trace | None
    degraded: list[Degradation] = field(default_factory=list)

    def count(self, stage: Stage, counters: Mapping[str, float]) -> None:
        if self.trace is None:
            return
        for entry in self.trace.stages:
            if entry.stage is stage:
                entry.counters.update(counters)
                return
        self.trace.stages.append(TraceStage(stage, 0.0, dict(counters)))


class StageRunner:
    def __init__(self, settings: StageSettings) -> None:
        self.settings = settings
        self.breakers: dict[tuple[Stage, str], CircuitBreaker] = {}

    def start(self, caller_seconds: float | None, debug: bool) -> Run:
        """A request's Run: the configured deadline, or the caller's own when it is shorter."""
        total = self.settings.deadline_seconds
        return Run(Deadline(min(total, caller_seconds or total)), Trace() if debug else None)

    async def call(
        self,
        run: Run,
        stage: Stage,
        fallback: str,
        call: Callable[[float], Awaitable[T]],
        *,
        key: str = "",
        reserve: float | None = None,
    ) -> T | None:
        """Runs `call(budget)` under the stage's breaker (one per stage and `key`: a model version)
        and its budget (`reserve`: the shares kept for later stages, when not the usual ones);
        None, and a Degradation naming `fallback`, when it failed."""
        s = self.settings
        budget = run.deadline.budget(s.share(stage), reserve=s.reserve_after(stage) if reserve is None else reserve)
        breaker = self._breaker(stage, key)
        started = time.monotonic()
        reason = ""
        result: T | None = None
        before = breaker.state
        allowed = breaker.allow()
        outcome: bool | None = None  # True: answered, False: failed as an outage, None: told nothing
        try:
            if not allowed:
                reason = "circuit_open"
            elif budget <= MIN_BUDGET_SECONDS:
                reason = "deadline_exceeded"
            else:
                try:
                    result = await call(budget)
                    outcome = True
                except StageFailed as failure:
                    reason = failure.reason
                    outcome = False if failure.outage else None
        finally:  # also when the caller gave up (cancelled): a probe must never stay taken
            if outcome is True:
                breaker.succeeded()
            elif outcome is False:
                breaker.failed()
            elif allowed:
                breaker.release()
        now = breaker.state
        opened = now is BreakerState.OPEN and before is BreakerState.CLOSED
        if opened or (now is BreakerState.CLOSED and before is not BreakerState.CLOSED):
            # one line per change of state, not per request: an outage must not flood the logs
            level = logging.WARNING if now is BreakerState.OPEN else logging.INFO
            log.log(level, f"circuit {now.value}", extra={"fields": {"stage": stage.value, "reason": reason}})
        if reason:
            run.degraded.append(Degradation(stage, reason, fallback))
            metrics.DEGRADED.labels(stage.value, reason).inc()
        if run.trace is not None:
            run.trace.stages.append(TraceStage(stage, (time.monotonic() - started) * 1000))
        metrics.STAGE_LATENCY.labels(stage.value).observe(time.monotonic() - started)
        return result

    def _breaker(self, stage: Stage, key: str) -> CircuitBreaker:
        breaker = self.breakers.get((stage, key))
        if breaker is None:
            s = self.settings
            breaker = CircuitBreaker(stage.value, s.breaker_failures, s.breaker_reset_seconds)
            self.breakers[(stage, key)] = breaker
        return breaker


__all__ = ["Run", "StageRunner", "StageSettings"]
