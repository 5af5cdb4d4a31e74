"""Live statistics: popularity and co-occurrence kept current from what the shop records, read
from the profile service's anonymous behaviour log (its ReadBehaviour RPC; no user id reaches
this service).

The increments follow `statistics.behaviour_statistics` (what `bundlerec import` computes), so
live and imported counts add up on one scale:
- popularity: an event adds its type's weight to its item, or in equal shares to a bundle's
  members;
- co-occurrence: an event and each of the same user's previous events (a partner, `distance`
  events earlier) add sqrt(w1 * w2) / distance to the pair, both ways; item pairs between items
  (a bundle event stands for its members, up to MAX_BUNDLE_FOR_PAIRS), bundle pairs between
  bundles.
Decay: rather than shrinking every stored count as time passes, an event's weight grows with its
time, 2 ** ((t - epoch) / half-life): the same order as decaying everything to the present (the
decay is a factor common to all counts), at the cost of one write per change. A partner's weight
grows with the time of the event that names it (the log carries no partner times; they are a
few events earlier, against a half-life of days).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bundlerec.candidate.model import MAX_BUNDLE_FOR_PAIRS
from bundlerec.candidate.statistics import DAY
from bundlerec.events import EVENT_WEIGHTS, EventType


@dataclass(frozen=True, slots=True)
class Target:
    is_bundle: bool
    target_id: str
    event_type: EventType


@dataclass(frozen=True, slots=True)
class Observed:
    """One entry of the behaviour log."""

    target: Target
    occurred_s: float
    partners: tuple[tuple[Target, int], ...] = ()  # (previous target, distance)


class BehaviourSource(Protocol):
    """The profile service's behaviour log as this service reads it (clients.ProfileBehaviour)."""

    async def read(self, cursor: str, limit: int) -> tuple[list[Observed], str]: ...


@dataclass
class Increments:
    popularity: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    item_pairs: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))
    bundle_pairs: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def __bool__(self) -> bool:
        return bool(self.popularity or self.item_pairs or self.bundle_pairs)


def increments(
    observed: Sequence[Observed], members: Mapping[str, Sequence[str]], *, epoch_s: float, half_life_days: float
) -> Increments:
    """What `observed` adds to the statistics; `members`: each known bundle's items (a target
    that is neither a known item nor a known bundle is counted anyway: the store keeps what the
    catalogue knows)."""
    out = Increments()
    for entry in observed:
        growth = 2.0 ** ((entry.occurred_s - epoch_s) / (half_life_days * DAY))
        if not math.isfinite(growth):  # an absurd timestamp must not poison every count
            continue
        weight = EVENT_WEIGHTS[entry.target.event_type] * growth
        own = _items(entry.target, members)
        for item in own:
            out.popularity[item] += weight / len(own)
        for partner, distance in entry.partners:
            strength = math.sqrt(weight * EVENT_WEIGHTS[partner.event_type] * growth) / max(1, distance)
            if entry.target.is_bundle and partner.is_bundle:
                _pair(out.bundle_pairs, entry.target.target_id, partner.target_id, strength)
            others = _items(partner, members)
            if len(own) <= MAX_BUNDLE_FOR_PAIRS and len(others) <= MAX_BUNDLE_FOR_PAIRS:
                for a in own:
                    for b in others:
                        _pair(out.item_pairs, a, b, strength)
    return out


def _items(target: Target, members: Mapping[str, Sequence[str]]) -> Sequence[str]:
    return members.get(target.target_id, ()) if target.is_bundle else (target.target_id,)


def _pair(pairs: dict[tuple[str, str], float], a: str, b: str, strength: float) -> None:
    if a != b:
        pairs[a, b] += strength
        pairs[b, a] += strength
