"""The ranking domain: plain data for a Rank request and its answer, and the checks on a request.

No grpc, no onnxruntime: the servicer builds these from protobuf, the service acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.events import EventType


@dataclass(frozen=True, slots=True)
class Steps:
    """The behaviour sequence, oldest first, as columns (one entry per step): a request holds
    hundreds of ids, and columns are what the checks and the encoder read in a few C-level passes."""

    target_ids: list[str]
    target_types: list[str | None]  # "item" or "bundle"; None when the request named none or an unknown one
    event_types: list[EventType | None]  # None when unknown
    timestamps: list[int | None]  # Unix seconds; None when unset
    missing_targets: frozenset[int] = frozenset()  # steps without a target at all (their type is None too)
    offset: int = 0  # steps dropped from the front, so error paths index the request's own list

    def __len__(self) -> int:
        return len(self.target_ids)


@dataclass(frozen=True, slots=True)
class Candidates:
    """The candidate bundles, in request order, as columns."""

    bundle_ids: list[str]  # empty for a bundle built on the fly (or a single item)
    item_ids: list[str]  # every candidate's items, concatenated in order
    sizes: list[int]  # how many of item_ids each candidate has

    def __len__(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True, slots=True)
class RankQuery:
    sequence: Steps  # already cut to the newest `max_sequence` steps
    candidates: Candidates
    model_version: str = ""
    return_user_vector: bool = False


@dataclass(frozen=True, slots=True)
class RankResult:
    scores: list[float]
    model_version: str
    user_vector: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Limits:
    max_candidates: int
    max_members: int
    max_sequence: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    version: str
    created_at: datetime | None
    execution_provider: str
    num_items: int
    max_sequence_length: int
    vector_dimension: int
    metrics: dict[str, float]
    available_versions: list[str]


def check_query(query: RankQuery, limits: Limits) -> None:
    """Raises InvalidArgument naming the first offending field.

    The ids of a request (hundreds) are checked together first, in a few C-level passes over the
    distinct ones; only a request that fails there is walked id by id to name the field. Both apply
    the same rules."""
    validation.identifier("model_version", query.model_version, required=False)
    steps, candidates = query.sequence, query.candidates
    if not len(candidates):
        raise InvalidArgument("candidates", "must contain at least one candidate")
    if len(candidates) > limits.max_candidates:
        raise InvalidArgument("candidates", f"has {len(candidates)} entries; at most {limits.max_candidates}")
    sizes = candidates.sizes
    suspect = (
        None in steps.target_types
        or None in steps.event_types
        or min(sizes) == 0
        or max(sizes) > limits.max_members
    )
    ids = dict.fromkeys(steps.target_ids)
    ids.update(dict.fromkeys(candidates.item_ids))
    suspect = suspect or "" in ids  # a bundle id may be empty, a target or member id not
    ids.update(dict.fromkeys(candidates.bundle_ids))
    ids.pop("", None)
    if suspect or _repeats_a_member(candidates) or not _plausible_ids(list(ids)):
        _name_the_field(query, limits)


def _repeats_a_member(candidates: Candidates) -> bool:
    """Whether some candidate may name one item twice. Compares (candidate, hash of the id) pairs:
    a hash collision only sends the request to the exact walk of _name_the_field, which decides."""
    members = candidates.item_ids
    if len(members) == len(candidates.sizes):
        return False  # one item each (none empty, or check_query would already suspect it)
    owner = np.repeat(np.arange(len(candidates.sizes), dtype=np.int64), candidates.sizes)
    keys = np.fromiter(map(hash, members), np.int64, len(members)) ^ (owner << 40)
    keys.sort()
    return bool((keys[1:] == keys[:-1]).any())


def _plausible_ids(ids: list[str]) -> bool:
    """Every id one `validation.identifier` accepts, checked for the whole request at once."""
    return validation.all_identifiers(ids)


def _name_the_field(query: RankQuery, limits: Limits) -> None:
    steps = query.sequence
    for n, (target_id, target_type, event_type) in enumerate(
        zip(steps.target_ids, steps.target_types, steps.event_types, strict=True)
    ):
        where = f"sequence[{steps.offset + n}]"
        if n in steps.missing_targets:
            raise InvalidArgument(f"{where}.target", "is required")
        if target_type is None:
            raise InvalidArgument(f"{where}.target.type", "must be item or bundle")
        validation.identifier(f"{where}.target.id", target_id)
        if event_type is None:
            raise InvalidArgument(f"{where}.type", "must be a known event type")
    candidates = query.candidates
    start = 0
    for n, (bundle_id, size) in enumerate(zip(candidates.bundle_ids, candidates.sizes, strict=True)):
        where = f"candidates[{n}]"
        members = candidates.item_ids[start : start + size]
        start += size
        validation.identifier(f"{where}.bundle_id", bundle_id, required=False)
        if not members:
            raise InvalidArgument(f"{where}.item_ids", "a candidate needs at least one item id")
        validation.identifiers(f"{where}.item_ids", members, max_count=limits.max_members)
