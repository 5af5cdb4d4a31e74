"""Training internals on real data: the co-occurrence part, set-order examples, the validation mix."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from bundlerec.datasets import Dataset, read_dataset  # noqa: E402
from bundlerec.datasets.demo import generate_demo_shop  # noqa: E402
from bundlerec.evaluation.baselines import fit_item_knn  # noqa: E402
from bundlerec.evaluation.interactions import TIE_BREAK, popularity_scores  # noqa: E402
from bundlerec.evaluation.metrics import evaluate_scorer  # noqa: E402
from bundlerec.evaluation.protocol import build_split  # noqa: E402
from bundlerec.ranking.artifact import ModelManifest, model_versions  # noqa: E402
from bundlerec.training.cooccurrence import (  # noqa: E402
    blend_tables,
    cooccurrence_matrix,
    cosine_tables,
    ease_tables,
    neighbour_tables,
)
from bundlerec.training.data import BUNDLE, ITEM, examples, make_batch, prepare  # noqa: E402
from bundlerec.training.model import BundleRanker, ModelConfig  # noqa: E402
from bundlerec.training.scorer import ModelScorer  # noqa: E402
from bundlerec.training.train import TrainSettings, train  # noqa: E402
from tests.harness.factories import SCIENTIFIC  # noqa: E402


@pytest.fixture(scope="module")
def bundle_shop(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("shop")
    generate_demo_shop(out, seed=5, users=60, items=150)
    return dataclasses.replace(read_dataset(out))


def untrained(dataset: Dataset, neighbours: int, max_sequence: int = 50, l2: float = 0.0) -> BundleRanker:
    data = prepare(dataset, None, 32, order="set")
    config = ModelConfig(
        num_item_rows=data.vocabulary.num_item_rows,
        num_bundle_rows=data.vocabulary.num_bundle_rows,
        text_dim=0,
        causal=False,
        max_sequence=max_sequence,
        neighbours=neighbours,
    )
    model = BundleRanker(
        config,
        torch.from_numpy(data.item_text),
        torch.from_numpy(data.vocabulary.bundle_members),
        neighbour_tables(data, neighbours, l2),
    )
    return model.eval(), data


def test_the_co_occurrence_part_is_item_knn() -> None:
    """Without truncation the model's co-occurrence score of every item is item-kNN's (Deshpande &
    Karypis cosine, summed over the history) on real data."""
    if not SCIENTIFIC.is_dir():
        pytest.skip("../shared/data/amazon-scientific is not available")
    dataset = read_dataset(SCIENTIFIC)
    model, data = untrained(dataset, neighbours=2000)
    split = build_split(dataset, "valid")
    # the model reads a history as steps (a re-bought item twice) and its newest 50, item-kNN as a set
    distinct = [
        u
        for u in split.users
        if len({s.target_id for s in split.histories.get(u, [])}) == len(split.histories.get(u, []))
    ]
    users = [u for u in distinct if len(split.histories.get(u, [])) <= 50]
    assert len(users) > 2000
    users = users[:600]
    scorer = ModelScorer("ours", model, dataset, data.vocabulary, None)
    _, wide = scorer.parts(split, users)
    knn = fit_item_knn(split, neighbours=10_000).score(split, users) - TIE_BREAK * popularity_scores(split)
    assert np.abs(knn).max() > 1.0  # real similarities, not an empty table
    np.testing.assert_allclose(wide, knn, atol=1e-4)


def test_the_ease_part_is_the_closed_form(bundle_shop: Dataset) -> None:
    """Without truncation the EASE tables give every user's score of Steck's closed form
    B = -P / diag(P), P = (XᵀX + λI)⁻¹, diag(B) = 0, computed here in float64 from the raw
    columns; the negative weights are kept."""
    l2 = 20.0
    model, data = untrained(bundle_shop, neighbours=1000, max_sequence=1000, l2=l2)
    matrix = cooccurrence_matrix(data).toarray().astype(np.float64)
    used = matrix.sum(0) > 0
    inverse = np.linalg.inv(matrix[:, used].T @ matrix[:, used] + l2 * np.eye(used.sum()))
    closed = np.zeros((matrix.shape[1], matrix.shape[1]))
    closed[np.ix_(used, used)] = inverse / -np.diag(inverse)
    np.fill_diagonal(closed, 0.0)
    assert (closed < -1e-3).any()
    n_items = data.vocabulary.num_item_rows
    from bundlerec.ranking.features import encode_sequence

    users = [steps for steps in data.histories.values() if len({(s.item, s.bundle) for s in steps}) == len(steps)][:40]
    seq = torch.from_numpy(np.stack([encode_sequence(steps, 1000, clock=data.clock) for steps in users]))
    item_wide, bundle_wide = model.wide(seq)
    history = np.zeros((len(users), matrix.shape[1]))
    for row, steps in enumerate(users):
        for step in steps:
            history[row, n_items + step.bundle if step.bundle else step.item] = 1.0
    expected = history @ closed
    np.testing.assert_allclose(item_wide.numpy()[:, 2:], expected[:, 2:n_items], atol=1e-4)
    np.testing.assert_allclose(bundle_wide.numpy()[:, 2:], expected[:, n_items + 2 :], atol=1e-4)


def test_ease_keeps_the_strongest_weights_of_either_sign(bundle_shop: Dataset) -> None:
    full, _ = untrained(bundle_shop, neighbours=1000, l2=20.0)
    truncated, _ = untrained(bundle_shop, neighbours=5, l2=20.0)
    for name in ("item", "bundle"):
        weights = getattr(full, f"wide_{name}_weight").numpy()
        kept = getattr(truncated, f"wide_{name}_weight").numpy()
        strongest = -np.sort(-np.abs(weights), axis=1)[:, :5]
        np.testing.assert_allclose(np.abs(kept), strongest, rtol=1e-6)
    assert (truncated.wide_item_weight.numpy() < 0).any()


def test_the_blend_adds_ease_and_cosine_at_their_own_scale(bundle_shop: Dataset) -> None:
    data = prepare(bundle_shop, None, 32, order="set")
    ease, cosine = ease_tables(data, 1000, 20.0), cosine_tables(data, 1000)
    blended = blend_tables(ease, cosine, 0.5)

    def dense(index: np.ndarray, weight: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), int(index.max()) + 1))
        np.add.at(out, (np.arange(len(index))[:, None], index), weight)
        return out

    for name in ("item", "bundle"):
        e, c, b = (dense(getattr(t, f"{name}_index"), getattr(t, f"{name}_weight")) for t in (ease, cosine, blended))
        rms = [np.sqrt(np.mean(np.square(m[m != 0]))) for m in (e, c)]
        np.testing.assert_allclose(b, e / rms[0] + 0.5 * c / rms[1], atol=1e-5)
    small = blend_tables(ease_tables(data, 4, 20.0), cosine_tables(data, 4), 0.5)  # at most k kept
    assert (small.item_index != 0).sum(1).max() == 4


def test_bundles_score_through_their_row_or_their_members(bundle_shop: Dataset) -> None:
    model, data = untrained(bundle_shop, neighbours=100)
    bundle_rows = torch.arange(2, data.vocabulary.num_bundle_rows)
    members = torch.from_numpy(data.vocabulary.bundle_members[2:])
    history = next(steps for steps in data.histories.values() if len(steps) > 3)
    from bundlerec.ranking.features import encode_sequence

    seq = torch.from_numpy(encode_sequence(history, 50, clock=data.clock)[None])
    wide = model.wide(seq)
    assert wide[0].abs().sum() > 0 and wide[1].abs().sum() > 0
    known = model.wide_score(wide, members, bundle_rows)
    assert torch.allclose(known[0], wide[1][0, 2:])  # a catalogue bundle: its own similarity
    built = model.wide_score(wide, members, torch.zeros_like(bundle_rows))  # the same members, no row
    present = members != 0
    expected = (wide[0][0][members] * present).sum(-1) / present.sum(-1)
    assert torch.allclose(built[0], expected)  # a bundle first seen at serving: its members' mean
    model.wide_member_weight.fill_(0.25)  # the item-to-bundle scale, chosen on bundle data's validation
    assert torch.allclose(model.wide_score(wide, members, torch.zeros_like(bundle_rows))[0], 0.25 * expected)
    assert torch.allclose(model.wide_score(wide, members, bundle_rows)[0], known[0])  # rows unchanged


def test_set_order_examples_predict_what_they_hide(bundle_shop: Dataset) -> None:
    data = prepare(bundle_shop, None, 32, order="set")
    pairs = examples(data, 1000, random.Random(0), mask_share=0.3)
    assert len(pairs) == len(data.histories)
    for inputs, predicted in pairs:
        history = next(steps for steps in data.histories.values() if Counter(steps) == Counter(inputs + predicted))
        assert any(step.bundle if data.target_kind == BUNDLE else not step.bundle for step in predicted) or not any(
            step.bundle if data.target_kind == BUNDLE else not step.bundle for step in history
        )
    batch = make_batch(pairs[:8], 50, clock=data.clock, causal=False)
    length = batch.seq.shape[-1]
    assert (batch.positions == length).all()  # only the user token predicts
    assert len(batch.targets) == sum(len(predicted) for _, predicted in pairs[:8])
    assert set(batch.kinds.tolist()) <= {ITEM, BUNDLE}


def test_causal_batches_predict_the_next_step_at_every_position(bundle_shop: Dataset) -> None:
    data = prepare(bundle_shop, None, 32, order="sequence")
    pairs = examples(data, 20, random.Random(0))
    inputs, predicted = max(pairs, key=lambda pair: len(pair[0]))
    batch = make_batch([(inputs, predicted)], 20, clock=data.clock, causal=True)
    assert len(batch.targets) == len(predicted) + 1  # every step, and the user token once more
    assert batch.positions[-1] == batch.seq.shape[-1]
    assert batch.targets[-1] == (predicted[-1].bundle or predicted[-1].item)


def test_the_validation_mix_is_the_models_own_and_never_worse_than_the_transformer_alone(bundle_shop: Dataset) -> None:
    settings = TrainSettings(max_epochs=2, dim=32, validation_users=200, refit=False)
    lines: list[str] = []
    trained = train(bundle_shop, settings, None, progress=lines.append)
    model = trained.model
    split = build_split(bundle_shop, "valid")
    scorer = ModelScorer("ours", model, bundle_shop, trained.data.vocabulary, None)
    metric = trained.metric_name
    kept = model.wide_item_weight.numpy().copy()
    # the kept model counts the validation rows' co-occurrences too (next-item data: they are
    # test-time history); the mix was chosen with the training events' tables
    config = model.config
    events_only = neighbour_tables(trained.data, settings.neighbours, config.wide_l2, config.wide_cosine_share)
    ease = [line.split() for line in lines if line.startswith("co-occurrence EASE l2")]
    tried = {float(words[3]): float(words[10]) for words in ease}  # each value's own figure is logged
    assert set(settings.wide_l2_grid) <= set(tried)
    assert tried[model.config.wide_l2] == pytest.approx(max(tried.values()), abs=1e-4)  # chosen on validation
    assert not np.array_equal(kept, events_only.item_weight)
    model.set_neighbours(events_only)
    # the model, scored as it is exported, reaches the validation figure training reported
    assert evaluate_scorer(split, scorer, ks=(10, 20))[metric] == pytest.approx(trained.validation[metric])
    assert float(model.neural_weight) > 0 or float(model.wide_weight) > 0
    with torch.no_grad():  # the Transformer alone is one of the mixes tried
        model.neural_weight.fill_(1.0)
        model.wide_weight.fill_(0.0)
    assert evaluate_scorer(split, scorer, ks=(10, 20))[metric] <= trained.validation[metric] + 1e-9
    assert any(line.startswith("co-occurrence factor") for line in lines)


def test_the_kept_network_is_trained_again_with_the_validation_rows(bundle_shop: Dataset) -> None:
    """Next-item data: FORMAT.md makes the validation rows test-time history, so after validation
    has chosen the epochs the network trains again, from the start, with them; the co-occurrence
    part and the mix are what validation chose either way."""
    settings = TrainSettings(max_epochs=3, patience=3, dim=32, validation_users=200)
    lines: list[str] = []
    refitted = train(bundle_shop, settings, None, progress=lines.append)
    plain = train(bundle_shop, dataclasses.replace(settings, refit=False), None, progress=lambda line: None)
    chosen = max(range(3), key=lambda n: (refitted.history[n].metric, -n)) + 1
    assert next(line for line in lines if line.startswith("refit:")).count(f"for the {chosen} epoch(s)") == 1
    first, second = refitted.model.state_dict(), plain.model.state_dict()
    mix = [name for name in first if name.startswith("wide_") or name in ("neural_weight", "wide_weight")]
    assert mix and all(torch.equal(first[name], second[name]) for name in mix)
    assert not torch.equal(first["item_id.weight"], second["item_id.weight"])
    # the refitted network has learned the validation rows: it ranks them higher than the plain one
    split = build_split(bundle_shop, "valid")
    with torch.no_grad():
        for model in (refitted.model, plain.model):
            model.neural_weight.fill_(1.0)
            model.wide_weight.fill_(0.0)
    figures = [
        evaluate_scorer(split, ModelScorer("ours", t.model, bundle_shop, t.data.vocabulary, None), ks=(20,))["HR@20"]
        for t in (refitted, plain)
    ]
    assert figures[0] > figures[1]


def test_ordinal_histories_are_read_as_validation_prefers() -> None:
    """Ordinal timestamps (amazon-scientific) are an order without times: both readings train and
    the one with the better validation figure is kept, a tie going to the sequence."""
    if not SCIENTIFIC.is_dir():
        pytest.skip("../shared/data/amazon-scientific is not available")
    full = read_dataset(SCIENTIFIC)
    assert full.info.timestamps == "ordinal"
    keep = set(sorted({e.user_id for e in full.events})[:300])
    sample = dataclasses.replace(
        full,
        events=[e for e in full.events if e.user_id in keep],
        valid=[r for r in full.valid if r.user_id in keep],
        test=[r for r in full.test if r.user_id in keep],
    )
    lines: list[str] = []
    trained = train(sample, TrainSettings(max_epochs=2, dim=32), None, progress=lines.append)
    assert sum(line.startswith("training on") for line in lines) == 2
    readings = [line for line in lines if line.startswith("training on")]
    assert "(ordered histories)" in readings[0] and "(unordered histories)" in readings[1]
    words = next(line for line in lines if line.startswith("reading:")).replace(",", "").split()
    as_sequence, as_set = float(words[3]), float(words[7])
    assert trained.model.config.causal == (as_sequence >= as_set)
    assert trained.validation[trained.metric_name] == pytest.approx(max(as_sequence, as_set), abs=1e-4)
    # only the kept reading is trained again with the validation rows, and its settings say so
    assert sum(line.startswith("refit:") for line in lines) == 1 and trained.settings.refit
    # the set reading reused the co-occurrence weighing the sequence reading chose
    assert sum(line.startswith("co-occurrence part:") for line in lines) == 2
    assert len({line for line in lines if line.startswith("co-occurrence part:")}) == 1


def test_an_l2_grid_whose_edge_wins_is_searched_past_that_edge(bundle_shop: Dataset) -> None:
    grid = (20000.0, 80000.0)  # two values: one edge or the other always wins
    settings = TrainSettings(max_epochs=1, dim=32, validation_users=200, wide_l2_grid=grid)
    lines: list[str] = []
    trained = train(bundle_shop, settings, None, progress=lines.append)
    logged = [line.split() for line in lines if line.startswith("co-occurrence EASE l2")]
    tried = {float(words[3]): float(words[10]) for words in logged}
    beyond = [l2 for l2 in tried if l2 not in grid]
    assert 1 <= len(beyond) <= 3 and all("past the grid's edge" in " ".join(w) for w in logged[2:])
    edge = max(grid, key=lambda l2: (tried[l2], -l2))  # the grid's own winner (ties: the earlier value)
    step = 0.25 if edge == grid[0] else 4.0
    assert beyond == [edge * step**n for n in range(1, len(beyond) + 1)]  # outward, a factor 4 each
    # it stops at the first value that does not improve, or after 3
    assert len(beyond) == 3 or tried[beyond[-1]] <= max(tried[l2] for l2 in tried if l2 != beyond[-1])
    assert tried[trained.model.config.wide_l2] == max(tried.values())


def test_torchrun_trains_on_two_workers_and_one_writes_the_model(tmp_path: Path) -> None:
    """PyTorch's own DistributedDataParallel under torchrun (Gloo on CPUs; NCCL between GPUs)."""
    generate_demo_shop(tmp_path / "shop", seed=3, users=120, items=300)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "bundlerec", "train", "--data", str(tmp_path / "shop"), "--out", str(tmp_path / "models")),
        *("--epochs", "2", "--dim", "16", "--no-text", "--threads", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 workers" in result.stderr
    assert result.stderr.count("epoch   2") == 1  # one worker reports
    (version,) = model_versions(tmp_path / "models")  # and one writes
    assert len(ModelManifest.read(tmp_path / "models" / version).epochs) == 2
