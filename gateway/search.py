"""Personalized semantic search: the candidate service's text search, re-ordered for the requester.

The text match decides what is found; the ranker, reading the requester's history, only re-orders
the matches (a blend of the two normalised scores, text weighing most), so a search for "trail
shoes" never turns into a list of what the user usually buys. Without consent, anonymous, or when
the ranker or profile is down: the text order (with `degraded` saying so). Without the candidate
service there is no search to fall back on: UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

from bundlerec.errors import Unavailable
from bundlerec.gateway.model import Degradation, PageItem, Stage
from bundlerec.gateway.pipeline import Recommender
from bundlerec.gateway.ports import CandidateFilter
from bundlerec.gateway.rules import candidate_filter
from bundlerec.gateway.stages import LAST_RESERVE

TEXT_WEIGHT = 0.7
WIDER = 2  # the text search returns this many times the page, for the ranker to re-order


@dataclass(frozen=True)
class SearchQuery:
    user_id: str
    text: str
    page_size: int
    filter: CandidateFilter = field(default_factory=CandidateFilter)  # the caller's; the rules are added
    caller_seconds: float | None = None


@dataclass
class SearchResult:
    results: list[tuple[PageItem, float]]
    degraded: list[Degradation]


async def search(recommender: Recommender, query: SearchQuery) -> SearchResult:
    stages = recommender.stages
    run = stages.start(query.caller_seconds, debug=False)
    allowed = await recommender.who_asks(run, query.user_id, query.user_id)
    limit = query.page_size * (WIDER if allowed.personalized else 1)
    item_filter = candidate_filter(recommender.rules.current, query.filter)

    def text_search(seconds: float) -> Awaitable[list[tuple[PageItem, float]]]:
        return recommender.candidates.search_text(query.text, limit, item_filter, seconds)

    # without personalization there is no ranker stage after this one to keep time for
    reserve = None if allowed.personalized else LAST_RESERVE
    found = await stages.call(run, Stage.CANDIDATES, "none", text_search, reserve=reserve)
    if found is None:
        raise Unavailable(f"search is unavailable ({run.degraded[-1].reason}); retry")
    if not allowed.personalized or len(found) < 2:
        return SearchResult(found[: query.page_size], run.degraded)
    pairs = [("", (item.item_id,)) for item, _ in found]
    version = recommender.experiments.assign(query.user_id).model_version
    ranked = await stages.call(
        run,
        Stage.RANKER,
        "text_order",
        lambda seconds: recommender.ranker.rank(allowed.history, pairs, version, seconds),
        key=version,
    )
    if ranked is None:
        return SearchResult(found[: query.page_size], run.degraded)
    text = _normalised([score for _, score in found])
    personal = _normalised(ranked[0])
    blended = [TEXT_WEIGHT * t + (1 - TEXT_WEIGHT) * p for t, p in zip(text, personal, strict=True)]
    order = sorted(range(len(found)), key=lambda n: -blended[n])  # stable: text order among equals
    return SearchResult([(found[n][0], blended[n]) for n in order[: query.page_size]], run.degraded)


def _normalised(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 1.0 for v in values]
