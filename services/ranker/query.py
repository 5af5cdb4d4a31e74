"""The ranking domain: plain data for a Rank request and its answer, and the checks on a request.

No grpc, no onnxruntime: the servicer builds these from protobuf, the service acts on them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.events import EventType


class SequenceEvent(NamedTuple):
    """One step of the behaviour sequence. `target_type`/`event_type` are None when the request
    named none or an unknown one (the checks below say which field). Named tuples rather than
    dataclasses here: a request holds hundreds of these, and they are built on the event loop."""

    target_id: str
    target_type: str | None  # "item" or "bundle"
    event_type: EventType | None
    timestamp: int | None  # Unix seconds; None when unset
    has_target: bool = True


class CandidateSet(NamedTuple):
    bundle_id: str  # empty for a bundle built on the fly (or a single item)
    item_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RankQuery:
    sequence: tuple[SequenceEvent, ...]  # oldest first, already cut to the newest `max_sequence`
    candidates: tuple[CandidateSet, ...]
    model_version: str = ""
    return_user_vector: bool = False
    sequence_offset: int = 0  # steps dropped from the front, so error paths index the request's own list


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

    The ids of a request (hundreds) are checked together first, in a few C-level passes; only a
    request that fails there is walked id by id to name the field. Both apply the same rules."""
    validation.identifier("model_version", query.model_version, required=False)
    if not query.candidates:
        raise InvalidArgument("candidates", "must contain at least one candidate")
    if len(query.candidates) > limits.max_candidates:
        raise InvalidArgument("candidates", f"has {len(query.candidates)} entries; at most {limits.max_candidates}")
    suspect = not all(s.has_target and s.target_type and s.event_type for s in query.sequence)
    ids = [step.target_id for step in query.sequence]
    ids += [c.bundle_id for c in query.candidates if c.bundle_id]
    for candidate in query.candidates:
        members = candidate.item_ids
        if not members or len(members) > limits.max_members or len(set(members)) != len(members):
            suspect = True
            break
        ids += members
    if suspect or not _plausible_ids(ids):
        _name_the_field(query, limits)


def _plausible_ids(ids: list[str]) -> bool:
    """Every id 1-256 characters, not surrounded by whitespace, without control characters."""
    if not ids:
        return True
    if min(map(len, ids)) == 0 or max(map(len, ids)) > validation.MAX_ID_LENGTH or list(map(str.strip, ids)) != ids:
        return False
    try:
        validation.text("ids", "\n".join(ids), max_length=sys.maxsize)  # "\n" itself is allowed in text
    except InvalidArgument:
        return False
    return True


def _name_the_field(query: RankQuery, limits: Limits) -> None:
    for n, step in enumerate(query.sequence):
        where = f"sequence[{query.sequence_offset + n}]"
        if not step.has_target:
            raise InvalidArgument(f"{where}.target", "is required")
        if step.target_type is None:
            raise InvalidArgument(f"{where}.target.type", "must be item or bundle")
        validation.identifier(f"{where}.target.id", step.target_id)
        if step.event_type is None:
            raise InvalidArgument(f"{where}.type", "must be a known event type")
    for n, candidate in enumerate(query.candidates):
        where = f"candidates[{n}]"
        validation.identifier(f"{where}.bundle_id", candidate.bundle_id, required=False)
        if not candidate.item_ids:
            raise InvalidArgument(f"{where}.item_ids", "a candidate needs at least one item id")
        validation.identifiers(f"{where}.item_ids", candidate.item_ids, max_count=limits.max_members)
