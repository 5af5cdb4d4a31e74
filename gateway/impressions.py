"""What each requester was shown, so that a bundle shown many times without any interaction rotates
down the page (and fresh bundles get their chance).

Kept in the gateway's memory, bounded (least recently active requesters are dropped first), and
erased with the user (ForgetUser). A counter is per requester and bundle key (bundle_key);
any interaction with one of the bundle's items, or with the bundle, resets it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


def bundle_key(bundle_id: str, item_ids: Sequence[str]) -> str:
    """A catalogue bundle by its id; a built one by its sorted items (what impressions count)."""
    return f"b:{bundle_id}" if bundle_id else "i:" + "|".join(sorted(item_ids))


class ImpressionLog:
    def __init__(self, rotate_after: int = 5, max_requesters: int = 100_000, max_per_requester: int = 500) -> None:
        self.rotate_after = rotate_after
        self.max_requesters = max_requesters
        self.max_per_requester = max_per_requester
        self._shown: OrderedDict[str, dict[str, tuple[int, frozenset[str]]]] = OrderedDict()

    def shown(self, requester: str, bundle_key: str, item_ids: Iterable[str]) -> None:
        counts = self._touch(requester)
        count, _ = counts.pop(bundle_key, (0, frozenset()))
        counts[bundle_key] = (count + 1, frozenset(item_ids))  # most recently shown last
        while len(counts) > self.max_per_requester:
            del counts[next(iter(counts))]

    def interacted(self, requester: str, target_id: str) -> None:
        """An event on an item or bundle: every bundle holding it (or being it) starts afresh."""
        counts = self._shown.get(requester)
        if not counts:
            return
        bundle = bundle_key(target_id, ())
        for key in [k for k, (_, items) in counts.items() if target_id in items or k == bundle]:
            del counts[key]

    def overexposed(self, requester: str, bundle_keys: Sequence[str]) -> set[str]:
        counts = self._shown.get(requester)
        if not counts or self.rotate_after <= 0:
            return set()
        return {k for k in bundle_keys if counts.get(k, (0, None))[0] >= self.rotate_after}

    def forget(self, requester: str) -> bool:
        return self._shown.pop(requester, None) is not None

    def __contains__(self, requester: str) -> bool:
        return requester in self._shown

    def _touch(self, requester: str) -> dict[str, tuple[int, frozenset[str]]]:
        counts = self._shown.pop(requester, None) or {}
        self._shown[requester] = counts  # most recently active last
        while len(self._shown) > self.max_requesters:
            self._shown.popitem(last=False)
        return counts
