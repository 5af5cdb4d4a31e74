"""Choosing on validation how the co-occurrence part weighs pairs and how it mixes with the network.

After the network has trained (train.py), its co-occurrence tables are filled with the EASE L2 and
cosine share whose tables alone validate best (searching past an edge of the L2 grid that wins),
bundles without a row of their own get the factor that puts their members' co-occurrence on the
bundles' scale, the text neighbours are blended in with the share and gate whose mix validates best
(near-ties going to the one that serves rare targets best), and the mix of the two parts is the
factor whose blend validates best.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bundlerec.evaluation.metrics import COLD, evaluate_scorer, hit_name
from bundlerec.evaluation.protocol import EvalSplit
from bundlerec.ranking.features import FIRST_ID
from bundlerec.training.cooccurrence import (
    NeighbourTables,
    blend_tables,
    cosine_tables,
    ease_tables,
    item_view_tables,
    text_tables,
    with_bundle_tables,
)
from bundlerec.training.data import TrainingData
from bundlerec.training.scorer import ModelScorer, PartScorer

if TYPE_CHECKING:
    from bundlerec.training.model import BundleRanker
    from bundlerec.training.train import TrainSettings

Progress = Callable[[str], None]


def choose_wide_tables(
    scorer: ModelScorer,
    data: TrainingData,
    split: EvalSplit,
    settings: TrainSettings,
    metric_name: str,
    progress: Progress,
) -> None:
    """Fills the model's co-occurrence tables: cosine, or EASE blended with cosine, with the L2 of
    `wide_l2_grid` and the share of `wide_cosine_grid` whose tables alone reach the best validation
    metric (ties keep the earlier pair). Where an edge of the L2 grid wins, the search goes on past
    it (a quarter or four times the value, at most WIDEN_STEPS times) while the figure improves: the
    best value of another dataset may lie outside the grid. Each L2's own figure is logged, so the
    search can be read. The choice is kept in the model's config, for the refit on next-item data
    and for the manifest."""
    model = scorer.model
    if settings.neighbours == 0:
        return
    cosine = cosine_tables(data, settings.neighbours)
    if settings.wide == "cosine":
        model.set_neighbours(cosine)
        return
    if settings.wide != "ease":
        raise ValueError(f"wide must be ease or cosine, got {settings.wide!r}")
    best: tuple[float, float, float, NeighbourTables] | None = None

    def weigh(l2: float, note: str = "") -> tuple[float, float, float, NeighbourTables]:
        started = time.monotonic()
        ease = ease_tables(data, settings.neighbours, l2)
        seconds = time.monotonic() - started
        own: tuple[float, float, float, NeighbourTables] | None = None
        for share in settings.wide_cosine_grid:
            tables = blend_tables(ease, cosine, share) if share else ease
            model.set_neighbours(tables)
            metric = evaluate_scorer(split, PartScorer(scorer, "wide"), ks=(10, 20))[metric_name]
            if own is None or metric > own[0]:
                own = (metric, l2, share, tables)
        assert own is not None
        leader = own if best is None or own[0] > best[0] else best
        progress(
            f"co-occurrence EASE l2 {l2:g} (inverted in {seconds:.0f} s): valid {metric_name} {own[0]:.4f} "
            f"(cosine share {own[2]:g}{note}); best so far {leader[0]:.4f} at l2 {leader[1]:g}"
        )
        return own

    for l2 in settings.wide_l2_grid:
        own = weigh(l2)
        if best is None or own[0] > best[0]:
            best = own
    assert best is not None
    grid = sorted(settings.wide_l2_grid)
    if len(grid) > 1 and best[1] in (grid[0], grid[-1]):
        factor = 0.25 if best[1] == grid[0] else 4.0
        for _ in range(WIDEN_STEPS):
            own = weigh(best[1] * factor, "; past the grid's edge")
            if own[0] <= best[0]:
                break
            best = own
    metric, model.config.wide_l2, model.config.wide_cosine_share, tables = best
    model.set_neighbours(tables)
    progress(
        f"co-occurrence part: EASE l2 {model.config.wide_l2:g} + {model.config.wide_cosine_share:g} cosine, "
        f"valid {metric_name} {metric:.4f} on its own"
    )
    choose_item_view(scorer, data, split, settings, metric_name, progress)
    choose_member_weight(scorer, data, split, metric_name, progress)


def choose_item_view(
    scorer: ModelScorer,
    data: TrainingData,
    split: EvalSplit,
    settings: TrainSettings,
    metric_name: str,
    progress: Progress,
) -> None:
    """Bundle data: replaces the bundle tables with the item view's (cooccurrence.item_view_tables)
    for the share of `wide_view_grid` and the L2 of `wide_view_l2_grid` whose tables alone validate
    best, when that beats the tables as they are (a tie keeps them). Bundles without a row of their
    own are left out of the comparison (member weight 0): the item view changes the scale of the
    bundles' scores, and their factor is chosen after, for the tables kept (choose_member_weight)."""
    model = scorer.model
    shares = [share for share in settings.wide_view_grid if share > 0]
    if data.task != "bundle" or data.vocabulary.num_bundle_rows <= FIRST_ID or not shares:
        return
    base = _tables(model)
    model.wide_member_weight.fill_(0.0)
    without = evaluate_scorer(split, PartScorer(scorer, "wide"), ks=(10, 20))[metric_name]
    # (metric, rank in the grids' order, L2 first: the earlier of equal figures wins, "without" first)
    l2s = settings.wide_view_l2_grid
    best: tuple[float, int, float, float, NeighbourTables] = (without, -1, 0.0, 0.0, base)
    started = time.monotonic()
    for share, l2, view in item_view_tables(data, settings.neighbours, shares, l2s):
        tables = with_bundle_tables(base, view)
        model.set_neighbours(tables)
        metric = evaluate_scorer(split, PartScorer(scorer, "wide"), ks=(10, 20))[metric_name]
        progress(
            f"item view l2 {l2:g} share {share:g} ({time.monotonic() - started:.0f} s): "
            f"valid {metric_name} {metric:.4f} (without it {without:.4f})"
        )
        started = time.monotonic()
        rank = l2s.index(l2) * len(shares) + shares.index(share)
        if metric > best[0] or (metric == best[0] and rank < best[1]):
            best = (metric, rank, share, l2, tables)
    metric, _, model.config.wide_view_share, model.config.wide_view_l2, tables = best
    model.set_neighbours(tables)
    kept = f"share {best[2]:g}, l2 {best[3]:g}" if best[2] else "not kept"
    progress(f"item view: {kept}, valid {metric_name} {metric:.4f} on its own")


WIDEN_STEPS = 3  # L2 values tried past an edge of the grid that won, each a factor 4 further


MEMBER_WEIGHTS = (1.0, 0.3, 0.1, 0.03, 0.0)


def choose_member_weight(
    scorer: ModelScorer, data: TrainingData, split: EvalSplit, metric_name: str, progress: Progress
) -> None:
    """Bundle data: the factor from the item scale of the co-occurrence part to the bundle scale,
    for candidates without a row of their own (new bundles, bundles built by the gateway), chosen
    on validation with the part alone (ties keep the larger). On Youshu at 1, such bundles took a
    quarter of every top 20 and cost 0.02 NDCG@20."""
    if data.task != "bundle" or data.vocabulary.num_bundle_rows <= FIRST_ID:
        return
    model = scorer.model
    best: tuple[float, float] | None = None
    for weight in MEMBER_WEIGHTS:
        model.wide_member_weight.fill_(weight)
        metric = evaluate_scorer(split, PartScorer(scorer, "wide"), ks=(10, 20))[metric_name]
        if best is None or metric > best[0]:
            best = (metric, weight)
    assert best is not None
    model.wide_member_weight.fill_(best[1])
    progress(f"bundles without a row: members' co-occurrence times {best[1]:g}, valid {metric_name} {best[0]:.4f}")


# Two validation figures closer than this (relative) are a tie: with 2,000 validation users the
# headline metric's standard error is several per cent of its value.
NEAR_TIE = 0.01


def choose_text_tables(
    scorer: ModelScorer,
    data: TrainingData,
    split: EvalSplit,
    settings: TrainSettings,
    metric_name: str,
    progress: Progress,
) -> None:
    """Blends the text neighbours (cooccurrence.text_tables) into the co-occurrence tables with the
    share of `wide_text_grid` and the gate of `wide_text_gate_grid` whose mix with the network (each
    at its best factor) validates best. Among the pairs within NEAR_TIE of the best, the one with the
    best figure on rare targets (the cold subset) is kept, the headline figure deciding between equal
    ones: the headline metric cannot tell near-ties apart, and the rare targets are what the text is
    for. Share 0 (no text) competes too."""
    model = scorer.model
    shares = [share for share in settings.wide_text_grid if share > 0]
    if not model.config.neighbours or not data.item_text.shape[1] or not shares:
        return
    base = NeighbourTables(*(table.copy() for table in _tables(model)))
    neural, _ = scorer.parts(split, split.users)
    cold = f"{hit_name(data.task)}@{metric_name.split('@')[1]} {COLD}"  # the headline hit metric, cold
    tried: list[tuple[float, float, float, float, NeighbourTables]] = []  # metric, cold, share, gate, tables

    def weigh(share: float, gate: float, tables: NeighbourTables) -> None:
        model.set_neighbours(tables)
        _, wide = scorer.parts(split, split.users, neural=False)
        metrics = _best_mix(neural, wide, split, metric_name)[2]
        tried.append((metrics[metric_name], metrics.get(cold, 0.0), share, gate, tables))
        progress(
            f"text neighbours share {share:g} gate {gate:g}: valid {metric_name} {metrics[metric_name]:.4f}, "
            f"{cold} {metrics.get(cold, float('nan')):.4f}"
        )

    weigh(0.0, 0.0, base)
    gates = settings.wide_text_gate_grid
    for gate, text in zip(gates, text_tables(data, model.config.neighbours, gates), strict=True):
        for share in shares:
            weigh(share, gate, blend_tables(base, text, share))
    best = max(figure for figure, *_ in tried)
    metric, _, model.config.wide_text_share, model.config.wide_text_gate, tables = max(
        (entry for entry in tried if entry[0] >= best * (1 - NEAR_TIE)), key=lambda entry: (entry[1], entry[0])
    )  # the best cold figure among the near-ties; among equal ones (none cold: all 0), the best figure
    model.set_neighbours(tables)
    progress(
        f"text neighbours: share {model.config.wide_text_share:g}, gate {model.config.wide_text_gate:g} "
        f"(valid {metric_name} {metric:.4f}; the best was {best:.4f})"
    )


def _tables(model: BundleRanker) -> NeighbourTables:
    return NeighbourTables(*(getattr(model, f"wide_{name}").cpu().numpy() for name in NeighbourTables._fields))


WIDE_FACTORS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 32.0, 1000.0)


def fit_wide_weight(scorer: ModelScorer, split: EvalSplit, metric_name: str, progress: Progress) -> dict[str, float]:
    """Chooses the mix of the neural and the co-occurrence part on validation, whose targets the
    co-occurrence counts never saw (on training examples the counts include the very pair being
    predicted, so the mix cannot be learned with the network). With `unit` the ratio of the two
    parts' spreads, factor f scores neural / (1 + f) + wide * unit * f / (1 + f): the ranking of
    neural + f * unit * wide, at the scale of the larger part (float32 keeps its precision). Ties
    keep the smaller factor. Returns the chosen mix's validation metrics."""
    neural, wide = scorer.parts(split, split.users)
    factor, unit, metrics = _best_mix(neural, wide, split, metric_name)
    scorer.model.neural_weight.fill_(1 / (1 + factor))
    scorer.model.wide_weight.fill_(unit * factor / (1 + factor))
    rows = {user: n for n, user in enumerate(split.users)}
    neural_only = evaluate_scorer(split, _Precomputed(neural, rows), ks=(10, 20))[metric_name]
    progress(
        f"co-occurrence factor {factor:g}: valid {metric_name} {neural_only:.4f} without it, "
        f"{metrics[metric_name]:.4f} with it"
    )
    return metrics


def _best_mix(
    neural: np.ndarray, wide: np.ndarray, split: EvalSplit, metric_name: str
) -> tuple[float, float, dict[str, float]]:
    """(factor, unit, metrics) of the WIDE_FACTORS mix of the two parts that validates best."""
    unit = float(neural.std() / wide.std()) if wide.std() > 0 else 0.0
    rows = {user: n for n, user in enumerate(split.users)}
    best: tuple[float, dict[str, float]] | None = None
    for factor in WIDE_FACTORS if unit else (0.0,):
        combined = _Precomputed(
            np.float32(1 / (1 + factor)) * neural + np.float32(unit * factor / (1 + factor)) * wide, rows
        )
        metrics = evaluate_scorer(split, combined, ks=(10, 20))
        if best is None or metrics[metric_name] > best[1][metric_name]:
            best = (factor, metrics)
    assert best is not None
    return best[0], unit, best[1]


@dataclass
class _Precomputed:
    scores: np.ndarray
    rows: dict[str, int]
    name: str = "ours"

    def score(self, split: EvalSplit, users: list[str]) -> np.ndarray:
        return self.scores[[self.rows[user] for user in users]]
