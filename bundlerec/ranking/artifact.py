"""A trained model's versioned directory, as training writes it and the ranker service loads it.

    MODELS_DIR/<version>/
        model.onnx            the ranker (features.py describes its inputs)
        model.int8.onnx       optional: dynamically quantized for CPU serving
        weights.pt            the PyTorch state dict (evaluation and fine-tuning; never loaded to serve)
        vocabulary.json, bundle_members.npy   id maps (vocabulary.py)
        collaborative.npz     the two-tower candidate vectors (float32) of every item and bundle the
                              vocabulary knows: item_ids [n], items [n, d], bundle_ids [m], bundles [m, d],
                              d = the model's dim; <user_vector, vector> is the model's two-tower score
                              (the candidate service fuses them into its item and bundle vectors)
        training_curves.png   loss and validation metric per epoch
        manifest.json         written last: a directory without it is incomplete and never loaded

Versions are named so that sorting them by name sorts them by creation time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
WEIGHTS_FILE = "weights.pt"
CURVES_FILE = "training_curves.png"
COLLABORATIVE_FILE = "collaborative.npz"
INPUTS = ("sequence", "cand_items", "cand_bundles", "extra_text")
OUTPUTS = ("scores", "user_vector")


class ModelArtifactError(RuntimeError):
    """The directory is not a complete, loadable model."""


@dataclass
class ModelManifest:
    version: str
    created_at: str  # ISO 8601, UTC
    dataset: str
    task: str
    clock: bool  # timestamps are real times (age buckets are meaningful)
    model: dict[str, Any]  # training.model.ModelConfig
    training: dict[str, Any]  # training.train.TrainSettings
    metrics: dict[str, float]  # validation metrics of the selected epoch
    text_encoder: dict[str, Any] | None  # the encoder manifest's model name and dimension, None without text
    onnx_sha256: str
    has_int8: bool = False
    int8_sha256: str = ""
    collaborative_sha256: str = ""  # empty: a version written before the collaborative vectors were exported
    epochs: list[dict[str, float]] = field(default_factory=list)
    # the start of the events it never trained on (unix seconds; 0: unknown): a warm start from it
    # trains on the shoppers active since (bundlerec retrain)
    data_until: int = 0
    # when the full training this version descends from ran (ISO 8601; "" = created_at): a warm
    # start carries weights forward, so a version is as old as its lineage (the maximum model age)
    lineage_since: str = ""

    @property
    def lineage_started(self) -> str:
        return self.lineage_since or self.created_at

    def lineage_age_days(self, now: dt.datetime) -> float:
        """Days since the full training its weights descend from (a warm start carries them on)."""
        return (now - dt.datetime.fromisoformat(self.lineage_started)).total_seconds() / 86_400

    @property
    def max_sequence(self) -> int:
        return int(self.model["max_sequence"])

    @property
    def max_members(self) -> int:
        return int(self.model["max_members"])

    @property
    def text_dim(self) -> int:
        return int(self.model["text_dim"])

    @property
    def vector_dim(self) -> int:
        return int(self.model["dim"])

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: Path) -> ModelManifest:
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ModelArtifactError(f"{directory}: no {MANIFEST_FILE} (not a model, or still being written)")
        try:
            manifest = cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as error:
            raise ModelArtifactError(f"{path}: unreadable manifest ({error})") from error
        if sha256_of(directory / ONNX_FILE) != manifest.onnx_sha256:
            raise ModelArtifactError(f"{directory / ONNX_FILE}: does not match the manifest's checksum")
        if manifest.has_int8 and sha256_of(directory / INT8_FILE) != manifest.int8_sha256:
            raise ModelArtifactError(f"{directory / INT8_FILE}: does not match the manifest's checksum")
        collaborative = directory / COLLABORATIVE_FILE
        if manifest.collaborative_sha256 and sha256_of(collaborative) != manifest.collaborative_sha256:
            raise ModelArtifactError(f"{collaborative}: does not match the manifest's checksum")
        return manifest


@dataclass(frozen=True)
class CollaborativeVectors:
    """What COLLABORATIVE_FILE holds: the model's candidate vectors of its known items and bundles."""

    item_ids: list[str]
    items: np.ndarray  # [len(item_ids), d] float32
    bundle_ids: list[str]
    bundles: np.ndarray  # [len(bundle_ids), d] float32

    def save(self, path: Path) -> None:
        with path.open("wb") as f:  # a file object: np.savez would append ".npz" to a name lacking it
            np.savez(
                f,
                item_ids=np.asarray(self.item_ids, dtype=str),
                items=np.asarray(self.items, dtype=np.float32),
                bundle_ids=np.asarray(self.bundle_ids, dtype=str),
                bundles=np.asarray(self.bundles, dtype=np.float32),
            )

    @classmethod
    def load(cls, path: Path, dim: int) -> CollaborativeVectors:
        """Reads and checks the file (no pickles); `dim` is the manifest's vector_dim."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in ("item_ids", "items", "bundle_ids", "bundles")}
        except (OSError, ValueError, KeyError) as error:
            raise ModelArtifactError(f"{path}: unreadable collaborative vectors ({error})") from error
        for ids, vectors in (("item_ids", "items"), ("bundle_ids", "bundles")):
            shape = arrays[vectors].shape
            if shape != (len(arrays[ids]), dim) or not np.isfinite(arrays[vectors]).all():
                raise ModelArtifactError(f"{path}: {vectors} must be finite, one row of {dim} per id (got {shape})")
        return cls(
            [str(i) for i in arrays["item_ids"]],
            arrays["items"].astype(np.float32),
            [str(b) for b in arrays["bundle_ids"]],
            arrays["bundles"].astype(np.float32),
        )


def sha256_of(path: Path) -> str:
    if not path.is_file():
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of a version's files: changes when someone fixes them."""
    try:
        stats = [(path.name, path.stat()) for path in directory.iterdir()]
    except OSError:
        return ()
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats))


def model_versions(models_dir: Path) -> list[str]:
    """Complete versions in `models_dir`, oldest first."""
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if (p / MANIFEST_FILE).is_file() and not p.name.startswith("."))
