"""What keeps a page coming when a stage is slow or down: one deadline per request, split into
stage budgets, and a circuit breaker per downstream service.

- `Deadline`: the whole request gets one budget (say 100 ms); each stage is given a share of what
  is left, never more than remains minus a reserve for the stages after it, so a slow profile
  read cannot eat the ranker's time. Every downstream call carries its stage's budget as its gRPC
  deadline: no call is made without one.
- `CircuitBreaker`: after `failures` consecutive failures a stage is skipped (open) for
  `reset_seconds`, then one probe call is let through (half-open); a success closes it, a failure
  opens it again. A skipped stage costs nothing, so a dead ranker does not add its timeout to
  every request. (pybreaker, the usual library, supports asyncio only through Tornado; this is
  the 40 lines it would have saved.)
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """A request's time budget, on the monotonic clock."""

    total_seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def remaining(self) -> float:
        return max(0.0, self.total_seconds - (self.clock() - self.started))

    def budget(self, share: float, reserve: float = 0.0) -> float:
        """Seconds for the next stage: `share` of the total, capped by what remains once `reserve`
        (a share of the total kept for the stages after this one) is set aside."""
        left = self.remaining() - reserve * self.total_seconds
        return max(0.0, min(share * self.total_seconds, left))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    name: str
    failures: int = 5
    reset_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _opened_at: float | None = None
    _probing: bool = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self.clock() - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether to call the stage now. In half-open state only one probe is in flight at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def release(self) -> None:
        """An allowed call that told nothing (no budget left, cancelled): the probe slot frees up."""
        self._probing = False

    def succeeded(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.failures:
            self._opened_at = self.clock()
        self._probing = False
