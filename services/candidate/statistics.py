"""Behaviour statistics the candidate sources use: time-decayed popularity and co-occurrence.

Computed from events (an import, or an export of the profile store) and written to the
catalogue store. Timestamps may be Unix seconds or only an order (research datasets); with an
order, nothing decays.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bundlerec.candidate.model import MAX_BUNDLE_FOR_PAIRS
from bundlerec.events import EVENT_WEIGHTS, EventType

DAY = 86_400
KEEP_PER_ITEM = 50  # co-occurrence partners kept per item or bundle (the strongest)


@dataclass(frozen=True, slots=True)
class BehaviourStatistics:
    popularity: dict[str, float]  # item → weight
    item_pairs: dict[tuple[str, str], float]  # (item, item) → co-occurrence weight, both orders
    bundle_pairs: dict[tuple[str, str], float]  # (bundle, bundle) → co-occurrence weight, both orders


EMPTY = BehaviourStatistics({}, {}, {})


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    event_type: str
    is_bundle: bool
    target_id: str
    timestamp: int  # Unix seconds, or a position


def behaviour_statistics(
    interactions: Iterable[Interaction],
    bundle_members: Mapping[str, Sequence[str]],
    *,
    unix_time: bool,
    half_life_days: float = 30.0,
    window: int = 5,
    keep_per_item: int = KEEP_PER_ITEM,
) -> BehaviourStatistics:
    """Popularity by item, and co-occurrence of items and of bundles.

    Popularity: event-type weighted counts, halved every `half_life_days` before the newest event;
    a bundle event counts for each member in equal shares. Co-occurrence: two items within
    `window` steps of each other in one user's history, weighted by both events and by 1/distance;
    each item keeps its `keep_per_item` strongest partners. Bundles: two bundles in one user's
    history (bundle events only; users interact with few), the same way with a wider window.
    """
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    newest = 0
    for it in interactions:
        by_user[it.user_id].append(it)
        newest = max(newest, it.timestamp)

    def decay(timestamp: int) -> float:
        return 0.5 ** ((newest - timestamp) / (half_life_days * DAY)) if unix_time else 1.0

    popularity: dict[str, float] = defaultdict(float)
    pairs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    bundle_pairs: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for history in by_user.values():
        history.sort(key=lambda it: it.timestamp)
        steps: list[tuple[str, float]] = []
        bundle_steps: list[tuple[str, float]] = []
        for it in history:
            weight = EVENT_WEIGHTS[EventType(it.event_type)] * decay(it.timestamp)
            members = bundle_members.get(it.target_id, ()) if it.is_bundle else (it.target_id,)
            for m in members:
                popularity[m] += weight / len(members)
            if it.is_bundle:
                bundle_steps.append((it.target_id, weight))
            if len(members) <= MAX_BUNDLE_FOR_PAIRS:
                steps.extend((m, weight) for m in members)
        _count_pairs(steps, window, pairs)
        _count_pairs(bundle_steps, 4 * window, bundle_pairs)
    return BehaviourStatistics(
        dict(popularity), _strongest(pairs, keep_per_item), _strongest(bundle_pairs, keep_per_item)
    )


def _count_pairs(steps: list[tuple[str, float]], window: int, pairs: dict[str, dict[str, float]]) -> None:
    for i, (a, wa) in enumerate(steps):
        for distance, (b, wb) in enumerate(steps[i + 1 : i + 1 + window], start=1):
            if a != b:
                strength = (wa * wb) ** 0.5 / distance
                pairs[a][b] += strength
                pairs[b][a] += strength


def _strongest(pairs: dict[str, dict[str, float]], keep: int) -> dict[tuple[str, str], float]:
    return {
        (a, b): w
        for a, partners in pairs.items()
        for b, w in heapq.nlargest(keep, partners.items(), key=lambda kv: kv[1])
    }
