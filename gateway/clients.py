"""gRPC adapters of the pipeline's ports: one per downstream service, each translating protos to the
gateway's domain and every failure to StageFailed. Every call carries a deadline.

The candidate adapter also keeps a short-lived cache of catalogue items (title, category, brand,
price, stock), so a page does not cost a catalogue read per request; stock changes reach the page
within `catalogue_ttl_seconds`, and retrieval itself filters on live stock.

Retrieve and Rank requests are assembled from cached encodings of their repeated parts (history
steps, candidate bundles, the filter: bundlerec.runtime.encoding) and sent as bytes: they repeat
from request to request, and building them field by field cost more than the calls themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bundlerec import errors
from bundlerec.events import EventType
from bundlerec.gateway.accounts import ConsentState, Recorded
from bundlerec.gateway.model import Found, HistoryStep, PageItem, Requester, Retrieved
from bundlerec.gateway.ports import CandidateFilter, CandidateQuery, StageFailed
from bundlerec.runtime.encoding import EncodedEntries, length_delimited
from bundlerec.sources import SOURCES
from bundlerec.v1 import (
    candidate_pb2,
    candidate_pb2_grpc,
    common_pb2,
    profile_pb2,
    profile_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
)
from bundlerec.v1_events import EVENT_TYPES, EVENT_TYPES_PB

CANDIDATE_SERVICE = candidate_pb2.DESCRIPTOR.services_by_name["CandidateService"]
RANKER_SERVICE = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"]
FILTER_FIELD = candidate_pb2.RetrieveRequest.DESCRIPTOR.fields_by_name["filter"].number
MAX_GET_ITEMS = 1000  # GetItems' limit per call
# answers about one request, not the service's health (a model version a variant names is not loaded)
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


def failure(error: BaseException) -> StageFailed:
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StageFailed("deadline_exceeded")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return StageFailed("unavailable")
        if code in REFUSALS:
            return StageFailed(f"rejected_{code.name.lower()}", outage=False)
        return StageFailed(f"error_{code.name.lower()}")
    if isinstance(error, TimeoutError):
        return StageFailed("deadline_exceeded")
    return StageFailed("error")


def target_pb(target_id: str, is_bundle: bool) -> common_pb2.TargetRef:
    kind = common_pb2.TARGET_TYPE_BUNDLE if is_bundle else common_pb2.TARGET_TYPE_ITEM
    return common_pb2.TargetRef(type=kind, id=target_id)


def raw_method(
    channel: grpc.aio.Channel, service: ServiceDescriptor, name: str, reply: type[Message]
) -> grpc.aio.UnaryUnaryMultiCallable[bytes, Any]:
    """A unary method of `service` (a generated module's service descriptor) that takes the
    request already encoded (bytes) and parses the reply into `reply`."""
    method = service.methods_by_name[name]
    return channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}", response_deserializer=reply.FromString
    )


M = TypeVar("M", candidate_pb2.RecentInteraction, ranker_pb2.SequenceStep)


def history_step_pb(message_type: type[M], step: HistoryStep) -> M:
    """A history step as a RecentInteraction or a SequenceStep (the same three fields)."""
    pb = message_type(target=target_pb(step.target_id, step.is_bundle), type=EVENT_TYPES_PB[step.kind])
    if step.at_us:
        pb.timestamp.FromMicroseconds(step.at_us)
    return pb


def bundle_candidate_pb(candidate: tuple[str, tuple[str, ...]]) -> ranker_pb2.BundleCandidate:
    return ranker_pb2.BundleCandidate(bundle_id=candidate[0], item_ids=candidate[1])


class ProfileClient:
    def __init__(self, channel: grpc.aio.Channel, history_length: int = 50) -> None:
        self.stub = profile_pb2_grpc.ProfileServiceStub(channel)
        self.history_length = history_length

    async def requester(self, user_id: str, seconds: float) -> Requester:
        """The profile as the profile service answered it; what a request may use of it is
        consent.py's decision."""
        request = profile_pb2.GetProfileRequest(user_id=user_id, sequence_length=self.history_length)
        try:
            profile = (await self.stub.GetProfile(request, timeout=seconds)).profile
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            raise failure(error) from None
        history = tuple(
            HistoryStep(
                target_id=e.target.id,
                is_bundle=e.target.type == common_pb2.TARGET_TYPE_BUNDLE,
                kind=EVENT_TYPES.get(e.type, EventType.VIEW),
                at_us=e.timestamp.seconds * 1_000_000 + e.timestamp.nanos // 1000,
                category=e.category,
            )
            for e in profile.recent_events
        )
        return Requester(
            user_id,
            anonymous=False,
            personalized=profile.consent.personalization,
            sensitive_allowed=profile.consent.sensitive_categories,
            history=history,
            affinities=tuple((a.category, a.score) for a in profile.affinities),
            purchased=frozenset(profile.purchased_item_ids),
        )


V = TypeVar("V")
R = TypeVar("R")


class _Expiring(Generic[V]):
    """Catalogue answers by id, kept `ttl` seconds, ids the catalogue does not have included (so they
    are not asked again at once); emptied whole when it would pass `max_entries`."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, V | None]] = {}

    def lookup(self, ids: Sequence[str], now: float) -> tuple[dict[str, V], list[str]]:
        """(the fresh answers by id, the ids to ask for), each id once."""
        found: dict[str, V] = {}
        missing = []
        for key in dict.fromkeys(ids):
            cached = self._entries.get(key)
            if cached is not None and now - cached[0] < self.ttl:
                if cached[1] is not None:
                    found[key] = cached[1]
            else:
                missing.append(key)
        return found, missing

    def keep(self, now: float, found: Mapping[str, V], unknown: Iterable[str], asked: int) -> None:
        if len(self._entries) + asked > self.max_entries:
            self._entries.clear()
        for key, value in found.items():
            self._entries[key] = (now, value)
        for key in unknown:
            self._entries[key] = (now, None)


class CandidateClient:
    def __init__(self, channel: grpc.aio.Channel, catalogue_ttl_seconds: float = 30.0, max_cached: int = 200_000):
        self.stub = candidate_pb2_grpc.CandidateServiceStub(channel)
        self._retrieve = raw_method(channel, CANDIDATE_SERVICE, "Retrieve", candidate_pb2.RetrieveResponse)
        self._recent = EncodedEntries(
            candidate_pb2.RetrieveRequest, "recent", functools.partial(history_step_pb, candidate_pb2.RecentInteraction)
        )
        self._filters: dict[CandidateFilter, bytes] = {}  # a filter's encoding (a handful of rule sets)
        self._items: _Expiring[PageItem] = _Expiring(catalogue_ttl_seconds, max_cached)
        self._bundles: _Expiring[tuple[str, ...]] = _Expiring(catalogue_ttl_seconds, max_cached)

    async def search_text(
        self, text: str, limit: int, item_filter: CandidateFilter, seconds: float
    ) -> list[tuple[PageItem, float]]:
        request = candidate_pb2.SearchTextRequest(query=text, limit=limit, filter=filter_pb(item_filter))
        try:
            response = await self.stub.SearchText(request, timeout=seconds)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise forwarded(error) from None  # the caller's query or filter, not an outage
            raise failure(error) from None
        except TimeoutError as error:
            raise failure(error) from None
        found = [(page_item(r.item), r.score) for r in response.results]
        self._items.keep(time.monotonic(), {item.item_id: item for item, _ in found}, (), len(found))
        return found

    async def retrieve(self, query: CandidateQuery, seconds: float) -> Retrieved:
        head = candidate_pb2.RetrieveRequest(
            anchor_item_id=query.anchor_item_id,
            item_limit=query.item_limit,
            bundle_limit=query.bundle_limit,
            sources=cast(list[candidate_pb2.CandidateSource], [s.value for s in query.sources]),
            user_vector=query.user_vector,
            co_occurrence_floor=query.co_occurrence_floor,
        )
        request = head.SerializeToString() + self._filter(query.filter) + self._recent.encode(query.recent)
        try:
            response = await self._retrieve(request, timeout=seconds)
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            if query.user_vector and isinstance(error, grpc.aio.AioRpcError) and user_vector_refused(error):
                # a vector of another model than the one the candidate service fuses (a new version,
                # just published): retrieval without it
                return await self.retrieve(dataclasses.replace(query, user_vector=()), seconds)
            raise failure(error) from None
        bought_with = {p.item_id: (p.with_item_id, p.strength) for p in response.co_occurrences}
        return Retrieved(tuple(map(_found, response.items)), tuple(map(_found, response.bundles)), bought_with)

    def _filter(self, f: CandidateFilter) -> bytes:
        encoded = self._filters.get(f)
        if encoded is None:
            if len(self._filters) > 1000:  # per-request overrides make new ones; keep the set bounded
                self._filters.clear()
            encoded = self._filters[f] = length_delimited(FILTER_FIELD, filter_pb(f).SerializeToString())
        return encoded

    async def items(self, item_ids: Sequence[str], seconds: float) -> Mapping[str, PageItem]:
        now = time.monotonic()
        out, missing = self._items.lookup(item_ids, now)
        chunks = [missing[n : n + MAX_GET_ITEMS] for n in range(0, len(missing), MAX_GET_ITEMS)]
        try:
            async with asyncio.timeout(seconds):
                responses = await asyncio.gather(
                    *(self.stub.GetItems(candidate_pb2.GetItemsRequest(item_ids=c), timeout=seconds) for c in chunks)
                )
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            raise failure(error) from None
        fetched = {pb.item_id: page_item(pb) for response in responses for pb in response.items}
        unknown = [item_id for response in responses for item_id in response.missing_item_ids]
        self._items.keep(now, fetched, unknown, len(missing))
        return {**out, **fetched}

    async def bundles(self, bundle_ids: Sequence[str], seconds: float) -> Mapping[str, tuple[str, ...]]:
        """Catalogue bundles' members by id (unknown ids left out), cached like items."""
        now = time.monotonic()
        out, missing = self._bundles.lookup(bundle_ids, now)
        if not missing:
            return out
        try:
            response = await self.stub.GetBundles(
                candidate_pb2.GetBundlesRequest(bundle_ids=missing[:MAX_GET_ITEMS]), timeout=seconds
            )
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            raise failure(error) from None
        fetched = {pb.bundle_id: tuple(pb.item_ids) for pb in response.bundles}
        self._bundles.keep(now, fetched, response.missing_bundle_ids, len(missing))
        return {**out, **fetched}


class RankerClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = ranker_pb2_grpc.RankerServiceStub(channel)
        self._rank = raw_method(channel, RANKER_SERVICE, "Rank", ranker_pb2.RankResponse)
        self._sequence = EncodedEntries(
            ranker_pb2.RankRequest, "sequence", functools.partial(history_step_pb, ranker_pb2.SequenceStep)
        )
        self._candidates = EncodedEntries(ranker_pb2.RankRequest, "candidates", bundle_candidate_pb)

    async def rank(
        self,
        history: Sequence[HistoryStep],
        candidates: Sequence[tuple[str, tuple[str, ...]]],
        model_version: str,
        seconds: float,
        *,
        with_user_vector: bool = False,
    ) -> tuple[list[float], str, tuple[float, ...]]:
        head = ranker_pb2.RankRequest(
            model_version=model_version, return_user_vector=with_user_vector
        ).SerializeToString()
        request = head + self._sequence.encode(history) + self._candidates.encode(candidates)
        try:
            response = await self._rank(request, timeout=seconds)
        except (grpc.aio.AioRpcError, TimeoutError) as error:
            raise failure(error) from None
        if len(response.scores) != len(candidates):
            raise StageFailed("error")
        return list(response.scores), response.model_version, tuple(response.user_vector)


def page_item(pb: common_pb2.Item) -> PageItem:
    return PageItem(
        item_id=pb.item_id,
        title=pb.title,
        category=pb.category,
        brand=pb.brand,
        price=pb.price if pb.HasField("price") else None,
        in_stock=pb.availability.in_stock if pb.HasField("availability") else True,
    )


def user_vector_refused(error: grpc.aio.AioRpcError) -> bool:
    violation = field_violation(error) if error.code() == grpc.StatusCode.INVALID_ARGUMENT else None
    return violation is not None and violation[0] == "user_vector"


def field_violation(error: grpc.aio.AioRpcError) -> tuple[str, str] | None:
    """(field, problem) of the first google.rpc.BadRequest violation in the error's status details."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the status line: not one of ours
        return None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field, bad.field_violations[0].description
    return None


def filter_pb(f: CandidateFilter) -> candidate_pb2.CandidateFilter:
    return candidate_pb2.CandidateFilter(
        in_stock_only=f.in_stock_only,
        include_categories=f.include_categories,
        exclude_categories=f.exclude_categories,
        include_brands=f.include_brands,
        exclude_brands=f.exclude_brands,
        min_price=f.min_price,
        max_price=f.max_price,
        exclude_item_ids=f.exclude_item_ids,
        exclude_bundle_ids=f.exclude_bundle_ids,
    )


def _found(pb: candidate_pb2.Candidate) -> Found:
    is_bundle = pb.target.type == common_pb2.TARGET_TYPE_BUNDLE
    return Found(
        target_id=pb.target.id,
        is_bundle=is_bundle,
        score=pb.score,
        sources=frozenset(SOURCES[s] for s in pb.sources if s in SOURCES),
        item_ids=tuple(pb.item_ids) if is_bundle else (pb.target.id,),
    )


class AccountsClient:
    """The profile service's write side (accounts.AccountsPort), for Track, SetUserConsent and
    ForgetUser. Each call carries the caller's deadline, capped at `timeout_seconds`."""

    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float = 5.0) -> None:
        self.stub = profile_pb2_grpc.ProfileServiceStub(channel)
        self.timeout = timeout_seconds

    async def record_events(self, events: Sequence[bytes], seconds: float | None) -> Recorded:
        request = profile_pb2.RecordEventsRequest()
        for encoded in events:
            request.events.add().MergeFromString(encoded)
        reply = await self._call(self.stub.RecordEvents, request, seconds)
        return Recorded(reply.recorded, reply.duplicates, reply.anonymized)

    async def set_consent(
        self, user_id: str, personalization: bool | None, sensitive: bool | None, seconds: float | None
    ) -> ConsentState:
        request = profile_pb2.SetConsentRequest(user_id=user_id)
        if personalization is not None:
            request.personalization = personalization
        if sensitive is not None:
            request.sensitive_categories = sensitive
        consent = (await self._call(self.stub.SetConsent, request, seconds)).consent
        updated = consent.updated_at.ToMicroseconds() if consent.HasField("updated_at") else 0
        return ConsentState(consent.personalization, consent.sensitive_categories, updated)

    async def delete_user(self, user_id: str, seconds: float | None) -> bool:
        reply = await self._call(self.stub.DeleteUser, profile_pb2.DeleteUserRequest(user_id=user_id), seconds)
        return bool(reply.existed)

    async def _call(self, method: Callable[..., Awaitable[R]], request: Message, seconds: float | None) -> R:
        timeout = self.timeout if seconds is None else min(self.timeout, seconds)
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise forwarded(error) from None


def forwarded(error: grpc.aio.AioRpcError) -> errors.BundlerecError:
    """A downstream error as the gateway's own: a bad field keeps its name (`events[3].timestamp`),
    read from the google.rpc.BadRequest detail the services attach (runtime/interceptor.py)."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violation = field_violation(error)
        if violation is not None:
            return errors.InvalidArgument(*violation)
        return errors.InvalidArgument("request", details or "is invalid")
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(details)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):  # retrying will not help
        return errors.FailedPrecondition(
            "the profile service refused the gateway (its client credentials or the profile service's auth file)"
        )
    return errors.Unavailable("the profile service did not answer; retry (event ids make retries safe)")
