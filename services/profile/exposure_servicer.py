"""gRPC face of the exposure log (exposures.proto): checks and translates proto ↔ domain."""

from __future__ import annotations

import math

from bundlerec import validation
from bundlerec.errors import InvalidArgument
from bundlerec.profile.exposure_service import ExposureLog
from bundlerec.profile.exposures import MAX_BUNDLES, PLACEMENTS, ExposedBundle, ExposedPage, Exposure
from bundlerec.profile.servicer import timestamp_us
from bundlerec.profile.wire import timestamp_pb
from bundlerec.v1 import exposures_pb2, exposures_pb2_grpc
from bundlerec.v1_events import BUNDLE_KINDS, BUNDLE_KINDS_PB, EVENT_TYPES_PB


def bundle_from_pb(field: str, pb: exposures_pb2.ExposedBundle) -> ExposedBundle:
    if pb.position < 0 or pb.position >= MAX_BUNDLES:
        raise InvalidArgument(f"{field}.position", f"must be 0 to {MAX_BUNDLES - 1}")
    validation.identifier(f"{field}.bundle_id", pb.bundle_id, required=False)
    items = validation.identifiers(f"{field}.item_ids", pb.item_ids, max_count=MAX_BUNDLES)
    if not items:
        raise InvalidArgument(f"{field}.item_ids", "is required")
    if len(pb.item_prices) != len(items):
        raise InvalidArgument(f"{field}.item_prices", "must hold one price per item")
    for n, price in enumerate(pb.item_prices):
        if not math.isfinite(price) or price < 0:
            raise InvalidArgument(f"{field}.item_prices[{n}]", "must be a finite number, not negative")
    kind = BUNDLE_KINDS.get(pb.kind)
    if kind is None:
        raise InvalidArgument(f"{field}.kind", "must be curated, built, featured or explored")
    return ExposedBundle(pb.position, pb.bundle_id, tuple(items), tuple(pb.item_prices), kind)


def exposure_from_pb(field: str, pb: exposures_pb2.Exposure) -> Exposure:
    validation.identifier(f"{field}.recommendation_id", pb.recommendation_id)
    validation.identifier(f"{field}.requester_id", pb.requester_id, required=False)
    validation.text(f"{field}.variant", pb.variant, max_length=64, required=True)
    if not 0 < pb.variant_share <= 1:
        raise InvalidArgument(f"{field}.variant_share", "must be above 0 and at most 1")
    validation.text(f"{field}.model_version", pb.model_version, max_length=256)
    if pb.placement not in PLACEMENTS:
        raise InvalidArgument(f"{field}.placement", f"must be one of {', '.join(PLACEMENTS)}")
    if not pb.HasField("served_at"):
        raise InvalidArgument(f"{field}.served_at", "is required")
    validation.text(f"{field}.segment", pb.segment, max_length=128)
    if len(pb.bundles) > MAX_BUNDLES:
        raise InvalidArgument(f"{field}.bundles", f"has {len(pb.bundles)} bundles; at most {MAX_BUNDLES}")
    return Exposure(
        recommendation_id=pb.recommendation_id,
        requester_id=pb.requester_id,
        anonymous=pb.anonymous,
        variant=pb.variant,
        variant_share=pb.variant_share,
        model_version=pb.model_version,
        placement=pb.placement,
        served_at_us=timestamp_us(f"{field}.served_at", pb.served_at),
        bundles=tuple(bundle_from_pb(f"{field}.bundles[{n}]", b) for n, b in enumerate(pb.bundles)),
        personalized=pb.personalized,
        degraded=pb.degraded,
        segment=pb.segment,
    )


def bundle_pb(b: ExposedBundle) -> exposures_pb2.ExposedBundle:
    return exposures_pb2.ExposedBundle(
        position=b.position,
        bundle_id=b.bundle_id,
        item_ids=b.item_ids,
        item_prices=b.item_prices,
        kind=BUNDLE_KINDS_PB[b.kind],
    )


def page_pb(p: ExposedPage) -> exposures_pb2.ExposedPage:
    return exposures_pb2.ExposedPage(
        recommendation_id=p.recommendation_id,
        requester=p.requester,
        variant=p.variant,
        variant_share=p.variant_share,
        model_version=p.model_version,
        placement=p.placement,
        served_at=timestamp_pb(p.served_at_us),
        bundles=[bundle_pb(b) for b in p.bundles],
        outcomes=[
            exposures_pb2.AttributedOutcome(
                type=EVENT_TYPES_PB[o.type],
                position=o.position,
                revenue=o.revenue,
                occurred_at=timestamp_pb(o.occurred_at_us),
            )
            for o in p.outcomes
        ],
        personalized=p.personalized,
        degraded=p.degraded,
        segment=p.segment,
    )


class ExposureServicer(exposures_pb2_grpc.ExposureServiceServicer):
    def __init__(self, log: ExposureLog) -> None:
        self.log = log

    async def RecordExposures(
        self, request: exposures_pb2.RecordExposuresRequest, context: object
    ) -> exposures_pb2.RecordExposuresResponse:
        exposures = [exposure_from_pb(f"exposures[{i}]", pb) for i, pb in enumerate(request.exposures)]
        done = await self.log.record(exposures)
        return exposures_pb2.RecordExposuresResponse(
            recorded=done.recorded, duplicates=done.duplicates, linked=done.linked
        )

    async def ListExposedPages(
        self, request: exposures_pb2.ListExposedPagesRequest, context: object
    ) -> exposures_pb2.ListExposedPagesResponse:
        since = timestamp_us("since", request.since) if request.HasField("since") else None
        until = timestamp_us("until", request.until) if request.HasField("until") else None
        found, token = await self.log.pages(
            since, until, request.attribution_window_seconds, request.page_size, request.page_token
        )
        return exposures_pb2.ListExposedPagesResponse(pages=[page_pb(p) for p in found], next_page_token=token)

    async def ListBundleOutcomes(
        self, request: exposures_pb2.ListBundleOutcomesRequest, context: object
    ) -> exposures_pb2.ListBundleOutcomesResponse:
        found, token = await self.log.bundle_outcomes(request.page_size, request.page_token)
        return exposures_pb2.ListBundleOutcomesResponse(
            bundles=[
                exposures_pb2.BundleOutcome(
                    bundle_id=b.bundle_id, segment=b.segment, shown=b.shown, engaged=b.engaged, purchased=b.purchased
                )
                for b in found
            ],
            next_page_token=token,
        )
