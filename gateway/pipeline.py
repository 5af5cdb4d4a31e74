"""The recommendation pipeline, in the order `Recommender.recommend` reads: who asks (profile,
then consent.py decides what the request may use) → candidates → bundles (curated, and built
around the anchor) → ranker → order and rotation → rules and page, each bundle explained.

Every call to another service goes through stages.StageRunner (budget, breaker, degradation,
metrics); when one fails, the page is still made from what is left, and the response says which
stage degraded and what stood in for it:
- profile unavailable or late → the requester is treated as anonymous (nothing personal is used);
- candidate service unavailable → the popular bundles the gateway keeps fresh (popular.py);
- ranker unavailable or late → the candidate service's order.
Only a bad request is an error. No grpc here: the stages are ports (ports.py). Every page goes to
the exposure log (exposures.py); a share of its places may be explored (exploration.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bundlerec.gateway import metrics
from bundlerec.gateway.builder import BuildLimits, build_bundles, complements_first, related
from bundlerec.gateway.consent import Allowed, ConsentPolicy
from bundlerec.gateway.experiments import Experiments, Variant
from bundlerec.gateway.explain import MIN_CO_OCCURRENCE, Evidence, explain
from bundlerec.gateway.exploration import (
    BanditState,
    ExplorationSettings,
    Explorer,
    explored_actions,
    lead_not_explored,
    page_segment,
)
from bundlerec.gateway.exposures import ExposureLog, NoExposures, page_record
from bundlerec.gateway.impressions import ImpressionStore, ImpressionsUnavailable, UserVector, bundle_key
from bundlerec.gateway.model import (
    Context,
    PageItem,
    Placement,
    Recommendation,
    Retrieved,
    Scored,
    Shown,
    Stage,
    TraceStage,
)
from bundlerec.gateway.popular import PopularCache
from bundlerec.gateway.ports import CandidatePort, CandidateQuery, ProfilePort, RankerPort
from bundlerec.gateway.rules import (
    EffectiveRules,
    PageBundle,
    RuleAction,
    RuleOverrides,
    RulesSource,
    assemble_page,
    candidate_filter,
    effective_rules,
)
from bundlerec.gateway.rules.promotions import kind_of, promoted_items_alone, with_promoted
from bundlerec.gateway.stages import Run, StageRunner, StageSettings
from bundlerec.privacy import SensitiveCategories
from bundlerec.sources import Source

ANCHORED_PLACEMENTS = (Placement.PRODUCT_PAGE, Placement.CART)


@dataclass(frozen=True)
class PipelineSettings:
    stages: StageSettings = field(default_factory=StageSettings)  # the deadline, its shares, the breakers
    candidate_limit: int = 100  # items and bundles asked from retrieval
    history_length: int = 50
    build: BuildLimits = field(default_factory=BuildLimits)
    sensitive: SensitiveCategories = field(default_factory=lambda: SensitiveCategories(()))
    two_tower_retrieval: bool = False  # the ranker's user vector of the last page joins retrieval
    explain_min_co_occurrence: float = MIN_CO_OCCURRENCE  # what "often bought with" needs (explain.py)


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str  # "" for an anonymous session
    session_id: str
    context: Context
    page_size: int
    overrides: RuleOverrides = field(default_factory=RuleOverrides)
    debug: bool = False
    preview: bool = False  # build the page, record nothing of it (the console's preview)
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
        exposures: ExposureLog | None = None,
        explorer: Explorer | None = None,
        variant_rules: Mapping[str, RulesSource] | None = None,
    ) -> None:
        self.profile, self.candidates, self.ranker = profile, candidates, ranker
        self.rules, self.popular, self.impressions, self.experiments = rules, popular, impressions, experiments
        self.settings = settings
        self.exposures = exposures or NoExposures()  # the exposure log (recorded in the background)
        self.explorer = explorer or Explorer(BanditState(), ExplorationSettings(share=0.0))
        self.variant_rules = variant_rules or {}  # variants with a rules file of their own
        self.stages = StageRunner(settings.stages)
        self.consent = ConsentPolicy(settings.sensitive, settings.history_length)

    async def recommend(self, query: RecommendQuery) -> Recommendation:
        run = self.stages.start(query.caller_seconds, query.debug)
        variant = self.experiments.assign(query.key)
        source = self.variant_rules.get(variant.name, self.rules)
        rules = effective_rules(source.current, query.overrides, query.context.budget)  # bad overrides: raise
        allowed = await self.who_asks(run, query.user_id, query.key)
        anchor = _anchor(query.context, allowed)
        vector = await self._user_vector(query.key, allowed)
        found, catalogue = await self._candidates(run, allowed, anchor, rules, vector, variant.strategy)
        unscored = self._bundles(found, catalogue, anchor, allowed, rules, run)
        scored, version = await self._rank(run, unscored, allowed, variant, query.key, query.preview)
        scored = _ordered(scored, query.context, anchor)
        scored = await self._rotated(query.key, scored, allowed, run)
        segment = page_segment(catalogue.get(anchor), allowed)
        scored = self._explored(scored, query, variant, anchor, segment, run)
        evidence = Evidence(allowed, anchor, query.context, catalogue, found.bought_with)
        return self._page(query, run, rules, variant, evidence, scored, version, segment)

    # ---- stages --------------------------------------------------------------------------
    async def who_asks(self, run: Run, user_id: str, key: str) -> Allowed:
        """What this request may use of who asks (consent.py); nothing personal when the profile
        stage fails."""
        if user_id:
            got = await self.stages.call(
                run, Stage.PROFILE, "anonymous", lambda seconds: self.profile.requester(user_id, seconds)
            )
            if got is not None:
                return self.consent.allowed(got, answered=True)
        return self.consent.unknown(key, anonymous=not user_id)

    async def _user_vector(self, key: str, allowed: Allowed) -> tuple[float, ...]:
        """The two-tower vector the ranker gave this shopper's previous page (kept with their
        impressions, erased with them): it adds the two-tower source to retrieval at no cost to
        this page's budget. Only for a shopper whose history may be used; () otherwise."""
        if not self.settings.two_tower_retrieval or not allowed.personalized or allowed.anonymous:
            return ()
        kept = await self.impressions.user_vector(key)
        return kept.values if kept is not None else ()

    async def _candidates(
        self,
        run: Run,
        allowed: Allowed,
        anchor: str,
        rules: EffectiveRules,
        user_vector: tuple[float, ...] = (),
        strategy: str = "model",
    ) -> tuple[Retrieved, Mapping[str, PageItem]]:
        """Retrieval (plus the promoted targets it missed) and the catalogue entries of every item
        involved; the popular bundles the gateway keeps fresh when the candidate service fails. A
        variant of the "popularity" strategy retrieves by popularity alone."""
        retrieval = CandidateQuery(
            recent=allowed.history,
            anchor_item_id=anchor,
            item_limit=self.settings.candidate_limit,
            bundle_limit=self.settings.candidate_limit,
            filter=candidate_filter(rules),
            user_vector=user_vector,
            sources=(Source.POPULARITY,) if strategy == "popularity" else (),
            # only a personalized page may say "often bought with" an item of the history
            co_occurrence_floor=self.settings.explain_min_co_occurrence if allowed.personalized else 0.0,
        )

        async def retrieve_with_items(seconds: float) -> tuple[Retrieved, Mapping[str, PageItem]]:
            started = time.monotonic()
            found = await self.candidates.retrieve(retrieval, seconds)
            left = max(0.001, seconds - (time.monotonic() - started))
            found = await with_promoted(found, rules, self.candidates, left)
            ids = _item_ids(found, [anchor, *(h.target_id for h in allowed.history[-5:] if not h.is_bundle)])
            return found, await self.candidates.items(ids, max(0.001, seconds - (time.monotonic() - started)))

        got = await self.stages.call(run, Stage.CANDIDATES, "cached_popular", retrieve_with_items)
        found, catalogue = got if got is not None else self.popular.snapshot()
        run.count(Stage.CANDIDATES, {"items": len(found.items), "bundles": len(found.bundles)})
        return found, catalogue

    async def _rank(
        self, run: Run, unscored: list[Scored], allowed: Allowed, variant: Variant, key: str, preview: bool = False
    ) -> tuple[list[Scored], str]:
        """The ranker's scores for the bundles, and the model version; the fallback order when it
        fails. For a shopper whose history may be used, the serving model's user vector is kept for
        their next page's retrieval (an experiment's other model would not match the vectors the
        candidate service searches). A "popularity" variant is not ranked: retrieval's order stands."""
        if not unscored or variant.strategy == "popularity":
            return unscored, ""
        keep_vector = (
            not preview
            and self.settings.two_tower_retrieval
            and allowed.personalized
            and not allowed.anonymous
            and not variant.model_version
        )

        async def rank(seconds: float) -> tuple[list[float], str, tuple[float, ...]]:
            pairs = [(b.bundle_id, tuple(i.item_id for i in b.items)) for b in unscored]
            return await self.ranker.rank(
                allowed.history, pairs, variant.model_version, seconds, with_user_vector=keep_vector
            )

        ranked = await self.stages.call(run, Stage.RANKER, "candidate_order", rank, key=variant.model_version)
        if ranked is None:
            return unscored, ""
        scores, version, user_vector = ranked
        if keep_vector and user_vector:
            await self.impressions.keep_user_vector(key, UserVector(version, user_vector))
        return [_with_score(b, score) for b, score in zip(unscored, scores, strict=True)], version

    def _page(
        self,
        query: RecommendQuery,
        run: Run,
        rules: EffectiveRules,
        variant: Variant,
        evidence: Evidence,
        scored: list[Scored],
        version: str,
        segment: str,
    ) -> Recommendation:
        """The rules and the page (page.py), each bundle with its explanation (explain.py)."""
        started = time.monotonic()
        allowed = evidence.allowed
        candidates = [PageBundle(b.bundle_id, b.items, b.score, b.generated, b.explored) for b in scored]
        origins = {id(candidate): b for candidate, b in zip(candidates, scored, strict=True)}
        page = assemble_page(  # returns the very objects it was given, in page order
            candidates,
            rules,
            page_size=query.page_size,
            purchased_item_ids=allowed.purchased,
            actions=run.trace is not None,  # what the rules removed, and why, only for a trace
        )
        shown: list[Shown] = []
        ordered, lead_score = lead_not_explored(page.bundles, origins)
        for bundle in ordered:
            origin = origins[id(bundle)]
            reason = explain(origin, evidence, self.settings.explain_min_co_occurrence)
            kind = kind_of(origin, rules)
            score = lead_score if not shown else bundle.score
            shown.append(Shown(bundle.bundle_id, bundle.items, score, reason, bundle.generated, origin.sources, kind))
        metrics.STAGE_LATENCY.labels(Stage.RULES.value).observe(time.monotonic() - started)
        if not query.preview:
            self.explorer.state.shown([b.bundle_id for b in shown if b.bundle_id], segment)
            metrics.count_page(variant.name, allowed.personalized, bool(run.degraded), [b.generated for b in shown])
        if run.trace is not None:
            run.trace.stages.append(TraceStage(Stage.RULES, (time.monotonic() - started) * 1000, {"page": len(shown)}))
            run.trace.actions.extend(page.actions)
        recommendation = Recommendation(
            recommendation_id=query.recommendation_id or uuid.uuid4().hex,
            bundles=shown,
            model_version=version,
            variant=variant.name,
            personalized=allowed.personalized,
            degraded=run.degraded,
            trace=run.trace,
        )
        if not query.preview:
            anonymous = not query.user_id
            record = page_record(recommendation, query.key, anonymous, variant.share, query.context, segment)
            self.exposures.record(record)
        return recommendation

    def _explored(
        self, scored: list[Scored], query: RecommendQuery, variant: Variant, anchor: str, segment: str, run: Run
    ) -> list[Scored]:
        """A capped share of the page's places for rarely shown bundles (exploration.py), below the
        page's lead and, on a product page or cart, below the bundles of its item."""
        share = self.explorer.share(variant.exploration_share, query.context.placement.value)
        anchored = anchor if query.context.placement in ANCHORED_PLACEMENTS else ""
        explored = self.explorer.explore(scored, query.page_size, share, anchored, segment)
        if run.trace is not None:
            run.trace.actions.extend(explored_actions(explored))
        return explored

    def _bundles(
        self,
        found: Retrieved,
        catalogue: Mapping[str, PageItem],
        anchor: str,
        allowed: Allowed,
        rules: EffectiveRules,
        run: Run,
    ) -> list[Scored]:
        """Curated bundles among the candidates, plus bundles built around the anchor, in fallback
        order (retrieval score; a built bundle takes its best complement's)."""
        out: list[Scored] = []
        member = catalogue.__getitem__
        for rank, bundle in enumerate(found.bundles):
            try:
                items = tuple(map(member, bundle.item_ids))
            except KeyError:
                continue  # a member just deleted: its stock and price are unknown, so is the bundle's
            out.append(Scored(bundle.target_id, items, bundle.score, bundle.sources, False, retrieval_rank=rank))
        seed = catalogue.get(anchor)
        if seed is not None and not allowed.evidence(seed.category):
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
                out.append(Scored("", members, max(p.score for p in parts), sources, generated=True))
                built += 1
        out += promoted_items_alone(out, rules, catalogue)
        run.count(Stage.CANDIDATES, {"bundles.curated": len(found.bundles), "bundles.generated": built})
        return out

    async def _rotated(self, key: str, scored: list[Scored], allowed: Allowed, run: Run) -> list[Scored]:
        """Bundles this requester was shown many times without interacting score below every other
        (in their own order), so fresh ones get the places; they still fill a page that needs them.
        A requester who declined personalization has their impressions erased instead (tracked
        before the request knew their consent)."""
        if not allowed.keeps_impressions:
            if allowed.declined:  # ForgetUser and consent changes erase them for sure; this is a backstop
                with contextlib.suppress(ImpressionsUnavailable):
                    await self.impressions.forget(key)
            return scored
        tired = await self.impressions.overexposed(key, [_key(b.bundle_id, b.items) for b in scored])
        if not tired:
            return scored
        floor = min(b.score for b in scored) - 1.0
        out: list[Scored] = []
        demoted: list[Scored] = []
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


def _anchor(context: Context, allowed: Allowed) -> str:
    """What built bundles grow around: the page's item, else the cart's newest, else the newest
    item of the history the request may use as evidence (consent.Allowed.history_anchor)."""
    if context.anchor_item_id:
        return context.anchor_item_id
    if context.cart_item_ids:
        return context.cart_item_ids[-1]
    return allowed.history_anchor()


def _ordered(scored: list[Scored], context: Context, anchor: str) -> list[Scored]:
    """Best score first (stable: retrieval order among equals). A product page or cart shows what
    completes its item first ("complete the look"): the bundles holding it score above every
    other (the page orders by score, then diversity)."""
    scored = sorted(scored, key=lambda b: -b.score)
    if context.placement in ANCHORED_PLACEMENTS and anchor and scored:
        lift = max(b.score for b in scored) - min(b.score for b in scored) + 1.0
        scored = [_with_score(b, b.score + lift) if _holds(b, anchor) else b for b in scored]
    return scored


def _key(bundle_id: str, items: Sequence[PageItem]) -> str:
    return bundle_key(bundle_id, [i.item_id for i in items])


def _holds(bundle: Scored, item_id: str) -> bool:
    return any(item.item_id == item_id for item in bundle.items)


def _with_score(bundle: Scored, score: float) -> Scored:
    return dataclasses.replace(bundle, score=float(score))


def _item_ids(found: Retrieved, extra: Sequence[str]) -> list[str]:
    ids = dict.fromkeys(i for i in extra if i)
    for candidate in (*found.items, *found.bundles):
        ids.update(dict.fromkeys(candidate.item_ids or (candidate.target_id,)))
    return list(ids)


__all__ = ["PipelineSettings", "RecommendQuery", "Recommender"]
