"""Candidate retrieval: several sources, merged and de-duplicated, filtered during retrieval.

Each source ranks what it finds; the ranks are fused (weighted reciprocal rank fusion: a
candidate earns weight / (RRF_K + rank) from every source that found it), so the merged list
interleaves the sources' best, whatever scale their scores use, and a candidate found by several
sources rises. Score scales differ too much between sources (cosines, co-occurrence counts,
popularity) for a sum of scores: on amazon-beauty it buried co-occurrence, the strongest source.
Filters are masks applied inside every source, and popularity fills what the others leave, so a
response has `limit` candidates whenever the filtered catalogue has that many.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import (
    INTERACTION_WEIGHTS,
    Bundle,
    Filter,
    RecentInteraction,
    RetrievalRequest,
    Retrieved,
    Source,
)
from bundlerec.candidate.ranking import RRF_K, SOURCE_WEIGHTS, Found, RankFusion, top
from bundlerec.candidate.relations import accumulate
from bundlerec.candidate.vectors import VectorIndex, normalize

__all__ = ["RRF_K", "SOURCE_WEIGHTS", "retrieve"]
RECENCY_DECAY = 0.85  # each older interaction counts this much of the next newer one
EXPLAINED_RECENT = 10  # the newest items co-occurrence pairs are named for (explanations name recent items)


def interaction_weights(index: CatalogueIndex, recent: tuple[RecentInteraction, ...]) -> dict[str, float]:
    """Item → weight from the recent interactions, newest strongest; a bundle counts as its items."""
    weights: dict[str, float] = defaultdict(float)
    for age, step in enumerate(reversed(recent)):
        w = INTERACTION_WEIGHTS[step.kind] * RECENCY_DECAY**age
        if step.is_bundle:
            members = index.bundles[step.target_id].item_ids if step.target_id in index.bundles else ()
            for m in members:
                weights[m] += w / len(members)
        elif step.target_id in index.items:
            weights[step.target_id] += w
    return weights


def recent_bundles(recent: tuple[RecentInteraction, ...]) -> dict[str, float]:
    """Bundle → weight from the recent bundle interactions, newest strongest."""
    weights: dict[str, float] = defaultdict(float)
    for age, step in enumerate(reversed(recent)):
        if step.is_bundle:
            weights[step.target_id] += INTERACTION_WEIGHTS[step.kind] * RECENCY_DECAY**age
    return weights


def query_vector(index: CatalogueIndex, weights: dict[str, float]) -> np.ndarray | None:
    known = [(i, w) for i, w in weights.items() if i in index.item_vectors.slot_of]
    if not known:
        return None
    weighted = np.float32([w for _, w in known])[:, None] * index.item_vectors.vectors([i for i, _ in known])
    # Row after row, in float32 (summed in another order, bits would differ): a reduce over the
    # first axis adds the rows in order; + 0.0 turns a -0.0 into the 0.0 a sum from 0 gives.
    query = normalize(np.add.reduce(weighted, axis=0) + np.float32(0.0))
    return query if np.any(query) else None  # only textless items: nothing to search with


@dataclass(frozen=True, slots=True)
class _Context:
    """What both the item and the bundle half of a retrieval start from."""

    weights: dict[str, float]  # recent items (bundles as their members) → weight
    query: np.ndarray | None
    anchor: str  # the anchor item when it is in the catalogue, else ""
    two_tower: np.ndarray | None  # the ranker's user vector in the collaborative part


def _with_co_occurrences(found: Found, context: _Context, index: CatalogueIndex, floor: float) -> Found:
    """`found` (items) with, for each candidate that co-occurrence found (with the request's newest
    EXPLAINED_RECENT items) or the anchor's co-occurrence did, the one of those it co-occurs with
    most strongly in the behaviour statistics, when that strength is at least `floor` (above 0): an
    item's co-occurrence row holds its behaviour partners, so the pair is part of what found it."""
    if floor <= 0:
        return found
    ids, bits = found.ids, found.source_bits
    by_source = {
        source: {ids[i] for i in np.flatnonzero(bits & (1 << source)).tolist()}
        for source in (Source.CO_OCCURRENCE, Source.ANCHOR)
    }
    keys = [(key, Source.CO_OCCURRENCE) for key in itertools.islice(context.weights, EXPLAINED_RECENT)]
    if context.anchor:
        keys.append((context.anchor, Source.ANCHOR))
    best: dict[str, tuple[float, str]] = {}
    for key, source in keys:
        partners = index.event_pairs.get(key)
        if partners and by_source[source]:
            for item_id in by_source[source] & partners.keys():
                strength = partners[item_id]
                if strength >= floor and strength > best.get(item_id, (0.0, ""))[0]:
                    best[item_id] = (strength, key)
    if not best:
        return found
    return dataclasses.replace(found, co_occurrences=tuple((i, key, s) for i, (s, key) in best.items()))


def retrieve(index: CatalogueIndex, request: RetrievalRequest) -> Retrieved:
    weights = interaction_weights(index, request.recent)
    query, two_tower = query_vector(index, weights), None
    user = request.user_vector  # the service checked its dimension: the model's, or the fused vectors'
    if user and index.collaborative and len(user) == index.collaborative.dim:
        two_tower = index.fusion.collaborative_query(user)
    elif user:
        unit = normalize(np.asarray(user, np.float32))
        query = unit if query is None else normalize(query + unit)
    anchor = request.anchor_item_id if request.anchor_item_id in index.items else ""
    context = _Context(weights, query, anchor, two_tower)
    items = _item_candidates(index, request, context) if request.item_limit else _nothing(index.item_vectors)
    bundles = (
        _bundle_candidates(index, request, context)
        if request.bundle_limit
        else _nothing(index.bundle_vectors, index.bundles)
    )
    return Retrieved(items, bundles, f"{index.instance}.{index.version}")


def _nothing(vectors: VectorIndex, bundles: dict[str, Bundle] | None = None) -> Found:
    return RankFusion(0, vectors.key_at).found(0, (id(vectors), vectors.layout), bundles)


def _item_candidates(index: CatalogueIndex, request: RetrievalRequest, context: _Context) -> Found:
    sources, limit, vectors = request.sources, request.item_limit, index.item_vectors
    mask = index.item_mask(request.filter)
    seen = set(context.weights) | ({request.anchor_item_id} if request.anchor_item_id else set())
    for item_id in seen:  # what the user just saw (or the page's anchor) is context, not a candidate
        slot = vectors.slot_of.get(item_id)
        if slot is not None:
            mask[slot] = False

    merged = RankFusion(len(mask), vectors.key_at)
    if Source.VECTOR in sources and context.query is not None:
        merged.add_sorted(Source.VECTOR, *vectors.search_slots(context.query, limit, mask))
    if Source.TWO_TOWER in sources and context.two_tower is not None:
        known = mask & index.collaborative_items()
        merged.add_sorted(Source.TWO_TOWER, *vectors.search_slots(context.two_tower, limit, known))
    relations = index.relations()
    if Source.CO_OCCURRENCE in sources and context.weights:
        rows = [relations.co_occurring(item_id) for item_id in context.weights]
        together, found = accumulate(rows, list(context.weights.values()), mask)
        merged.add(Source.CO_OCCURRENCE, top(together, found, vectors.key_at, limit))
    if Source.ANCHOR in sources and context.anchor:
        anchor = context.anchor
        complements, found = accumulate([relations.co_occurring(anchor)], [1.0], mask)
        merged.add(Source.ANCHOR, top(complements, found, vectors.key_at, limit))
        # Similar items from *other* categories: what goes with the anchor, not what replaces it.
        category = index.items[anchor].category
        other_category = mask & ~index.item_mask(Filter(include_categories=(category,))) if category else mask
        anchor_vector = vectors.vector(anchor)
        if np.any(anchor_vector):  # an anchor without text or vector has no neighbours to speak of
            merged.add_sorted(Source.ANCHOR, *vectors.search_slots(anchor_vector, limit, other_category))
    if Source.POPULARITY in sources:  # also fills the limit when the other sources found fewer
        merged.add_sorted(Source.POPULARITY, *index.popular_items(mask, limit))
    found = merged.found(limit, (id(vectors), vectors.layout))
    return _with_co_occurrences(found, context, index, request.co_occurrence_floor)


def _bundle_candidates(index: CatalogueIndex, request: RetrievalRequest, context: _Context) -> Found:
    sources, limit, vectors = request.sources, request.bundle_limit, index.bundle_vectors
    mask = index.bundle_mask(request.filter)

    merged = RankFusion(len(mask), vectors.key_at)
    if Source.VECTOR in sources and context.query is not None:
        merged.add_sorted(Source.VECTOR, *vectors.search_slots(context.query, limit, mask))
    if Source.TWO_TOWER in sources and context.two_tower is not None:
        known = mask & index.collaborative_bundles()
        merged.add_sorted(Source.TWO_TOWER, *vectors.search_slots(context.two_tower, limit, known))
    relations = index.relations()
    if Source.CO_OCCURRENCE in sources:
        weights = recent_bundles(request.recent)
        together, found = accumulate([relations.paired_bundles(b) for b in weights], list(weights.values()), mask)
        merged.add(Source.CO_OCCURRENCE, top(together, found, vectors.key_at, limit))
    if Source.BUNDLE_MEMBERSHIP in sources and context.weights:
        rows = [relations.containing(item_id) for item_id in context.weights]
        containing, found = accumulate(rows, list(context.weights.values()), mask)
        merged.add(Source.BUNDLE_MEMBERSHIP, top(containing, found, vectors.key_at, limit))
    if Source.ANCHOR in sources and context.anchor:
        containing, found = accumulate([relations.containing(context.anchor)], [1.0], mask)
        merged.add(Source.ANCHOR, top(containing, found, vectors.key_at, limit))
    if Source.POPULARITY in sources:
        merged.add_sorted(Source.POPULARITY, *index.popular_bundles(mask, limit))
    return merged.found(limit, (id(vectors), vectors.layout), index.bundles)
