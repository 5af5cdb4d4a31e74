"""Prometheus metrics shared by every service, and the /metrics HTTP endpoint."""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

RPC_REQUESTS = Counter(
    "bundlerec_rpc_requests_total",
    "RPCs handled, by final gRPC status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "bundlerec_rpc_duration_seconds",
    "Time from receiving an RPC to its reply, by method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)


GC_PAUSES = Histogram(
    "bundlerec_gc_pause_seconds",
    "Python's garbage collections, by generation: each one pauses every call in flight in the process.",
    ["generation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


def time_garbage_collections() -> None:
    """Times every collection of this process into GC_PAUSES (once per process)."""
    if _on_collection in gc.callbacks:
        return
    children = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
    _started[:] = [0.0]
    _children[:] = children
    gc.callbacks.append(_on_collection)


_started: list[float] = [0.0]
_children: list[Any] = []


def _on_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    elif _children:
        _children[info["generation"]].observe(time.perf_counter() - _started[0])


def start_metrics_endpoint(host: str, port: int) -> None:
    """Serves /metrics on a background thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
