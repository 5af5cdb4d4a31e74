"""The co-occurrence part's item view on bundle data: each bundle predicted from the user's bundles
and from how many of every bundle's members the user's items are, chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from bundlerec.evaluation.metrics import evaluate_scorer  # noqa: E402
from bundlerec.evaluation.protocol import build_split  # noqa: E402
from bundlerec.ranking.features import FIRST_ID, PAD  # noqa: E402
from bundlerec.training.cooccurrence import (  # noqa: E402
    cosine_tables,
    item_view_tables,
    with_bundle_tables,
)
from bundlerec.training.data import prepare  # noqa: E402
from bundlerec.training.mix import choose_item_view  # noqa: E402
from bundlerec.training.model import BundleRanker, ModelConfig  # noqa: E402
from bundlerec.training.scorer import ModelScorer, PartScorer  # noqa: E402
from bundlerec.training.train import TrainSettings  # noqa: E402
from tests.harness.factories import youshu_sample  # noqa: E402


def dense_item_view(data, l2: float, share: float) -> tuple[np.ndarray, np.ndarray]:
    """The regression written out from the histories, in float64: (bundle → bundle weights,
    item → bundle weights), over every bundle some history or basket holds."""
    vocabulary = data.vocabulary
    n_items, n_bundles = vocabulary.num_item_rows, vocabulary.num_bundle_rows
    rows = []
    for steps in data.histories.values():
        bought, items = np.zeros(n_bundles), np.zeros(n_items)
        for step in steps:
            if step.bundle != PAD:
                bought[step.bundle] = 1
            elif step.item >= FIRST_ID:
                items[step.item] = 1
        rows.append((bought, items))
    membership = np.zeros((n_bundles, n_items))
    for bundle in range(FIRST_ID, n_bundles):
        members = vocabulary.bundle_members[bundle]
        membership[bundle, members[members != PAD]] = 1
        basket = np.zeros(n_bundles)
        basket[bundle] = 1
        rows.append((basket, membership[bundle].copy()))
    bought = np.stack([r[0] for r in rows])
    items = np.stack([r[1] for r in rows])
    features = np.hstack([bought, share * items @ membership.T])
    gram = features.T @ features + l2 * np.eye(2 * n_bundles)
    inverse = np.linalg.inv(gram)
    weights = inverse[:, :n_bundles] / -np.diag(inverse)[:n_bundles]
    weights[np.arange(n_bundles), np.arange(n_bundles)] = 0
    return weights[:n_bundles], share * membership.T @ weights[n_bundles:]


def test_the_item_view_is_the_regression_over_bundles_and_the_items_they_hold() -> None:
    data = prepare(youshu_sample(60), None, 32, order="set")
    n_items = data.vocabulary.num_item_rows
    k, l2, share = 20, 50.0, 0.3
    [(_, _, tables)] = item_view_tables(data, k, (share,), (l2,))
    bundle_weights, item_weights = dense_item_view(data, l2, share)
    assert not tables.item_weight.any()  # item tables are another's (with_bundle_tables)
    held = np.flatnonzero(np.abs(bundle_weights).sum(1) > 0)
    assert len(held) > 50
    for bundle in held[:: max(1, len(held) // 30)]:
        row = tables.bundle_weight[n_items + bundle]
        # the k strongest by magnitude, strongest first, with their own weights
        np.testing.assert_allclose(np.abs(row), -np.sort(-np.abs(bundle_weights[bundle]))[:k], rtol=2e-3, atol=1e-6)
        present = row != 0
        np.testing.assert_allclose(
            row[present], bundle_weights[bundle, tables.bundle_index[n_items + bundle][present]], rtol=2e-3, atol=1e-6
        )
    liked = np.flatnonzero(np.abs(item_weights).sum(1) > 0)
    assert len(liked) > 100  # items reach bundles through the bundles that hold them
    for item in liked[:: max(1, len(liked) // 30)]:
        row = tables.bundle_weight[item]
        np.testing.assert_allclose(np.abs(row), -np.sort(-np.abs(item_weights[item]))[:k], rtol=2e-3, atol=1e-6)
    # merged with other tables, the bundle tables are the item view's and the item tables the others'
    other = cosine_tables(data, k)
    merged = with_bundle_tables(other, tables)
    np.testing.assert_array_equal(merged.bundle_weight, tables.bundle_weight)
    np.testing.assert_array_equal(merged.item_weight, other.item_weight)


def test_the_item_view_is_validations_choice_and_the_tables_say_which() -> None:
    dataset = youshu_sample(150)
    data = prepare(dataset, None, 32, order="set")
    config = ModelConfig(data.vocabulary.num_item_rows, data.vocabulary.num_bundle_rows, 0, False, dim=8)
    model = BundleRanker(config, torch.from_numpy(data.item_text), torch.from_numpy(data.vocabulary.bundle_members))
    model.eval()
    scorer = ModelScorer("ours", model, dataset, data.vocabulary, None)
    split = build_split(dataset, "valid")
    settings = TrainSettings(wide_view_grid=(0.0, 0.03, 0.3), wide_view_l2_grid=(50.0, 500.0))
    cosine = cosine_tables(data, settings.neighbours)
    model.set_neighbours(cosine)
    lines: list[str] = []
    choose_item_view(scorer, data, split, settings, "NDCG@20", lines.append)
    tried = {}
    for line in lines:
        if line.startswith("item view l2"):
            words = line.split()
            tried[(float(words[5]), float(words[3]))] = float(line.split("NDCG@20 ")[1].split()[0])
    assert set(tried) == {(0.03, 50.0), (0.03, 500.0), (0.3, 50.0), (0.3, 500.0)}  # share 0 is "without"
    without = float(lines[-2].split("without it ")[1].rstrip(")"))
    # bundles without a row of their own sit out the comparison: the view changes the bundles' scale
    assert {line.split("without it ")[1] for line in lines if line.startswith("item view l2")} == {f"{without:.4f})"}
    best = max(tried, key=tried.get)
    assert tried[best] > without  # on this sample the items say much more than the few bundles
    c = model.config
    assert (c.wide_view_share, c.wide_view_l2) == best
    # the model holds the tables its config names, and their validation figure is the one logged
    [(_, _, expected)] = item_view_tables(data, c.neighbours, (c.wide_view_share,), (c.wide_view_l2,))
    np.testing.assert_array_equal(model.wide_bundle_weight.numpy(), expected.bundle_weight)
    np.testing.assert_array_equal(model.wide_item_weight.numpy(), cosine.item_weight)  # item tables kept
    model.wide_member_weight.fill_(0.0)
    figure = evaluate_scorer(split, PartScorer(scorer, "wide"), ks=(10, 20))["NDCG@20"]
    assert figure == pytest.approx(max(tried[best], without), abs=1e-4)
