"""`bundlerec recommend-batch`: every shopper's top K of a dataset, written as CSV."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="recommend-batch needs the train extra (torch)")

from bundlerec.commands.cli import main  # noqa: E402
from bundlerec.datasets import read_dataset  # noqa: E402
from bundlerec.datasets.demo import generate_demo_shop  # noqa: E402
from bundlerec.evaluation.protocol import everything_known  # noqa: E402
from bundlerec.training.export import load_weights, write_model_dir  # noqa: E402
from bundlerec.training.scorer import ModelScorer  # noqa: E402
from bundlerec.training.train import TrainSettings, train  # noqa: E402


@pytest.fixture(scope="module")
def shop_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    shop = tmp_path_factory.mktemp("shop")
    generate_demo_shop(shop, seed=4, users=60, items=150)
    trained = train(read_dataset(shop), TrainSettings(max_epochs=1, dim=32), None, progress=lambda line: None)
    models = tmp_path_factory.mktemp("models")
    write_model_dir(trained, models, dataset_name="demo", text_encoder=None)
    return shop, models


def read_rows(path: Path) -> dict[str, list[dict[str, str]]]:
    by_user: dict[str, list[dict[str, str]]] = defaultdict(list)
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            by_user[row["user_id"]].append(row)
    return by_user


def test_every_shopper_gets_the_models_top_k_of_what_they_do_not_have(
    shop_and_model: tuple[Path, Path], tmp_path: Path
) -> None:
    shop, models = shop_and_model
    out = tmp_path / "mail" / "top.csv"
    assert main(["recommend-batch", "--data", str(shop), "--models", str(models), "--out", str(out), "--k", "5"]) == 0
    dataset = read_dataset(shop)
    known = everything_known(dataset)
    by_user = read_rows(out)
    assert set(by_user) == set(known.users) and len(known.users) >= 50  # the served version, every shopper
    model, vocabulary, _ = load_weights(models / next(p.name for p in models.iterdir() if p.is_dir()))
    scores = ModelScorer("ours", model, dataset, vocabulary, None).score(known, known.users)
    for n, user in enumerate(known.users):
        rows = by_user[user]
        assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
        have = {s.target_id for s in known.histories[user]}
        assert not have & {r["target_id"] for r in rows}  # nothing the shopper already has
        assert {r["target_type"] for r in rows} == {known.target_type}
        written = [float(r["score"]) for r in rows]
        assert written == sorted(written, reverse=True)
        masked = scores[n].copy()
        masked[known.excluded[user]] = -np.inf
        best = known.target_ids[int(np.argmax(masked))]
        assert rows[0]["target_id"] == best  # the model's own best, as full ranking scores it
        assert written[0] == pytest.approx(float(masked.max()), rel=1e-5)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging file left behind


def test_bad_requests_are_refused_with_a_message_and_write_nothing(
    shop_and_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop, models = shop_and_model
    out = tmp_path / "top.csv"
    base = ["recommend-batch", "--data", str(shop), "--out", str(out)]
    assert main([*base, "--models", str(models), "--k", "0"]) == 2
    assert "--k must be between 1 and 1000" in capsys.readouterr().err
    assert main([*base, "--models", str(tmp_path / "none")]) == 1
    assert "no model in" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp_path)]) == 1  # not a model directory
    assert "bundlerec recommend-batch:" in capsys.readouterr().err
    assert main(["recommend-batch", "--data", str(tmp_path), "--models", str(models), "--out", str(out)]) == 1
    assert "items.csv" in capsys.readouterr().err
    assert not out.exists()
