"""The API's event types and the domain's, one mapping for every servicer and client (the
generated code lives in bundlerec.v1, which is rebuilt from protos/ and holds nothing hand-written)."""

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
