"""What each requester was shown, so that a bundle shown many times without any interaction rotates
down the page (and fresh bundles get their chance).

A counter is per requester and bundle key (bundle_key); any interaction with one of the bundle's
items, or with the bundle, resets it. Erased with the user (ForgetUser) and when they withdraw
consent. Two stores behind one interface:
- `MemoryImpressions`, the embedded default: in the gateway's memory, bounded (least recently active
  requesters are dropped first). Right for one gateway replica.
- `RedisImpressions` (impressions_redis.py): shared by every replica, so counts add up across them
  and one ForgetUser erases the user from all of them.
Store failures: reads in the page path fall back to "nothing over-exposed"; writes and erasure raise
`ImpressionsUnavailable`, so the caller retries (events and impression ids are idempotent).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol


def bundle_key(bundle_id: str, item_ids: Sequence[str]) -> str:
    """A catalogue bundle by its id; a built one by its sorted items (what impressions count)."""
    return f"b:{bundle_id}" if bundle_id else "i:" + "|".join(sorted(item_ids))


class ImpressionsUnavailable(Exception):
    """The shared store did not answer; nothing was (or is known to be) written."""


class ImpressionStore(Protocol):
    rotate_after: int

    async def first_time(self, requester: str, impression_id: str) -> bool:
        """True the first time an impression id is reported (retries are not counted twice)."""
        ...

    async def shown(self, requester: str, bundle_key: str, item_ids: Iterable[str]) -> None: ...

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        """Events on items or bundles: every bundle holding one (or being one) starts afresh."""
        ...

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]: ...

    async def forget(self, requester: str) -> bool: ...

    async def close(self) -> None: ...


class MemoryImpressions:
    def __init__(
        self,
        rotate_after: int = 5,
        max_requesters: int = 100_000,
        max_per_requester: int = 500,
        max_impression_ids: int = 100_000,
    ) -> None:
        self.rotate_after = rotate_after
        self.max_requesters = max_requesters
        self.max_per_requester = max_per_requester
        self.max_impression_ids = max_impression_ids
        self._shown: OrderedDict[str, dict[str, tuple[int, frozenset[str]]]] = OrderedDict()
        self._impression_ids: OrderedDict[str, None] = OrderedDict()

    async def first_time(self, requester: str, impression_id: str) -> bool:
        seen = f"{requester}\0{impression_id}"
        if seen in self._impression_ids:
            return False
        self._impression_ids[seen] = None
        while len(self._impression_ids) > self.max_impression_ids:
            self._impression_ids.popitem(last=False)
        return True

    async def shown(self, requester: str, bundle_key: str, item_ids: Iterable[str]) -> None:
        counts = self._touch(requester)
        count, _ = counts.pop(bundle_key, (0, frozenset()))
        counts[bundle_key] = (count + 1, frozenset(item_ids))  # most recently shown last
        while len(counts) > self.max_per_requester:
            del counts[next(iter(counts))]

    async def interacted(self, requester: str, target_ids: Iterable[str]) -> None:
        counts = self._shown.get(requester)
        if not counts:
            return
        for target_id in target_ids:
            bundle = bundle_key(target_id, ())
            for key in [k for k, (_, items) in counts.items() if target_id in items or k == bundle]:
                del counts[key]

    async def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]:
        counts = self._shown.get(requester)
        if not counts or self.rotate_after <= 0:
            return set()
        return {k for k in bundle_keys if counts.get(k, (0, None))[0] >= self.rotate_after}

    async def forget(self, requester: str) -> bool:
        prefix = f"{requester}\0"
        ids = [s for s in self._impression_ids if s.startswith(prefix)]
        for seen in ids:
            del self._impression_ids[seen]
        return self._shown.pop(requester, None) is not None or bool(ids)

    async def close(self) -> None:
        return None

    def __contains__(self, requester: str) -> bool:
        return requester in self._shown or any(s.startswith(f"{requester}\0") for s in self._impression_ids)

    def _touch(self, requester: str) -> dict[str, tuple[int, frozenset[str]]]:
        counts = self._shown.pop(requester, None) or {}
        self._shown[requester] = counts  # most recently active last
        while len(self._shown) > self.max_requesters:
            self._shown.popitem(last=False)
        return counts
