"""Personalized semantic search: the candidate service's text search, re-ordered for the requester.

The text match decides what is found; the ranker, reading the requester's history, only re-orders
the matches (a blend of the two normalised scores, text weighing most), so a search for "trail
shoes" never turns into a list of what the user usually buys. Without consent, anonymous, or when
the ranker or profile is down: the text order (with `degraded` saying so). Without the candidate
service there is no search to fall back on: UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bundlerec.errors import Unavailable
from bundlerec.gateway.model import Degradation, Requester, Stage
from bundlerec.gateway.page import PageItem
from bundlerec.gateway.pipeline import Recommender, Run
from bundlerec.gateway.ports import CandidateFilter
from bundlerec.gateway.resilience import Deadline

TEXT_WEIGHT = 0.7
WIDER = 2  # the text search returns this many times the page, for the ranker to re-order


@dataclass(frozen=True)
class SearchQuery:
    user_id: str
    text: str
    page_size: int
    filter: CandidateFilter = field(default_factory=CandidateFilter)
    caller_seconds: float | None = None


@dataclass
class SearchResult:
    results: list[tuple[PageItem, float]]
    degraded: list[Degradation]


async def search(recommender: Recommender, query: SearchQuery) -> SearchResult:
    s = recommender.settings
    run = Run(Deadline(min(s.deadline_seconds, query.caller_seconds or s.deadline_seconds)), None)
    requester = Requester(query.user_id, anonymous=not query.user_id)
    if query.user_id:
        budget = run.deadline.budget(s.profile_share, reserve=s.candidates_share + s.ranker_share)
        got = await recommender.call_stage(
            run, Stage.PROFILE, "anonymous", budget, lambda t: recommender.profile.requester(query.user_id, t)
        )
        requester = got or requester
    budget = run.deadline.budget(s.candidates_share, reserve=s.ranker_share if requester.personalized else 0.05)
    limit = query.page_size * (WIDER if requester.personalized else 1)
    def text_search(seconds: float):  # type: ignore[no-untyped-def]
        return recommender.candidates.search_text(query.text, limit, query.filter, seconds)

    found = await recommender.call_stage(run, Stage.CANDIDATES, "none", budget, text_search)
    if found is None:
        raise Unavailable(f"search is unavailable ({run.degraded[-1].reason}); retry")
    if not requester.personalized or len(found) < 2:
        return SearchResult(found[: query.page_size], run.degraded)
    history = requester.history[-s.history_length :]
    pairs = [("", (item.item_id,)) for item, _ in found]
    budget = run.deadline.budget(s.ranker_share, reserve=0.05)
    version = recommender.experiments.assign(query.user_id).model_version
    ranked = await recommender.call_stage(
        run, Stage.RANKER, "text_order", budget, lambda t: recommender.ranker.rank(history, pairs, version, t), version
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
