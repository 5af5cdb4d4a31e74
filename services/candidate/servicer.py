"""gRPC face of the candidate service: translates proto ↔ domain, nothing else."""

from __future__ import annotations

import operator
import struct

from bundlerec import validation
from bundlerec.candidate.model import (
    SOURCE_SETS,
    Bundle,
    Candidate,
    Filter,
    Item,
    RecentInteraction,
    RetrievalRequest,
    Retrieved,
    Source,
)
from bundlerec.candidate.ranking import Found
from bundlerec.candidate.service import CandidateService
from bundlerec.errors import InvalidArgument
from bundlerec.runtime.encoding import varint
from bundlerec.sources import SOURCES
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2
from bundlerec.v1_events import EVENT_TYPES


def item_from_pb(pb: common_pb2.Item) -> Item:
    availability = pb.availability if pb.HasField("availability") else None
    return Item(
        item_id=pb.item_id,
        title=pb.title,
        category=pb.category,
        brand=pb.brand,
        price=pb.price if pb.HasField("price") else None,
        attributes=tuple(pb.attributes),
        in_stock=availability.in_stock if availability else True,
        stock_count=availability.stock_count if availability and availability.HasField("stock_count") else None,
        external_vector=tuple(pb.external_vector),
    )


def item_pb(item: Item) -> common_pb2.Item:
    pb = common_pb2.Item(
        item_id=item.item_id,
        title=item.title,
        category=item.category,
        brand=item.brand,
        attributes=item.attributes,
        availability=common_pb2.Availability(in_stock=item.in_stock, stock_count=item.stock_count),
        external_vector=item.external_vector,
    )
    if item.price is not None:
        pb.price = item.price
    return pb


def bundle_pb(bundle: Bundle) -> common_pb2.Bundle:
    return common_pb2.Bundle(bundle_id=bundle.bundle_id, title=bundle.title, item_ids=bundle.item_ids)


def filter_from_pb(field: str, pb: candidate_pb2.CandidateFilter) -> Filter:
    for name in ("include_categories", "exclude_categories", "include_brands", "exclude_brands"):
        values = getattr(pb, name)
        if len(values) > 100:
            raise InvalidArgument(f"{field}.{name}", "at most 100 entries")
        for i, value in enumerate(values):
            validation.text(f"{field}.{name}[{i}]", value, max_length=512, required=True)
    for name in ("min_price", "max_price"):
        if pb.HasField(name):
            validation.finite(f"{field}.{name}", getattr(pb, name))
    if pb.HasField("min_price") and pb.HasField("max_price") and pb.min_price > pb.max_price:
        raise InvalidArgument(f"{field}.min_price", "must not exceed max_price")
    validation.identifiers(f"{field}.exclude_item_ids", pb.exclude_item_ids, max_count=10_000, unique=False)
    validation.identifiers(f"{field}.exclude_bundle_ids", pb.exclude_bundle_ids, max_count=10_000, unique=False)
    return Filter(
        in_stock_only=pb.in_stock_only,
        include_categories=tuple(pb.include_categories),
        exclude_categories=tuple(pb.exclude_categories),
        include_brands=tuple(pb.include_brands),
        exclude_brands=tuple(pb.exclude_brands),
        min_price=pb.min_price if pb.HasField("min_price") else None,
        max_price=pb.max_price if pb.HasField("max_price") else None,
        exclude_item_ids=frozenset(pb.exclude_item_ids),
        exclude_bundle_ids=frozenset(pb.exclude_bundle_ids),
    )


def retrieval_from_pb(pb: candidate_pb2.RetrieveRequest) -> RetrievalRequest:
    if len(pb.recent) > 200:
        raise InvalidArgument("recent", f"has {len(pb.recent)} interactions; at most 200")
    recent = []
    for i, step in enumerate(pb.recent):
        target = step.target
        key = (target.id, target.type, step.type)
        interaction = _RECENT.get(key)
        if interaction is None:
            interaction = _recent_interaction(i, *key)
        recent.append(interaction)
    for i, x in enumerate(pb.user_vector):
        validation.finite(f"user_vector[{i}]", x)
    validation.identifier("anchor_item_id", pb.anchor_item_id, required=False)
    sources = set()
    for i, value in enumerate(pb.sources):
        if value not in SOURCES:
            raise InvalidArgument(f"sources[{i}]", "is not a known candidate source")
        sources.add(SOURCES[value])
    return RetrievalRequest(
        recent=tuple(recent),
        user_vector=tuple(pb.user_vector),
        anchor_item_id=pb.anchor_item_id,
        item_limit=validation.page_size("item_limit", pb.item_limit, default=200, maximum=2000),
        bundle_limit=validation.page_size("bundle_limit", pb.bundle_limit, default=200, maximum=2000),
        filter=_filter(pb.filter),
        sources=frozenset(sources) or frozenset(Source),
        co_occurrence_floor=_floor(pb.co_occurrence_floor),
    )


def _floor(value: float) -> float:
    if validation.finite("co_occurrence_floor", value) < 0:
        raise InvalidArgument("co_occurrence_floor", "must not be negative")
    return value


# Filters already converted, by their encoding: a page's filter comes from a handful of rule sets,
# the same bytes request after request. Large ones (long exclusion lists) are converted every time.
_FILTERS: dict[bytes, Filter] = {}
_MAX_CACHED_FILTER = 4096  # bytes


def _filter(pb: candidate_pb2.CandidateFilter) -> Filter:
    encoded = pb.SerializeToString()
    converted = _FILTERS.get(encoded)
    if converted is None:
        converted = filter_from_pb("filter", pb)
        if len(encoded) <= _MAX_CACHED_FILTER:
            if len(_FILTERS) >= 1000:
                _FILTERS.clear()
            _FILTERS[encoded] = converted
    return converted


# Interactions already converted, by (target id, target type, event type): the same few thousand
# come back request after request, and converting one (validation included) is what costs.
_RECENT: dict[tuple[str, int, int], RecentInteraction] = {}


def _recent_interaction(i: int, target_id: str, target_type: int, event_type: int) -> RecentInteraction:
    validation.identifier(f"recent[{i}].target.id", target_id)
    if target_type not in (common_pb2.TARGET_TYPE_ITEM, common_pb2.TARGET_TYPE_BUNDLE):
        raise InvalidArgument(f"recent[{i}].target.type", "must be item or bundle")
    kind = EVENT_TYPES.get(event_type)
    if kind is None:
        raise InvalidArgument(f"recent[{i}].type", "must be a known event type")
    if len(_RECENT) >= 100_000:
        _RECENT.clear()
    interaction = _RECENT[(target_id, target_type, event_type)] = RecentInteraction(
        target_id, target_type == common_pb2.TARGET_TYPE_BUNDLE, kind
    )
    return interaction


def candidate_pb(c: Candidate) -> candidate_pb2.Candidate:
    kind = common_pb2.TARGET_TYPE_BUNDLE if c.is_bundle else common_pb2.TARGET_TYPE_ITEM
    return candidate_pb2.Candidate(
        target=common_pb2.TargetRef(type=kind, id=c.target_id),
        score=c.score,
        sources=sorted(int(s) for s in c.sources),
        item_ids=c.item_ids,
    )


class ResponseEncoder:
    """Builds RetrieveResponses. All of a candidate's message but its score (target, sources,
    members) comes back in response after response: it is serialized once, by protobuf, and kept
    with the score's tag after it. A response is then these pieces, each followed by its
    candidate's score (a little-endian double, as the wire format has it), parsed into a
    RetrieveResponse in one C call: a third of the cost of building the messages field by field
    (measured: 0.15 against 0.5 ms for 200 candidates).

    Pieces are kept by slot and source bits, for one layout of the vector index: within a layout
    a slot always names the same item or bundle, and a bundle whose members change is upserted
    again, under a new slot (CatalogueIndex.upsert_bundle). So a response's pieces are picked by
    one C call, with no Python work per candidate."""

    def __init__(self, max_size: int = 50_000) -> None:
        self.max_size = max_size
        self._heads: dict[int, tuple[tuple[int, int], dict[int, bytes]]] = {}  # field → (layout, code → piece)

    def response(self, retrieved: Retrieved) -> candidate_pb2.RetrieveResponse:
        pieces = self._pieces(_ITEMS, retrieved.found_items) + self._pieces(_BUNDLES, retrieved.found_bundles)
        response = candidate_pb2.RetrieveResponse.FromString(b"".join(pieces))
        response.index_version = retrieved.index_version
        if retrieved.found_items.co_occurrences:
            pairs = retrieved.found_items.co_occurrences
            response.co_occurrences.extend(_CO_OCCURRENCE(item_id=i, with_item_id=w, strength=s) for i, w, s in pairs)
        return response

    def _pieces(self, field: int, found: Found) -> list[bytes]:
        """Each candidate's piece, then its score."""
        n = len(found.slots)
        if n == 0:
            return []
        layout, heads = self._heads.get(field, (None, {}))
        if layout != found.layout or len(heads) >= self.max_size:
            heads = {}
            self._heads[field] = (found.layout, heads)
        codes = (found.slots * _CODES_PER_SLOT + found.source_bits).tolist()
        pick = operator.itemgetter(*codes) if n > 1 else lambda heads: [heads[codes[0]]]
        try:
            chosen = pick(heads)
        except KeyError:  # new candidates (or combinations of sources): encode them once
            for code in codes:
                if code not in heads:
                    heads[code] = self._head(field, found, code)
            chosen = pick(heads)
        pieces: list[bytes] = [b""] * (2 * n)
        pieces[0::2] = chosen
        pieces[1::2] = map(_DOUBLE, found.scores.tolist())
        return pieces

    @staticmethod
    def _head(field: int, found: Found, code: int) -> bytes:
        slot, bits = divmod(code, _CODES_PER_SLOT)
        target_id = found.keys[slot]
        assert target_id is not None  # a retrieval returns live slots only
        members = found.bundles[target_id].item_ids if found.bundles is not None else (target_id,)
        candidate = Candidate(target_id, field == _BUNDLES, 0.0, SOURCE_SETS[bits], members)
        body = candidate_pb(candidate).SerializeToString() + _SCORE_TAG
        return varint(field << 3 | 2) + varint(len(body) + 8) + body  # 2: a length-delimited field; 8: the score


_ITEMS, _BUNDLES = (candidate_pb2.RetrieveResponse.DESCRIPTOR.fields_by_name[f].number for f in ("items", "bundles"))
_SCORE_TAG = bytes([candidate_pb2.Candidate.DESCRIPTOR.fields_by_name["score"].number << 3 | 1])  # 1: 64-bit
_DOUBLE = struct.Struct("<d").pack
_CO_OCCURRENCE = candidate_pb2.CoOccurrence
_CODES_PER_SLOT = len(SOURCE_SETS)  # a piece's code: slot × this + source bits


class CandidateServicer(candidate_pb2_grpc.CandidateServiceServicer):
    def __init__(self, service: CandidateService) -> None:
        self.service = service
        self.responses = ResponseEncoder()

    async def UpsertItems(self, request, context):  # type: ignore[no-untyped-def]
        inserted, updated = await self.service.upsert_items([item_from_pb(pb) for pb in request.items])
        return candidate_pb2.UpsertItemsResponse(inserted=inserted, updated=updated)

    async def DeleteItems(self, request, context):  # type: ignore[no-untyped-def]
        return candidate_pb2.DeleteItemsResponse(deleted=await self.service.delete_items(list(request.item_ids)))

    async def UpsertBundles(self, request, context):  # type: ignore[no-untyped-def]
        bundles = [Bundle(pb.bundle_id, tuple(pb.item_ids), pb.title) for pb in request.bundles]
        inserted, updated = await self.service.upsert_bundles(bundles)
        return candidate_pb2.UpsertBundlesResponse(inserted=inserted, updated=updated)

    async def DeleteBundles(self, request, context):  # type: ignore[no-untyped-def]
        return candidate_pb2.DeleteBundlesResponse(deleted=await self.service.delete_bundles(list(request.bundle_ids)))

    async def SetAvailability(self, request, context):  # type: ignore[no-untyped-def]
        for i, u in enumerate(request.updates):
            if not u.HasField("availability"):
                raise InvalidArgument(f"updates[{i}].availability", "is required")
        updates = [
            (
                u.item_id,
                u.availability.in_stock,
                u.availability.stock_count if u.availability.HasField("stock_count") else None,
            )
            for u in request.updates
        ]
        updated, missing = await self.service.set_availability(updates)
        return candidate_pb2.SetAvailabilityResponse(updated=updated, missing_item_ids=missing)

    async def GetItems(self, request, context):  # type: ignore[no-untyped-def]
        items, missing = await self.service.get_items(list(request.item_ids))
        return candidate_pb2.GetItemsResponse(items=[item_pb(i) for i in items], missing_item_ids=missing)

    async def GetTextVectors(self, request, context):  # type: ignore[no-untyped-def]
        found, missing = await self.service.text_vectors(list(request.item_ids))
        return candidate_pb2.GetTextVectorsResponse(
            vectors=[candidate_pb2.TextVector(item_id=i, vector=v.tolist()) for i, v in found],
            missing_item_ids=missing,
        )

    async def GetBundles(self, request, context):  # type: ignore[no-untyped-def]
        bundles, missing = await self.service.get_bundles(list(request.bundle_ids))
        return candidate_pb2.GetBundlesResponse(
            bundles=[bundle_pb(b) for b in bundles],
            missing_bundle_ids=missing,
        )

    async def ListItems(self, request, context):  # type: ignore[no-untyped-def]
        items, token = await self.service.list_items(request.page_size, request.page_token)
        return candidate_pb2.ListItemsResponse(items=[item_pb(i) for i in items], next_page_token=token)

    async def ListBundles(self, request, context):  # type: ignore[no-untyped-def]
        bundles, token = await self.service.list_bundles(request.page_size, request.page_token)
        return candidate_pb2.ListBundlesResponse(bundles=[bundle_pb(b) for b in bundles], next_page_token=token)

    async def Retrieve(self, request, context):  # type: ignore[no-untyped-def]
        return self.responses.response(self.service.retrieve(retrieval_from_pb(request)))

    async def SearchText(self, request, context):  # type: ignore[no-untyped-def]
        hits = await self.service.search_text(request.query, request.limit, filter_from_pb("filter", request.filter))
        return candidate_pb2.SearchTextResponse(
            results=[candidate_pb2.ScoredItem(item=item_pb(item), score=score) for item, score in hits]
        )
