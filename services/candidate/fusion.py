"""How the catalogue's item and bundle vectors are fused from their parts.

    item vector = (text ⊕ external ⊕ collaborative) / √(number of parts)

The text embedding and the external vector (an image embedding computed upstream...) are unit
length; the collaborative part is the ranker model's candidate vector, scaled to at most 1 with
its inner products kept (collaborative.py). A missing part is zeros: an item without any text,
without an external vector, or that the model does not know (a new item: found through its text,
which is how cold start works). The external part is there when the catalogue enables external
vectors, the collaborative part when a model provides them.

Vectors are stored as fused, not normalized again, so a query with one part scores exactly that
part, whatever the item's other parts: a text query the cosine of the texts, the ranker's user
vector in the collaborative part the model's own two-tower score.
"""

from __future__ import annotations

import numpy as np

from bundlerec.candidate.collaborative import Collaborative
from bundlerec.candidate.model import Item
from bundlerec.candidate.vectors import normalize

FUSION = 2  # the layout version: part of a saved index's stamp, so a saved index of another is rebuilt


class Fusion:
    def __init__(self, text_dim: int, external_dim: int = 0, collaborative: Collaborative | None = None) -> None:
        self.text_dim = text_dim
        self.external_dim = external_dim
        self.collaborative = collaborative
        self.collaborative_dim = collaborative.dim if collaborative else 0
        self.parts = [text_dim] + [d for d in (external_dim, self.collaborative_dim) if d]
        self.dim = sum(self.parts)
        self._scale = np.float32(1 / np.sqrt(len(self.parts)))

    def stamp(self) -> list[int | str]:
        """What a saved index must have been fused with to be reused."""
        model = self.collaborative.version if self.collaborative else ""
        return [self.text_dim, self.external_dim, FUSION, model]

    def fuse(
        self,
        text_vector: np.ndarray,
        external: tuple[float, ...] = (),
        *,
        has_text: bool = True,
        collaborative: np.ndarray | None = None,
    ) -> np.ndarray:
        """An item without any text (ids only, as in some research datasets) gets no text part: the
        encoder's embedding of "" is the same for all of them and would make them all look alike."""
        text = np.asarray(text_vector, np.float32)
        parts = [normalize(text) if has_text else np.zeros_like(text)]
        if self.external_dim:
            ext = np.zeros(self.external_dim, np.float32) if not external else np.asarray(external, np.float32)
            parts.append(normalize(ext))
        if self.collaborative_dim:
            zeros = np.zeros(self.collaborative_dim, np.float32)
            parts.append(zeros if collaborative is None else np.asarray(collaborative, np.float32))
        return np.concatenate(parts) * self._scale

    def item(self, item: Item, text_vector: np.ndarray) -> np.ndarray:
        known = self.collaborative.items.get(item.item_id) if self.collaborative else None
        return self.fuse(text_vector, item.external_vector, has_text=has_text(item), collaborative=known)

    def bundle(self, bundle_id: str, members: list[np.ndarray]) -> np.ndarray:
        """From the members' fused vectors, part by part: text and external the unit-length mean of
        theirs; collaborative the model's own vector of the bundle when it knows it, else the mean of
        the members' (the model's attention pooling, with equal weights)."""
        parts = np.split(np.mean(members, axis=0) / self._scale, np.cumsum(self.parts)[:-1])
        if not self.collaborative:
            return np.concatenate([normalize(p) for p in parts]) * self._scale
        known = self.collaborative.bundles.get(bundle_id)
        fused = [normalize(p) for p in parts[:-1]] + [parts[-1] if known is None else known]
        return np.concatenate(fused).astype(np.float32) * self._scale

    def collaborative_query(self, user_vector: tuple[float, ...]) -> np.ndarray:
        """The ranker's user vector in the collaborative part, zeros elsewhere: two-tower retrieval."""
        query = np.zeros(self.dim, np.float32)
        query[self.dim - self.collaborative_dim :] = user_vector
        return query


def has_text(item: Item) -> bool:
    return bool(item.title.strip() or item.category.strip() or item.brand.strip())
