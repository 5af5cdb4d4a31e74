"""The training loop: epochs of shuffled examples, validation after each, early stopping.

Deterministic for a given seed, data and thread count: every random draw comes from generators
seeded here (Python's for example order, torch's for dropout and negatives).
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

import numpy as np
import torch

from bundlerec.datasets import Dataset
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import build_split
from bundlerec.ranking.features import UNKNOWN
from bundlerec.training import distributed
from bundlerec.training.cooccurrence import neighbour_tables
from bundlerec.training.data import (
    ITEM,
    TrainingData,
    batches,
    carve_validation,
    examples,
    history_steps,
    make_batch,
    prepare,
)
from bundlerec.training.distributed import Workers
from bundlerec.training.mix import choose_text_tables, choose_wide_tables, fit_wide_weight
from bundlerec.training.model import BundleRanker, ModelConfig
from bundlerec.training.objective import TrainingLoss, batch_tensors, sample_negatives, sampling_distribution
from bundlerec.training.scorer import ModelScorer
from bundlerec.training.warm import WarmStart
from bundlerec.training.warm import apply as warm_start

Progress = Callable[[str], None]


# The model's hyper-parameters have one definition, ModelConfig's defaults; training starts from them.
_MODEL = {f.name: f.default for f in fields(ModelConfig) if f.default is not MISSING}


@dataclass
class TrainSettings:
    dim: int = _MODEL["dim"]
    layers: int = _MODEL["layers"]
    heads: int = _MODEL["heads"]
    max_sequence: int = _MODEL["max_sequence"]
    max_members: int = _MODEL["max_members"]
    dropout: float = _MODEL["dropout"]
    id_dropout: float = _MODEL["id_dropout"]
    batch_size: int = 0  # examples per step; 0: 256 for ordered histories, 64 for unordered (fewer predictions each)
    learning_rate: float = 5e-3
    negatives: int = 256
    # the two-tower term's softmax runs over a kind's whole table (items or bundles) up to this many
    # rows; above, over this many rows drawn per step with the logQ correction (objective.py), so an
    # epoch costs what its examples do, not what the catalogue does. 0: always the whole table.
    two_tower_negatives: int = 2048
    neighbours: int = _MODEL["neighbours"]  # co-occurrence neighbours per item or bundle; 0 = none
    # how the co-occurrence part weighs a pair: "ease" (blended with cosine; L2 and share chosen on
    # validation from the grids) or "cosine" (item-kNN)
    wide: str = "ease"
    wide_l2_grid: tuple[float, ...] = (50.0, 200.0, 500.0, 1500.0)
    wide_cosine_grid: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)  # share of cosine blended into EASE
    # the text neighbours blended in after (cooccurrence.text_tables): shares and target-count gates
    wide_text_grid: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)
    wide_text_gate_grid: tuple[float, ...] = (0.0, 5.0, 20.0, 100.0)
    # bundle data: the item view's shares (0 = none) and L2s (cooccurrence.item_view_tables)
    wide_view_grid: tuple[float, ...] = (0.03, 0.1, 0.3)
    wide_view_l2_grid: tuple[float, ...] = (200.0, 500.0, 1500.0)
    max_epochs: int = 40
    patience: int = 3  # epochs without a better validation metric before stopping
    validation_users: int = 2000  # a fixed sample keeps each epoch's validation cheap
    validation_share: float = 0.1  # of users, when the dataset has no valid.csv
    use_text: bool = True
    # "sequence": histories are read causally and every step predicts the next; "set": each
    # interaction is predicted from all the others. "auto": sequence where timestamps are real
    # times (sessions), set where they are absent, and where they are only an order both readings
    # train and validation keeps one (_either_reading).
    order: str = "auto"
    mask_share: float = 0.2  # set order: the share of a history each example predicts from the rest
    # next-item data with valid.csv: after validation has chosen the epochs, the network is trained
    # again for that many epochs with the validation rows, which FORMAT.md makes test-time history
    refit: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    two_tower: float
    full: float
    metric: float
    seconds: float  # the whole epoch, validation included
    examples: int = 0  # trained on (all workers')
    train_seconds: float = 0.0  # the epoch without its validation
    train_cpu_seconds: float = 0.0  # and the process's CPU time for it: steadier on a shared machine

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds else 0.0


@dataclass
class TrainedModel:
    model: BundleRanker
    data: TrainingData
    settings: TrainSettings
    metric_name: str
    validation: dict[str, float]  # the best epoch's full validation metrics
    history: list[EpochRecord] = field(default_factory=list)
    validation_carved: bool = False
    best_epoch: int = 0  # the epoch validation chose (1-based), whose weights were kept


def selection_metric(task: str) -> str:
    return "NDCG@20" if task == "bundle" else "NDCG@10"


def train(
    dataset: Dataset,
    settings: TrainSettings,
    text_vectors: np.ndarray | None,
    progress: Progress = print,
    *,
    warm: WarmStart | None = None,
) -> TrainedModel:
    """Trains a model on `dataset`; `warm` starts it from a serving model's weights (warm.py) and
    trains only on the histories of users active since `warm.since` (the tables still count all)."""
    if settings.order == "auto" and dataset.info.timestamps == "ordinal" and warm is None:
        return _either_reading(dataset, settings, text_vectors, progress)
    workers = distributed.start()
    torch.manual_seed(settings.seed + workers.rank)  # dropout differs between workers; DDP shares the start
    # Embedding gradients are otherwise summed in whatever order the threads finish, which makes
    # two runs differ in the last bits; the deterministic kernels cost little here. On a GPU some
    # kernels (index_add_, embedding backward) have no deterministic version: runs may differ there.
    torch.use_deterministic_algorithms(True, warn_only=workers.device.type == "cuda")
    carved = not dataset.valid
    dataset = _validated(dataset, settings)
    if carved:
        progress(f"no valid.csv: validating on the newest target of {len(dataset.valid):,} users, held out of training")
    text = text_vectors if settings.use_text else None
    data = prepare(dataset, text, settings.max_members, order=settings.order)
    config = ModelConfig(
        num_item_rows=data.vocabulary.num_item_rows,
        num_bundle_rows=data.vocabulary.num_bundle_rows,
        text_dim=data.item_text.shape[1],
        causal=data.causal,
        dim=settings.dim,
        layers=settings.layers,
        heads=settings.heads,
        max_sequence=settings.max_sequence,
        max_members=settings.max_members,
        dropout=settings.dropout,
        id_dropout=settings.id_dropout,
        neighbours=settings.neighbours,
    )
    # the co-occurrence tables stay empty while the network trains (its loss never reads them) and
    # are filled after it, with the weighing chosen on validation (choose_wide_tables)
    members = torch.from_numpy(data.vocabulary.bundle_members)
    model = BundleRanker(config, torch.from_numpy(data.item_text), members)
    trained_on = data
    if warm is not None:
        kept = warm_start(model, data.vocabulary, warm)
        active = {e.user_id for e in dataset.events if e.timestamp >= warm.since}
        trained_on = dataclasses.replace(data, histories={u: h for u, h in data.histories.items() if u in active})
        progress(f"warm start: {kept}; training on the {len(trained_on.histories):,} users active since {warm.since}")
    model = model.to(workers.device)
    fitter = _Fitter(model, trained_on, settings, workers)

    split = build_split(dataset, "valid")
    if len(split.users) > settings.validation_users:
        split.users = sorted(random.Random(settings.seed).sample(split.users, settings.validation_users))
    scorer = ModelScorer("ours", model, dataset, data.vocabulary, text)
    metric_name = selection_metric(dataset.info.task)
    progress(
        f"training on {len(data.histories):,} users, {data.vocabulary.num_item_rows - 2:,} items, "
        f"{data.vocabulary.num_bundle_rows - 2:,} bundles ({'ordered' if data.causal else 'unordered'} histories); "
        f"selecting on validation {metric_name} over {len(split.users):,} users; on {workers.describe()}"
    )
    if fitter.sampled:
        names = " and ".join("items" if kind == ITEM else "bundles" for kind in fitter.sampled)
        progress(f"two-tower term: a sampled softmax over {settings.two_tower_negatives:,} {names} per step")

    best: tuple[float, dict, dict[str, float], int] | None = None
    history: list[EpochRecord] = []
    stale = 0
    for epoch in range(1, settings.max_epochs + 1):
        started, cpu_started = time.monotonic(), time.process_time()
        totals, trained_examples = fitter.epoch()
        trained_for, cpu_for = time.monotonic() - started, time.process_time() - cpu_started
        metrics = evaluate_scorer(split, scorer, ks=(10, 20))
        record = EpochRecord(
            epoch,
            *totals,
            metrics[metric_name],
            time.monotonic() - started,
            examples=trained_examples,
            train_seconds=trained_for,
            train_cpu_seconds=cpu_for,
        )
        history.append(record)
        improved = best is None or record.metric > best[0]
        progress(
            f"epoch {epoch:3d}  loss {record.loss:.4f} (two-tower {record.two_tower:.4f}, full {record.full:.4f})  "
            f"valid {metric_name} {record.metric:.4f}{' *' if improved else ''}  {record.seconds:.0f} s "
            f"({record.examples_per_second:,.0f} examples/s, validation {record.seconds - trained_for:.0f} s)"
        )
        if improved:
            best = (record.metric, copy.deepcopy(model.state_dict()), metrics, epoch)
            stale = 0
        else:
            stale += 1
            if stale >= settings.patience:
                progress(f"stopping: no better validation {metric_name} for {settings.patience} epochs")
                break
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    choose_wide_tables(scorer, data, split, settings, metric_name, progress)
    choose_text_tables(scorer, data, split, settings, metric_name, progress)
    validation = fit_wide_weight(scorer, split, metric_name, progress)
    if data.task == "next_item" and dataset.valid:
        # FORMAT.md puts the validation rows in the test-time history of next-item data, so the
        # model that is kept learns from them too, as the baselines fit on them: the co-occurrence
        # part counts their pairs and (settings.refit) the network is trained again on them, for
        # the epochs validation chose. The mix chosen above carries over.
        with_valid = _with_validation_rows(dataset, data)
        c = model.config
        tables = neighbour_tables(
            with_valid,
            c.neighbours,
            c.wide_l2,
            c.wide_cosine_share,
            c.wide_text_share,
            c.wide_text_gate,
            c.wide_view_share,
            c.wide_view_l2,
        )
        model.set_neighbours(tables)
        if settings.refit and warm is None:
            refit(model, with_valid, settings, best[3], workers, progress)
    distributed.stop(workers)
    return TrainedModel(model, data, settings, metric_name, validation, history, carved, best[3])


def _validated(dataset: Dataset, settings: TrainSettings) -> Dataset:
    """The dataset with validation rows: its valid.csv, or, without one, rows carved from its events."""
    return dataset if dataset.valid else carve_validation(dataset, settings.validation_share, settings.seed)


def _with_validation_rows(dataset: Dataset, data: TrainingData) -> TrainingData:
    """`data` with the histories next-item test reads (FORMAT.md): the events, then the valid row."""
    known = history_steps(dataset, data.vocabulary, build_split(dataset, "test").histories)
    return dataclasses.replace(data, histories=known)


def _either_reading(
    dataset: Dataset, settings: TrainSettings, text_vectors: np.ndarray | None, progress: Progress
) -> TrainedModel:
    """Ordinal timestamps give an order but not a time: histories may be sequences (each step
    predicting the next) or sets (each interaction predicted from the others), and the data, not a
    rule, says which. Both readings train; validation's figure (of the model as it is kept, both
    parts mixed) picks, and a tie keeps the sequence. The co-occurrence part does not depend on the
    reading: the second run takes the weighing the first chose instead of searching again. Only the
    kept reading is refitted (settings.refit), once it is chosen."""
    progress("ordinal timestamps: training the sequence reading, then the set reading; validation keeps one")
    unfitted = dataclasses.replace(settings, refit=False)
    sequence = train(dataset, dataclasses.replace(unfitted, order="sequence"), text_vectors, progress)
    chosen = sequence.model.config
    as_set = dataclasses.replace(
        unfitted,
        order="set",
        wide_l2_grid=(chosen.wide_l2,) if chosen.wide_l2 > 0 else settings.wide_l2_grid,
        wide_cosine_grid=(chosen.wide_cosine_share,),
        wide_text_grid=(chosen.wide_text_share,),
        wide_text_gate_grid=(chosen.wide_text_gate,),
        wide_view_grid=(chosen.wide_view_share,),
        wide_view_l2_grid=(chosen.wide_view_l2,),
    )
    unordered = train(dataset, as_set, text_vectors, progress)
    name = sequence.metric_name
    figures = (sequence.validation[name], unordered.validation[name])
    kept = unordered if figures[1] > figures[0] else sequence
    progress(
        f"reading: valid {name} {figures[0]:.4f} as a sequence, {figures[1]:.4f} as a set; "
        f"keeping the {'set' if kept is unordered else 'sequence'}"
    )
    validated = _validated(dataset, settings)
    if settings.refit and kept.data.task == "next_item" and validated.valid:
        workers = distributed.start()
        with_valid = _with_validation_rows(validated, kept.data)
        refit(kept.model, with_valid, kept.settings, kept.best_epoch, workers, progress)
        distributed.stop(workers)
    return dataclasses.replace(kept, settings=dataclasses.replace(kept.settings, refit=settings.refit))


class _Fitter:
    """Epochs of one optimizer over one set of histories: shuffled examples, batches of similar
    length, negatives drawn by popularity (objective.py)."""

    def __init__(self, model: BundleRanker, data: TrainingData, settings: TrainSettings, workers: Workers) -> None:
        self.data, self.settings, self.workers = data, settings, workers
        self.sampling = {kind: sampling_distribution(torch.from_numpy(c)) for kind, c in data.target_counts().items()}
        limit = settings.two_tower_negatives
        self.sampled = {kind: p for kind, p in self.sampling.items() if limit and len(p) > limit}
        self.model = model
        self.step = distributed.wrap(TrainingLoss(model, self.sampling), workers)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        self.generator = torch.Generator().manual_seed(settings.seed + workers.rank)
        self.rng = random.Random(settings.seed)

    def epoch(self) -> tuple[np.ndarray, int]:
        """One epoch: (mean loss, two-tower and full terms per batch; examples trained on)."""
        settings, data, device = self.settings, self.data, self.workers.device
        self.model.train()
        pairs = examples(data, settings.max_sequence, self.rng, settings.mask_share)
        totals = np.zeros(3)
        count = 0
        epoch_batches = batches(pairs, settings.batch_size or (256 if data.causal else 64), self.rng)
        limit = settings.two_tower_negatives
        for group in distributed.share(epoch_batches, self.workers):
            batch = make_batch(group, settings.max_sequence, clock=data.clock, causal=data.causal)
            negatives = sample_negatives(self.sampling, settings.negatives, self.generator, device)
            drawn = sample_negatives(self.sampled, limit, self.generator, device) if self.sampled else None
            loss, two_tower, full = self.step(*batch_tensors(batch, device), negatives, drawn)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += (loss.item(), two_tower.item(), full.item())
            count += 1
        return totals / max(count, 1), len(pairs)


def refit(
    model: BundleRanker,
    data: TrainingData,
    settings: TrainSettings,
    epochs: int,
    workers: Workers,
    progress: Progress,
) -> None:
    """Trains the network again from its initial weights, on `data`'s histories (the validation
    rows now among them) for `epochs`, the count validation chose, and puts its weights in `model`;
    the co-occurrence tables and the mix stay `model`'s. Steps on items the vocabulary lacks (first
    seen in a validation row) are left out: the network has no row to predict them with."""
    started = time.monotonic()
    histories = {u: [s for s in h if s.bundle or s.item != UNKNOWN] for u, h in data.histories.items()}
    data = dataclasses.replace(data, histories={u: h for u, h in histories.items() if h})
    torch.manual_seed(settings.seed + workers.rank)
    fresh = BundleRanker(model.config, model.item_text.cpu(), model.bundle_members.cpu()).to(workers.device)
    fitter = _Fitter(fresh, data, settings, workers)
    for _ in range(epochs):
        fitter.epoch()
    kept = ("neural_weight", "wide_weight", "wide_member_weight")
    weights = {k: v for k, v in fresh.state_dict().items() if not k.startswith("wide_") and k not in kept}
    model.load_state_dict(weights, strict=False)
    model.eval()
    progress(
        f"refit: the network trained again with the validation rows among the histories, for the {epochs} "
        f"epoch(s) validation chose ({time.monotonic() - started:.0f} s)"
    )
