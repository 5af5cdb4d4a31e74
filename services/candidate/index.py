"""The in-memory view of the catalogue that retrieval runs on: fused item and bundle vectors in
FAISS (text, external vector, and the ranker's collaborative vectors when a model provides them),
filter columns by item slot, bundle membership, co-occurrence and popularity.

Built from the catalogue store at start, then kept current by every catalogue write, so a new
item is retrievable by the very next call.
"""

from __future__ import annotations

import heapq
import json
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from bundlerec.candidate.collaborative import Collaborative
from bundlerec.candidate.fusion import Fusion
from bundlerec.candidate.live import Increments
from bundlerec.candidate.masks import FilterMasks
from bundlerec.candidate.model import Bundle, Item
from bundlerec.candidate.relations import Relations
from bundlerec.candidate.statistics import KEEP_PER_ITEM, BehaviourStatistics
from bundlerec.candidate.vectors import VectorIndex


class CatalogueIndex(FilterMasks):
    def __init__(
        self,
        text_dim: int,
        external_dim: int = 0,
        *,
        exact_below: int = 100_000,
        collaborative: Collaborative | None = None,
    ) -> None:
        self.fusion = Fusion(text_dim, external_dim, collaborative)
        self.items: dict[str, Item] = {}
        self.bundles: dict[str, Bundle] = {}
        self.bundles_of: dict[str, set[str]] = defaultdict(set)
        self.item_vectors = VectorIndex(self.fusion.dim, exact_below=exact_below, normalize_vectors=False)
        self.bundle_vectors = VectorIndex(self.fusion.dim, exact_below=exact_below, normalize_vectors=False)
        self.event_pairs: dict[str, dict[str, float]] = defaultdict(dict)
        self.bundle_pairs: dict[str, dict[str, float]] = defaultdict(dict)
        self.popularity: dict[str, float] = {}
        self.version = 0  # bumped by every change
        self.instance = uuid.uuid4().hex[:8]  # this in-memory index (a restart or a new model's builds another)
        self._columns_layout = -1  # the vector index layout the per-slot columns were built for
        self._order_dirty = self._bundles_dirty = True
        self._relations = Relations(self)
        self._code_tables: dict[tuple[bool, tuple[str, ...], int], np.ndarray] = {}
        self._bundles_in_stock = (-1, np.zeros(0, bool))  # (the index version, by bundle slot)

    # -- vectors --------------------------------------------------------------------------

    @property
    def text_dim(self) -> int:
        return self.fusion.text_dim

    @property
    def external_dim(self) -> int:
        return self.fusion.external_dim

    @property
    def collaborative(self) -> Collaborative | None:
        return self.fusion.collaborative

    def with_collaborative(self, collaborative: Collaborative | None) -> CatalogueIndex:
        """An empty index of the same settings that fuses `collaborative` (a new model version)."""
        return CatalogueIndex(
            self.text_dim, self.external_dim, exact_below=self.item_vectors.exact_below, collaborative=collaborative
        )

    def _bundle_vector(self, bundle: Bundle) -> np.ndarray | None:
        members = [self.item_vectors.vector(m) for m in bundle.item_ids if m in self.item_vectors.slot_of]
        return self.fusion.bundle(bundle.bundle_id, members) if members else None

    # -- changes --------------------------------------------------------------------------

    def save(self, directory: Path, generation: tuple[int, int]) -> None:
        """Saves the vector indexes, stamped with the catalogue generation they reflect."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = directory / "generation.json"
        stamp.unlink(missing_ok=True)  # written last: a save that dies halfway is never trusted
        self.item_vectors.save(directory / "items")
        self.bundle_vectors.save(directory / "bundles")
        stamp.write_text(json.dumps({"generation": list(generation), "config": self._config()}))

    def restore(self, directory: Path, generation: tuple[int, int]) -> bool:
        """Loads saved vector indexes when they were saved at `generation` with this configuration."""
        try:
            stamp = json.loads((directory / "generation.json").read_text())
        except (OSError, ValueError):
            return False
        if stamp != {"generation": list(generation), "config": self._config()}:
            return False
        return self.item_vectors.restore(directory / "items") and self.bundle_vectors.restore(directory / "bundles")

    def _config(self) -> list[int | str]:
        return [*self.fusion.stamp(), self.item_vectors.exact_below]

    def load(
        self,
        items: list[tuple[Item, np.ndarray]],
        bundles: list[Bundle],
        statistics: BehaviourStatistics,
        *,
        vectors_restored: bool = False,
    ) -> None:
        """Everything from a catalogue snapshot; the vector indexes too unless they were restored
        (see `restore`) from a save of this very catalogue generation."""
        self.items = {item.item_id: item for item, _ in items}
        if not vectors_restored:
            vectors = [self.fusion.item(it, v) for it, v in items]
            self.item_vectors.build([it.item_id for it, _ in items], np.stack(vectors) if items else None)
        self.popularity = dict(statistics.popularity)
        self.event_pairs, self.bundle_pairs = defaultdict(dict), defaultdict(dict)
        for (a, b), w in statistics.item_pairs.items():
            self.event_pairs[a][b] = w
        for (a, b), w in statistics.bundle_pairs.items():
            self.bundle_pairs[a][b] = w
        self.bundles, self.bundles_of = {}, defaultdict(set)
        keys, bundle_vectors = [], []
        for bundle in bundles:
            self._link(bundle)
            vector = None if vectors_restored else self._bundle_vector(bundle)
            if vector is not None:
                keys.append(bundle.bundle_id)
                bundle_vectors.append(vector)
        if not vectors_restored:
            self.bundle_vectors.build(keys, np.stack(bundle_vectors) if keys else None)
        self._changed()

    def _link(self, bundle: Bundle) -> None:
        self.bundles[bundle.bundle_id] = bundle
        for member in bundle.item_ids:
            self.bundles_of[member].add(bundle.bundle_id)

    def _unlink(self, bundle_id: str) -> None:
        old = self.bundles.pop(bundle_id, None)
        for member in old.item_ids if old else ():
            self.bundles_of[member].discard(bundle_id)

    def upsert_item(self, item: Item, text_vector: np.ndarray) -> None:
        self.items[item.item_id] = item
        self.item_vectors.upsert(item.item_id, self.fusion.item(item, text_vector))
        self._set_item_columns(item)
        for bundle_id in self.bundles_of.get(item.item_id, ()):
            self.upsert_bundle(self.bundles[bundle_id])
        self.version += 1

    def remove_item(self, item_id: str) -> None:
        self.items.pop(item_id, None)
        self.item_vectors.remove(item_id)
        self.popularity.pop(item_id, None)
        for other in self.event_pairs.pop(item_id, {}):
            self.event_pairs.get(other, {}).pop(item_id, None)
        for bundle_id in list(self.bundles_of.pop(item_id, ())):
            bundle = self.bundles[bundle_id]
            members = tuple(m for m in bundle.item_ids if m != item_id)
            if members:
                self.upsert_bundle(Bundle(bundle_id, members, bundle.title))
            else:  # as the store does: a bundle of nothing is no bundle
                self.remove_bundle(bundle_id)
        self.version += 1

    def upsert_bundle(self, bundle: Bundle) -> None:
        self._unlink(bundle.bundle_id)
        self._link(bundle)
        vector = self._bundle_vector(bundle)
        if vector is None:
            self.bundle_vectors.remove(bundle.bundle_id)
        else:
            self.bundle_vectors.upsert(bundle.bundle_id, vector)
        self._bundles_dirty = True
        self.version += 1

    def remove_bundle(self, bundle_id: str) -> None:
        self._unlink(bundle_id)
        for other in self.bundle_pairs.pop(bundle_id, {}):
            self.bundle_pairs.get(other, {}).pop(bundle_id, None)
        self.bundle_vectors.remove(bundle_id)
        self._bundles_dirty = True
        self.version += 1

    def set_availability(self, item_id: str, in_stock: bool, stock_count: int | None) -> None:
        item = self.items[item_id]
        self.items[item_id] = replace(item, in_stock=in_stock, stock_count=stock_count)
        self._set_item_columns(self.items[item_id])
        self.version += 1

    def set_statistics(
        self,
        popularity: Mapping[str, float],
        item_partners: Mapping[str, Mapping[str, float]],
        bundle_partners: Mapping[str, Mapping[str, float]],
    ) -> None:
        """The current statistics of some items and bundles (live: stats_store.counts_of)."""
        for item_id, partners in item_partners.items():
            self.event_pairs[item_id] = dict(partners)
        for bundle_id, partners in bundle_partners.items():
            self.bundle_pairs[bundle_id] = dict(partners)
        for item_id, value in popularity.items():
            self.popularity[item_id] = value
            if item_id in self.item_vectors.slot_of:
                self._set_item_columns(self.items[item_id])
        self._bundles_dirty = True
        self.version += 1

    def add_statistics(self, counts: Increments) -> None:
        """Live increments (live.py) for what this index knows, as stats_store.add adds them;
        partner lists past twice KEEP_PER_ITEM keep their strongest (as the store prunes)."""
        for item_id, weight in counts.popularity.items():
            if item_id in self.items:
                self.popularity[item_id] = self.popularity.get(item_id, 0.0) + weight
                if item_id in self.item_vectors.slot_of:
                    self._set_item_columns(self.items[item_id])
        for pairs, known, table in (
            (counts.item_pairs, self.items, self.event_pairs),
            (counts.bundle_pairs, self.bundles, self.bundle_pairs),
        ):
            for (a, b), weight in pairs.items():
                if a in known and b in known:
                    partners = table[a]
                    partners[b] = partners.get(b, 0.0) + weight
                    if len(partners) > 2 * KEEP_PER_ITEM:
                        table[a] = dict(heapq.nlargest(KEEP_PER_ITEM, partners.items(), key=lambda kv: kv[1]))
        self._bundles_dirty = True
        self.version += 1

    def wants_compaction(self) -> bool:
        return self.item_vectors.wants_compaction or self.bundle_vectors.wants_compaction

    def _changed(self) -> None:
        """Everything changed (a load): every derived array is rebuilt on next use."""
        self.version += 1
        self._columns_layout = -1
        self._bundles_dirty = True

    # -- filters --------------------------------------------------------------------------
    # Per item slot: stock, price, category and brand codes, popularity, whether the model knows the
    # item (it has a collaborative part). Kept up to date item by item as the catalogue changes;
    # rebuilt whole only when the vector index renumbers its slots.

    def _set_item_columns(self, item: Item) -> None:
        if self._columns_layout != self.item_vectors.layout:
            return  # a full rebuild is due anyway
        slot = self.item_vectors.slot_of[item.item_id]
        if slot >= len(self._in_stock):
            grow = max(slot + 1, 2 * len(self._in_stock), 64) - len(self._in_stock)
            self._in_stock = np.concatenate([self._in_stock, np.zeros(grow, bool)])
            self._price = np.concatenate([self._price, np.full(grow, np.nan)])
            self._category = np.concatenate([self._category, np.full(grow, -1, np.int32)])
            self._brand = np.concatenate([self._brand, np.full(grow, -1, np.int32)])
            self._popularity_by_slot = np.concatenate([self._popularity_by_slot, np.full(grow, -1.0)])
            self._known_by_slot = np.concatenate([self._known_by_slot, np.zeros(grow, bool)])
        self._in_stock[slot] = item.in_stock
        self._price[slot] = np.nan if item.price is None else item.price
        self._category[slot] = self._code(self._category_names, self._category_codes, item.category)
        self._brand[slot] = self._code(self._brand_names, self._brand_codes, item.brand.casefold())
        self._popularity_by_slot[slot] = self.popularity.get(item.item_id, 0.0)
        self._known_by_slot[slot] = self.collaborative is not None and item.item_id in self.collaborative.items
        self._order_dirty = True

    @staticmethod
    def _code(names: list[str], codes: dict[str, int], name: str) -> int:
        if name not in codes:
            codes[name] = len(names)
            names.append(name)
        return codes[name]

    def _refresh_columns(self) -> None:
        """Brings the per-slot arrays up to date: whole after a renumbering, else only what a
        change left stale (the popularity order, the bundle membership arrays)."""
        slots = self.item_vectors.key_at
        n = len(slots)
        if self._columns_layout != self.item_vectors.layout:
            self._columns_layout = self.item_vectors.layout
            self._in_stock = np.zeros(n, bool)
            self._price = np.full(n, np.nan)
            self._category = np.full(n, -1, np.int32)
            self._brand = np.full(n, -1, np.int32)
            self._popularity_by_slot = np.full(n, -1.0)
            self._known_by_slot = np.zeros(n, bool)
            self._category_names, self._category_codes = [], {}
            self._brand_names, self._brand_codes = [], {}
            self._code_tables = {}
            for key in slots:
                if key is not None and key in self.items:
                    self._set_item_columns(self.items[key])
            self._order_dirty = self._bundles_dirty = True
        if self._order_dirty:
            popularity = self._popularity_by_slot[:n]
            self._popularity_order = np.lexsort((np.arange(n), -popularity))
            self._order_dirty = False
        if self._bundles_dirty:
            # Bundle membership as CSR over bundle slots → member item slots.
            lengths, members = [], []
            for key in self.bundle_vectors.key_at:
                ids = self.bundles[key].item_ids if key in self.bundles else ()
                slot_ids = [self.item_vectors.slot_of[m] for m in ids if m in self.item_vectors.slot_of]
                lengths.append(len(slot_ids))
                members.extend(slot_ids)
            self._bundle_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            self._bundle_members = np.asarray(members, np.int64)
            sizes = np.maximum(1, np.diff(self._bundle_indptr))
            pop = np.maximum(self._popularity_by_slot[:n], 0.0)
            self._bundle_popularity = self._per_bundle(pop, "sum") / sizes
            self._bundle_popularity_order = np.lexsort((np.arange(len(sizes)), -self._bundle_popularity))
            named = self.collaborative.bundles if self.collaborative else {}
            known = np.array([key in named for key in self.bundle_vectors.key_at], bool)
            self._bundle_known = known | (self._per_bundle(self._known_by_slot, "sum") > 0)
            self._bundles_dirty = False

    def collaborative_items(self) -> np.ndarray:
        """By item slot: whether the item has a collaborative part (the model knows it)."""
        self._refresh_columns()
        return self._known_by_slot[: len(self.item_vectors.key_at)]

    def collaborative_bundles(self) -> np.ndarray:
        """By bundle slot: whether the bundle has a collaborative part (the model knows it or a member)."""
        self._refresh_columns()
        return self._bundle_known

    def warm(self) -> None:
        """Builds the derived arrays now rather than on the first retrieval."""
        self._refresh_columns()

    def _per_bundle(self, values: np.ndarray, how: str) -> np.ndarray:
        """Per bundle slot: the sum of `values` over its members, or ("all") whether every
        member's value is true."""
        sizes = np.diff(self._bundle_indptr)
        sums = np.zeros(len(sizes))
        nonempty = sizes > 0
        if nonempty.any():
            gathered = values[self._bundle_members].astype(np.float64)
            sums[nonempty] = np.add.reduceat(gathered, self._bundle_indptr[:-1][nonempty])
        return sums == sizes if how == "all" else sums

    def popular_items(self, mask: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The `limit` most popular item slots in `mask` (ties: the lower slot), and their popularity."""
        self._refresh_columns()
        chosen = self._popularity_order[mask[self._popularity_order]][:limit]
        return chosen, self._popularity_by_slot[chosen]

    def popular_bundles(self, mask: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Bundle slots by the mean popularity of their members, as `popular_items`."""
        self._refresh_columns()
        chosen = self._bundle_popularity_order[mask[self._bundle_popularity_order]][:limit]
        return chosen, self._bundle_popularity[chosen]

    def relations(self) -> Relations:
        """The sparse relations by slot, for this version of the index."""
        if self._relations.version != self.version:
            self._relations = Relations(self)
        return self._relations
