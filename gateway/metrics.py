"""The gateway's Prometheus metrics, beside the per-RPC ones every service has."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Histogram

from bundlerec.runtime.metrics import LATENCY_BUCKETS

STAGE_LATENCY = Histogram(
    "bundlerec_gateway_stage_duration_seconds",
    "Time a Recommend or Search call spent in each stage (profile, candidates, ranker, rules).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
DEGRADED = Counter(
    "bundlerec_gateway_degraded_total",
    "Stages that failed or were skipped in a call, by stage and reason; each was replaced by a fallback.",
    ["stage", "reason"],
)
PAGES = Counter(
    "bundlerec_gateway_pages_total",
    "Pages served, by experiment variant and whether they were personalized.",
    ["variant", "personalized"],
)
PAGE_BUNDLES = Counter(
    "bundlerec_gateway_page_bundles_total",
    "Bundles shown on pages: curated (from the catalogue) or generated (built for the request).",
    ["kind"],
)
DEGRADED_PAGES = Counter(
    "bundlerec_gateway_degraded_pages_total",
    "Recommend pages served with at least one stage degraded (see bundlerec_gateway_degraded_total for which "
    "and why), by experiment variant.",
    ["variant"],
)
PAGE_SIZE = Histogram(
    "bundlerec_gateway_page_size",
    "Bundles on a Recommend page (fewer than asked when the filtered catalogue has fewer).",
    buckets=(0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 50),
)
# children asked for on every page, looked up once
PAGE_BUNDLES_CURATED = PAGE_BUNDLES.labels("curated")
PAGE_BUNDLES_GENERATED = PAGE_BUNDLES.labels("generated")
EXPOSURES = Counter(
    "bundlerec_gateway_exposures_total",
    "Pages sent to the exposure log (in the background, batched), by experiment variant and placement.",
    ["variant", "placement"],
)
EXPOSED_BUNDLES = Counter(
    "bundlerec_gateway_exposed_bundles_total",
    "Bundles on the pages sent to the exposure log, by variant and kind (curated, built, featured, explored).",
    ["variant", "kind"],
)
EXPOSURES_DROPPED = Counter(
    "bundlerec_gateway_exposures_dropped_total",
    "Pages the exposure log never got: queue_full (it is down or slower than traffic), refused, failed.",
    ["reason"],
)


def count_page(variant: str, personalized: bool, degraded: bool, generated: Sequence[bool]) -> None:
    """A Recommend page served: its variant, whether personalized or degraded, and its bundles."""
    PAGES.labels(variant, str(personalized).lower()).inc()
    PAGE_SIZE.observe(len(generated))
    if degraded:
        DEGRADED_PAGES.labels(variant).inc()
    built = sum(generated)
    if built:
        PAGE_BUNDLES_GENERATED.inc(built)
    if len(generated) > built:
        PAGE_BUNDLES_CURATED.inc(len(generated) - built)
