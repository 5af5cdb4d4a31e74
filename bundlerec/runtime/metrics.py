"""Prometheus metrics shared by every service, and the /metrics HTTP endpoint."""

from __future__ import annotations

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


def start_metrics_endpoint(host: str, port: int) -> None:
    """Serves /metrics on a background thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
