"""Continuous training: split what was recorded by time, train a new version (warm or full), and
let the gate decide whether it serves.

- The newest window (default one day) is the evaluation window and is never trained on: the
  training set is every event before it, the positives are what each shopper went on to buy in
  it (the task's target kind; every interaction of that kind where the window has no purchase),
  less what they had interacted with before (the protocol masks those from their ranking).
- Warm (the default when a version serves): the new version starts from the serving one's weights
  (warm.py), trains only on shoppers active since the serving version's data ended, for one
  epoch, with the co-occurrence weighing the serving version chose; its co-occurrence tables are
  rebuilt from all the data. Full: from scratch, with the whole search, as `bundlerec train`.
- The gate scores both versions with the harness's full ranking on the same window. The new one
  serves when its headline metric is not worse than the serving one's by more than `tolerance`
  (relative) and not worse than popularity's on the same window (a floor that catches a broken
  model even without a serving one). A serving version trained on the window itself (`bundlerec
  train` on everything; or one that does not record where its data ended) is no reference either:
  its figure there is a memory. A serving version older than `max_age_days` no longer counts
  as a reference: it may have learnt from events erased since, so any new version that clears the
  floor replaces it, and if none does the decision says the serving version has expired. A
  version's age counts from the full training its weights descend from (warm starts carry them
  on); `bundlerec retrain` trains from scratch once the serving version is past that age.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bundlerec.datasets import Dataset, HeldOut
from bundlerec.evaluation.baselines import fit_popularity
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import EvalSplit, Scorer, build_split
from bundlerec.ranking.artifact import ModelManifest
from bundlerec.ranking.promotion import PROMOTED, REJECTED, Decision
from bundlerec.ranking.vocabulary import Vocabulary
from bundlerec.training.model import BundleRanker
from bundlerec.training.scorer import ModelScorer
from bundlerec.training.train import TrainedModel, TrainSettings, selection_metric, train
from bundlerec.training.warm import WarmStart

DAY = 86_400
WARM_EPOCHS = 1  # a warm start fine-tunes; it does not search again (bench/freshness.py)
Progress = Callable[[str], None]


@dataclass
class Serving:
    """The serving version, as the gate and a warm start need it."""

    version: str
    model: BundleRanker
    vocabulary: Vocabulary
    manifest: ModelManifest

    def age_days(self, now: dt.datetime) -> float:
        return self.manifest.lineage_age_days(now)

    def text(self, text_vectors: np.ndarray | None) -> np.ndarray | None:
        """The item text vectors this version reads: none for a version trained without text."""
        return text_vectors if self.manifest.text_encoder is not None else None


def time_split(dataset: Dataset, window_days: float, min_shoppers: int = 1) -> tuple[Dataset, int]:
    """(the dataset to train on, whose test rows are the window's positives; the window's start).
    Fewer than `min_shoppers` shoppers to evaluate on is an error: no gate can judge on so few."""
    if dataset.info.timestamps != "unix":
        raise ValueError("a split by time needs real timestamps (dataset.json timestamps: unix)")
    if not dataset.events:
        raise ValueError("no events recorded: nothing to train on")
    newest = max(e.timestamp for e in dataset.events)
    start = newest - round(window_days * DAY) + 1
    before = [e for e in dataset.events if e.timestamp < start]
    kind = "bundle" if dataset.info.task == "bundle" else "item"
    window = [e for e in dataset.events if e.timestamp >= start and e.target_type == kind]
    bought = [e for e in window if e.event_type == "purchase"]
    known: dict[str, set[str]] = defaultdict(set)  # masked from the shopper's ranking by the protocol
    for e in before:
        if e.target_type == kind:
            known[e.user_id].add(e.target_id)
    rows: list[HeldOut] = []
    taken: set[tuple[str, str]] = set()
    for e in bought or window:
        key = (e.user_id, e.target_id)
        if key not in taken and e.target_id not in known[e.user_id]:
            taken.add(key)
            rows.append(HeldOut(e.user_id, e.target_id))
    if not before or not rows:
        raise ValueError(f"the newest {window_days:g} day(s) leave nothing to train on or nothing to evaluate")
    shoppers = len({row.user_id for row in rows})
    if shoppers < min_shoppers:
        raise ValueError(
            f"the newest {window_days:g} day(s) hold {shoppers} shopper(s) to evaluate on, fewer than the "
            f"{min_shoppers} a decision needs: widen the window (--window-days) or lower --min-window-shoppers"
        )
    return dataclasses.replace(dataset, events=before, valid=[], test=rows), start


def warm_settings(serving: Serving, base: TrainSettings) -> TrainSettings:
    """The serving version's architecture (so its weights fit), a short fine-tune, its weighing."""
    trained = serving.manifest.training
    same = {k: trained[k] for k in ("dim", "layers", "heads", "max_sequence", "max_members", "order") if k in trained}
    model = serving.manifest.model
    return dataclasses.replace(
        base,
        **same,
        use_text=serving.manifest.text_encoder is not None,
        max_epochs=min(base.max_epochs, WARM_EPOCHS),
        patience=1,
        wide_l2_grid=(float(model.get("wide_l2") or base.wide_l2_grid[0]),),
        wide_cosine_grid=(float(model.get("wide_cosine_share", 0.0)),),
        wide_text_grid=(float(model.get("wide_text_share", 0.0)),),
        wide_text_gate_grid=(float(model.get("wide_text_gate", 0.0)),),
        wide_view_grid=(float(model.get("wide_view_share", 0.0)),),
        wide_view_l2_grid=(float(model.get("wide_view_l2", 0.0)),),
    )


def retrain(
    dataset: Dataset,
    serving: Serving | None,
    settings: TrainSettings,
    text_vectors: np.ndarray | None,
    *,
    full: bool,
    since: int,
    progress: Progress = print,
) -> tuple[TrainedModel, float]:
    """Trains the new version on `dataset` (already split); returns it and the seconds it took.
    `since`: the start of the events the serving version never saw (its data's end)."""
    started = time.monotonic()
    if serving is None or full:
        trained = train(dataset, settings, text_vectors, progress)
    else:
        state = {k: v.detach().clone() for k, v in serving.model.state_dict().items()}
        warm = WarmStart(state, serving.vocabulary, since)
        trained = train(dataset, warm_settings(serving, settings), serving.text(text_vectors), progress, warm=warm)
    return trained, time.monotonic() - started


def window_figures(split: EvalSplit, scorers: dict[str, Scorer]) -> dict[str, dict[str, float]]:
    with torch.inference_mode():
        return {name: evaluate_scorer(split, scorer, ks=(10, 20)) for name, scorer in scorers.items()}


def gate(
    dataset: Dataset,
    trained: TrainedModel,
    serving: Serving | None,
    text_vectors: np.ndarray | None,
    *,
    tolerance: float,
    max_age_days: float,
    now: dt.datetime,
    window_start: int,
) -> tuple[bool, str, dict[str, dict[str, float]]]:
    """(promote?, why, each scorer's metrics on the window) for the new version against the serving
    one, both ranked over the whole catalogue on `dataset`'s test rows (time_split's window, from
    `window_start`)."""
    split = build_split(dataset, "test")
    metric = selection_metric(dataset.info.task)
    scorers: dict[str, Scorer] = {
        "candidate": ModelScorer("candidate", trained.model, dataset, trained.data.vocabulary, text_vectors),
        "popularity": fit_popularity(split),
    }
    if serving is not None:
        vectors = serving.text(text_vectors)
        scorers["serving"] = ModelScorer("serving", serving.model, dataset, serving.vocabulary, vectors)
    figures = window_figures(split, scorers)
    new, floor = figures["candidate"][metric], figures["popularity"][metric]
    on = f"{metric} on the window's {len(split.users)} shoppers"
    if new < floor:
        return False, f"{on}: {new:.4f}, below popularity's {floor:.4f}", figures
    if serving is None:
        return True, f"{on}: {new:.4f} (popularity {floor:.4f}); nothing served before", figures
    old = figures["serving"][metric]
    age = serving.age_days(now)
    if age > max_age_days:
        return True, f"{on}: {new:.4f}; serving {serving.version} ({old:.4f}) is past the maximum age", figures
    if not serving.manifest.data_until or serving.manifest.data_until > window_start:
        # trained on the window itself (bundlerec train on everything), or on data it does not
        # record: its figure there is a memory, not a prediction, and no reference
        return True, f"{on}: {new:.4f}; serving {serving.version} ({old:.4f}) was trained on the window", figures
    bar = old * (1 - tolerance)
    if new >= bar:
        return True, f"{on}: {new:.4f} against serving {old:.4f} (at least {bar:.4f} needed)", figures
    return False, f"{on}: {new:.4f}, worse than serving {old:.4f} beyond the tolerance ({bar:.4f} needed)", figures


def decide(
    version: str,
    promote: bool,
    reason: str,
    figures: dict[str, dict[str, float]],
    metric: str,
    details: dict[str, object],
) -> Decision:
    flat = {f"{name} {metric}": round(values[metric], 6) for name, values in figures.items()}
    return Decision(version, PROMOTED if promote else REJECTED, reason, figures=flat, details=details)


def load_serving(models_dir: Path, version: str) -> Serving | None:
    from bundlerec.training.export import load_weights

    if not version:
        return None
    model, vocabulary, manifest = load_weights(models_dir / version)
    return Serving(version, model, vocabulary, manifest)
