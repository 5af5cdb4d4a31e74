"""The co-occurrence part's text neighbours: the pretrained encoder's similarity, gated by how
little a target was bought, blended in with the share and gate validation prefers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from bundlerec.datasets import Dataset, read_dataset  # noqa: E402
from bundlerec.ranking.features import FIRST_ID, PAD  # noqa: E402
from bundlerec.training.cooccurrence import cooccurrence_matrix, neighbour_tables, text_tables  # noqa: E402
from bundlerec.training.data import prepare  # noqa: E402
from bundlerec.training.mix import NEAR_TIE  # noqa: E402
from bundlerec.training.text import item_text_vectors  # noqa: E402
from bundlerec.training.train import TrainSettings, _with_validation_rows, train  # noqa: E402
from tests.harness.factories import SCIENTIFIC  # noqa: E402


@pytest.fixture(scope="module")
def scientific_sample() -> Dataset:
    if not SCIENTIFIC.is_dir():
        pytest.skip("../shared/data/amazon-scientific is not available")
    full = read_dataset(SCIENTIFIC)
    keep = set(sorted({e.user_id for e in full.events})[:400])
    events = [e for e in full.events if e.user_id in keep]
    valid = [r for r in full.valid if r.user_id in keep]
    test = [r for r in full.test if r.user_id in keep]
    seen = {row.target_id for rows in (events, valid, test) for row in rows}  # fewer titles to embed
    items = {item_id: item for item_id, item in full.items.items() if item_id in seen}
    return dataclasses.replace(full, items=items, events=events, valid=valid, test=test)


@pytest.fixture(scope="module")
def vectors(scientific_sample: Dataset, encoder_dir: str) -> np.ndarray:
    found, _ = item_text_vectors(scientific_sample, Path(encoder_dir), cache_dir=None)
    assert found is not None
    return found


def test_text_neighbours_are_the_nearest_titles_weighed_by_how_rarely_the_target_sold(
    scientific_sample: Dataset, vectors: np.ndarray
) -> None:
    data = prepare(scientific_sample, vectors, 32, order="sequence")
    silent = int(np.flatnonzero(np.abs(data.item_text).sum(1) > 0)[5])
    data.item_text[silent] = 0.0  # an item without text
    text = data.item_text / np.maximum(np.linalg.norm(data.item_text, axis=1, keepdims=True), 1e-12)
    counts = np.asarray(cooccurrence_matrix(data).sum(axis=0)).ravel()
    k, rows = 10, np.arange(FIRST_ID, len(text))
    by_gate = text_tables(data, k, (0.0, 4.0))
    for gate, tables in zip((0.0, 4.0), by_gate, strict=True):
        factor = gate / (gate + counts[: len(text)]) if gate else np.ones(len(text))
        for item in rows[:: max(1, len(rows) // 40)]:
            if item == silent:
                continue
            expected = np.maximum(text @ text[item], 0) * factor
            expected[[*range(FIRST_ID), item]] = 0
            # the k nearest (titles may tie), strongest first, the item itself never
            np.testing.assert_allclose(tables.item_weight[item], -np.sort(-expected)[:k], rtol=1e-4)
            np.testing.assert_allclose(tables.item_weight[item], expected[tables.item_index[item]], rtol=1e-4)
            assert item not in tables.item_index[item]
        assert (tables.item_index[silent] == PAD).all() and silent not in tables.item_index
    ungated, gated = by_gate
    sold = counts[: len(text)]
    # the gate moves neighbour lists towards the items that sold less
    assert sold[gated.item_index[rows]].mean() < sold[ungated.item_index[rows]].mean()


def test_the_text_share_and_gate_are_validations_choice_near_ties_going_to_rare_targets(
    scientific_sample: Dataset, vectors: np.ndarray
) -> None:
    settings = TrainSettings(
        max_epochs=1, dim=32, order="sequence", wide_text_grid=(0.0, 1.0, 3.0), wide_text_gate_grid=(0.0, 5.0)
    )
    lines: list[str] = []
    trained = train(scientific_sample, settings, vectors, progress=lines.append)
    tried = {}
    for line in lines:
        if line.startswith("text neighbours share"):
            words = line.replace(",", "").replace(":", "").split()
            tried[float(words[3]), float(words[5])] = (float(words[8]), float(words[11]))
    assert set(tried) == {(0.0, 0.0), (1.0, 0.0), (3.0, 0.0), (1.0, 5.0), (3.0, 5.0)}
    config = trained.model.config
    kept = tried[config.wide_text_share, config.wide_text_gate]
    best = max(metric for metric, _ in tried.values())
    near = [cold for metric, cold in tried.values() if metric >= best * (1 - NEAR_TIE) - 1e-4]
    assert kept[0] >= best * (1 - NEAR_TIE) - 1e-4 and kept[1] == pytest.approx(max(near), abs=1e-4)
    # the kept model's tables are that choice, counted over the validation rows too (next-item data)
    with_valid = _with_validation_rows(scientific_sample, trained.data)
    tables = neighbour_tables(
        with_valid, config.neighbours, config.wide_l2, config.wide_cosine_share, config.wide_text_share,
        config.wide_text_gate,
    )  # fmt: skip
    np.testing.assert_array_equal(trained.model.wide_item_weight.numpy(), tables.item_weight)


def test_without_text_no_text_neighbours_are_tried(scientific_sample: Dataset) -> None:
    lines: list[str] = []
    trained = train(scientific_sample, TrainSettings(max_epochs=1, dim=32, order="sequence"), None, lines.append)
    assert not any(line.startswith("text neighbours") for line in lines)
    assert trained.model.config.wide_text_share == 0.0
