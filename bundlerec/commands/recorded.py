"""What the services recorded, as a dataset in the import format: the training set of `bundlerec
retrain`, read through the services' public APIs only (never their tables).

- the catalogue from the candidate service (ListItems, ListBundles);
- the events from the profile service (ExportTrainingEvents): the stored personal histories, so
  only users with personalization consent and nobody erased, named by a pseudonym keyed by a fresh
  random key of this export (the training set holds no user id, and two exports share no pseudonym).
Events on items or bundles no longer in the catalogue are left out (counted in dataset.json).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bundlerec.datasets.format import Bundle, Event, Item
from bundlerec.datasets.writer import write_dataset
from bundlerec.runtime.tls import ChannelSecurity, open_sync_channel, token_metadata
from bundlerec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, profile_pb2, profile_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES

PAGE = 1000
TIMEOUT_S = 60.0


def export_recorded(
    out: Path,
    *,
    profile: str,
    candidate: str,
    security: ChannelSecurity,
    since: dt.datetime,
    until: dt.datetime,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes the dataset to `out` and returns its dataset.json."""
    metadata = token_metadata(security)
    with open_sync_channel(candidate, security) as channel:
        stub = candidate_pb2_grpc.CandidateServiceStub(channel)
        items = [_item(pb) for pb in _pages(stub.ListItems, candidate_pb2.ListItemsRequest, "items", metadata)]
        known = {item.item_id for item in items}
        bundles = [
            Bundle(pb.bundle_id, tuple(pb.item_ids), pb.title)
            for pb in _pages(stub.ListBundles, candidate_pb2.ListBundlesRequest, "bundles", metadata)
            if all(i in known for i in pb.item_ids)
        ]
    progress(f"catalogue: {len(items):,} items, {len(bundles):,} bundles")
    bundle_ids = {b.bundle_id for b in bundles}
    events: list[Event] = []
    dropped = 0
    with open_sync_channel(profile, security) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        window = {"since": _timestamp(since), "until": _timestamp(until), "pseudonym_key": secrets.token_urlsafe(32)}

        def request(**page: Any) -> profile_pb2.ExportTrainingEventsRequest:
            return profile_pb2.ExportTrainingEventsRequest(**window, **page)

        for pb in _pages(stub.ExportTrainingEvents, request, "events", metadata):
            bundle = pb.target.type == common_pb2.TARGET_TYPE_BUNDLE
            if pb.target.id not in (bundle_ids if bundle else known):
                dropped += 1
                continue
            events.append(
                Event(
                    pb.user,
                    EVENT_TYPES[pb.type].value,  # type: ignore[arg-type]
                    "bundle" if bundle else "item",
                    pb.target.id,
                    pb.occurred_at.seconds,
                    pb.value if pb.HasField("value") else None,
                )
            )
    events.sort(key=lambda e: (e.user_id, e.timestamp))
    progress(f"events: {len(events):,} from {len({e.user_id for e in events}):,} shoppers ({dropped:,} left out)")
    info = {
        "name": "recorded",
        "task": "next_item",
        "source": f"bundlerec retrain: {profile} and {candidate}, {since.isoformat()} to {until.isoformat()}",
        "licence": "the shop's own",
        "timestamps": "unix",
        "protocol": "by time (bundlerec retrain): train before the newest window, evaluate on it",
        "counts": {"events_left_out": dropped},
        "reference_results": [],
        "format": "FORMAT.md v1",
    }
    write_dataset(out, items=items, bundles=bundles, events=events, valid=[], test=[], info=info)
    return info


def _pages(call: Callable[..., Any], request: Callable[..., Any], field: str, metadata: Any) -> Iterator[Any]:
    token = ""
    while True:
        reply = call(request(page_size=PAGE, page_token=token), timeout=TIMEOUT_S, metadata=metadata)
        yield from getattr(reply, field)
        token = reply.next_page_token
        if not token:
            return


def _item(pb: common_pb2.Item) -> Item:
    return Item(
        pb.item_id, pb.title, pb.category, pb.brand, pb.price if pb.HasField("price") else None, tuple(pb.attributes)
    )


def _timestamp(when: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts
