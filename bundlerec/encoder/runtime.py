"""Serve the exported text encoder with onnxruntime and tokenizers only (no torch, no transformers).

The graph already pools and normalizes (see bundlerec.encoder.export), so encoding is: tokenize,
pad each batch to its longest row, run once. Texts are batched in order of token length, as
sentence-transformers does, so that short titles do not pay for a long neighbour's padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from bundlerec.encoder.artifact import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    EncoderManifest,
    sha256_of,
)

EXPORT_HINT = "run `bundlerec encoder export` to create it"


class EncoderArtifactError(RuntimeError):
    """The encoder directory is missing, incomplete or not what the manifest says."""


def item_text(title: str, category: str, brand: str) -> str:
    """The text embedded for an item: "title | category path | brand", leaving out empty parts.

    Title first because the encoder truncates at max_seq_length tokens and the title says most;
    category and brand add context for short or vague titles. Whitespace is collapsed so that the
    same item always yields the same text, whatever the source's formatting.
    """
    parts = (" ".join(part.split()) for part in (title, category, brand))
    return " | ".join(part for part in parts if part)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, with CPU behind it for any node CUDA lacks."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class TextEncoder:
    """Sentence embeddings (float32, L2-normalized) from an exported encoder directory.

    `intra_op_threads` defaults to the CPUs this process may use (2 on the project's machines): one
    model call then uses the whole box, and calls are serialized by the caller anyway. Spinning is
    off so that idle ORT threads do not steal the cores from the gRPC event loop between requests.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory)
        model_path = self.directory / MODEL_FILE
        if verify and sha256_of(model_path) != self.manifest.onnx_sha256:
            raise EncoderArtifactError(f"{model_path} does not match its manifest's sha256; {EXPORT_HINT}")

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or _available_cpus()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(providers or default_providers())
        )
        # What onnxruntime actually uses: CUDA drops out here if its libraries fail to load.
        self.providers: list[str] = self._session.get_providers()
        self._inputs = [node.name for node in self._session.get_inputs()]
        unknown = set(self._inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise EncoderArtifactError(f"{model_path}: unexpected inputs {sorted(unknown)}; {EXPORT_HINT}")

        self._tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
        # tokenizer.json ships with truncation at 128 and fixed padding to 128; the model was trained
        # and is evaluated at max_seq_length (256), and padding is done per batch below.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.manifest.max_seq_length)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed `texts` into an (n, dimension) float32 array, row i for texts[i]."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if len(texts) == 0:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = np.argsort([len(encoding.ids) for encoding in encodings], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            feeds = self._feeds([encodings[row] for row in rows])
            out[rows] = self._session.run([self.manifest.output], feeds)[0]
        return out

    def _feeds(self, batch: list[Encoding]) -> dict[str, np.ndarray]:
        length = max(len(encoding.ids) for encoding in batch)
        arrays = {
            "input_ids": np.full((len(batch), length), self._pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(batch), length), dtype=np.int64),
            "token_type_ids": np.zeros((len(batch), length), dtype=np.int64),
        }
        for row, encoding in enumerate(batch):
            size = len(encoding.ids)
            arrays["input_ids"][row, :size] = encoding.ids
            arrays["attention_mask"][row, :size] = encoding.attention_mask
            arrays["token_type_ids"][row, :size] = encoding.type_ids
        return {name: arrays[name] for name in self._inputs}


def _read_manifest(directory: Path) -> EncoderManifest:
    if not directory.is_dir():
        raise EncoderArtifactError(f"text encoder directory {directory} does not exist; {EXPORT_HINT}")
    missing = [name for name in (MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE) if not (directory / name).is_file()]
    if missing:
        raise EncoderArtifactError(
            f"text encoder directory {directory} is incomplete (missing {', '.join(missing)}); {EXPORT_HINT}"
        )
    try:
        manifest = EncoderManifest.read(directory)
    except (ValueError, TypeError, KeyError) as exc:  # bad JSON or fields of another format
        raise EncoderArtifactError(f"{directory / MANIFEST_FILE} is unreadable ({exc}); {EXPORT_HINT}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise EncoderArtifactError(
            f"{directory} has encoder format {manifest.format_version}, this code reads {FORMAT_VERSION}; {EXPORT_HINT}"
        )
    return manifest
