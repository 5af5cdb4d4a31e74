"""gRPC face of the ranker service: translates proto ↔ domain, nothing else."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

from bundlerec.ranker.query import Candidates, ModelInfo, RankQuery, Steps
from bundlerec.ranker.service import RankerService
from bundlerec.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES

TARGET_TYPES = {common_pb2.TARGET_TYPE_ITEM: "item", common_pb2.TARGET_TYPE_BUNDLE: "bundle"}
_ITEM_IDS = operator.attrgetter("item_ids")
_BUNDLE_ID = operator.attrgetter("bundle_id")


def steps_from_pb(steps: Sequence[ranker_pb2.SequenceStep], offset: int) -> Steps:
    ids, types, events, stamps = [], [], [], []
    for step in steps:  # one loop: each protobuf field access creates an object
        target = step.target
        ids.append(target.id)
        types.append(target.type)
        events.append(step.type)
        stamps.append(step.timestamp.seconds if step.HasField("timestamp") else None)
    target_types = [TARGET_TYPES.get(t) for t in types]
    missing = frozenset()
    if None in target_types:  # only then tell "no target" from "an unknown target type"
        missing = frozenset(n for n, step in enumerate(steps) if not step.HasField("target"))
    return Steps(ids, target_types, [EVENT_TYPES.get(e) for e in events], stamps, missing, offset)


def candidates_from_pb(candidates: Sequence[ranker_pb2.BundleCandidate]) -> Candidates:
    members = list(map(_ITEM_IDS, candidates))
    return Candidates(
        list(map(_BUNDLE_ID, candidates)), list(itertools.chain.from_iterable(members)), list(map(len, members))
    )


def query_from_pb(pb: ranker_pb2.RankRequest, max_sequence: int) -> RankQuery:
    dropped = max(0, len(pb.sequence) - max_sequence)  # older steps beyond the limit are not even read
    return RankQuery(
        sequence=steps_from_pb(pb.sequence[dropped:] if dropped else pb.sequence, dropped),
        candidates=candidates_from_pb(pb.candidates),
        model_version=pb.model_version,
        return_user_vector=pb.return_user_vector,
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
