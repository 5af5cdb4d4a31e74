"""Continuous training: the split by time, warm start, the promotion gate (`bundlerec retrain` on a
drifting demo shop), the models directory's pointer, and the services following it."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="retraining needs the train extra (torch)")

import torch

from bundlerec.commands.cli import main as bundlerec
from bundlerec.datasets import read_dataset
from bundlerec.datasets.demo import START, generate_demo_shop
from bundlerec.datasets.writer import write_dataset
from bundlerec.ranking import promotion
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.model import BundleRanker, ModelConfig
from bundlerec.training.retrain import DAY, time_split
from bundlerec.training.warm import WarmStart, apply
from tests.harness.models import Artifacts, models_with, publish
from tests.harness.servers import eventually, running_ranker

DAYS = 14


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("drifting") / "shop"
    generate_demo_shop(path, seed=5, users=400, items=400, bundles=60, days=DAYS, drift=True)
    return path


def test_a_drifting_shop_launches_products_and_bundles_in_its_second_half(shop: Path, tmp_path: Path) -> None:
    dataset = read_dataset(shop)
    half = START + DAYS * DAY // 2
    first: dict[str, int] = {}
    for e in dataset.events:
        first[e.target_id] = min(e.timestamp, first.get(e.target_id, e.timestamp))
    launched = [target for target, at in first.items() if at >= half]
    assert any(t.startswith("sku-") for t in launched) and any(t.startswith("bnd-") for t in launched)
    late = sum(1 for e in dataset.events if e.target_id in set(launched))
    assert late > 0.02 * sum(1 for e in dataset.events if e.timestamp >= half), "launches draw shoppers"
    assert not dataset.valid and not dataset.test, "nothing held out: splits are by time"
    generate_demo_shop(tmp_path / "again", seed=5, users=400, items=400, bundles=60, days=DAYS, drift=True)
    assert (tmp_path / "again" / "events.csv").read_bytes() == (shop / "events.csv").read_bytes()


def test_the_window_is_never_trained_on_and_holds_purchases_of_what_was_new_to_the_shopper(shop: Path) -> None:
    dataset = read_dataset(shop)
    train, start = time_split(dataset, 1)
    newest = max(e.timestamp for e in dataset.events)
    assert start == newest - DAY + 1
    assert max(e.timestamp for e in train.events) < start and train.test
    seen_before = {(e.user_id, e.target_id) for e in train.events if e.target_type == "item"}
    in_window = {
        (e.user_id, e.target_id)
        for e in dataset.events
        if e.timestamp >= start and e.event_type == "purchase" and e.target_type == "item"
    }
    assert {(r.user_id, r.target_id) for r in train.test} == in_window - seen_before, "what the ranking can hit"
    with pytest.raises(ValueError, match="nothing to train on"):
        time_split(dataset, DAYS + 1)


def test_a_warm_start_keeps_known_rows_by_id_and_starts_new_items_where_the_old_model_scored_them() -> None:
    old_vocab = Vocabulary.build(["a", "b", "c"], {"k1": ["a", "b"]}, 4)
    new_vocab = Vocabulary.build(["c", "new", "a"], {"k2": ["a", "new"], "k1": ["a", "b"]}, 4)

    def model(vocabulary: Vocabulary) -> BundleRanker:
        config = ModelConfig(vocabulary.num_item_rows, vocabulary.num_bundle_rows, 0, True, dim=8, layers=1)
        return BundleRanker(
            config, torch.zeros(vocabulary.num_item_rows, 1), torch.from_numpy(vocabulary.bundle_members)
        )

    torch.manual_seed(0)
    old, new = model(old_vocab), model(new_vocab)
    kept = apply(new, new_vocab, WarmStart(old.state_dict(), old_vocab, since=0))
    assert kept == {"items kept": 2, "items new": 1, "bundles kept": 1, "bundles new": 1}
    for item in ("a", "c"):
        assert torch.equal(new.item_id.weight[new_vocab.item(item)], old.item_id.weight[old_vocab.item(item)])
    assert torch.equal(new.item_id.weight[new_vocab.item("new")], old.item_id.weight[1]), "the unknown row"
    assert torch.equal(new.bundle_id.weight[new_vocab.bundle("k1")], old.bundle_id.weight[old_vocab.bundle("k1")])
    assert not new.bundle_id.weight[new_vocab.bundle("k2")].any(), "a new bundle starts as its members"
    assert torch.equal(new.blocks[0].qkv.weight, old.blocks[0].qkv.weight)


def shuffled(shop: Path, out: Path) -> Path:
    """The shop with every target before the evaluation window replaced by a random item: a model
    trained on it has learnt nothing true (the window itself is left as it was)."""
    dataset = read_dataset(shop)
    _, start = time_split(dataset, 1)
    rng = random.Random(0)
    items = list(dataset.items)
    events = [
        dataclasses.replace(e, target_type="item", target_id=rng.choice(items)) if e.timestamp < start else e
        for e in dataset.events
    ]
    info = json.loads((shop / "dataset.json").read_text())
    return write_dataset(out, items=dataset.items.values(), bundles=dataset.bundles.values(), events=events, info=info)


def retrain(data: Path, models: Path, *extra: str) -> int:
    return bundlerec(["retrain", "--data", str(data), "--models", str(models), "--no-text", "--epochs", "2", *extra])


def last_decision(models: Path) -> promotion.Decision:
    return promotion.decisions(models)[-1]


def test_the_gate_refuses_a_model_trained_on_shuffled_labels_and_promotes_a_better_one(
    shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    assert retrain(shop, models) == 0
    first = last_decision(models)
    assert first.decision == promotion.PROMOTED and promotion.serving_version(models) == first.version
    assert first.figures["candidate NDCG@10"] > first.figures["popularity NDCG@10"]

    assert retrain(shuffled(shop, tmp_path / "shuffled"), models, "--full") == 0
    bad = last_decision(models)
    assert bad.decision == promotion.REJECTED, bad.reason
    assert bad.figures["candidate NDCG@10"] < bad.figures["serving NDCG@10"] * 0.98
    assert promotion.serving_version(models) == first.version, "a rejected version never serves"
    assert (models / bad.version / "manifest.json").is_file(), "kept, with its report in the log"

    # an operator serves the bad one by hand; the next retrain beats it and takes over
    assert bundlerec(["models", "--models", str(models), "promote", bad.version]) == 0
    assert promotion.serving_version(models) == bad.version
    assert retrain(shop, models, "--full") == 0
    better = last_decision(models)
    assert better.decision == promotion.PROMOTED and better.previous == bad.version
    assert better.figures["candidate NDCG@10"] > better.figures["serving NDCG@10"]

    # rollback serves the version before the current one; list shows every decision
    assert bundlerec(["models", "--models", str(models), "rollback"]) == 0
    assert promotion.serving_version(models) == bad.version
    capsys.readouterr()
    assert bundlerec(["models", "--models", str(models), "list"]) == 0
    listing = capsys.readouterr().out
    assert f"* {bad.version}" in listing and "rejected" in listing and better.version in listing
    assert bundlerec(["models", "--models", str(models), "promote", "nonexistent"]) == 2


def test_a_warm_retrain_carries_the_lineage_until_it_is_too_old(
    shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundlerec.ranking.artifact import ModelManifest

    models = tmp_path / "models"
    dataset = read_dataset(shop)
    _, start = time_split(dataset, 1)
    earlier = write_dataset(  # the shop as it was a day earlier
        tmp_path / "earlier",
        items=dataset.items.values(),
        bundles=dataset.bundles.values(),
        events=[e for e in dataset.events if e.timestamp < start],
        info=json.loads((shop / "dataset.json").read_text()),
    )
    assert retrain(earlier, models) == 0
    first = ModelManifest.read(models / last_decision(models).version)
    assert retrain(shop, models) == 0
    warm = last_decision(models)
    manifest = ModelManifest.read(models / warm.version)
    assert warm.details["warm_start"] is True
    assert manifest.training["max_epochs"] <= 2 and manifest.data_until == start
    assert len(manifest.training["wide_l2_grid"]) == 1, "the serving version's weighing, not a new search"
    assert manifest.lineage_started == first.lineage_started, "a warm start is as old as what it started from"

    # past the maximum age: from scratch, the old version no longer blocks it, old versions go
    serving = promotion.serving_version(models)
    assert retrain(shop, models, "--max-model-age-days", "0.000001") == 0
    fresh = last_decision(models)
    assert fresh.details["warm_start"] is False
    assert fresh.decision == promotion.PROMOTED and "past the maximum age" in fresh.reason, fresh.reason
    assert ModelManifest.read(models / fresh.version).lineage_started > first.lineage_started
    assert not (models / serving).exists() and not (models / first.version).exists(), "pruned: too old"
    monkeypatch.setenv("BUNDLEREC_RETRAIN_MAX_MODEL_AGE_DAYS", "0.000001")
    assert bundlerec(["models", "--models", str(models), "promote", fresh.version]) == 2, "too old to serve"
    assert bundlerec(["models", "--models", str(models), "promote", fresh.version, "--force"]) == 0


def test_the_pointer_decides_what_serves_and_survives_bad_input(tmp_path: Path, artifacts: Artifacts) -> None:
    models = models_with(tmp_path / "models", artifacts.plain)
    v1, v2, v3 = (publish(artifacts.plain, models, f"2999010{n}-000000").name for n in (1, 2, 3))
    first = artifacts.plain.name
    assert promotion.serving_version(models) == v3, "no pointer: the newest, as before the gate"
    assert promotion.pin_serving(models) == v3 and promotion.serving_version(models) == v3
    for version in (v1, v2, v3):
        promotion.promote(models, version, "test")
    assert promotion.rollback(models).version == v2
    assert promotion.rollback(models).version == v1, "two rollbacks go two versions back"
    promotion.record(models, promotion.Decision(first, promotion.REJECTED, "test"))
    assert promotion.servable_versions(models) == [v1, v2, v3], "a rejected version is no fallback"
    with pytest.raises(promotion.PromotionError):
        promotion.promote(models, "missing", "test")
    (models / promotion.SERVING_FILE).write_text("{not json")
    assert promotion.serving_version(models) == "", "an unreadable pointer serves nothing new"
    (models / promotion.DECISIONS_FILE).write_text("garbage\n" + (models / promotion.DECISIONS_FILE).read_text())
    assert len(promotion.decisions(models)) == 6, "a line that does not parse is skipped"


async def test_the_ranker_and_the_candidate_service_follow_promotions(tmp_path: Path, artifacts: Artifacts) -> None:
    from bundlerec.candidate.collaborative import ModelWatcher

    models = models_with(tmp_path / "models", artifacts.plain, artifacts.text)
    newest = max(artifacts.plain.name, artifacts.text.name)
    older = min(artifacts.plain.name, artifacts.text.name)
    promotion.promote(models, older, "test")
    watcher = ModelWatcher(models)
    watcher.initial()
    assert watcher.version == older
    async with running_ranker(models, poll_seconds=0.1) as server:
        assert await server.version() == older, "the pointer's version, not the newest"
        promotion.promote(models, newest, "test")

        async def follows() -> bool:
            return await server.version() == newest

        await eventually(follows)
        promotion.rollback(models)

        async def rolled_back() -> bool:
            return await server.version() == older

        await eventually(rolled_back)
    assert watcher.poll()[0] is False, "the candidate service's watcher is already on the serving version"
    promotion.promote(models, newest, "test")
    assert watcher.poll()[0] is True and watcher.version == newest
    promotion.rollback(models)
    assert watcher.poll()[0] is True and watcher.version == older, "a rollback is followed too"


def test_a_version_trained_on_the_window_is_no_reference_and_too_few_shoppers_decide_nothing(
    shop: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    args = ["train", "--data", str(shop), "--out", str(models), "--no-text", "--epochs", "1"]
    assert bundlerec([*args, "--two-tower-negatives", "0"]) == 0  # by hand, on everything: the window too
    assert retrain(shop, models) == 0
    decision = last_decision(models)
    assert decision.details["warm_start"] is False, "a warm start would carry the window into the new version"
    assert decision.decision == promotion.PROMOTED and "was trained on the window" in decision.reason
    assert "serving NDCG@10" in decision.figures, "its figure is still logged"
    with pytest.raises(ValueError, match="fewer than the 10000"):
        time_split(read_dataset(shop), 1, min_shoppers=10_000)
    assert retrain(shop, models, "--min-window-shoppers", "10000") == 1
