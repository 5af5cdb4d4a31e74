"""Text vectors of a dataset's items, from the exported sentence encoder, cached on disk.

Embedding titles is the slow part of preparing a dataset on a CPU (tens of titles per second per
core), so the vectors are cached by the hash of the texts and the encoder's checksum: the same
catalogue and encoder are embedded once, whoever asks (training, evaluation, benchmarks).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from bundlerec.datasets import Dataset
from bundlerec.encoder.runtime import TextEncoder, item_text

DEFAULT_CACHE = Path("var/cache")


def ensure_encoder(encoder_dir: Path) -> Path:
    """The exported encoder at `encoder_dir`, exporting it first when it is missing (training
    environments have torch, which the export needs)."""
    if not (encoder_dir / "manifest.json").is_file():
        from bundlerec.encoder.export import export_text_encoder

        print(f"exporting the text encoder to {encoder_dir} (once)", file=sys.stderr)
        export_text_encoder(encoder_dir)
    return encoder_dir


def item_text_vectors(
    dataset: Dataset, encoder_dir: Path, cache_dir: Path | None = DEFAULT_CACHE
) -> tuple[np.ndarray | None, dict | None]:
    """([len(items), dim] float32 in items.csv order, the encoder's identity), or (None, None) when
    no item has any text. Items without text get zero rows."""
    texts = [item_text(it.title, it.category, it.brand) for it in dataset.items.values()]
    if not any(texts):
        return None, None
    encoder = TextEncoder(ensure_encoder(encoder_dir))
    identity = {"model_name": encoder.manifest.model_name, "dimension": encoder.dimension}
    digest = hashlib.sha256("\x00".join([encoder.manifest.onnx_sha256, *texts]).encode()).hexdigest()[:20]
    cache = cache_dir / f"item-text-{dataset.info.name}-{digest}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        return np.load(cache), identity
    started = time.monotonic()
    present = [n for n, text in enumerate(texts) if text]
    vectors = np.zeros((len(texts), encoder.dimension), dtype=np.float32)
    vectors[present] = encoder.encode([texts[n] for n in present])
    print(f"embedded {len(present):,} item texts in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial.npy")  # workers under torchrun may race
        np.save(partial, vectors)
        os.replace(partial, cache)
    return vectors, identity
