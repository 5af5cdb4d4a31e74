"""One call that evaluates our model, its variants and the baselines on one split of a dataset.

The split is built once, so every row of the report is ranked under the same histories, exclusions
and positives; baselines are fitted on that split's histories only (see baselines.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from bundlerec.datasets.reader import Dataset
from bundlerec.evaluation.baselines import BASELINES
from bundlerec.evaluation.metrics import evaluate_scorer, hit_name
from bundlerec.evaluation.protocol import EvalSplit, Scorer, build_split
from bundlerec.evaluation.report import OURS, Report

KS = (5, 10, 20, 40)  # every cut-off the table and the plot over K use


def run_evaluation(
    dataset: Dataset,
    *,
    split: str = "test",
    ours: Scorer | None = None,
    extra: Mapping[str, Scorer] | None = None,
    baselines: Sequence[str] = ("popularity", "item_knn", "bpr"),
    seed: int = 0,
    progress: Callable[[str], object] = print,
) -> Report:
    """Evaluates `ours`, each of `extra` (by row name) and the named baselines on `split`."""
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    started = time.perf_counter()
    data = build_split(dataset, split)
    progress(
        f"{dataset.info.name} {split}: {len(data.users)} users, {len(data.target_ids)} targets, "
        f"split built in {time.perf_counter() - started:.1f} s"
    )
    report = Report(dataset.info.name, data.task, split, None, {}, [dict(r) for r in dataset.info.reference_results])
    for name in baselines:
        started = time.perf_counter()
        scorer = BASELINES[name](data, seed=seed)
        fitted = time.perf_counter() - started
        report.baselines[name] = _evaluate(data, name, scorer, report, progress, fitted)
    if ours is not None:
        report.ours = _evaluate(data, OURS, ours, report, progress, 0.0)
    for name, scorer in (extra or {}).items():
        report.extra[name] = _evaluate(data, name, scorer, report, progress, 0.0)
    return report


def _evaluate(
    data: EvalSplit, name: str, scorer: Scorer, report: Report, progress: Callable[[str], object], fitted: float
) -> dict[str, float]:
    started = time.perf_counter()
    metrics = evaluate_scorer(data, scorer, ks=KS)
    scored = time.perf_counter() - started
    report.seconds[name] = round(fitted + scored, 2)
    headline = f"{hit_name(data.task)}@{10 if data.task == 'next_item' else 20}"
    fit = f"fitted in {fitted:.1f} s, " if fitted else ""
    progress(f"  {name}: {fit}evaluated in {scored:.1f} s, {headline} {metrics[headline]:.4f}")
    return metrics
