"""Prometheus metrics shared by every service, and the /metrics HTTP endpoint."""

from __future__ import annotations

import gc
import time

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


class _CollectionTimer:
    """A gc callback: the time from each collection's start to its stop, by generation."""

    def __init__(self) -> None:
        self.children = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.children[info["generation"]].observe(time.perf_counter() - self.started)


def time_garbage_collections() -> None:
    """Times every collection of this process into GC_PAUSES (once per process)."""
    if not any(isinstance(callback, _CollectionTimer) for callback in gc.callbacks):
        gc.callbacks.append(_CollectionTimer())


def start_metrics_endpoint(host: str, port: int) -> None:
    """Serves /metrics on a background thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
