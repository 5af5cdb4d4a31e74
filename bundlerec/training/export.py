"""ONNX export of a trained ranker, optional int8 quantization, and the versioned model directory.

The exported graph holds the item and bundle tables precomputed (learned id rows plus projected
text, bundle vectors from their members), so a request pays only for its own sequence and
candidates. Batch, sequence length, candidate count, bundle size and extra-text rows are dynamic.
Beside it go the same candidate vectors as arrays (COLLABORATIVE_FILE), for two-tower retrieval.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from bundlerec.ranking.artifact import (
    COLLABORATIVE_FILE,
    INPUTS,
    INT8_FILE,
    ONNX_FILE,
    OUTPUTS,
    WEIGHTS_FILE,
    CollaborativeVectors,
    ModelManifest,
    sha256_of,
)
from bundlerec.ranking.features import FIRST_ID
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.model import BundleRanker, ModelConfig
from bundlerec.training.train import TrainedModel


class ServingRanker(nn.Module):
    """The serving signature around a trained model, with its tables frozen."""

    def __init__(self, model: BundleRanker) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            projected = model.projected_text()
            self.register_buffer("projected", projected)
            self.register_buffer("bundles", model.bundle_table(projected))

    def forward(
        self, sequence: Tensor, cand_items: Tensor, cand_bundles: Tensor, extra_text: Tensor
    ) -> tuple[Tensor, Tensor]:
        model = self.model
        extra = extra_text if model.config.text_dim else None
        encoded = model.encode(sequence, self.projected, self.bundles, extra)
        user = model.user_vectors(encoded.states[:, -1])
        candidates = model.sets(cand_items, cand_bundles, self.projected, extra)
        return model.with_wide(model.score(user, candidates, encoded), sequence, cand_items, cand_bundles), user


def example_inputs(model: BundleRanker) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two users, three candidates of up to two items (so the traced graph pools sets), one extra row."""
    length = model.config.max_sequence
    sequence = torch.zeros(2, 5, length, dtype=torch.long)
    sequence[:, 0, -2:] = 2
    sequence[:, 2, -2:] = 1
    cand_items = torch.tensor([[[2, 0], [2, 3], [1, 0]], [[3, 2], [2, 0], [2, 0]]])
    cand_bundles = torch.zeros(2, 3, dtype=torch.long)
    extra_text = torch.zeros(1, max(model.config.text_dim, 1))
    return sequence, cand_items.clamp(max=model.config.num_item_rows - 1), cand_bundles, extra_text


def export_onnx(model: BundleRanker, path: Path, opset: int = 17) -> None:
    serving = ServingRanker(model)
    dynamic = {
        "sequence": {0: "batch", 2: "length"},
        "cand_items": {0: "batch", 1: "candidates", 2: "members"},
        "cand_bundles": {0: "batch", 1: "candidates"},
        "extra_text": {0: "extra"},
        "scores": {0: "batch", 1: "candidates"},
        "user_vector": {0: "batch"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the single-item shortcut in BundleRanker.sets became a constant: the
        # example has sets of two, so the general pooling path is the one traced.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            serving,
            example_inputs(model),
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def collaborative_vectors(model: BundleRanker, vocabulary: Vocabulary) -> CollaborativeVectors:
    """Every known item and bundle as the model's two-tower head sees a candidate (eval mode): an
    item is a set of one, a bundle its table row; padding and "unknown" rows are left out."""
    model.eval()
    with torch.no_grad():
        projected = model.projected_text()
        items = model.item_table(projected)[FIRST_ID:]
        bundles = model.bundle_table(projected)[FIRST_ID:]
    return CollaborativeVectors(list(vocabulary.item_ids), items.numpy(), list(vocabulary.bundle_ids), bundles.numpy())


def quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def write_model_dir(
    trained: TrainedModel,
    models_dir: Path,
    *,
    dataset_name: str,
    text_encoder: dict | None,
    int8: bool = False,
    curves: bool = True,
    data_until: int = 0,
    lineage_since: str = "",
) -> Path:
    """Writes a new version under `models_dir` and returns its directory. Everything goes into a
    hidden temporary directory that is renamed into place, so a watcher never sees half a model."""
    now = dt.datetime.now(dt.UTC)
    version = now.strftime("%Y%m%d-%H%M%S")
    models_dir.mkdir(parents=True, exist_ok=True)
    while (models_dir / version).exists():
        version = _next(version)
    staging = models_dir / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model = trained.model.cpu().eval()
        export_onnx(model, staging / ONNX_FILE)
        if int8:
            quantize_int8(staging / ONNX_FILE, staging / INT8_FILE)
        torch.save(model.state_dict(), staging / WEIGHTS_FILE)
        trained.data.vocabulary.save(staging)
        collaborative_vectors(model, trained.data.vocabulary).save(staging / COLLABORATIVE_FILE)
        if curves:
            from bundlerec.training.curves import plot_curves

            plot_curves(trained, staging)
        ModelManifest(
            version=version,
            created_at=now.isoformat(),
            dataset=dataset_name,
            task=trained.data.task,
            clock=trained.data.clock,
            model=model.config.to_dict(),
            training=trained.settings.to_dict(),
            metrics=trained.validation,
            text_encoder=text_encoder,
            onnx_sha256=sha256_of(staging / ONNX_FILE),
            has_int8=int8,
            int8_sha256=sha256_of(staging / INT8_FILE) if int8 else "",
            collaborative_sha256=sha256_of(staging / COLLABORATIVE_FILE),
            epochs=[json.loads(json.dumps(vars(r))) for r in trained.history],
            data_until=data_until,
            lineage_since=lineage_since or now.isoformat(),
        ).write(staging)
        staging.rename(models_dir / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return models_dir / version


def _next(version: str) -> str:
    stem, _, n = version.partition(".")
    return f"{stem}.{int(n or 0) + 1:03d}"  # zero-padded, so names keep sorting by creation


def load_weights(directory: Path) -> tuple[BundleRanker, Vocabulary, ModelManifest]:
    """A model directory's PyTorch weights (a plain state dict, loaded with weights_only)."""
    manifest = ModelManifest.read(directory)
    vocabulary = Vocabulary.load(directory)
    config = ModelConfig(**manifest.model)
    state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    state.setdefault("wide_member_weight", torch.ones(()))  # versions written before the factor existed
    model = BundleRanker(config, state["item_text"], state["bundle_members"])
    model.load_state_dict(state)
    return model.eval(), vocabulary, manifest
