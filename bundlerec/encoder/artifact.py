"""The on-disk layout of an exported text encoder, shared by the exporter and the runtime.

A directory holds `model.onnx`, `tokenizer.json` and `manifest.json`. The manifest is written last,
so a directory without one is an interrupted export, never a half-valid model. This module imports
neither torch nor onnxruntime: both sides of the artifact agree on it without pulling each other in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class EncoderManifest:
    """What the runtime must know about the graph that the graph itself does not say."""

    model_name: str
    dimension: int
    max_seq_length: int
    pooling: str
    normalized: bool
    opset: int
    onnx_sha256: str
    inputs: tuple[str, ...]
    output: str
    format_version: int = FORMAT_VERSION

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> EncoderManifest:
        data = json.loads((directory / MANIFEST_FILE).read_text())
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
