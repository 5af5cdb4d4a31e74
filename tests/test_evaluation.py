"""The evaluation harness: metric values worked out by hand, the protocol rules of FORMAT.md on tiny
datasets written to tmp dirs, the baselines on a small real dataset, and the report files.

The hand-made splits are small enough that every expected number below can be checked with a pencil:
the comments give the ranking each one follows from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bundlerec.datasets import Dataset, DatasetInfo, read_dataset
from bundlerec.evaluation import (
    EvalSplit,
    Report,
    Step,
    build_split,
    evaluate_scorer,
    fit_bpr,
    fit_item_knn,
    fit_popularity,
    format_table,
    plot_over_k,
    run_evaluation,
    write_json,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


@dataclass
class FixedScores:
    """A scorer that returns a given matrix row per user."""

    rows: dict[str, list[float]]
    name: str = "fixed"

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        return np.array([self.rows[u] for u in users], dtype=np.float32)


@dataclass
class RandomScores:
    seed: int = 0
    name: str = "random"

    def score(self, split: EvalSplit, users: Sequence[str]) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.random((len(users), len(split.target_ids)), dtype=np.float32)


def _split(task: str, positives: dict[str, list[int]], excluded: dict[str, list[int]], counts: list[int]) -> EvalSplit:
    dataset = Dataset(Path("."), DatasetInfo(name="hand", task=task), {}, {}, [], [], [])  # type: ignore[arg-type]
    users = sorted(positives)
    return EvalSplit(
        dataset=dataset,
        task=task,
        split="test",
        target_ids=[f"t{n}" for n in range(len(counts))],
        users=users,
        histories={u: [] for u in users},
        positives={u: np.array(positives[u], dtype=np.int64) for u in users},
        excluded={u: np.array(excluded.get(u, []), dtype=np.int64) for u in users},
        training_counts=np.array(counts),
    )


# -- metrics ----------------------------------------------------------------------------------------


def test_bundle_metrics_match_the_hand_computed_values() -> None:
    # a: t1 is masked (history), so the ranking is t2 t3 t0 t5 t4; positives t0 (3rd) and t3 (2nd).
    # b: ranking t5 t3 t2 t1 t0 t4; positive t5 (1st).
    # t0 and t5 have < 5 training interactions: cold.
    split = _split("bundle", {"a": [0, 3], "b": [5]}, {"a": [1]}, counts=[0, 9, 9, 10, 9, 4])
    scorer = FixedScores({"a": [0.5, 1.0, 0.9, 0.8, 0.1, 0.2], "b": [0.1, 0.2, 0.3, 0.4, 0.0, 0.9]})
    m = evaluate_scorer(split, scorer, ks=(2, 4))
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)  # the discounts of ranks 2 and 3
    assert m["Recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["NDCG@2"] == pytest.approx((d2 / (1 + d2) + 1) / 2)
    assert m["Recall@4"] == pytest.approx(1.0)
    assert m["NDCG@4"] == pytest.approx(((d2 + d3) / (1 + d2) + 1) / 2)
    assert m["Coverage@2"] == pytest.approx(3 / 6)  # {t2, t3} ∪ {t5, t3}
    assert m["Coverage@4"] == pytest.approx(5 / 6)  # {t2, t3, t0, t5} ∪ {t5, t3, t2, t1}
    # cold: a's only cold positive is t0 (3rd), b's is t5 (1st)
    assert m["Recall@2 cold<5"] == pytest.approx(0.5)
    assert m["Recall@4 cold<5"] == pytest.approx(1.0)
    assert m["NDCG@2 cold<5"] == pytest.approx(0.5)
    assert m["NDCG@4 cold<5"] == pytest.approx((d3 + 1) / 2)
    assert m["cold<5 positives"] == 2
    assert "HR@2" not in m


def test_next_item_metrics_are_hit_rates_and_batches_do_not_change_them() -> None:
    # u1: positive t2 ranked 2nd; u2: positive t0 ranked 4th of 4 (t3 masked); u3: positive t1 is in
    # its history, so it is masked and can never be a hit.
    split = _split("next_item", {"u1": [2], "u2": [0], "u3": [1]}, {"u2": [3], "u3": [1]}, counts=[5, 5, 5, 5, 5])
    scorer = FixedScores(
        {
            "u1": [0.1, 0.2, 0.8, 0.9, 0.0],
            "u2": [0.1, 0.5, 0.6, 0.9, 0.7],
            "u3": [0.1, 0.9, 0.2, 0.3, 0.4],
        }
    )
    whole = evaluate_scorer(split, scorer, ks=(1, 2, 10))
    assert whole["HR@1"] == 0.0
    assert whole["HR@2"] == pytest.approx(1 / 3)
    assert whole["NDCG@2"] == pytest.approx((1 / math.log2(3)) / 3)
    # K = 10 is more than the targets left: u2's list has 4 (t3 masked), its hit at rank 4 counts.
    assert whole["HR@10"] == pytest.approx(2 / 3)
    assert whole["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert whole["Coverage@1"] == pytest.approx(2 / 5)  # u1 t3, u2 t4, u3 t4
    assert "HR@1 cold<5" not in whole and whole["cold<5 positives"] == 0
    assert evaluate_scorer(split, scorer, ks=(1, 2, 10), batch_users=1) == whole


def test_a_scorer_with_the_wrong_shape_is_refused() -> None:
    split = _split("bundle", {"a": [0]}, {}, counts=[1, 1])
    with pytest.raises(ValueError, match="expected"):
        evaluate_scorer(split, FixedScores({"a": [1.0, 2.0, 3.0]}), ks=(1,))


# -- protocol ---------------------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.fixture
def next_item_dataset(tmp_path: Path) -> Dataset:
    # u1's events are out of time order in the file; u3 has no events at all (a diginetica session)
    return read_dataset(
        _write(
            tmp_path / "seq",
            {
                "dataset.json": json.dumps({"name": "seq", "task": "next_item", "timestamps": "unix"}),
                "items.csv": "item_id,title,category,brand,price,attributes\n"
                + "".join(f"i{n},,,,,\n" for n in range(1, 6)),
                "events.csv": "user_id,event_type,target_type,target_id,timestamp,value\n"
                "u1,purchase,item,i1,20,\nu1,view,item,i2,10,\nu2,purchase,item,i3,5,\nu2,view,item,i1,5,\n",
                "valid.csv": "user_id,target_id\nu1,i3\nu2,i4\nu3,i5\n",
                "test.csv": "user_id,target_id\nu1,i4\nu2,i5\nu3,i1\n",
            },
        )
    )


def _ids(split: EvalSplit, indices: np.ndarray) -> list[str]:
    return [split.target_ids[i] for i in indices]


def test_next_item_valid_history_is_events_alone(next_item_dataset: Dataset) -> None:
    split = build_split(next_item_dataset, "valid")
    assert split.users == ["u1", "u2", "u3"]
    assert split.target_ids == ["i1", "i2", "i3", "i4", "i5"]
    assert split.histories["u1"] == [Step("item", "i2", "view", 10), Step("item", "i1", "purchase", 20)]
    assert [s.target_id for s in split.histories["u2"]] == ["i3", "i1"]  # equal timestamps: file order
    assert split.histories["u3"] == []
    assert _ids(split, split.positives["u1"]) == ["i3"]
    assert _ids(split, split.excluded["u1"]) == ["i1", "i2"]
    assert len(split.excluded["u3"]) == 0
    assert split.training_counts.tolist() == [2, 1, 1, 0, 0]


def test_next_item_test_history_ends_with_the_valid_row(next_item_dataset: Dataset) -> None:
    split = build_split(next_item_dataset, "test")
    assert split.histories["u1"][-1] == Step("item", "i3", "purchase", 21)
    assert split.histories["u3"] == [Step("item", "i5", "purchase", 0)]
    assert _ids(split, split.positives["u1"]) == ["i4"]
    assert _ids(split, split.excluded["u1"]) == ["i1", "i2", "i3"]
    assert _ids(split, split.excluded["u3"]) == ["i5"]
    assert split.training_counts.tolist() == [2, 1, 2, 1, 1]  # the valid rows are training data now


@pytest.fixture
def bundle_dataset(tmp_path: Path) -> Dataset:
    # u2 only ever liked an item; b3 contains it.
    return read_dataset(
        _write(
            tmp_path / "bun",
            {
                "dataset.json": json.dumps({"name": "bun", "task": "bundle", "timestamps": "none"}),
                "items.csv": "item_id,title,category,brand,price,attributes\n"
                + "".join(f"i{n},,,,,\n" for n in range(1, 5)),
                "bundles.csv": "bundle_id,item_id\nb1,i1\nb1,i2\nb2,i3\nb3,i2\nb3,i4\n",
                "events.csv": "user_id,event_type,target_type,target_id,timestamp,value\n"
                "u1,purchase,bundle,b1,,\nu1,like,item,i3,,\nu2,like,item,i4,,\nu3,purchase,bundle,b1,,\n",
                "valid.csv": "user_id,target_id\nu1,b2\n",
                "test.csv": "user_id,target_id\nu1,b3\nu2,b1\nu2,b3\n",
            },
        )
    )


def test_bundle_split_masks_only_bundles_from_events(bundle_dataset: Dataset) -> None:
    split = build_split(bundle_dataset, "test")
    assert split.target_ids == ["b1", "b2", "b3"]
    assert split.users == ["u1", "u2"]
    assert _ids(split, split.excluded["u1"]) == ["b1"]  # valid.csv's b2 is not history at test time
    assert len(split.excluded["u2"]) == 0
    assert _ids(split, split.positives["u2"]) == ["b1", "b3"]
    assert split.training_counts.tolist() == [2, 0, 0]
    assert build_split(bundle_dataset, "valid").users == ["u1"]
    with pytest.raises(ValueError, match="split"):
        build_split(bundle_dataset, "train")


def test_baselines_on_a_tiny_bundle_dataset(bundle_dataset: Dataset) -> None:
    split = build_split(bundle_dataset, "test")
    popularity = fit_popularity(split).score(split, ["u1", "u2"])
    assert popularity[0].tolist() == popularity[1].tolist()
    assert popularity[0, 0] > popularity[0, 1] > popularity[0, 2]  # b1 bought twice; then file order
    knn = fit_item_knn(split).score(split, ["u2"])[0]
    assert knn[2] > 0.1 > knn[1]  # the item-only user reaches b3 through its member i4
    bpr = fit_bpr(split, epochs=3).score(split, ["u1", "u2"])
    assert bpr.shape == (2, 3) and bpr.dtype == np.float32
    assert np.array_equal(bpr, fit_bpr(split, epochs=3).score(split, ["u1", "u2"]))  # same seed, same model


# -- baselines on real data -------------------------------------------------------------------------


@needs_shared_data
def test_baselines_beat_random_and_learned_ones_beat_popularity() -> None:
    split = build_split(read_dataset(SHARED_DATA / "amazon-scientific"), "valid")
    hr = {"random": evaluate_scorer(split, RandomScores())["HR@10"]}
    for name, fit in (("popularity", fit_popularity), ("item_knn", fit_item_knn)):
        hr[name] = evaluate_scorer(split, fit(split))["HR@10"]
    hr["bpr"] = evaluate_scorer(split, fit_bpr(split, epochs=40))["HR@10"]
    assert hr["random"] < 0.02  # 10 of ~1,580 items
    assert all(hr[name] > 3 * hr["random"] for name in ("popularity", "item_knn", "bpr")), hr
    assert hr["item_knn"] > hr["popularity"] and hr["bpr"] > hr["popularity"], hr


# -- reports ----------------------------------------------------------------------------------------


def test_run_evaluation_writes_a_report(next_item_dataset: Dataset, tmp_path: Path) -> None:
    messages: list[str] = []
    ours = RandomScores(seed=1)
    report = run_evaluation(
        next_item_dataset,
        ours=ours,
        extra={"two-stage": RandomScores(seed=2)},
        baselines=("popularity", "item_knn"),
        progress=messages.append,
    )
    report.published = [
        {"model": "SASRec", "metric": "HR@10", "value": 0.0605, "protocol": "S3-Rec full ranking", "verified": True}
    ]
    assert report.ours is not None and set(report.baselines) == {"popularity", "item_knn"}
    assert {"HR@5", "HR@10", "HR@20", "HR@40", "NDCG@10", "Coverage@20"} <= set(report.ours)
    assert any("item_knn" in m for m in messages)

    write_json(report, tmp_path / "report.json")
    document = json.loads((tmp_path / "report.json").read_text())
    assert list(document) == ["dataset", "task", "split", "ours", "baselines", "extra", "published", "seconds"]
    assert document["dataset"] == "seq" and document["task"] == "next_item" and document["split"] == "test"
    assert set(document["extra"]) == {"two-stage"} and document["published"][0]["model"] == "SASRec"

    table = format_table(report).splitlines()
    rows = [line.split()[0] for line in table[3:7]]
    assert rows == ["ours", "popularity", "item_knn", "two-stage"]
    assert "HR@10" in table[1] and "NDCG@20" in table[1] and "HR@10 cold<5" in table[1]
    assert any(line.startswith("SASRec [1]") and "0.0605" in line for line in table)
    assert "[1] protocol: S3-Rec full ranking; verified: True" in table

    plot_over_k(report, tmp_path / "over_k.png")
    assert (tmp_path / "over_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_evaluation_refuses_an_unknown_baseline(next_item_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        run_evaluation(next_item_dataset, baselines=("lightgcn",), progress=lambda _: None)


def test_report_without_ours_lists_the_baselines_first() -> None:
    report = Report("d", "bundle", "valid", None, {"popularity": {"Recall@20": 0.2}}, [])
    table = format_table(report)
    assert table.splitlines()[3].startswith("popularity") and "0.2000" in table and "-" in table


@pytest.mark.slow
def test_the_evaluate_command_writes_its_figures_into_a_folder_it_makes(tmp_path: Path) -> None:
    """`bundlerec evaluate` as the README gives it, on a fresh working directory: the --json and
    --plot folders need not exist; one that cannot be made is refused before the run, not after."""
    pytest.importorskip("torch", reason="the command trains a model (train extra)")
    import subprocess

    from bundlerec.datasets.demo import generate_demo_shop
    from tests.harness.processes import BUNDLEREC

    generate_demo_shop(tmp_path / "shop", seed=4, users=40, items=100, bundles=10)
    out = tmp_path / "var" / "eval" / "shop.json"
    command = [BUNDLEREC, "evaluate", "--data", str(tmp_path / "shop"), "--no-text", "--epochs", "1", "--dim", "16"]
    command += ["--two-stage-users", "0", "--baselines", "popularity", "--threads", "1", "--out", str(tmp_path / "m")]
    done = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["ours"] and out.with_suffix(".png").is_file()
    refused = subprocess.run(
        [*command, "--json", str(out / "under-a-file" / "x.json")], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "--json" in refused.stderr and "cannot create its folder" in refused.stderr
    assert "epoch" not in refused.stderr  # refused before training
