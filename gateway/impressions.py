"""What each requester was shown, so that a bundle shown many times without any interaction rotates
down the page (and fresh bundles get their chance).

A counter is per requester and bundle key (bundle_key); any interaction with one of the bundle's
items, or with the bundle, resets it. Erased with the user (ForgetUser) and when they withdraw
consent. Two stores behind one interface:
- `MemoryImpressions`, the embedded default: in the gateway's memory, bounded (least recently active
  requesters are dropped first). Right for one gateway replica.
- `RedisImpressions` (impressions_redis.py): shared by every replica, so counts add up across them
  and one ForgetUser erases the user from all of them.
Store failures: reads in the page path fall back to "nothing over-exposed", and so does an
interaction that cannot reset a count (rotation is a nicety, the event itself is kept); counting an
impression and erasure raise `ImpressionsUnavailable`, so the caller retries (an impression is
counted atomically, once per impression id).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


def bundle_key(bundle_id: str, item_ids: Sequence[str]) -> str:
    """A catalogue bundle by its id; a built one by its sorted items (what impressions count)."""
    return f"b:{bundle_id}" if bundle_id else "i:" + "|".join(sorted(item_ids))


class ImpressionsUnavailable(Exception):
    """The shared store did not answer; nothing was (or is known to be) written."""


class ImpressionStore(Protocol):
    rotate_after: int

    async def record(self, requester: str, impression_id: str, bundle_key: str, item_ids: Iterable[str]) -> bool:
        """Counts one impression, once per impression id (a retry is not counted twice): True
        when counted now. Atomic: on ImpressionsUnavailable nothing was counted."""
        ...

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        """Events on items or bundles: every bundle holding one (or being one) starts afresh."""
        ...

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]: ...

    async def holds(self, requester: str) -> bool:
        """Whether anything about the requester is kept."""
        ...

    async def forget(self, requester: str) -> bool: ...

    async def user_vector(self, requester: str) -> UserVector | None:
        """The user vector the ranker gave this requester's last page (None: none, or unreadable)."""
        ...

    async def keep_user_vector(self, requester: str, vector: UserVector) -> None:
        """Kept with the impressions, so it is erased with them (ForgetUser, consent withdrawal)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UserVector:
    """The two-tower head's vector of a shopper's history, as the ranker's `model_version` made it."""

    model_version: str
    values: tuple[float, ...]


@dataclass
class _Requester:
    counts: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)  # oldest shown first
    ids: OrderedDict[str, None] = field(default_factory=OrderedDict)  # impression ids counted
    user_vector: UserVector | None = None


class MemoryImpressions:
    def __init__(
        self,
        rotate_after: int = 5,
        max_requesters: int = 100_000,
        max_per_requester: int = 500,
        max_ids_per_requester: int = 1_000,
    ) -> None:
        self.rotate_after = rotate_after
        self.max_requesters = max_requesters
        self.max_per_requester = max_per_requester
        self.max_ids_per_requester = max_ids_per_requester
        self._requesters: OrderedDict[str, _Requester] = OrderedDict()  # least recently active first

    async def record(self, requester: str, impression_id: str, bundle_key: str, item_ids: Iterable[str]) -> bool:
        state = self._touch(requester)
        if impression_id in state.ids:
            return False
        state.ids[impression_id] = None
        while len(state.ids) > self.max_ids_per_requester:
            state.ids.popitem(last=False)
        count, _ = state.counts.pop(bundle_key, (0, frozenset()))
        state.counts[bundle_key] = (count + 1, frozenset(item_ids))  # most recently shown last
        while len(state.counts) > self.max_per_requester:
            del state.counts[next(iter(state.counts))]
        return True

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        state = self._requesters.get(requester)
        if state is None:
            return
        for target_id in target_ids:
            bundle = bundle_key(target_id, ())
            for key in [k for k, (_, items) in state.counts.items() if target_id in items or k == bundle]:
                del state.counts[key]

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]:
        state = self._requesters.get(requester)
        if state is None or self.rotate_after <= 0:
            return set()
        return {k for k in bundle_keys if state.counts.get(k, (0, None))[0] >= self.rotate_after}

    async def holds(self, requester: str) -> bool:
        return requester in self._requesters

    async def forget(self, requester: str) -> bool:
        return self._requesters.pop(requester, None) is not None

    async def user_vector(self, requester: str) -> UserVector | None:
        state = self._requesters.get(requester)
        return state.user_vector if state is not None else None

    async def keep_user_vector(self, requester: str, vector: UserVector) -> None:
        self._touch(requester).user_vector = vector

    async def close(self) -> None:
        return None

    def _touch(self, requester: str) -> _Requester:
        state = self._requesters.pop(requester, None) or _Requester()
        self._requesters[requester] = state  # most recently active last
        while len(self._requesters) > self.max_requesters:
            self._requesters.popitem(last=False)
        return state
