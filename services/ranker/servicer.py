"""gRPC face of the ranker service: translates proto ↔ domain, nothing else."""

from __future__ import annotations

from bundlerec.ranker.query import CandidateSet, ModelInfo, RankQuery, SequenceEvent
from bundlerec.ranker.service import RankerService
from bundlerec.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES

TARGET_TYPES = {common_pb2.TARGET_TYPE_ITEM: "item", common_pb2.TARGET_TYPE_BUNDLE: "bundle"}


def step_from_pb(pb: ranker_pb2.SequenceStep) -> SequenceEvent:
    return SequenceEvent(
        target_id=pb.target.id,
        target_type=TARGET_TYPES.get(pb.target.type),
        event_type=EVENT_TYPES.get(pb.type),
        timestamp=pb.timestamp.seconds if pb.HasField("timestamp") else None,
        has_target=pb.HasField("target"),
    )


def query_from_pb(pb: ranker_pb2.RankRequest, max_sequence: int) -> RankQuery:
    dropped = max(0, len(pb.sequence) - max_sequence)  # older steps beyond the limit are not even read
    return RankQuery(
        sequence=tuple(step_from_pb(step) for step in pb.sequence[dropped:]),
        candidates=tuple(CandidateSet(c.bundle_id, tuple(c.item_ids)) for c in pb.candidates),
        model_version=pb.model_version,
        return_user_vector=pb.return_user_vector,
        sequence_offset=dropped,
    )


def model_info_pb(info: ModelInfo) -> ranker_pb2.ModelInfo:
    pb = ranker_pb2.ModelInfo(
        version=info.version,
        execution_provider=info.execution_provider,
        num_items=info.num_items,
        max_sequence_length=info.max_sequence_length,
        vector_dimension=info.vector_dimension,
        metrics=info.metrics,
        available_versions=info.available_versions,
    )
    if info.created_at is not None:
        pb.created_at.FromDatetime(info.created_at)
    return pb


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, service: RankerService) -> None:
        self.service = service

    async def Rank(self, request, context):  # type: ignore[no-untyped-def]
        result = await self.service.rank(query_from_pb(request, self.service.limits.max_sequence))
        return ranker_pb2.RankResponse(
            scores=result.scores, model_version=result.model_version, user_vector=result.user_vector
        )

    async def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        return ranker_pb2.GetModelInfoResponse(model=model_info_pb(await self.service.model_info()))

    async def ReloadModel(self, request, context):  # type: ignore[no-untyped-def]
        return ranker_pb2.ReloadModelResponse(model=model_info_pb(await self.service.reload(request.version)))
