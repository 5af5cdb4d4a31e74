"""The API's event types and bundle kinds and the domain's, one mapping for every servicer and
client (the generated code lives in bundlerec.v1, which is rebuilt from protos/ and holds nothing
hand-written)."""

from __future__ import annotations

from bundlerec.events import EventType
from bundlerec.v1 import common_pb2

EVENT_TYPES = {
    common_pb2.EVENT_TYPE_VIEW: EventType.VIEW,
    common_pb2.EVENT_TYPE_CLICK: EventType.CLICK,
    common_pb2.EVENT_TYPE_ADD_TO_CART: EventType.ADD_TO_CART,
    common_pb2.EVENT_TYPE_PURCHASE: EventType.PURCHASE,
    common_pb2.EVENT_TYPE_RATING: EventType.RATING,
    common_pb2.EVENT_TYPE_LIKE: EventType.LIKE,
}
EVENT_TYPES_PB = {kind: pb for pb, kind in EVENT_TYPES.items()}
# How a bundle came to be on a page (common.proto's BundleKind), as the gateway and the exposure log name it
BUNDLE_KINDS = {
    common_pb2.BUNDLE_KIND_CURATED: "curated",
    common_pb2.BUNDLE_KIND_BUILT: "built",
    common_pb2.BUNDLE_KIND_FEATURED: "featured",
    common_pb2.BUNDLE_KIND_EXPLORED: "explored",
}
BUNDLE_KINDS_PB = {kind: pb for pb, kind in BUNDLE_KINDS.items()}
