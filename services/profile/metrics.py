"""Prometheus metrics of the profile service, beside the per-RPC ones every service has
(bundlerec.runtime.metrics)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar

from prometheus_client import Counter, Histogram

from bundlerec.profile.exposures import Outcome
from bundlerec.runtime.metrics import LATENCY_BUCKETS

P = ParamSpec("P")
T = TypeVar("T")

EVENTS = Counter(
    "bundlerec_profile_events_total",
    "Events received by RecordEvents, by outcome: recorded (personal history), anonymized (popularity "
    "counts only), duplicate (already recorded: a retry), rejected (the batch was refused as invalid), "
    "failed (not stored for another reason, such as the database being unavailable: the caller retries).",
    ["outcome"],
)
DB_LATENCY = Histogram(
    "bundlerec_profile_db_duration_seconds",
    "Time of one store operation (its whole transaction, retries included), by operation and outcome.",
    ["operation", "outcome"],
    buckets=LATENCY_BUCKETS,
)

ATTRIBUTED = Counter(
    "bundlerec_profile_attributed_outcomes_total",
    "Clicks, adds to cart and purchases attributed to the page they followed, by the page's experiment variant, "
    "placement and the event type; counted when both the page and the event are in (the report reads the log).",
    ["variant", "placement", "type"],
)
ATTRIBUTED_REVENUE = Counter(
    "bundlerec_profile_attributed_revenue_total",
    "Revenue of attributed purchases (the prices the pages showed), by the page's experiment variant and placement.",
    ["variant", "placement"],
)


def count_attributed(attributed: Iterable[tuple[str, str, Outcome]]) -> None:
    for variant, placement, outcome in attributed:
        ATTRIBUTED.labels(variant, placement, outcome.type.value).inc()
        if outcome.revenue:
            ATTRIBUTED_REVENUE.labels(variant, placement).inc(outcome.revenue)


def timed(operation: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Times a store method into DB_LATENCY (outcome ok or error)."""

    def decorate(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        ok, error = DB_LATENCY.labels(operation, "ok"), DB_LATENCY.labels(operation, "error")

        @functools.wraps(method)
        async def timed_method(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                result = await method(*args, **kwargs)
            except BaseException:
                error.observe(time.perf_counter() - started)
                raise
            ok.observe(time.perf_counter() - started)
            return result

        return timed_method

    return decorate
