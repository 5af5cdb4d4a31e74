"""Item-title embeddings with all-MiniLM-L6-v2, exported to ONNX once and served without torch.

`bundlerec.encoder.export` (needs the `train` extra: torch, transformers) writes the artifact
directory; `bundlerec.encoder.runtime` (onnxruntime, tokenizers) serves it. Importing this package
never imports torch.
"""

from bundlerec.encoder.runtime import EncoderArtifactError, TextEncoder, item_text

__all__ = ["EncoderArtifactError", "TextEncoder", "item_text"]
