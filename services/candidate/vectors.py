"""Nearest-neighbour search by inner product with FAISS, over L2-normalized vectors (inner product =
cosine) or, with `normalize_vectors=False`, over vectors stored as given (the catalogue's fused
vectors, no longer than 1, whose parts keep their own scale: see index.CatalogueIndex.fuse).

Keys (item or bundle ids) map to integer slots; FAISS stores vectors under their slot, so a
filter is a bitmap over slots applied *during* the search (faiss.IDSelectorBitmap): a filtered
search still returns k results whenever k allowed vectors exist.

Exact search (IndexFlatIP) below `exact_below` vectors, HNSW (efSearch 512) above it (see bench/retrieval.py
for the figures behind the default). HNSW cannot delete: a replaced or removed key leaves a
tombstone that the search skips; past a fifth of the slots the index `wants_compaction`, and the
candidate service rebuilds it in the background and swaps it in (service.py), never inside a write.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import faiss
import numpy as np


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.add.reduce(vectors * vectors, axis=-1, keepdims=True))  # np.linalg.norm's sum, less its overhead
    if norms.size == 1:  # one vector (a query): the same division, less the masked one's overhead
        return vectors / norms if norms.item() > 0 else np.zeros_like(vectors)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads, for the whole process."""
    faiss.omp_set_num_threads(threads)


class VectorIndex:
    def __init__(
        self,
        dim: int,
        *,
        exact_below: int = 100_000,
        hnsw_m: int = 32,
        ef_search: int = 512,
        normalize_vectors: bool = True,
    ) -> None:
        self.dim = dim
        self.normalize_vectors = normalize_vectors
        self.exact_below = exact_below
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.slot_of: dict[str, int] = {}
        self.key_at: list[str | None] = []
        self.alive = np.zeros(0, dtype=bool)  # by slot; grows with key_at
        self.searchable = np.zeros(0, dtype=bool)  # alive and not the zero vector
        self.layout = 0  # bumped whenever slots are renumbered (build, compaction, restore)
        self._use(self._new_index(0))
        self._tombstones = 0

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw else "exact"

    def _use(self, index: faiss.IndexIDMap2) -> None:
        self._index = index
        inner = faiss.downcast_index(index.index)
        self._hnsw = isinstance(inner, faiss.IndexHNSWFlat)
        # Vectors are added under their slot, in slot order: FAISS's ids are its positions, and the
        # exact index is searched directly (same search, less the id map's translation).
        ids = faiss.vector_to_array(index.id_map)
        self._flat = None if self._hnsw or not np.array_equal(ids, np.arange(len(ids))) else inner
        self._bitmaps = threading.local()

    def __len__(self) -> int:
        return len(self.slot_of)

    def _new_index(self, expected: int) -> faiss.IndexIDMap2:
        if expected >= self.exact_below:
            inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 80
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    def build(self, keys: list[str], vectors: np.ndarray) -> None:
        """Replaces the whole index (start-up, or compaction)."""
        self.layout += 1
        self.slot_of = {k: i for i, k in enumerate(keys)}
        self.key_at = list(keys)
        self.alive = np.ones(len(keys), dtype=bool)
        self.searchable = np.zeros(len(keys), dtype=bool)
        self._tombstones = 0
        self._use(self._new_index(len(keys)))
        if keys:
            stored = self._stored(vectors)
            self.searchable = np.linalg.norm(stored, axis=1) > 0
            self._index.add_with_ids(stored, np.arange(len(keys), dtype=np.int64))

    def upsert(self, key: str, vector: np.ndarray) -> None:
        self.remove(key)
        slot = len(self.key_at)
        self.key_at.append(key)
        self.slot_of[key] = slot
        if slot >= len(self.alive):
            grow = np.zeros(max(16, len(self.alive)), dtype=bool)
            self.alive = np.concatenate([self.alive, grow])
            self.searchable = np.concatenate([self.searchable, grow])
        stored = self._stored(vector.reshape(1, -1))
        if slot != self._index.ntotal:
            self._flat = None  # ids no longer positions (never seen: key_at and FAISS grow together)
        self.alive[slot] = True
        self.searchable[slot] = bool(np.linalg.norm(stored) > 0)
        self._index.add_with_ids(stored, np.array([slot], dtype=np.int64))

    def _stored(self, vectors: np.ndarray) -> np.ndarray:
        return normalize(vectors) if self.normalize_vectors else np.ascontiguousarray(vectors, dtype=np.float32)

    def remove(self, key: str) -> None:
        slot = self.slot_of.pop(key, None)
        if slot is None:
            return
        self.key_at[slot] = None
        self.alive[slot] = False
        self.searchable[slot] = False
        # A tombstone in both index kinds: the search bitmap skips it. (FAISS remove_ids on an
        # IndexIDMap2 rebuilds its reverse map, O(n) per removal.) The owner compacts (rebuilds) in
        # the background once `wants_compaction`; an HNSW build takes minutes at 100k vectors.
        self._tombstones += 1

    @property
    def wants_compaction(self) -> bool:
        """More than a fifth of the slots are tombstones (every upsert of a known key leaves one)."""
        return self._tombstones > max(16, 0.2 * len(self.slot_of))

    def save(self, path: Path) -> None:
        """Writes the index next to its slot map: `path`.faiss and `path`.json."""
        faiss.write_index(self._index, str(path.with_suffix(".faiss")))
        path.with_suffix(".json").write_text(json.dumps({"keys": self.key_at, "dim": self.dim}))

    def restore(self, path: Path) -> bool:
        """Reads what `save` wrote; False (and nothing changed) when it is missing or unreadable."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            index = faiss.read_index(str(path.with_suffix(".faiss")))
        except (OSError, ValueError, RuntimeError):
            return False
        if meta.get("dim") != self.dim or index.ntotal != len(meta["keys"]):  # tombstones included
            return False
        self._use(index)
        self.layout += 1
        self.key_at = meta["keys"]
        self.slot_of = {k: i for i, k in enumerate(self.key_at) if k is not None}
        self.alive = np.array([k is not None for k in self.key_at], dtype=bool)
        self.searchable = self.alive.copy()
        for key, slot in self.slot_of.items():
            self.searchable[slot] = bool(np.any(self.vector(key)))
        self._tombstones = len(self.key_at) - len(self.slot_of)
        return True

    def vector(self, key: str) -> np.ndarray:
        return self._index.reconstruct(self.slot_of[key])

    def vectors(self, keys: list[str]) -> np.ndarray:
        """The stored vectors of `keys`, one row each."""
        return self._index.reconstruct_batch(np.fromiter((self.slot_of[k] for k in keys), np.int64, len(keys)))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The k nearest keys whose slot is True in `allowed` (a bool array over slots)."""
        slots, scores = self.search_slots(query, k, allowed)
        return [(self.key_at[s], float(d)) for s, d in zip(slots.tolist(), scores.tolist(), strict=True)]  # type: ignore[misc]

    def search_slots(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As `search`, as arrays: the slots (int64) and their scores, best first."""
        none = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if not self.slot_of or k <= 0:
            return none
        searchable = self.searchable[: len(self.key_at)]
        mask = searchable if allowed is None else searchable & allowed[: len(searchable)]
        k = min(k, int(np.count_nonzero(mask)))
        if k == 0:
            return none
        query = normalize(query.reshape(1, -1))
        if self._flat is not None:
            scores, slots = self._search_flat(query, k, mask)
        else:
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            if self._hnsw:
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k))
            else:
                params = faiss.SearchParameters(sel=selector)
            scores, slots = self._index.search(query, k, params=params)
        found = slots[0] >= 0
        slots, scores = slots[0][found], scores[0][found]
        if len(slots) < k:  # HNSW under a selective filter can miss: score the allowed vectors exactly
            allowed_slots = np.flatnonzero(mask)
            exact = self._index.reconstruct_batch(allowed_slots) @ query[0]
            best = np.argsort(-exact, kind="stable")[:k]
            slots, scores = allowed_slots[best], exact[best]
        return slots, scores

    def _search_flat(self, query: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact index's search of one query, with the filter's bitmap written into a buffer
        that one selector and one SearchParameters keep pointing at (made once per thread and
        size, not per search: building them costs more than the search over a few hundred vectors)."""
        reused = self._bitmaps
        if getattr(reused, "size", -1) != len(mask):
            reused.bits = np.zeros((len(mask) + 7) // 8, np.uint8)
            reused.selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(reused.bits))
            reused.params = faiss.SearchParameters(sel=reused.selector)
            reused.size = len(mask)
        reused.bits[:] = np.packbits(mask, bitorder="little")
        scores, slots = np.empty((1, k), np.float32), np.empty((1, k), np.int64)
        self._flat.search_c(1, faiss.swig_ptr(query), k, faiss.swig_ptr(scores), faiss.swig_ptr(slots), reused.params)
        return scores, slots
