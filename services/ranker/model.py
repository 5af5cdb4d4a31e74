"""Loading one model version for serving: manifest, id maps and an onnxruntime session, warmed up.

Everything a request needs from a version hangs off one immutable `LoadedModel`, so a request that
picked a model keeps using all of it (vocabulary and session together) even if another version is
swapped in meanwhile. No torch here: serving runs the ONNX export only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from bundlerec.ranking.artifact import INPUTS, INT8_FILE, ONNX_FILE, ModelArtifactError, ModelManifest
from bundlerec.ranking.artifact import OUTPUTS as ARTIFACT_OUTPUTS
from bundlerec.ranking.vocabulary import Vocabulary

log = logging.getLogger("bundlerec.ranker")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TEXT_INPUT = "extra_text"  # present only in models trained with text
REQUIRED_INPUTS = set(INPUTS) - {TEXT_INPUT}
OUTPUTS = list(ARTIFACT_OUTPUTS)
# what serving reads of the manifest's model settings
MODEL_KEYS = {"num_item_rows", "num_bundle_rows", "causal", "dim", "max_sequence", "max_members", "text_dim"}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model version ready to serve. Compared by identity: two loads are two models."""

    version: str
    directory: Path
    manifest: ModelManifest
    vocabulary: Vocabulary
    session: ort.InferenceSession
    provider: str  # the execution provider actually in use
    quantized: bool
    feeds_text: bool  # the graph has the extra_text input (trained with text)
    item_index: dict[str, int]  # known item id → row (the vocabulary's, as one dict for the hot path)
    bundle_index: dict[str, int]  # known bundle id → row (likewise; never the empty id)

    @property
    def num_item_rows(self) -> int:
        return int(self.manifest.model["num_item_rows"])

    @property
    def text_dim(self) -> int:
        return self.manifest.text_dim

    @property
    def causal(self) -> bool:
        return bool(self.manifest.model["causal"])

    def run(
        self, sequence: np.ndarray, cand_items: np.ndarray, cand_bundles: np.ndarray, extra_text: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One session run: scores [B, N] and user vectors [B, d]. Blocks: call it off the event loop."""
        feeds = {"sequence": sequence, "cand_items": cand_items, "cand_bundles": cand_bundles}
        if self.feeds_text:
            feeds[TEXT_INPUT] = extra_text if extra_text is not None else np.zeros((1, self.text_dim), np.float32)
        scores, user = self.session.run(OUTPUTS, feeds)
        return scores, user


def choose_providers(setting: Literal["auto", "cpu"]) -> list[str]:
    if setting == "auto" and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def load_model(
    directory: Path,
    *,
    providers: Literal["auto", "cpu"] = "auto",
    intra_op_threads: int = 0,
    use_int8: bool = False,
    warmup_batch: int = 1,
) -> LoadedModel:
    """Loads `directory` (one version of MODELS_DIR) and warms it up. Raises ModelArtifactError
    when the directory is not a complete, consistent, runnable model."""
    started = time.perf_counter()
    manifest = ModelManifest.read(directory)  # checks the ONNX file against the manifest's checksum
    try:
        vocabulary = Vocabulary.load(directory)
    except (OSError, ValueError, KeyError) as error:
        raise ModelArtifactError(f"{directory}: unreadable vocabulary ({type(error).__name__})") from error
    missing = MODEL_KEYS - set(manifest.model)
    if missing:
        raise ModelArtifactError(f"{directory}: the manifest's model settings lack {sorted(missing)}")
    if vocabulary.num_item_rows != manifest.model["num_item_rows"]:
        raise ModelArtifactError(f"{directory}: the vocabulary does not match the manifest's item count")
    if vocabulary.num_bundle_rows != manifest.model["num_bundle_rows"]:
        raise ModelArtifactError(f"{directory}: the vocabulary does not match the manifest's bundle count")
    quantized = use_int8 and manifest.has_int8 and (directory / INT8_FILE).is_file()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # Idle intra-op threads would otherwise spin after every run, taking CPU from the gRPC event loop.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(directory / (INT8_FILE if quantized else ONNX_FILE)), options, providers=choose_providers(providers)
        )
    except Exception as error:  # onnxruntime raises its own types for unreadable or invalid graphs
        raise ModelArtifactError(f"{directory}: onnxruntime cannot load the model ({type(error).__name__})") from error
    inputs = {i.name for i in session.get_inputs()}
    if not (REQUIRED_INPUTS <= inputs and set(OUTPUTS) <= {o.name for o in session.get_outputs()}):
        raise ModelArtifactError(f"{directory}: the graph's inputs or outputs are not the ranker's")
    model = LoadedModel(
        version=directory.name,
        directory=directory,
        manifest=manifest,
        vocabulary=vocabulary,
        session=session,
        provider=session.get_providers()[0],
        quantized=quantized,
        feeds_text=TEXT_INPUT in inputs,
        item_index={item_id: vocabulary.item(item_id) for item_id in vocabulary.item_ids},
        bundle_index={bundle_id: vocabulary.bundle(bundle_id) for bundle_id in vocabulary.bundle_ids if bundle_id},
    )
    try:
        warm_up(model, warmup_batch)
    except ModelArtifactError:
        raise
    except Exception as error:  # loads, but cannot run the ranker's inputs
        raise ModelArtifactError(f"{directory}: the model fails on a warm-up run ({type(error).__name__})") from error
    log.info(
        "model loaded",
        extra={
            "fields": {
                "version": model.version,
                "execution_provider": model.provider,
                "quantized": quantized,
                "seconds": round(time.perf_counter() - started, 3),
            }
        },
    )
    return model


def warm_up(model: LoadedModel, batch: int, runs: int = 3) -> None:
    """Runs realistic shapes (a full sequence, 200 candidates of a few items) so the first real
    requests do not pay for allocations and kernel selection; a model whose output is not finite
    even here is refused."""
    rows = model.num_item_rows
    length = model.manifest.max_sequence
    members = min(4, model.manifest.max_members)
    for size in sorted({1, max(1, batch)}):
        sequence = np.zeros((size, 5, length), np.int64)
        sequence[:, 0] = 2 + np.arange(length) % max(rows - 2, 1)
        sequence[:, 2] = 1
        sequence[:, 3] = np.arange(length)[::-1]
        cand_items = (2 + np.arange(size * 200 * members) % max(rows - 2, 1)).reshape(size, 200, members)
        cand_bundles = np.zeros((size, 200), np.int64)
        for _ in range(runs if size == 1 else 1):
            scores, user = model.run(sequence, cand_items.astype(np.int64), cand_bundles, None)
            if not (np.isfinite(scores).all() and np.isfinite(user).all()):
                raise ModelArtifactError(f"{model.directory}: the model's scores are not finite")
