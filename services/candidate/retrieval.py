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

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import (
    INTERACTION_WEIGHTS,
    Candidate,
    Filter,
    RecentInteraction,
    RetrievalRequest,
    Retrieved,
    Source,
)
from bundlerec.candidate.vectors import normalize

SOURCE_WEIGHTS = {
    Source.ANCHOR: 1.2,
    Source.VECTOR: 1.0,
    Source.CO_OCCURRENCE: 1.0,
    Source.BUNDLE_MEMBERSHIP: 0.8,
    Source.TWO_TOWER: 1.0,
    Source.POPULARITY: 0.3,
}
RRF_K = 60  # the usual constant of reciprocal rank fusion (Cormack et al., 2009)
RECENCY_DECAY = 0.85  # each older interaction counts this much of the next newer one


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
    query = normalize(sum(w * index.item_vectors.vector(i) for i, w in known))
    return query if np.any(query) else None  # only textless items: nothing to search with


class _Merger:
    def __init__(self) -> None:
        self.found: dict[str, Candidate] = {}

    def add(self, source: Source, scored: list[tuple[str, float]] | dict[str, float], *, is_bundle: bool) -> None:
        pairs = list(scored.items()) if isinstance(scored, dict) else scored
        pairs.sort(key=lambda kv: (-kv[1], kv[0]))
        for rank, (key, _) in enumerate(pairs):
            candidate = self.found.setdefault(key, Candidate(key, is_bundle, 0.0))
            candidate.score += SOURCE_WEIGHTS[source] / (RRF_K + rank)
            candidate.sources.add(source)

    def best(self, limit: int) -> list[Candidate]:
        return sorted(self.found.values(), key=lambda c: (-c.score, c.target_id))[:limit]


@dataclass(frozen=True, slots=True)
class _Context:
    """What both the item and the bundle half of a retrieval start from."""

    weights: dict[str, float]  # recent items (bundles as their members) → weight
    query: np.ndarray | None
    anchor: str  # the anchor item when it is in the catalogue, else ""
    two_tower: np.ndarray | None  # the ranker's user vector in the collaborative part


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
    items = _item_candidates(index, request, context) if request.item_limit else []
    bundles = _bundle_candidates(index, request, context) if request.bundle_limit else []
    return Retrieved(items, bundles, f"v{index.version}")


def _item_candidates(index: CatalogueIndex, request: RetrievalRequest, context: _Context) -> list[Candidate]:
    sources, limit = request.sources, request.item_limit
    mask = index.item_mask(request.filter)
    seen = set(context.weights) | ({request.anchor_item_id} if request.anchor_item_id else set())
    for item_id in seen:  # what the user just saw (or the page's anchor) is context, not a candidate
        slot = index.item_vectors.slot_of.get(item_id)
        if slot is not None:
            mask[slot] = False
    allowed = _member_of(mask, index.item_vectors.slot_of)

    merged = _Merger()
    if Source.VECTOR in sources and context.query is not None:
        merged.add(Source.VECTOR, index.item_vectors.search(context.query, limit, mask), is_bundle=False)
    if Source.TWO_TOWER in sources and context.two_tower is not None:
        known = mask & index.collaborative_items()
        merged.add(Source.TWO_TOWER, index.item_vectors.search(context.two_tower, limit, known), is_bundle=False)
    if Source.CO_OCCURRENCE in sources and context.weights:
        together: dict[str, float] = defaultdict(float)
        for item_id, w in context.weights.items():
            for other, strength in index.co_occurring(item_id).items():
                if allowed(other):
                    together[other] += w * strength
        merged.add(Source.CO_OCCURRENCE, _top(together, limit), is_bundle=False)
    if Source.ANCHOR in sources and context.anchor:
        anchor = context.anchor
        complements = {o: s for o, s in index.co_occurring(anchor).items() if allowed(o)}
        merged.add(Source.ANCHOR, _top(complements, limit), is_bundle=False)
        # Similar items from *other* categories: what goes with the anchor, not what replaces it.
        category = index.items[anchor].category
        other_category = mask & ~index.item_mask(Filter(include_categories=(category,))) if category else mask
        anchor_vector = index.item_vectors.vector(anchor)
        if np.any(anchor_vector):  # an anchor without text or vector has no neighbours to speak of
            merged.add(Source.ANCHOR, index.item_vectors.search(anchor_vector, limit, other_category), is_bundle=False)
    if Source.POPULARITY in sources:  # also fills the limit when the other sources found fewer
        merged.add(Source.POPULARITY, index.popular_items(mask, limit), is_bundle=False)
    best = merged.best(limit)
    for c in best:
        c.item_ids = (c.target_id,)
    return best


def _bundle_candidates(index: CatalogueIndex, request: RetrievalRequest, context: _Context) -> list[Candidate]:
    sources, limit = request.sources, request.bundle_limit
    mask = index.bundle_mask(request.filter)
    allowed = _member_of(mask, index.bundle_vectors.slot_of)

    merged = _Merger()
    if Source.VECTOR in sources and context.query is not None:
        merged.add(Source.VECTOR, index.bundle_vectors.search(context.query, limit, mask), is_bundle=True)
    if Source.TWO_TOWER in sources and context.two_tower is not None:
        known = mask & index.collaborative_bundles()
        merged.add(Source.TWO_TOWER, index.bundle_vectors.search(context.two_tower, limit, known), is_bundle=True)
    if Source.CO_OCCURRENCE in sources:
        together: dict[str, float] = defaultdict(float)
        for bundle_id, w in recent_bundles(request.recent).items():
            for other, strength in index.bundle_pairs.get(bundle_id, {}).items():
                if allowed(other):
                    together[other] += w * strength
        merged.add(Source.CO_OCCURRENCE, _top(together, limit), is_bundle=True)
    if Source.BUNDLE_MEMBERSHIP in sources and context.weights:
        merged.add(Source.BUNDLE_MEMBERSHIP, _containing(index, context.weights, allowed, limit), is_bundle=True)
    if Source.ANCHOR in sources and context.anchor:
        merged.add(Source.ANCHOR, _containing(index, {context.anchor: 1.0}, allowed, limit), is_bundle=True)
    if Source.POPULARITY in sources:
        merged.add(Source.POPULARITY, index.popular_bundles(mask, limit), is_bundle=True)
    best = merged.best(limit)
    for c in best:
        c.item_ids = index.bundles[c.target_id].item_ids
    return best


def _containing(
    index: CatalogueIndex, weights: dict[str, float], allowed: Callable[[str], bool], limit: int
) -> list[tuple[str, float]]:
    """Bundles that contain the weighted items, by the weight of the items they contain."""
    found: dict[str, float] = defaultdict(float)
    for item_id, w in weights.items():
        for bundle_id in index.bundles_of.get(item_id, ()):
            if allowed(bundle_id):
                found[bundle_id] += w
    return _top(found, limit)


def _top(scores: dict[str, float], limit: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def _member_of(mask: np.ndarray, slot_of: dict[str, int]) -> Callable[[str], bool]:
    def allowed(key: str) -> bool:
        slot = slot_of.get(key)
        return slot is not None and bool(mask[slot])

    return allowed
