"""The exposure log's adapter (exposures.ExposureSink): the profile service's ExposureService."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from bundlerec.gateway.exploration import BundleCounts
from bundlerec.gateway.exposures import PageRecord, RecordRefused
from bundlerec.v1 import exposures_pb2, exposures_pb2_grpc
from bundlerec.v1_events import BUNDLE_KINDS_PB


def exposure_pb(page: PageRecord) -> exposures_pb2.Exposure:
    pb = exposures_pb2.Exposure(
        recommendation_id=page.recommendation_id,
        requester_id=page.requester_id,
        anonymous=page.anonymous,
        variant=page.variant,
        variant_share=page.variant_share,
        model_version=page.model_version,
        placement=page.placement,
        bundles=[
            exposures_pb2.ExposedBundle(
                position=b.position,
                bundle_id=b.bundle_id,
                item_ids=b.item_ids,
                item_prices=b.item_prices,
                kind=BUNDLE_KINDS_PB[b.kind],
            )
            for b in page.bundles
        ],
        personalized=page.personalized,
        degraded=page.degraded,
        segment=page.segment,
    )
    pb.served_at.FromMicroseconds(page.served_at_us)
    return pb


class ExposureClient:
    """Also exploration's source of per-bundle counts (exploration.OutcomesPort)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = exposures_pb2_grpc.ExposureServiceStub(channel)

    async def bundle_outcomes(self, seconds: float) -> Mapping[tuple[str, str], BundleCounts]:
        counts: dict[tuple[str, str], BundleCounts] = {}
        request = exposures_pb2.ListBundleOutcomesRequest(page_size=10_000)
        while True:
            reply = await self.stub.ListBundleOutcomes(request, timeout=seconds)
            counts.update(((b.bundle_id, b.segment), BundleCounts(b.shown, b.engaged)) for b in reply.bundles)
            if not reply.next_page_token:
                return counts
            request.page_token = reply.next_page_token

    async def record(self, pages: Sequence[PageRecord], seconds: float) -> None:
        request = exposures_pb2.RecordExposuresRequest(exposures=[exposure_pb(p) for p in pages])
        try:
            await self.stub.RecordExposures(request, timeout=seconds)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise RecordRefused(error.details() or "invalid") from None
            raise
