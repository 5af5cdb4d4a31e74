"""The ranker's collaborative vectors, which the candidate service fuses into its item vectors.

They come from the models directory the ranker serves from (bundlerec.ranking.artifact): at start
the serving version (bundlerec.ranking.promotion: the pointer's, or the newest), else the newest
that loads (an older one rather than none, as the ranker does), then each version promoted or
rolled back to. A version that does not load (checksum, unreadable file) is logged and
skipped until its files change, and whatever was in use stays. A version written before the
vectors were exported has none: then nothing is fused, since another version's vectors would not
match the user vectors the ranker now returns.

Vectors are divided by the largest norm among the version's item and bundle vectors, so that none
is longer than 1 while inner products keep the model's order: a search with the ranker's user
vector over them is the model's two-tower retrieval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundlerec.ranking.artifact import (
    COLLABORATIVE_FILE,
    CollaborativeVectors,
    ModelManifest,
    fingerprint,
)
from bundlerec.ranking.promotion import servable_versions, serving_version

log = logging.getLogger("bundlerec.candidate")


@dataclass(frozen=True)
class Collaborative:
    """One model version's candidate vectors, scaled as above."""

    version: str  # the model version and a prefix of the file's checksum: the persisted index's stamp
    dim: int
    items: dict[str, np.ndarray]
    bundles: dict[str, np.ndarray]

    @classmethod
    def from_vectors(cls, version: str, vectors: CollaborativeVectors) -> Collaborative:
        norms = [np.linalg.norm(m, axis=1).max() for m in (vectors.items, vectors.bundles) if len(m)]
        scale = float(max(norms, default=0.0)) or 1.0
        items, bundles = vectors.items / scale, vectors.bundles / scale
        return cls(
            version,
            int(vectors.items.shape[1]),
            dict(zip(vectors.item_ids, items, strict=True)),
            dict(zip(vectors.bundle_ids, bundles, strict=True)),
        )


def load_collaborative(version_dir: Path) -> Collaborative | None:
    """A version's vectors; None when it has none. Raises when the version does not load."""
    manifest = ModelManifest.read(version_dir)  # checks every file against its checksum
    if not manifest.collaborative_sha256:
        return None
    vectors = CollaborativeVectors.load(version_dir / COLLABORATIVE_FILE, manifest.vector_dim)
    return Collaborative.from_vectors(f"{manifest.version}:{manifest.collaborative_sha256[:16]}", vectors)


class ModelWatcher:
    """Which version's vectors to fuse. Blocking (file reads): call it from a worker thread."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.version = ""  # the version in use ("" before any)
        self._tried: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self._followed = ""  # the version the last poll was told to follow

    def initial(self) -> Collaborative | None:
        """At start: the vectors of the serving version (promotion.py), else of the newest that loads
        and the gate did not reject; None without one."""
        serving = serving_version(self.models_dir)
        self._followed = serving
        versions = [v for v in reversed(servable_versions(self.models_dir)) if v != serving]
        for version in ([serving] if serving else []) + versions:
            loaded, vectors = self._try(version)
            if loaded:
                return vectors
        return None

    def poll(self) -> tuple[bool, Collaborative | None]:
        """(True, the new version's vectors) when the serving version changed and loads; (False, None)
        otherwise."""
        serving = serving_version(self.models_dir)
        moved, self._followed = serving != self._followed, serving
        if not serving or serving == self.version:
            return False, None
        if not moved and self._tried.get(serving) == fingerprint(self.models_dir / serving):
            return False, None  # tried, and neither its files nor the pointer changed since
        return self._try(serving)

    def _try(self, version: str) -> tuple[bool, Collaborative | None]:
        directory = self.models_dir / version
        self._tried[version] = fingerprint(directory)
        try:
            vectors = load_collaborative(directory)
        except Exception as error:  # a bad file of any kind skips the version, never stops the service
            reason = str(error).replace(str(self.models_dir), "MODELS_DIR")
            log.warning("model version not used", extra={"fields": {"version": version, "reason": reason}})
            return False, None
        self.version = version
        if vectors is None:
            log.warning("model version has no collaborative vectors", extra={"fields": {"version": version}})
        else:
            log.info(
                "fusing collaborative vectors",
                extra={"fields": {"version": version, "items": len(vectors.items), "bundles": len(vectors.bundles)}},
            )
        return True, vectors
