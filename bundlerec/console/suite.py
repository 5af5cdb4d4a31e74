"""What the console reads from the suite, through the services' public gRPC APIs, as plain values
for the templates (no protobuf or grpc past this module). A service that fails is reported as a
`Failed` value with its status, never as an exception the page cannot show."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bundlerec.console.settings import ConsoleSettings
from bundlerec.runtime.tls import open_channel
from bundlerec.v1 import (
    candidate_pb2,
    candidate_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    profile_pb2,
    profile_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
)

SERVICES = ("gateway", "profile", "candidate", "ranker")
PLACEMENTS = {
    name.removeprefix("PLACEMENT_").lower(): number
    for name, number in gateway_pb2.Placement.items()
    if number != gateway_pb2.PLACEMENT_UNSPECIFIED
}


@dataclass(frozen=True)
class Failed:
    """A call that did not answer: which service, its status and what it said."""

    service: str
    status: str
    details: str


@dataclass
class Preview:
    page: dict[str, Any]  # the RecommendResponse as JSON-like values (proto field names)
    consent: dict[str, Any] | None = None  # the shopper's consent (None: anonymous, or the profile failed)
    history: list[dict[str, Any]] = field(default_factory=list)  # only what the gateway may use


class Suite:
    def __init__(self, settings: ConsoleSettings) -> None:
        security = settings.client_security()
        self.timeout = settings.timeout_seconds
        self.channels = {
            name: open_channel(getattr(settings, f"{name}_address"), security) for name in SERVICES
        }  # fmt: skip
        self.gateway = gateway_pb2_grpc.RecommendationServiceStub(self.channels["gateway"])
        self.profile = profile_pb2_grpc.ProfileServiceStub(self.channels["profile"])
        self.candidate = candidate_pb2_grpc.CandidateServiceStub(self.channels["candidate"])
        self.ranker = ranker_pb2_grpc.RankerServiceStub(self.channels["ranker"])

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))

    async def preview(
        self, *, user_id: str, session_id: str, placement: str, anchor: str, budget: float | None, page_size: int
    ) -> Preview | Failed:
        """The page the gateway would serve, with its trace; recorded nowhere (RecommendRequest.preview).
        For a known shopper, their consent, and their recent behaviour only when it may be used."""
        context = gateway_pb2.RecommendContext(placement=PLACEMENTS.get(placement, 0), anchor_item_id=anchor)
        if budget is not None:
            context.budget = budget
        request = gateway_pb2.RecommendRequest(
            user_id=user_id, session_id=session_id, context=context, page_size=page_size, debug=True, preview=True
        )
        try:
            reply = await self.gateway.Recommend(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            return _failed("gateway", error)
        preview = Preview(page=_values(reply))
        if user_id:
            profile = await self._profile(user_id)
            if not isinstance(profile, Failed):
                preview.consent = profile.get("consent", {})
                if reply.personalized:  # the gateway used the history: show what it used
                    preview.history = profile.get("sequence", [])[-20:]
        return preview

    async def _profile(self, user_id: str) -> dict[str, Any] | Failed:
        try:
            reply = await self.profile.GetProfile(
                profile_pb2.GetProfileRequest(user_id=user_id, sequence_length=20), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            return _failed("profile", error)
        return _values(reply.profile)

    async def search(self, query: str, limit: int = 20) -> list[dict[str, Any]] | Failed:
        try:
            reply = await self.candidate.SearchText(
                candidate_pb2.SearchTextRequest(query=query, limit=limit), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as error:
            return _failed("candidate", error)
        return [{**_values(r.item), "score": r.score} for r in reply.results]

    async def bundles(self, bundle_ids: list[str]) -> list[dict[str, Any]] | Failed:
        """Catalogue bundles with their members (price, stock); unknown ids are left out."""
        try:
            found = await self.candidate.GetBundles(
                candidate_pb2.GetBundlesRequest(bundle_ids=bundle_ids), timeout=self.timeout
            )
            ids = sorted({i for b in found.bundles for i in b.item_ids})
            items = await self.candidate.GetItems(candidate_pb2.GetItemsRequest(item_ids=ids), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            return _failed("candidate", error)
        known = {item.item_id: _values(item) for item in items.items}
        return [
            {"bundle_id": b.bundle_id, "title": b.title, "items": [known.get(i, {"item_id": i}) for i in b.item_ids]}
            for b in found.bundles
        ]

    async def bundles_holding(self, item_id: str, limit: int = 50, scan: int = 5000) -> list[str] | Failed:
        """Ids of catalogue bundles that hold the item, among the first `scan` bundles listed."""
        found: list[str] = []
        token, seen = "", 0
        try:
            while seen < scan and len(found) < limit:
                reply = await self.candidate.ListBundles(
                    candidate_pb2.ListBundlesRequest(page_size=1000, page_token=token), timeout=self.timeout
                )
                seen += len(reply.bundles)
                found += [b.bundle_id for b in reply.bundles if item_id in b.item_ids]
                token = reply.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            return _failed("candidate", error)
        return found[:limit]

    async def model_info(self) -> dict[str, Any] | Failed:
        try:
            reply = await self.ranker.GetModelInfo(ranker_pb2.GetModelInfoRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            return _failed("ranker", error)
        return _values(reply.model)

    async def reload_model(self) -> dict[str, Any] | Failed:
        """Asks the ranker to serve the models directory's serving version now (it follows within
        seconds anyway)."""
        try:
            reply = await self.ranker.ReloadModel(ranker_pb2.ReloadModelRequest(), timeout=max(self.timeout, 30))
        except grpc.aio.AioRpcError as error:
            return _failed("ranker", error)
        return _values(reply.model)

    async def readiness(self) -> dict[str, str]:
        """Each service's grpc.health.v1 status ("SERVING", "NOT_SERVING", or the call's failure)."""

        async def check(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self.channels[name])
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=min(self.timeout, 2.0))
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        states = await asyncio.gather(*(check(name) for name in SERVICES))
        return dict(zip(SERVICES, states, strict=True))


def _failed(service: str, error: grpc.aio.AioRpcError) -> Failed:
    return Failed(service, error.code().name, error.details() or "")


def _values(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
