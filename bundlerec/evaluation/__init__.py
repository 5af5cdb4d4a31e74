"""Offline evaluation under the protocols of FORMAT.md: full-ranking metrics, baselines (popularity,
item-kNN, BPR), and reports. Nothing here imports grpc; torch is imported only when BPR is fitted
and matplotlib only when a plot is drawn."""

from bundlerec.evaluation.baselines import BASELINES, fit_bpr, fit_item_knn, fit_popularity
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import EvalSplit, Scorer, Step, build_split
from bundlerec.evaluation.report import Report, format_table, plot_over_k, write_json
from bundlerec.evaluation.run import run_evaluation

__all__ = [
    "BASELINES",
    "EvalSplit",
    "Report",
    "Scorer",
    "Step",
    "build_split",
    "evaluate_scorer",
    "fit_bpr",
    "fit_item_knn",
    "fit_popularity",
    "format_table",
    "plot_over_k",
    "run_evaluation",
    "write_json",
]
