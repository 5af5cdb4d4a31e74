"""Prometheus metrics of the candidate service, beside the per-RPC ones every service has
(bundlerec.runtime.metrics)."""

from __future__ import annotations

import collections
import functools
import weakref
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from bundlerec.candidate.model import SOURCE_SETS

if TYPE_CHECKING:
    from bundlerec.candidate.index import CatalogueIndex
    from bundlerec.candidate.model import Retrieved, Source

INDEX_SIZE = Gauge(
    "bundlerec_candidate_index_size",
    "Entries of the in-memory retrieval index: items and bundles with a vector, and the collaborative "
    "vectors of the ranker model fused into them.",
    ["kind"],
)
SOURCE_HITS = Counter(
    "bundlerec_candidate_source_hits_total",
    "Candidates returned by Retrieve (kind item or bundle) per source that found them (a candidate found "
    "by several sources counts for each); SearchText results count as source text_search.",
    ["kind", "source"],
)

FOLLOWED = Counter(
    "bundlerec_candidate_feed_applied_total",
    "Looks at the catalogue's change feed that found other writers' changes (another replica's writes, "
    "an import) and applied them to this replica's index.",
)
FEED_LAG = Histogram(
    "bundlerec_candidate_feed_lag_seconds",
    "From a catalogue write's commit (by another replica or an import) to this replica's index "
    "reflecting it; the oldest write of each batch applied.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BEHAVIOUR_COUNTED = Counter(
    "bundlerec_candidate_behaviour_counted_total",
    "Entries of the profile service's anonymous behaviour log counted into the live statistics "
    "(popularity, co-occurrence) by this replica.",
)
REBUILDS = Counter(
    "bundlerec_candidate_index_rebuilds_total",
    "Whole indexes built in the background and swapped in (a new model's vectors, compaction of deleted "
    "entries, an import, a replica left behind the trimmed change feed).",
)


def watch_index(index_of: object) -> None:
    """Reports the sizes of `index_of.index` (the service's current index, read at each scrape)."""
    owner = weakref.ref(index_of)

    def size(read: str) -> float:
        holder = owner()
        index: CatalogueIndex | None = getattr(holder, "index", None)
        if index is None:
            return 0.0
        if read == "item":
            return float(len(index.item_vectors))
        if read == "bundle":
            return float(len(index.bundle_vectors))
        collaborative = index.collaborative
        return float(len(collaborative.items) + len(collaborative.bundles)) if collaborative else 0.0

    for kind in ("item", "bundle", "collaborative"):
        INDEX_SIZE.labels(kind).set_function(lambda kind=kind: size(kind))


def count_hits(retrieved: Retrieved) -> None:
    """Counts a Retrieve response's candidates per kind and source."""
    for kind, found in (("item", retrieved.found_items), ("bundle", retrieved.found_bundles)):
        counted: collections.Counter[Source] = collections.Counter()
        combinations = np.bincount(found.source_bits, minlength=len(SOURCE_SETS))
        for bits in np.flatnonzero(combinations).tolist():  # a few combinations of sources: count those
            for source in SOURCE_SETS[bits]:
                counted[source] += int(combinations[bits])
        for source, n in counted.items():
            _source_hits(kind, source).inc(n)


@functools.cache
def _source_hits(kind: str, source: Source) -> Counter:
    """The labelled child, kept: `labels()` costs a lock and label checks on every call."""
    return SOURCE_HITS.labels(kind, source.name.lower())
