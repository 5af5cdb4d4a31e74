"""The ranker model: ONNX export parity with PyTorch on real data, determinism, artifacts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
ort = pytest.importorskip("onnxruntime")

from bundlerec.datasets import Dataset, read_dataset  # noqa: E402
from bundlerec.datasets.demo import generate_demo_shop  # noqa: E402
from bundlerec.evaluation.protocol import build_split  # noqa: E402
from bundlerec.ranking.artifact import INT8_FILE, ONNX_FILE, ModelArtifactError, ModelManifest, model_versions  # noqa: E402
from bundlerec.ranking.features import encode_candidates, encode_sequence  # noqa: E402
from bundlerec.training.export import (  # noqa: E402
    ServingRanker,
    load_weights,
    write_model_dir,
)
from bundlerec.training.scorer import ModelScorer  # noqa: E402
from bundlerec.training.text import item_text_vectors  # noqa: E402
from bundlerec.training.train import TrainedModel, TrainSettings, train  # noqa: E402
from tests.harness.factories import SCIENTIFIC, youshu_sample  # noqa: E402

QUICK = TrainSettings(max_epochs=1, dim=32, validation_users=200)


def scientific_sample(users: int = 250, cold_items: int = 60) -> Dataset:
    """The first `users` users of amazon-scientific, their items and `cold_items` items nobody in
    the sample touched (so the model meets items it has no row for)."""
    if not SCIENTIFIC.is_dir():
        pytest.skip("../shared/data/amazon-scientific is not available")
    full = read_dataset(SCIENTIFIC)
    kept = sorted({e.user_id for e in full.events})[:users]
    keep = set(kept)
    events = [e for e in full.events if e.user_id in keep]
    valid = [r for r in full.valid if r.user_id in keep]
    test = [r for r in full.test if r.user_id in keep]
    used = {e.target_id for e in events} | {r.target_id for r in valid + test}
    unused = [i for i in full.items if i not in used][:cold_items]
    items = {i: it for i, it in full.items.items() if i in used or i in unused}
    return dataclasses.replace(full, items=items, events=events, valid=valid, test=test)


@pytest.fixture(scope="module")
def demo_shop(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("shop")
    generate_demo_shop(out, seed=3, users=80, items=200)
    return read_dataset(out)


def onnx_vs_torch(model_dir: Path, dataset: Dataset, vectors: np.ndarray | None) -> float:
    """Largest |ONNX - PyTorch| score over real users' sequences and real candidates."""
    model, vocabulary, manifest = load_weights(model_dir)
    scorer = ModelScorer("ours", model, dataset, vocabulary, vectors)
    split = build_split(dataset, "test")
    session = ort.InferenceSession(str(model_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    serving = ServingRanker(model)
    rng = np.random.default_rng(0)
    worst = 0.0
    for start in range(0, 40, 8):
        users = split.users[start : start + 8]
        seq = np.stack(
            [encode_sequence(scorer._steps(split, u), manifest.max_sequence, clock=manifest.clock) for u in users]
        )
        pairs = []
        for _ in range(30):  # singles, known bundles and bundles built from random items
            members = rng.choice(list(dataset.items), size=rng.integers(1, 5), replace=False)
            bundle = rng.choice(list(dataset.bundles)) if dataset.bundles and rng.random() < 0.3 else ""
            if bundle:
                members = dataset.bundles[bundle].item_ids
            pairs.append(
                (
                    vocabulary.bundle(bundle) if vocabulary.bundle(bundle) > 1 else 0,
                    [scorer.mapper.item(m) for m in members],
                )
            )
        bundles, items = encode_candidates(pairs, manifest.max_members)
        cand_items = np.repeat(items[None], len(users), axis=0)
        cand_bundles = np.repeat(bundles[None], len(users), axis=0)
        feeds = {
            "sequence": seq,
            "cand_items": cand_items,
            "cand_bundles": cand_bundles,
            "extra_text": scorer.mapper.extra_text,
        }
        onnx_scores, onnx_user = session.run(None, {k: v for k, v in feeds.items() if k in names})
        with torch.no_grad():
            torch_scores, torch_user = serving(
                *(torch.from_numpy(feeds[k]) for k in ("sequence", "cand_items", "cand_bundles", "extra_text"))
            )
        worst = max(worst, float(np.abs(onnx_scores - torch_scores.numpy()).max()))
        worst = max(worst, float(np.abs(onnx_user - torch_user.numpy()).max()))
    return worst


def with_both_parts(trained: TrainedModel) -> TrainedModel:
    """Whatever mix validation chose on a quick run, the export must carry both parts."""
    assert trained.model.wide_item_weight.abs().sum() > 0  # the co-occurrence tables are filled
    with torch.no_grad():
        trained.model.neural_weight.fill_(0.6)
        trained.model.wide_weight.fill_(0.4)
    return trained


@dataclasses.dataclass
class TextModel:
    dataset: Dataset
    vectors: np.ndarray
    identity: dict
    trained: TrainedModel


@pytest.fixture(scope="module")
def scientific_model(encoder_dir: str) -> TextModel:
    """A model with text trained on the scientific sample, both parts mixed: read by the tests
    below, never changed (the titles are embedded and the model trained once for all of them)."""
    dataset = scientific_sample()
    vectors, identity = item_text_vectors(dataset, Path(encoder_dir), cache_dir=None)
    assert vectors is not None and identity is not None
    trained = with_both_parts(train(dataset, QUICK, vectors, progress=lambda line: None))
    return TextModel(dataset, vectors, identity, trained)


def test_onnx_matches_pytorch_on_amazon_scientific_with_text(scientific_model: TextModel, tmp_path: Path) -> None:
    dataset, vectors, trained = scientific_model.dataset, scientific_model.vectors, scientific_model.trained
    identity = scientific_model.identity
    path = write_model_dir(trained, tmp_path, dataset_name="sample", text_encoder=identity, int8=True)
    assert (path / INT8_FILE).is_file()
    scorer = ModelScorer("ours", trained.model, dataset, trained.data.vocabulary, vectors)
    assert len(scorer.mapper.extra_rows) >= 30  # the cold items reach the model through their text
    assert onnx_vs_torch(path, dataset, vectors) <= 1e-4


def test_onnx_matches_pytorch_with_bundles(demo_shop: Dataset, tmp_path: Path) -> None:
    trained = with_both_parts(train(demo_shop, QUICK, None, progress=lambda line: None))
    assert trained.data.vocabulary.num_bundle_rows > 2
    path = write_model_dir(trained, tmp_path, dataset_name="demo", text_encoder=None)
    assert onnx_vs_torch(path, demo_shop, None) <= 1e-4


def full_ranking_vs_forward(scorer: ModelScorer, dataset: Dataset, users: int = 30, outside: bool = False) -> float:
    """Largest |full-ranking score - BundleRanker.forward score| over every target of the test split,
    relative to the largest score: the evaluated model is the served graph. `outside`: the users
    scored are not the split's own (its tables hold other users' steps)."""
    model = scorer.model
    split = build_split(dataset, "test")
    chosen = split.users[:users]
    if outside:
        split.users = split.users[users : 2 * users]
    scores = scorer.score(split, chosen)
    members, rows = scorer._candidate_index(split)
    length = model.config.max_sequence
    seq = np.stack([encode_sequence(scorer._steps(split, u), length, clock=scorer.clock) for u in chosen])
    with torch.no_grad():
        expected, _ = model(
            torch.from_numpy(seq),
            members.expand(len(chosen), -1, -1),
            rows.expand(len(chosen), -1),
            torch.from_numpy(scorer.mapper.extra_text),
        )
    expected = expected.numpy()
    return float(np.abs(scores - expected).max() / max(1.0, np.abs(expected).max()))


def test_full_ranking_scores_what_the_served_graph_scores(
    scientific_model: TextModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched full-ranking scorer (attention tables, sparse co-occurrence product, trimmed
    sequences) against the model's forward: next-item data with text and items known only by their
    text, and bundle data with bundles scored through their members at a member weight below 1."""
    from bundlerec.training import scorer as batched

    scientific, vectors, trained = scientific_model.dataset, scientific_model.vectors, scientific_model.trained
    scorer = ModelScorer("ours", trained.model, scientific, trained.data.vocabulary, vectors)
    assert len(scorer.mapper.extra_rows) >= 30
    assert full_ranking_vs_forward(scorer, scientific) <= 1e-5

    youshu = youshu_sample()
    trained = with_both_parts(
        train(
            youshu,
            dataclasses.replace(QUICK, wide_l2_grid=(200.0,), wide_view_grid=(0.3,), wide_view_l2_grid=(50.0,)),
            None,
            progress=lambda line: None,
        )
    )
    assert trained.model.config.wide_view_share > 0  # the item view's tables are in the graph too
    trained.model.wide_member_weight.fill_(0.3)
    scorer = ModelScorer("ours", trained.model, youshu, trained.data.vocabulary, None)
    _, rows = scorer._candidate_index(build_split(youshu, "test"))
    assert (rows == 0).any() and (rows > 1).any()  # bundles with and without a row of their own
    assert full_ranking_vs_forward(scorer, youshu) <= 1e-5
    assert full_ranking_vs_forward(scorer, youshu, outside=True) <= 1e-5
    # a catalogue too large for the whole table: each call computes its users' rows only
    monkeypatch.setattr(batched, "TABLE_BYTES", 1)
    assert (
        full_ranking_vs_forward(ModelScorer("ours", trained.model, youshu, trained.data.vocabulary, None), youshu)
        <= 1e-5
    )
    # attention logits spread beyond float32's exp: the users it underflows for take the softmax
    with torch.no_grad():
        trained.model.target_key.weight.normal_(std=3000.0)
        trained.model.target_out.weight.normal_(std=0.1)
    fallback = batched._AttentionTables.exact
    taken = []
    monkeypatch.setattr(batched._AttentionTables, "exact", lambda *a: taken.append(1) or fallback(*a))
    assert full_ranking_vs_forward(scorer, youshu) <= 1e-5
    assert taken


def test_the_transformer_alone_trains_and_ranks_as_served(demo_shop: Dataset) -> None:
    trained = train(demo_shop, dataclasses.replace(QUICK, neighbours=0), None, progress=lambda line: None)
    scorer = ModelScorer("ours", trained.model, demo_shop, trained.data.vocabulary, None)
    split = build_split(demo_shop, "test")
    neural, wide = scorer.parts(split, split.users)
    assert not wide.any() and neural.std() > 0  # no co-occurrence part: the network alone ranks
    assert full_ranking_vs_forward(scorer, demo_shop) <= 1e-5


def test_a_scorer_reused_on_another_split_scores_that_split(demo_shop: Dataset) -> None:
    """The scorer keeps tables and sequences per split: the validation and the test split of
    next-item data have the same users and targets but not the same histories."""
    trained = train(demo_shop, QUICK, None, progress=lambda line: None)
    reused = ModelScorer("ours", trained.model, demo_shop, trained.data.vocabulary, None)
    valid, test = build_split(demo_shop, "valid"), build_split(demo_shop, "test")
    assert valid.users == test.users
    on_valid = reused.score(valid, valid.users)
    fresh = ModelScorer("ours", trained.model, demo_shop, trained.data.vocabulary, None).score(test, test.users)
    assert np.array_equal(reused.score(test, test.users), fresh)
    assert not np.array_equal(on_valid, fresh)


def test_same_seed_same_data_same_model(demo_shop: Dataset) -> None:
    first = train(demo_shop, QUICK, None, progress=lambda line: None).model.state_dict()
    second = train(demo_shop, QUICK, None, progress=lambda line: None).model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train(demo_shop, dataclasses.replace(QUICK, seed=1), None, progress=lambda line: None).model.state_dict()
    assert not torch.equal(first["item_id.weight"], other["item_id.weight"])


def test_model_directory_is_complete_and_versioned(demo_shop: Dataset, tmp_path: Path) -> None:
    trained = train(demo_shop, dataclasses.replace(QUICK, max_epochs=2, patience=5), None, progress=lambda line: None)
    first = write_model_dir(trained, tmp_path, dataset_name="demo", text_encoder=None)
    second = write_model_dir(trained, tmp_path, dataset_name="demo", text_encoder=None)
    assert model_versions(tmp_path) == [first.name, second.name]  # names sort by creation
    manifest = ModelManifest.read(first)
    assert manifest.task == "next_item" and len(manifest.epochs) == 2
    assert set(manifest.metrics) >= {"HR@10", "NDCG@10"}
    assert (first / "training_curves.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    # a tampered model is refused rather than served
    (first / ONNX_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelArtifactError, match="checksum"):
        ModelManifest.read(first)
    json.loads((second / "manifest.json").read_text())


def test_a_dataset_without_valid_csv_validates_on_held_out_targets(demo_shop: Dataset) -> None:
    from bundlerec.training.data import carve_validation

    carved = carve_validation(dataclasses.replace(demo_shop, valid=[]), share=0.5, seed=0)
    assert carved.valid and len(carved.events) < len(demo_shop.events)
    for row in carved.valid:  # the positive is out of the history, so it can be ranked and hit
        assert not any(e.user_id == row.user_id and e.target_id == row.target_id for e in carved.events)
    trained = train(dataclasses.replace(demo_shop, valid=[]), QUICK, None, progress=lambda line: None)
    assert trained.validation_carved and "NDCG@10" in trained.validation


def test_two_stage_ranks_only_the_retrieved_candidates(demo_shop: Dataset, encoder_dir: str) -> None:
    from bundlerec.candidate.offline import DatasetRetriever
    from bundlerec.evaluation.two_stage import CandidatesOnly

    trained = train(demo_shop, QUICK, None, progress=lambda line: None)
    ours = ModelScorer("ours", trained.model, demo_shop, trained.data.vocabulary, None)
    split = build_split(demo_shop, "test")
    vectors, _ = item_text_vectors(demo_shop, Path(encoder_dir), cache_dir=None)
    retriever = DatasetRetriever(demo_shop, vectors)
    users = split.users[:20]
    staged = CandidatesOnly("two-stage", ours, retriever, k=30)
    scores, full = staged.score(split, users), ours.score(split, users)
    expected_recall = []
    for row, user in enumerate(users):
        kept = [split.target_index[t] for t in retriever.candidates(split, user, 30)]
        assert 0 < len(kept) <= 30
        assert np.array_equal(np.flatnonzero(np.isfinite(scores[row])), np.sort(kept))
        assert np.allclose(scores[row, kept], full[row, kept])  # the ranker's own scores, unchanged
        positives = set(split.positives[user].tolist())
        expected_recall.append(len(positives & set(kept)) / len(positives))
    assert staged.recall == pytest.approx(sum(expected_recall) / len(users))
