"""The profile service's behaviour log as the candidate service reads it (live.BehaviourSource):
its ReadBehaviour RPC, translated to live.Observed."""

from __future__ import annotations

import grpc

from bundlerec.candidate.live import Observed, Target
from bundlerec.v1 import common_pb2, profile_pb2, profile_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES


class ProfileBehaviour:
    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float = 10.0) -> None:
        self.stub = profile_pb2_grpc.ProfileServiceStub(channel)
        self.timeout = timeout_seconds

    async def read(self, cursor: str, limit: int) -> tuple[list[Observed], str]:
        request = profile_pb2.ReadBehaviourRequest(cursor=cursor, max_entries=limit)
        reply = await self.stub.ReadBehaviour(request, timeout=self.timeout)
        observed = [
            Observed(
                _target(entry.target, entry.type),
                entry.occurred_at.seconds + entry.occurred_at.nanos / 1e9,
                tuple((_target(p.target, p.type), p.distance) for p in entry.partners),
            )
            for entry in reply.entries
        ]
        return observed, reply.next_cursor


def _target(ref: common_pb2.TargetRef, kind: int) -> Target:
    return Target(ref.type == common_pb2.TARGET_TYPE_BUNDLE, ref.id, EVENT_TYPES[kind])
