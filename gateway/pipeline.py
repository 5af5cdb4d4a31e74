"""The recommendation pipeline: profile → candidates → bundles → ranker → rules → privacy → page.

Each downstream stage runs under its share of the request's deadline and behind a circuit
breaker; when one fails, the page is still made from what is left, and the response says which
stage degraded and what stood in for it:
- profile unavailable or late → the requester is treated as anonymous (nothing personal is used);
- candidate service unavailable → the popular bundles the gateway keeps fresh (popular.py);
- ranker unavailable or late → the candidate service's order.
Only a bad request is an error. No grpc here: the stages are ports (ports.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bundlerec.gateway import metrics
from bundlerec.gateway.builder import BuildLimits, build_bundles, complements_first, related
from bundlerec.gateway.experiments import Experiments
from bundlerec.gateway.explain import explain, usable_evidence
from bundlerec.gateway.impressions import ImpressionStore, ImpressionsUnavailable, bundle_key
from bundlerec.gateway.model import (
    Context,
    Degradation,
    Placement,
    Recommendation,
    Requester,
    Retrieved,
    Scored,
    Shown,
    Source,
    Stage,
    Trace,
    TraceStage,
)
from bundlerec.gateway.page import PageBundle, PageItem, RuleAction, assemble_page
from bundlerec.gateway.popular import PopularCache
from bundlerec.gateway.ports import CandidateFilter, CandidatePort, CandidateQuery, ProfilePort, RankerPort, StageFailed
from bundlerec.gateway.promotions import promoted_items_alone, with_promoted
from bundlerec.gateway.resilience import BreakerState, CircuitBreaker, Deadline
from bundlerec.gateway.rules import EffectiveRules, RuleOverrides, Rules, RulesSource, effective_rules
from bundlerec.privacy import SensitiveCategories

log = logging.getLogger("bundlerec.gateway")
ANCHORED_PLACEMENTS = (Placement.PRODUCT_PAGE, Placement.CART)
MIN_BUDGET_SECONDS = 0.0005  # below this a call cannot succeed: the stage is skipped as late
T = TypeVar("T")


@dataclass(frozen=True)
class PipelineSettings:
    deadline_seconds: float = 0.1
    # shares of the deadline per stage; what is left after the ranker is for rules and the page
    profile_share: float = 0.2
    candidates_share: float = 0.4
    ranker_share: float = 0.3
    candidate_limit: int = 100  # items and bundles asked from retrieval
    history_length: int = 50
    build: BuildLimits = field(default_factory=BuildLimits)
    sensitive: SensitiveCategories = field(default_factory=lambda: SensitiveCategories(()))
    breaker_failures: int = 5
    breaker_reset_seconds: float = 5.0


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str  # "" for an anonymous session
    session_id: str
    context: Context
    page_size: int
    overrides: RuleOverrides = field(default_factory=RuleOverrides)
    debug: bool = False
    caller_seconds: float | None = None  # what is left of the caller's own deadline, when it set one
    recommendation_id: str = ""  # "": a new one

    @property
    def key(self) -> str:
        return self.user_id or self.session_id


class Recommender:
    def __init__(
        self,
        profile: ProfilePort,
        candidates: CandidatePort,
        ranker: RankerPort,
        rules: RulesSource,
        popular: PopularCache,
        impressions: ImpressionStore,
        experiments: Experiments,
        settings: PipelineSettings,
    ) -> None:
        self.profile, self.candidates, self.ranker = profile, candidates, ranker
        self.rules, self.popular, self.impressions, self.experiments = rules, popular, impressions, experiments
        self.settings = settings
        self.breakers: dict[tuple[Stage, str], CircuitBreaker] = {}

    async def recommend(self, query: RecommendQuery) -> Recommendation:
        s = self.settings
        deadline = Deadline(min(s.deadline_seconds, query.caller_seconds or s.deadline_seconds))
        run = Run(deadline, Trace() if query.debug else None)
        rules = effective_rules(self.rules.current, query.overrides, query.context.budget)  # bad overrides: raise
        variant = self.experiments.assign(query.key)

        requester = Requester(query.key, anonymous=not query.user_id)
        declined = False  # the profile service said: no personalization consent
        if query.user_id:
            budget = deadline.budget(s.profile_share, reserve=s.candidates_share + s.ranker_share)
            got = await self.call_stage(
                run, Stage.PROFILE, "anonymous", budget, lambda seconds: self.profile.requester(query.user_id, seconds)
            )
            if got is not None:
                requester, declined = got, not got.personalized
        history = requester.history[-s.history_length :] if requester.personalized else ()

        anchor = self._anchor(query.context, requester)
        retrieval = CandidateQuery(
            recent=history,
            anchor_item_id=anchor,
            item_limit=s.candidate_limit,
            bundle_limit=s.candidate_limit,
            filter=_filter(rules),
        )

        async def retrieve_with_items(seconds: float) -> tuple[Retrieved, Mapping[str, PageItem]]:
            started = time.monotonic()
            found = await self.candidates.retrieve(retrieval, seconds)
            left = max(0.001, seconds - (time.monotonic() - started))
            found = await with_promoted(found, rules, self.candidates, left)
            ids = _item_ids(found, [anchor, *(h.target_id for h in history[-5:] if not h.is_bundle)])
            return found, await self.candidates.items(ids, max(0.001, seconds - (time.monotonic() - started)))

        budget = deadline.budget(s.candidates_share, reserve=s.ranker_share)
        got_candidates = await self.call_stage(run, Stage.CANDIDATES, "cached_popular", budget, retrieve_with_items)
        found, catalogue = got_candidates if got_candidates is not None else self.popular.snapshot()
        run.count(Stage.CANDIDATES, {"items": len(found.items), "bundles": len(found.bundles)})

        unscored = self._bundles(found, catalogue, anchor, requester, rules, run)
        scored, version = unscored, ""
        if unscored:
            budget = deadline.budget(s.ranker_share, reserve=0.05)

            async def rank(seconds: float) -> tuple[list[float], str]:
                pairs = [(b.bundle_id, tuple(i.item_id for i in b.items)) for b in unscored]
                return await self.ranker.rank(history, pairs, variant.model_version, seconds)

            ranked = await self.call_stage(run, Stage.RANKER, "candidate_order", budget, rank, variant.model_version)
            if ranked is not None:
                scores, version = ranked
                scored = [_with_score(b, score) for b, score in zip(unscored, scores, strict=True)]
        scored = sorted(scored, key=lambda b: -b.score)  # stable: retrieval order among equals
        if query.context.placement in ANCHORED_PLACEMENTS and anchor and scored:
            # a product page or cart shows what completes its item first ("complete the look"): the
            # bundles holding it score above every other (the page orders by score, then diversity)
            lift = max(b.score for b in scored) - min(b.score for b in scored) + 1.0
            scored = [_with_score(b, b.score + lift) if _holds(b, anchor) else b for b in scored]
        if declined:  # tracked before the request knew their consent
            with contextlib.suppress(ImpressionsUnavailable):  # ForgetUser and consent changes erase them for sure
                await self.impressions.forget(query.key)
        elif requester.personalized or requester.anonymous:
            scored = await self._rotate(query.key, scored, run)

        started = time.monotonic()
        candidates = [PageBundle(b.bundle_id, b.items, b.score, b.generated) for b in scored]
        origins = {id(candidate): b for candidate, b in zip(candidates, scored, strict=True)}
        page = assemble_page(  # returns the very objects it was given, in page order
            candidates,
            rules,
            page_size=query.page_size,
            purchased_item_ids=requester.purchased if requester.personalized else frozenset(),
            actions=run.trace is not None,  # what the rules removed, and why, only for a trace
        )
        shown = []
        for bundle in page.bundles:
            origin = origins[id(bundle)]
            reason = explain(origin, requester, anchor, query.context, catalogue, s.sensitive)
            shown.append(Shown(bundle.bundle_id, bundle.items, bundle.score, reason, bundle.generated, origin.sources))
        metrics.STAGE_LATENCY.labels(Stage.RULES.value).observe(time.monotonic() - started)
        metrics.PAGES.labels(variant.name, str(requester.personalized).lower()).inc()
        metrics.PAGE_SIZE.observe(len(shown))
        if run.degraded:
            metrics.DEGRADED_PAGES.labels(variant.name).inc()
        generated = sum(1 for bundle in shown if bundle.generated)
        if generated:
            metrics.PAGE_BUNDLES_GENERATED.inc(generated)
        if len(shown) > generated:
            metrics.PAGE_BUNDLES_CURATED.inc(len(shown) - generated)
        if run.trace is not None:
            run.trace.stages.append(TraceStage(Stage.RULES, (time.monotonic() - started) * 1000, {"page": len(shown)}))
            run.trace.actions.extend(page.actions)
        return Recommendation(
            recommendation_id=query.recommendation_id or uuid.uuid4().hex,
            bundles=shown,
            model_version=version,
            variant=variant.name,
            personalized=requester.personalized,
            degraded=run.degraded,
            trace=run.trace,
        )

    # ---- stages --------------------------------------------------------------------------
    async def call_stage(
        self,
        run: Run,
        stage: Stage,
        fallback: str,
        budget: float,
        call: Callable[[float], Awaitable[T]],
        key: str = "",
    ) -> T | None:
        """Runs one stage under its breaker (one per stage and `key`: a model version) and budget;
        None (and a Degradation) when it failed."""
        breaker = self._breaker(stage, key)
        started = time.monotonic()
        reason = ""
        result: T | None = None
        before = breaker.state
        allowed = breaker.allow()
        outcome: bool | None = None  # True: answered, False: failed as an outage, None: told nothing
        try:
            if not allowed:
                reason = "circuit_open"
            elif budget <= MIN_BUDGET_SECONDS:
                reason = "deadline_exceeded"
            else:
                try:
                    result = await call(budget)
                    outcome = True
                except StageFailed as failure:
                    reason = failure.reason
                    outcome = False if failure.outage else None
        finally:  # also when the caller gave up (cancelled): a probe must never stay taken
            if outcome is True:
                breaker.succeeded()
            elif outcome is False:
                breaker.failed()
            elif allowed:
                breaker.release()
        now = breaker.state
        opened = now is BreakerState.OPEN and before is BreakerState.CLOSED
        if opened or (now is BreakerState.CLOSED and before is not BreakerState.CLOSED):
            # one line per change of state, not per request: an outage must not flood the logs
            level = logging.WARNING if now is BreakerState.OPEN else logging.INFO
            log.log(level, f"circuit {now.value}", extra={"fields": {"stage": stage.value, "reason": reason}})
        if reason:
            run.degraded.append(Degradation(stage, reason, fallback))
            metrics.DEGRADED.labels(stage.value, reason).inc()
        if run.trace is not None:
            run.trace.stages.append(TraceStage(stage, (time.monotonic() - started) * 1000))
        metrics.STAGE_LATENCY.labels(stage.value).observe(time.monotonic() - started)
        return result

    def _breaker(self, stage: Stage, key: str) -> CircuitBreaker:
        breaker = self.breakers.get((stage, key))
        if breaker is None:
            s = self.settings
            breaker = CircuitBreaker(stage.value, s.breaker_failures, s.breaker_reset_seconds)
            self.breakers[(stage, key)] = breaker
        return breaker

    def _anchor(self, context: Context, requester: Requester) -> str:
        """What built bundles grow around: the page's item, else the cart's newest, else (only when
        personalized) the newest item of the history that is not in a sensitive category."""
        if context.anchor_item_id:
            return context.anchor_item_id
        if context.cart_item_ids:
            return context.cart_item_ids[-1]
        if requester.personalized:
            for step in reversed(requester.history):
                known = step.category != ""  # an event without a category could be a sensitive item
                if not step.is_bundle and known and usable_evidence(step.category, requester, self.settings.sensitive):
                    return step.target_id
        return ""

    def _bundles(
        self,
        found: Retrieved,
        catalogue: Mapping[str, PageItem],
        anchor: str,
        requester: Requester,
        rules: EffectiveRules,
        run: Run,
    ) -> list[Scored]:
        """Curated bundles among the candidates, plus bundles built around the anchor, in fallback
        order (retrieval score; a built bundle takes its best complement's)."""
        out: list[Scored] = []
        member = catalogue.__getitem__
        for bundle in found.bundles:
            try:
                items = tuple(map(member, bundle.item_ids))
            except KeyError:
                continue  # a member just deleted: its stock and price are unknown, so is the bundle's
            out.append(Scored(bundle.target_id, items, bundle.score, bundle.sources, generated=False))
        seed = catalogue.get(anchor)
        if seed is not None and not usable_evidence(seed.category, requester, self.settings.sensitive):
            seed = None  # the event named no category, the catalogue says it is sensitive
        built = 0
        if seed is not None:
            ordered = complements_first(
                [f for f in found.items if f.target_id in catalogue and related(seed, f, catalogue[f.target_id])]
            )
            scores = {f.target_id: f for f in ordered}
            limits = BuildLimits(
                min_size=max(self.settings.build.min_size, rules.min_bundle_size),
                max_size=min(self.settings.build.max_size, rules.max_bundle_size),
                max_bundles=self.settings.build.max_bundles,
                budget=rules.budget,
            )
            for members in build_bundles(seed, [catalogue[f.target_id] for f in ordered], limits, rules.in_stock_only):
                parts = [scores[m.item_id] for m in members[1:]]
                sources = frozenset().union(*(p.sources for p in parts)) | {Source.ANCHOR}
                out.append(Scored("", members, max(p.score for p in parts), sources, generated=True, evidence=anchor))
                built += 1
        out += promoted_items_alone(out, rules, catalogue)
        run.count(Stage.CANDIDATES, {"bundles.curated": len(found.bundles), "bundles.generated": built})
        return out

    async def _rotate(self, key: str, scored: list[Scored], run: Run) -> list[Scored]:
        """Bundles this requester was shown many times without interacting score below every other
        (in their own order), so fresh ones get the places; they still fill a page that needs them."""
        tired = await self.impressions.overexposed(key, [_key(b.bundle_id, b.items) for b in scored])
        if not tired:
            return scored
        floor = min(b.score for b in scored) - 1.0
        out, demoted = [], []
        for bundle in scored:
            if _key(bundle.bundle_id, bundle.items) in tired:
                demoted.append(_with_score(bundle, floor - 1e-3 * len(demoted)))
                if run.trace is not None:
                    target = bundle.bundle_id or "+".join(i.item_id for i in bundle.items)
                    run.trace.actions.append(
                        RuleAction("rotation", "bundle", target, "moved_down", "shown often without interaction")
                    )
            else:
                out.append(bundle)
        return out + demoted


@dataclass
class Run:
    """One request's passage through the stages: its deadline, trace and degradations."""

    deadline: Deadline
    trace: Trace | None
    degraded: list[Degradation] = field(default_factory=list)

    def count(self, stage: Stage, counters: Mapping[str, float]) -> None:
        if self.trace is None:
            return
        for entry in self.trace.stages:
            if entry.stage is stage:
                entry.counters.update(counters)
                return
        self.trace.stages.append(TraceStage(stage, 0.0, dict(counters)))


def _key(bundle_id: str, items: Sequence[PageItem]) -> str:
    return bundle_key(bundle_id, [i.item_id for i in items])


def _holds(bundle: Scored, item_id: str) -> bool:
    return any(item.item_id == item_id for item in bundle.items)


def _with_score(bundle: Scored, score: float) -> Scored:
    return Scored(bundle.bundle_id, bundle.items, float(score), bundle.sources, bundle.generated, bundle.evidence)


def _item_ids(found: Retrieved, extra: Sequence[str]) -> list[str]:
    ids = dict.fromkeys(i for i in extra if i)
    for candidate in (*found.items, *found.bundles):
        ids.update(dict.fromkeys(candidate.item_ids or (candidate.target_id,)))
    return list(ids)


def _filter(rules: Rules) -> CandidateFilter:
    """The rules the candidate service can apply during retrieval (the page applies all of them again)."""
    return CandidateFilter(
        in_stock_only=rules.in_stock_only,
        include_categories=tuple(rules.include_categories),
        exclude_categories=tuple(rules.exclude_categories),
        include_brands=tuple(rules.include_brands),
        exclude_brands=tuple(rules.exclude_brands),
        min_price=rules.min_price,
        max_price=rules.max_price,
        exclude_item_ids=tuple(rules.blocklist_items),
        exclude_bundle_ids=tuple(rules.blocklist_bundles),
    )


__all__ = ["PipelineSettings", "RecommendQuery", "Recommender", "Run"]
