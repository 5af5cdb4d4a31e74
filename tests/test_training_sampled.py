"""The two-tower term at shop scale: the sampled softmax above TrainSettings.two_tower_negatives,
the exact one at or below it, on a real generated shop and the real model (objective.py)."""

from __future__ import annotations

import dataclasses
import random

import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from bundlerec.datasets import Dataset, read_dataset  # noqa: E402
from bundlerec.datasets.demo import generate_demo_shop  # noqa: E402
from bundlerec.ranking.features import FIRST_ID  # noqa: E402
from bundlerec.training.data import BUNDLE, ITEM, batches, examples, make_batch, prepare  # noqa: E402
from bundlerec.training.model import BundleRanker, ModelConfig, TableRows  # noqa: E402
from bundlerec.training.objective import TrainingLoss, batch_tensors, sampling_distribution  # noqa: E402
from bundlerec.training.train import TrainSettings, train  # noqa: E402

QUICK = TrainSettings(dim=32, neighbours=0, validation_users=100)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("shop")
    generate_demo_shop(out, seed=7, users=80, items=240, bundles=60)
    return read_dataset(out)


def a_batch(shop: Dataset, count: int = 24) -> tuple[BundleRanker, TrainingLoss, tuple[torch.Tensor, ...]]:
    """An untrained model, its loss (popularity sampling) and a batch of real examples."""
    torch.manual_seed(0)
    data = prepare(shop, None, 32)
    config = ModelConfig(
        num_item_rows=data.vocabulary.num_item_rows,
        num_bundle_rows=data.vocabulary.num_bundle_rows,
        text_dim=0,
        causal=data.causal,
        dim=32,
    )
    model = BundleRanker(config, torch.from_numpy(data.item_text), torch.from_numpy(data.vocabulary.bundle_members))
    sampling = {kind: sampling_distribution(torch.from_numpy(c)) for kind, c in data.target_counts().items()}
    rng = random.Random(0)
    group = batches(examples(data, 50, rng), count, rng)[0]
    batch = make_batch(group, 50, clock=data.clock, causal=data.causal)
    return model, TrainingLoss(model, sampling), batch_tensors(batch, torch.device("cpu"))


def test_the_sampled_softmax_over_the_whole_table_is_the_exact_one(shop: Dataset) -> None:
    """With every learned row drawn once and a uniform sampling probability, the logQ-corrected
    sampled softmax (target in column 0, its own draw masked) is the exact softmax: the sampled path,
    which computes only the rows a step reads, gives today's loss."""
    model, loss, tensors = a_batch(shop)
    kinds = tensors[3]
    assert (kinds == ITEM).any() and (kinds == BUNDLE).any()
    sizes = {ITEM: model.config.num_item_rows, BUNDLE: model.config.num_bundle_rows}
    loss.log_q = {kind: torch.full((size,), -3.0) for kind, size in sizes.items()}  # uniform
    everything = {kind: torch.arange(FIRST_ID, size) for kind, size in sizes.items()}
    negatives = {kind: torch.arange(FIRST_ID, size, 3) for kind, size in sizes.items()}
    model.eval()  # no dropout: both paths see the same network
    with torch.no_grad():
        exact = loss(*tensors, negatives)
        sampled = loss(*tensors, negatives, everything)
        one_kind = loss(*tensors, negatives, {ITEM: everything[ITEM]})  # bundles keep their whole table
    for expected, got, also in zip(exact, sampled, one_kind, strict=True):
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
        assert float(also) == pytest.approx(float(expected), rel=1e-5)


def test_a_sampled_step_computes_only_the_rows_it_reads(shop: Dataset) -> None:
    model, loss, tensors = a_batch(shop, count=4)
    drawn = {ITEM: torch.tensor([5, 9, 9]), BUNDLE: torch.tensor([3])}
    read: list[int] = []
    projected_rows = model.projected_rows
    model.projected_rows = lambda rows: read.extend(rows.tolist()) or projected_rows(rows)  # type: ignore[method-assign]
    total, two_tower, full = loss(*tensors, {ITEM: torch.tensor([7]), BUNDLE: torch.tensor([4])}, drawn)
    assert torch.isfinite(total) and float(two_tower) > 0 and float(full) > 0
    total.backward()
    assert len(read) == len(set(read)) < model.config.num_item_rows  # each needed item once, not the table
    assert {5, 7, 9}.issubset(read)
    table = TableRows(torch.tensor([0, 1, 5]), torch.eye(3))
    assert table[torch.tensor([5, 0])].tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    with pytest.raises(IndexError):
        table[torch.tensor([4])]


def test_at_the_threshold_training_is_exactly_todays(shop: Dataset) -> None:
    """A table of exactly `two_tower_negatives` rows keeps the exact softmax and draws nothing more:
    the same model as with sampling switched off."""
    data = prepare(shop, None, 32)
    largest = max(data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows)
    settings = dataclasses.replace(QUICK, max_epochs=1)
    lines: list[str] = []
    at = train(shop, dataclasses.replace(settings, two_tower_negatives=largest), None, progress=lines.append)
    off = train(shop, dataclasses.replace(settings, two_tower_negatives=0), None, progress=lambda _: None)
    figures = [[(r.loss, r.two_tower, r.full, r.metric) for r in run.history] for run in (at, off)]
    assert figures[0] == figures[1]
    for name, value in off.model.state_dict().items():
        assert torch.equal(at.model.state_dict()[name], value), name
    assert not any("sampled softmax" in line for line in lines)


def test_above_the_threshold_the_sampled_term_trains(shop: Dataset) -> None:
    settings = dataclasses.replace(QUICK, max_epochs=4, patience=4, two_tower_negatives=32)
    lines: list[str] = []
    trained = train(shop, settings, None, progress=lines.append)
    assert any("sampled softmax over 32 items and bundles" in line for line in lines)
    first, *_, last = trained.history
    assert len(trained.history) == 4 and last.loss < first.loss
    assert max(record.metric for record in trained.history[1:]) > first.metric  # it learns to rank
