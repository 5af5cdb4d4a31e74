"""Prometheus metrics of the ranker, beside the per-RPC ones every service has
(bundlerec.runtime.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

from bundlerec.runtime.metrics import LATENCY_BUCKETS

BATCH_SIZE = Histogram(
    "bundlerec_ranker_batch_size",
    "Rank requests fused into one model run.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "bundlerec_ranker_inference_seconds",
    "Time of one model run, padding and splitting included.",
    buckets=LATENCY_BUCKETS,
)
MODEL = Info("bundlerec_ranker_model", "The model version being served.")
MODEL_LOADS = Counter("bundlerec_ranker_model_loads_total", "Model version loads, by outcome.", ["outcome"])
NON_FINITE = Counter(
    "bundlerec_ranker_non_finite_total", "Rank requests refused because the model produced a non-finite score."
)
QUEUE_WAIT = Histogram(
    "bundlerec_ranker_queue_wait_seconds",
    "Time a Rank request waited in the micro-batcher's queue before its model run started.",
    buckets=LATENCY_BUCKETS,
)
