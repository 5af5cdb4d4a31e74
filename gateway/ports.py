"""What the pipeline needs from the other services, as small interfaces. The gRPC adapters in
clients.py implement them; a failing call raises StageFailed with a machine-readable reason, which
the pipeline turns into a fallback and a `Degradation`, never into an error for the caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bundlerec.gateway.model import HistoryStep, PageItem, Requester, Retrieved
from bundlerec.sources import Source


class StageFailed(Exception):
    """A downstream stage did not answer usefully in time."""

    def __init__(self, reason: str, *, outage: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason  # "deadline_exceeded", "unavailable", "circuit_open", "rejected_...", "error"
        # False when the stage refused this one request (an unknown model version, a filter it
        # will not take): the fallback applies, but the stage's circuit breaker does not count it
        self.outage = outage


@dataclass(frozen=True, slots=True)
class CandidateFilter:
    in_stock_only: bool = True
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    include_brands: tuple[str, ...] = ()
    exclude_brands: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    exclude_item_ids: tuple[str, ...] = ()
    exclude_bundle_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CandidateQuery:
    recent: tuple[HistoryStep, ...] = ()
    anchor_item_id: str = ""
    item_limit: int = 100
    bundle_limit: int = 100
    filter: CandidateFilter = CandidateFilter()
    sources: tuple[Source, ...] = ()  # empty: every source
    user_vector: tuple[float, ...] = ()  # the ranker's two-tower vector of the shopper: the two-tower source
    co_occurrence_floor: float = 0.0  # above 0: what co-occurrence found items through, for explanations


class ProfilePort(Protocol):
    async def requester(self, user_id: str, seconds: float) -> Requester: ...


class CandidatePort(Protocol):
    async def retrieve(self, query: CandidateQuery, seconds: float) -> Retrieved: ...

    async def items(self, item_ids: Sequence[str], seconds: float) -> Mapping[str, PageItem]: ...

    async def bundles(self, bundle_ids: Sequence[str], seconds: float) -> Mapping[str, tuple[str, ...]]:
        """Members of catalogue bundles by id; unknown ids are left out."""
        ...

    async def search_text(
        self, text: str, limit: int, item_filter: CandidateFilter, seconds: float
    ) -> list[tuple[PageItem, float]]: ...


class RankerPort(Protocol):
    async def rank(
        self,
        history: Sequence[HistoryStep],
        candidates: Sequence[tuple[str, tuple[str, ...]]],
        model_version: str,
        seconds: float,
        *,
        with_user_vector: bool = False,
    ) -> tuple[list[float], str, tuple[float, ...]]:
        """One score per (bundle id or "", item ids) candidate, the model version used, and (when
        asked, and the model has a two-tower head) the user vector of `history`, else ()."""
        ...
