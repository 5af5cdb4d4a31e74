"""Filters as boolean masks over the index's slots, applied by FAISS during the search (items) or
over bundle slots: the part of CatalogueIndex (index.py) that reads its per-slot columns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bundlerec import categories
from bundlerec.candidate.model import Filter

if TYPE_CHECKING:
    from bundlerec.candidate.vectors import VectorIndex


class FilterMasks:
    """Mixed into CatalogueIndex, which keeps the columns this reads up to date (index.py)."""

    item_vectors: VectorIndex
    bundle_vectors: VectorIndex
    version: int
    _in_stock: np.ndarray
    _price: np.ndarray
    _category: np.ndarray
    _brand: np.ndarray
    _category_names: list[str]
    _brand_names: list[str]
    _code_tables: dict[Any, np.ndarray]
    _bundles_in_stock: tuple[int, np.ndarray]

    def _refresh_columns(self) -> None:
        raise NotImplementedError

    def _per_bundle(self, values: np.ndarray, how: str) -> np.ndarray:
        raise NotImplementedError

    def item_mask(self, f: Filter) -> np.ndarray:
        self._refresh_columns()
        n = len(self.item_vectors.key_at)
        mask = self.item_vectors.alive[:n].copy()
        if f.in_stock_only:
            mask &= self._in_stock[:n]
        with np.errstate(invalid="ignore"):
            if f.min_price is not None:
                mask &= self._price[:n] >= f.min_price
            if f.max_price is not None:
                mask &= self._price[:n] <= f.max_price
        if f.include_categories or f.exclude_categories:
            categories = self._category[:n]
            mask &= self._code_mask(categories, f.include_categories, f.exclude_categories, path=True)
        if f.include_brands or f.exclude_brands:
            mask &= self._code_mask(self._brand[:n], f.include_brands, f.exclude_brands, path=False)
        for item_id in f.exclude_item_ids:
            slot = self.item_vectors.slot_of.get(item_id)
            if slot is not None:
                mask[slot] = False
        return mask

    def _code_mask(self, codes: np.ndarray, include: tuple[str, ...], exclude: tuple[str, ...], *, path: bool):
        def matching(wanted: tuple[str, ...]) -> np.ndarray:
            return self._code_table(wanted, path=path)[codes]

        mask = np.ones(len(codes), bool)
        if include:
            mask &= matching(include)
        if exclude:
            mask &= ~matching(exclude)
        return mask

    def _code_table(self, wanted: tuple[str, ...], *, path: bool) -> np.ndarray:
        """By category (path) or brand code: whether it matches `wanted`, and False last, for code -1
        (no item). Names only grow between renumberings: their count keys the table."""
        names = self._category_names if path else self._brand_names
        key = (path, wanted, len(names))
        table = self._code_tables.get(key)
        if table is None:
            if path:
                hits = [c for c, name in enumerate(names) if any(categories.within(name, w) for w in wanted)]
            else:
                folded = {w.casefold() for w in wanted}
                hits = [c for c, name in enumerate(names) if name in folded]
            table = np.zeros(len(names) + 1, bool)
            table[hits] = True
            if len(self._code_tables) >= 1000:  # filters come from requests: keep the most recent ones
                self._code_tables.clear()
            self._code_tables[key] = table
        return table

    def bundle_mask(self, f: Filter) -> np.ndarray:
        """A bundle passes when its members pass: in stock and price range, every member;
        include categories/brands, at least one member; exclude, no member. (A budget for the
        whole bundle is the gateway's business.)"""
        self._refresh_columns()
        n = len(self.bundle_vectors.key_at)
        mask = self.bundle_vectors.alive[:n].copy()
        if f.in_stock_only:
            mask &= self._bundles_all_in_stock()
        plain = Filter()
        if f.include_categories or f.include_brands:
            includes = Filter(include_categories=f.include_categories, include_brands=f.include_brands)
            mask &= self._per_bundle(self.item_mask(includes), "sum") > 0
        if f.exclude_categories or f.exclude_brands:
            excludes = Filter(exclude_categories=f.exclude_categories, exclude_brands=f.exclude_brands)
            mask &= self._per_bundle(self.item_mask(excludes) | ~self.item_mask(plain), "all")
        if f.min_price is not None or f.max_price is not None:
            priced = self.item_mask(Filter(min_price=f.min_price, max_price=f.max_price))
            mask &= self._per_bundle(priced, "all")
        for bundle_id in f.exclude_bundle_ids:
            slot = self.bundle_vectors.slot_of.get(bundle_id)
            if slot is not None:
                mask[slot] = False
        return mask

    def _bundles_all_in_stock(self) -> np.ndarray:
        version, in_stock = self._bundles_in_stock
        if version != self.version:
            in_stock = self._per_bundle(self._in_stock, "all")
            self._bundles_in_stock = (self.version, in_stock)
        return in_stock
