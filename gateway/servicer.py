"""gRPC face of the gateway: checks and translates proto ↔ domain, nothing else."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Sequence
from typing import Any, cast

import grpc

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.gateway.accounts import Accounts, Impression
from bundlerec.gateway.impressions import bundle_key
from bundlerec.gateway.model import Context, Degradation, PageItem, Placement, Recommendation, Stage
from bundlerec.gateway.pipeline import Recommender, RecommendQuery
from bundlerec.gateway.ports import CandidateFilter
from bundlerec.gateway.rules import BLOCKLIST_ENTRIES, MAX_OVERRIDE_ENTRIES, RuleOverrides
from bundlerec.gateway.search import SearchQuery, search
from bundlerec.runtime.tracing import bind_recommendation
from bundlerec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from bundlerec.v1_events import BUNDLE_KINDS_PB

MAX_PAGE = 50
CALLER_MARGIN_SECONDS = 0.002
MAX_CART = 100
MAX_TRACKED = 1000
PLACEMENTS = {
    gateway_pb2.PLACEMENT_UNSPECIFIED: Placement.UNSPECIFIED,
    gateway_pb2.PLACEMENT_HOME: Placement.HOME,
    gateway_pb2.PLACEMENT_PRODUCT_PAGE: Placement.PRODUCT_PAGE,
    gateway_pb2.PLACEMENT_CART: Placement.CART,
    gateway_pb2.PLACEMENT_CHECKOUT: Placement.CHECKOUT,
    gateway_pb2.PLACEMENT_EMAIL: Placement.EMAIL,
}
STAGES_PB = {
    Stage.PROFILE: gateway_pb2.STAGE_PROFILE,
    Stage.CANDIDATES: gateway_pb2.STAGE_CANDIDATES,
    Stage.RANKER: gateway_pb2.STAGE_RANKER,
    Stage.RULES: gateway_pb2.STAGE_RULES,
}


def query_from_pb(pb: gateway_pb2.RecommendRequest) -> RecommendQuery:
    validation.identifier("user_id", pb.user_id, required=False)
    validation.identifier("session_id", pb.session_id, required=False)
    if not pb.user_id and not pb.session_id:
        raise InvalidArgument("user_id", "is required (or session_id for an anonymous visitor)")
    placement = PLACEMENTS.get(pb.context.placement)
    if placement is None:
        raise InvalidArgument("context.placement", "is not a known placement")
    validation.identifier("context.anchor_item_id", pb.context.anchor_item_id, required=False)
    cart = validation.identifiers("context.cart_item_ids", pb.context.cart_item_ids, max_count=MAX_CART)
    budget = None
    if pb.context.HasField("budget"):
        budget = validation.finite("context.budget", pb.context.budget)
        if budget < 0:
            raise InvalidArgument("context.budget", "must not be negative")
    page_size = validation.page_size("page_size", pb.page_size, default=10, maximum=MAX_PAGE)
    return RecommendQuery(
        user_id=pb.user_id,
        session_id=pb.session_id,
        context=Context(placement, pb.context.anchor_item_id, tuple(cart), budget),
        page_size=page_size,
        overrides=overrides_from_pb(pb.overrides),
        debug=pb.debug,
        preview=pb.preview,
    )


def search_from_pb(pb: gateway_pb2.SearchRequest) -> SearchQuery:
    """The caller's query and filter (the candidate service names a bad filter field); the rules
    that hold for every search are added by search.py."""
    validation.identifier("user_id", pb.user_id, required=False)
    validation.text("query", pb.query, max_length=512, required=True)
    f = pb.filter
    for name in ("exclude_categories", "exclude_brands"):
        if len(getattr(f, name)) > MAX_OVERRIDE_ENTRIES:
            raise InvalidArgument(f"filter.{name}", f"has more than {MAX_OVERRIDE_ENTRIES} entries")
    if len(f.exclude_item_ids) > BLOCKLIST_ENTRIES:
        raise InvalidArgument("filter.exclude_item_ids", f"has more than {BLOCKLIST_ENTRIES} entries")
    return SearchQuery(
        user_id=pb.user_id,
        text=pb.query,
        page_size=validation.page_size("page_size", pb.page_size, default=20, maximum=100),
        filter=CandidateFilter(
            in_stock_only=f.in_stock_only,
            include_categories=tuple(f.include_categories),
            exclude_categories=tuple(f.exclude_categories),
            include_brands=tuple(f.include_brands),
            exclude_brands=tuple(f.exclude_brands),
            min_price=f.min_price if f.HasField("min_price") else None,
            max_price=f.max_price if f.HasField("max_price") else None,
            exclude_item_ids=tuple(f.exclude_item_ids),
            exclude_bundle_ids=tuple(f.exclude_bundle_ids),
        ),
    )


def overrides_from_pb(pb: gateway_pb2.RuleOverrides) -> RuleOverrides:
    """Present fields only; effective_rules() checks their values and names `overrides.<field>`."""

    def opt(name: str) -> Any:
        value = getattr(pb, name) if pb.HasField(name) else None
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"overrides.{name}", "must be a finite number")
        return value

    return RuleOverrides(
        in_stock_only=opt("in_stock_only"),
        max_per_brand=opt("max_per_brand"),
        max_per_category=opt("max_per_category"),
        diversity_weight=opt("diversity_weight"),
        exclude_brands=tuple(pb.exclude_brands),
        exclude_categories=tuple(pb.exclude_categories),
        min_price=opt("min_price"),
        max_price=opt("max_price"),
        min_bundle_size=opt("min_bundle_size"),
        max_bundle_size=opt("max_bundle_size"),
    )


def _caller_seconds(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """What is left of the caller's deadline, less a margin for the reply; None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - CALLER_MARGIN_SECONDS)


REASONS_PB = {
    "deadline_exceeded": gateway_pb2.DEGRADATION_REASON_DEADLINE_EXCEEDED,
    "unavailable": gateway_pb2.DEGRADATION_REASON_UNAVAILABLE,
    "circuit_open": gateway_pb2.DEGRADATION_REASON_CIRCUIT_OPEN,
    "rejected": gateway_pb2.DEGRADATION_REASON_REJECTED,  # rejected_<status>
    "error": gateway_pb2.DEGRADATION_REASON_ERROR,  # error, error_<status>
}
UNSPECIFIED_REASON = gateway_pb2.DEGRADATION_REASON_UNSPECIFIED
FALLBACKS_PB = {
    "anonymous": gateway_pb2.FALLBACK_ANONYMOUS,
    "cached_popular": gateway_pb2.FALLBACK_CACHED_POPULAR,
    "candidate_order": gateway_pb2.FALLBACK_CANDIDATE_ORDER,
    "text_order": gateway_pb2.FALLBACK_TEXT_ORDER,
}
ACTIONS_PB = {
    "removed": gateway_pb2.RULE_ACTION_KIND_REMOVED,
    "moved_down": gateway_pb2.RULE_ACTION_KIND_MOVED_DOWN,
    "pinned": gateway_pb2.RULE_ACTION_KIND_PINNED,
    "boosted": gateway_pb2.RULE_ACTION_KIND_BOOSTED,
}


def degradations_pb(degraded: Sequence[Degradation]) -> list[gateway_pb2.Degradation]:
    return [
        gateway_pb2.Degradation(
            stage=STAGES_PB[d.stage],
            reason=d.reason,
            fallback=d.fallback,
            reason_code=REASONS_PB.get(d.reason) or REASONS_PB.get(d.reason.partition("_")[0], UNSPECIFIED_REASON),
            fallback_code=FALLBACKS_PB.get(d.fallback, gateway_pb2.FALLBACK_UNSPECIFIED),
        )
        for d in degraded
    ]


def item_pb(item: PageItem) -> common_pb2.Item:
    """The item's message, built once per item state (a page repeats the catalogue's few items)."""
    pb = _ITEM_MESSAGES.get(item)
    if pb is None:
        if len(_ITEM_MESSAGES) >= 100_000:
            _ITEM_MESSAGES.clear()
        pb = _ITEM_MESSAGES[item] = _item_message(item)
    return pb


_ITEM_MESSAGES: dict[PageItem, common_pb2.Item] = {}  # read only: repeated fields copy what they get


def _item_message(item: PageItem) -> common_pb2.Item:
    pb = common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        category=item.category,
        brand=item.brand,
        availability=common_pb2.Availability(in_stock=item.in_stock),
    )
    if item.price is not None:
        pb.price = item.price
    return pb


def recommendation_pb(r: Recommendation) -> gateway_pb2.RecommendResponse:
    pb = gateway_pb2.RecommendResponse(
        recommendation_id=r.recommendation_id,
        bundles=[
            gateway_pb2.RecommendedBundle(
                bundle_id=b.bundle_id,
                items=[item_pb(i) for i in b.items],
                score=b.score,
                explanation=b.explanation,
                total_price=b.total_price,
                generated=b.generated,
                sources=cast(list[gateway_pb2.BundleSource], sorted(s.value for s in b.sources)),
                kind=BUNDLE_KINDS_PB[b.kind],
            )
            for b in r.bundles
        ],
        model_version=r.model_version,
        experiment_variant=r.variant,
        degraded=degradations_pb(r.degraded),
        personalized=r.personalized,
    )
    if r.trace is not None:
        pb.trace.stages.extend(
            gateway_pb2.TraceStage(stage=STAGES_PB[t.stage], duration_ms=t.duration_ms, counters=t.counters)
            for t in r.trace.stages
        )
        for action in r.trace.actions:
            kind = common_pb2.TARGET_TYPE_BUNDLE if action.target_kind == "bundle" else common_pb2.TARGET_TYPE_ITEM
            pb.trace.rule_actions.append(
                gateway_pb2.RuleAction(
                    rule=action.rule,
                    target=common_pb2.TargetRef(type=kind, id=action.target_id),
                    action=action.action,
                    detail=action.detail,
                    kind=ACTIONS_PB.get(action.action, gateway_pb2.RULE_ACTION_KIND_UNSPECIFIED),
                )
            )
    return pb


class GatewayServicer(gateway_pb2_grpc.RecommendationServiceServicer):
    def __init__(self, recommender: Recommender, accounts: Accounts) -> None:
        self.recommender = recommender
        self.accounts = accounts

    async def Recommend(
        self, request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.RecommendResponse:
        recommendation_id = uuid.uuid4().hex
        bind_recommendation(recommendation_id)  # tracing on: on the span, and the request id unless the caller sent one
        query = dataclasses.replace(
            query_from_pb(request), caller_seconds=_caller_seconds(context), recommendation_id=recommendation_id
        )
        return recommendation_pb(await self.recommender.recommend(query))

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.SearchResponse:
        query = search_from_pb(request)
        found = await search(self.recommender, dataclasses.replace(query, caller_seconds=_caller_seconds(context)))
        return gateway_pb2.SearchResponse(
            results=[gateway_pb2.SearchResult(item=item_pb(item), score=score) for item, score in found.results],
            degraded=degradations_pb(found.degraded),
        )

    async def Track(
        self, request: gateway_pb2.TrackRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.TrackResponse:
        impressions = impressions_from_pb(request)  # all checked before anything is kept
        interactions = [(event.user_id, event.target.id) for event in request.events]
        events = [event.SerializeToString() for event in request.events]
        tracked = await self.accounts.track(events, interactions, impressions, _caller_seconds(context))
        return gateway_pb2.TrackResponse(
            events_recorded=tracked.recorded.recorded,
            events_duplicate=tracked.recorded.duplicates,
            events_anonymized=tracked.recorded.anonymized,
            impressions_recorded=tracked.impressions,
        )

    async def SetUserConsent(
        self, request: gateway_pb2.SetUserConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.SetUserConsentResponse:
        validation.identifier("user_id", request.user_id)
        personalization = request.personalization if request.HasField("personalization") else None
        sensitive = request.sensitive_categories if request.HasField("sensitive_categories") else None
        state = await self.accounts.set_consent(request.user_id, personalization, sensitive, _caller_seconds(context))
        consent = common_pb2.Consent(
            personalization=state.personalization, sensitive_categories=state.sensitive_categories
        )
        if state.updated_at_us:
            consent.updated_at.FromMicroseconds(state.updated_at_us)
        return gateway_pb2.SetUserConsentResponse(consent=consent)

    async def ForgetUser(
        self, request: gateway_pb2.ForgetUserRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gateway_pb2.ForgetUserResponse:
        validation.identifier("user_id", request.user_id)
        return gateway_pb2.ForgetUserResponse(
            existed=await self.accounts.forget(request.user_id, _caller_seconds(context))
        )


def impressions_from_pb(request: gateway_pb2.TrackRequest) -> list[Impression]:
    if len(request.events) > MAX_TRACKED:
        raise InvalidArgument("events", f"has {len(request.events)} events; at most {MAX_TRACKED}")
    if len(request.impressions) > MAX_TRACKED:
        raise InvalidArgument("impressions", f"has {len(request.impressions)} impressions; at most {MAX_TRACKED}")
    out = []
    for n, impression in enumerate(request.impressions):
        field = f"impressions[{n}]"
        validation.identifier(f"{field}.impression_id", impression.impression_id)
        validation.identifier(f"{field}.user_id", impression.user_id)
        validation.identifier(f"{field}.recommendation_id", impression.recommendation_id)
        validation.identifier(f"{field}.bundle_id", impression.bundle_id, required=False)
        validation.identifiers(f"{field}.item_ids", impression.item_ids, max_count=MAX_PAGE)
        if not impression.bundle_id and not impression.item_ids:
            raise InvalidArgument(f"{field}.item_ids", "is required for a generated bundle")
        if impression.position < 0:
            raise InvalidArgument(f"{field}.position", "must not be negative")
        key = bundle_key(impression.bundle_id, impression.item_ids)
        out.append(Impression(impression.impression_id, impression.user_id, key, tuple(impression.item_ids)))
    return out
