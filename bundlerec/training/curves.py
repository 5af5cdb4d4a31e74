"""The training curves PNG: loss terms and the validation metric per epoch."""

from __future__ import annotations

from pathlib import Path

from bundlerec.ranking.artifact import CURVES_FILE
from bundlerec.training.train import TrainedModel


def plot_curves(trained: TrainedModel, directory: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r.epoch for r in trained.history]
    figure, (losses, metric) = plt.subplots(1, 2, figsize=(10, 4))
    losses.plot(epochs, [r.loss for r in trained.history], label="total")
    losses.plot(epochs, [r.two_tower for r in trained.history], label="two-tower")
    losses.plot(epochs, [r.full for r in trained.history], label="full score (sampled)")
    losses.set_xlabel("epoch")
    losses.set_ylabel("training loss")
    losses.legend()
    metric.plot(epochs, [r.metric for r in trained.history], marker="o")
    best = max(trained.history, key=lambda r: r.metric)
    metric.axvline(best.epoch, color="grey", linestyle=":", label=f"selected (epoch {best.epoch})")
    metric.set_xlabel("epoch")
    metric.set_ylabel(f"validation {trained.metric_name}")
    metric.legend()
    figure.tight_layout()
    path = directory / CURVES_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
