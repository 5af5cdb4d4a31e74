"""Requests a load test sends, drawn from a dataset in the import format (docs/import-format.md).

Shoppers come back in proportion to how active they were in the dataset (a heavy user visits more
often than one who came once), a share of the traffic is anonymous (a session id, no user), and each
request is a placement of a real shop: the home page, a product page with an anchor item, a cart
with one to three items, checkout and e-mail. Anchors are drawn from what shoppers looked at, so
popular products are asked for more often, as in a shop. Everything comes from one
random.Random(seed): the same seed and dataset give the same requests.

The ranker and candidate services, driven directly, get what the gateway would send them for such
a request: the user's recent history (at most 50 steps) and, for the ranker, candidate bundles.
"""

from __future__ import annotations

import bisect
import random
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from bundlerec.client import PLACEMENTS
from bundlerec.datasets import Dataset, read_dataset
from bundlerec.v1 import candidate_pb2, common_pb2, gateway_pb2, ranker_pb2
from bundlerec.v1_events import EVENT_TYPES_PB

TARGETS = ("gateway", "ranker", "candidate")
# placement, share of requests
PLACEMENT_MIX: tuple[tuple[str, float], ...] = (
    ("home", 0.40),
    ("product_page", 0.35),
    ("cart", 0.15),
    ("checkout", 0.05),
    ("email", 0.05),
)
# a dataset's event type names ("view"...) as the API's (StrEnum: the names are the values)
EVENT_TYPES = {kind.value: pb for kind, pb in EVENT_TYPES_PB.items()}
HISTORY = 50  # the gateway's default history_length
DEMO_SHOP = {"seed": 1, "users": 300, "items": 600, "bundles": 120}  # what `bundlerec demo` imports


@dataclass(frozen=True)
class WorkloadSettings:
    anonymous_share: float = 0.2
    trace_share: float = 0.1  # gateway: share of requests sent with debug=true (their trace gives stage times)
    page_size: int = 10
    budget_share: float = 0.1  # share of requests with a budget (the median bundle price)
    candidates: int = 100  # ranker: candidate bundles per request (the gateway asks retrieval for 100)
    seed: int = 1


@dataclass(frozen=True)
class Planned:
    """One request to send: the message, and a label for the report (placement, anonymous)."""

    message: Any
    label: str
    traced: bool = False


@dataclass(frozen=True)
class _Shopper:
    user_id: str
    history: tuple[tuple[str, str, bool], ...]  # (target id, event type, is a bundle), oldest first


class Workload:
    """An endless, reproducible stream of requests for one target."""

    def __init__(self, dataset: Dataset, target: str, settings: WorkloadSettings = WorkloadSettings()) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if not dataset.items:
            raise ValueError(f"the dataset at {dataset.path} has no items")
        self.target, self.settings = target, settings
        histories: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
        for e in sorted(dataset.events, key=lambda e: e.timestamp):  # stable: file order among equals
            histories[e.user_id].append((e.target_id, e.event_type, e.target_type == "bundle"))
        self.shoppers = [_Shopper(user, tuple(steps[-HISTORY:])) for user, steps in histories.items()]
        self._shopper_weights = list(accumulate(len(histories[s.user_id]) for s in self.shoppers))
        seen = [e.target_id for e in dataset.events if e.target_type == "item" and e.target_id in dataset.items]
        self._anchors = seen or list(dataset.items)  # drawn uniformly from views: popular items more often
        self._bundles = [b.item_ids for b in dataset.bundles.values()]
        self._bundle_ids = list(dataset.bundles)
        prices = sorted(
            sum(dataset.items[i].price or 0.0 for i in b.item_ids) for b in dataset.bundles.values() if b.item_ids
        )
        self._budget = prices[len(prices) // 2] if prices else None
        self._items = list(dataset.items)
        self._placements = [p for p, _ in PLACEMENT_MIX]
        self._placement_weights = list(accumulate(w for _, w in PLACEMENT_MIX))
        self.rng = random.Random(settings.seed)
        self._anonymous = 0

    @property
    def users(self) -> int:
        return len(self.shoppers)

    def __iter__(self) -> Iterator[Planned]:
        while True:
            yield self.next()

    def next(self) -> Planned:
        rng, s = self.rng, self.settings
        placement = self._placements[bisect.bisect(self._placement_weights, rng.random() * self._placement_weights[-1])]
        shopper = None
        if self.shoppers and rng.random() >= s.anonymous_share:
            pick = rng.random() * self._shopper_weights[-1]
            shopper = self.shoppers[min(bisect.bisect(self._shopper_weights, pick), len(self.shoppers) - 1)]
        label = f"{placement}/{'user' if shopper else 'anonymous'}"
        anchor = rng.choice(self._anchors) if placement in ("product_page", "cart") else ""
        if self.target == "gateway":
            return self._recommend(placement, shopper, anchor, label)
        history = shopper.history if shopper else ()
        if self.target == "candidate":
            return Planned(self._retrieve(history, anchor), label)
        return Planned(self._rank(history), label)

    def _recommend(self, placement: str, shopper: _Shopper | None, anchor: str, label: str) -> Planned:
        rng, s = self.rng, self.settings
        context = gateway_pb2.RecommendContext(placement=PLACEMENTS[placement], anchor_item_id=anchor)
        if placement == "cart":
            context.cart_item_ids.extend([anchor, *rng.sample(self._items, min(len(self._items), rng.randint(0, 2)))])
        if self._budget is not None and rng.random() < s.budget_share:
            context.budget = round(self._budget, 2)
        traced = rng.random() < s.trace_share
        request = gateway_pb2.RecommendRequest(context=context, page_size=s.page_size, debug=traced)
        if shopper is not None:
            request.user_id = shopper.user_id
        else:
            self._anonymous += 1
            request.session_id = f"loadtest-session-{self._anonymous}"
        return Planned(request, label, traced)

    def _retrieve(self, history: tuple[tuple[str, str, bool], ...], anchor: str) -> candidate_pb2.RetrieveRequest:
        return candidate_pb2.RetrieveRequest(
            recent=[candidate_pb2.RecentInteraction(target=_target(t, b), type=EVENT_TYPES[k]) for t, k, b in history],
            anchor_item_id=anchor,
            item_limit=self.settings.candidates,
            bundle_limit=self.settings.candidates,
        )

    def _rank(self, history: tuple[tuple[str, str, bool], ...]) -> ranker_pb2.RankRequest:
        n = len(self._bundles)
        if n:
            picks = [self.rng.randrange(n) for _ in range(self.settings.candidates)]
            candidates = [
                ranker_pb2.BundleCandidate(bundle_id=self._bundle_ids[i], item_ids=self._bundles[i]) for i in picks
            ]
        else:  # no curated bundles: bundles of two catalogue items, as the gateway builds them
            candidates = [
                ranker_pb2.BundleCandidate(item_ids=self.rng.sample(self._items, min(2, len(self._items))))
                for _ in range(self.settings.candidates)
            ]
        return ranker_pb2.RankRequest(
            sequence=[ranker_pb2.SequenceStep(target=_target(t, b), type=EVENT_TYPES[k]) for t, k, b in history],
            candidates=candidates,
        )


def _target(target_id: str, is_bundle: bool) -> common_pb2.TargetRef:
    kind = common_pb2.TARGET_TYPE_BUNDLE if is_bundle else common_pb2.TARGET_TYPE_ITEM
    return common_pb2.TargetRef(type=kind, id=target_id)


def load_dataset(path: str | None) -> Dataset:
    """The dataset at `path`; without one, the demo shop `bundlerec demo` imports (same seed and size,
    so its users are the ones the demo's services know), generated into a temporary directory."""
    if path:
        return read_dataset(path, on_error="skip")
    from bundlerec.datasets.demo import generate_demo_shop

    with tempfile.TemporaryDirectory(prefix="bundlerec-loadtest-") as tmp:
        generate_demo_shop(Path(tmp), **DEMO_SHOP)
        return read_dataset(tmp)
