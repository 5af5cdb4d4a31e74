"""The id maps of a trained model: which item and bundle ids have learned rows, and bundle members.

numpy and json only, so the ranker service can map request ids without torch. Rows 0 and 1 of both
tables are padding and "unknown" (features.PAD, features.UNKNOWN); known ids start at FIRST_ID.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bundlerec.ranking.features import FIRST_ID, UNKNOWN

VOCABULARY_FILE = "vocabulary.json"
MEMBERS_FILE = "bundle_members.npy"


@dataclass
class Vocabulary:
    item_ids: list[str]
    bundle_ids: list[str]
    # [num_bundle_rows, max_members] item indices of each known bundle's members (0-padded)
    bundle_members: np.ndarray
    _items: dict[str, int] = field(init=False, repr=False)
    _bundles: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._items = {item: FIRST_ID + n for n, item in enumerate(self.item_ids)}
        self._bundles = {bundle: FIRST_ID + n for n, bundle in enumerate(self.bundle_ids)}

    @classmethod
    def build(cls, item_ids: Iterable[str], bundles: Mapping[str, Sequence[str]], max_members: int) -> Vocabulary:
        """`item_ids` get learned rows in the given order; `bundles` maps each known bundle to its
        members (members outside `item_ids` are kept as UNKNOWN rows only if nothing else is left)."""
        items = list(dict.fromkeys(item_ids))
        index = {item: FIRST_ID + n for n, item in enumerate(items)}
        members = np.zeros((FIRST_ID + len(bundles), max(1, max_members)), dtype=np.int64)
        for row, member_ids in enumerate(bundles.values(), start=FIRST_ID):
            known = [index.get(m, UNKNOWN) for m in member_ids][:max_members]
            members[row, : len(known)] = known
        return cls(items, list(bundles), members)

    @property
    def num_item_rows(self) -> int:
        return FIRST_ID + len(self.item_ids)

    @property
    def num_bundle_rows(self) -> int:
        return FIRST_ID + len(self.bundle_ids)

    def item(self, item_id: str) -> int:
        return self._items.get(item_id, UNKNOWN)

    def bundle(self, bundle_id: str) -> int:
        return self._bundles.get(bundle_id, UNKNOWN) if bundle_id else 0

    def has_item(self, item_id: str) -> bool:
        return item_id in self._items

    def save(self, directory: Path) -> None:
        (directory / VOCABULARY_FILE).write_text(json.dumps({"items": self.item_ids, "bundles": self.bundle_ids}))
        np.save(directory / MEMBERS_FILE, self.bundle_members)

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        data = json.loads((directory / VOCABULARY_FILE).read_text())
        return cls(list(data["items"]), list(data["bundles"]), np.load(directory / MEMBERS_FILE))
