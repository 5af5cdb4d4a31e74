"""`bundlerec train` and `bundlerec evaluate`: the command-line side of training and evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bundlerec.datasets import Dataset, read_dataset
from bundlerec.evaluation.protocol import Scorer
from bundlerec.evaluation.report import OURS, Report
from bundlerec.training.distributed import launched_rank
from bundlerec.training.scorer import ModelScorer, PartScorer
from bundlerec.training.text import item_text_vectors
from bundlerec.training.train import TrainedModel, TrainSettings, train

DEFAULT_MODELS = "var/bundlerec/models"
DEFAULT_ENCODER = "var/bundlerec/encoder"


def add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings()
    parser.add_argument("--data", required=True, help="a dataset in the import format")
    parser.add_argument("--out", default=DEFAULT_MODELS, help="models directory (default: %(default)s)")
    parser.add_argument("--encoder-dir", default=DEFAULT_ENCODER, help="exported text encoder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.max_epochs, help="at most (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=defaults.patience, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="same seed, same data: same model")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="(default: %(default)s)")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="(default: %(default)s)")
    parser.add_argument("--max-sequence", type=int, default=defaults.max_sequence, help="(default: %(default)s)")
    parser.add_argument("--no-text", action="store_true", help="train without the items' text embeddings")
    parser.add_argument(
        "--order",
        choices=["auto", "sequence", "set"],
        default=defaults.order,
        help="read histories as sequences or sets (default: auto: sequences where timestamps are times, sets where "
        "there are none, and where they are only an order both train and validation keeps one)",
    )
    parser.add_argument(
        "--neighbours",
        type=int,
        default=defaults.neighbours,
        help="co-occurrence neighbours per item or bundle; 0 trains the Transformer alone (default: %(default)s)",
    )
    parser.add_argument(
        "--wide",
        choices=["ease", "cosine"],
        default=defaults.wide,
        help="how the co-occurrence part weighs a pair: EASE, its L2 chosen on validation, or cosine item-kNN "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--two-tower-negatives",
        type=int,
        default=defaults.two_tower_negatives,
        help="a kind with more items or bundles than this trains its two-tower term on this many sampled "
        "negatives per step instead of the whole table; 0: always the whole table (default: %(default)s)",
    )
    parser.add_argument("--int8", action="store_true", help="also write a dynamically quantized model for CPUs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return dataclasses.replace(
        TrainSettings(),
        max_epochs=args.epochs,
        patience=args.patience,
        seed=args.seed,
        dim=args.dim,
        layers=args.layers,
        max_sequence=args.max_sequence,
        use_text=not args.no_text,
        order=args.order,
        neighbours=args.neighbours,
        wide=args.wide,
        two_tower_negatives=args.two_tower_negatives,
    )


def _read(path: str) -> Dataset:
    started = time.monotonic()
    dataset = read_dataset(path)
    counts = dataset.counts()
    print(
        f"{dataset.info.name}: {counts['items']:,} items, {counts['bundles']:,} bundles, "
        f"{len(dataset.events):,} events ({time.monotonic() - started:.0f} s)",
        file=sys.stderr,
    )
    return dataset


def train_and_write(args: argparse.Namespace, dataset: Dataset) -> tuple[TrainedModel, Path, np.ndarray | None]:
    from bundlerec.training.export import write_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from(args)
    vectors, identity = item_text_vectors(dataset, Path(args.encoder_dir)) if settings.use_text else (None, None)
    main = launched_rank() == 0  # under torchrun only the first worker reports and writes
    trained = train(dataset, settings, vectors, progress=lambda line: print(line, file=sys.stderr) if main else None)
    if not main:
        sys.exit(0)
    # where its data ended (bundlerec retrain's gate: a version that saw a window is no reference there)
    until = max((e.timestamp for e in dataset.events), default=-1) + 1 if dataset.info.timestamps == "unix" else 0
    path = write_model_dir(
        trained, Path(args.out), dataset_name=dataset.info.name, text_encoder=identity, int8=args.int8, data_until=until
    )
    print(f"model written to {path}", file=sys.stderr)
    return trained, path, vectors


def run_train(args: argparse.Namespace) -> int:
    from bundlerec.ranking.promotion import SERVING_FILE, promote

    trained, path, _ = train_and_write(args, _read(args.data))
    if (Path(args.out) / SERVING_FILE).exists():  # versions are promoted there: a version trained by hand serves
        promote(Path(args.out), path.name, "bundlerec train")
    shown = {k: round(v, 4) for k, v in trained.validation.items() if "@" in k and "cold" not in k}
    print(f"{path}\nvalidation: {shown}")
    return 0


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    add_training_options(parser)
    parser.add_argument("--model", help="a model directory to evaluate (default: train one with these settings first)")
    parser.add_argument("--split", choices=["test", "valid"], default="test", help="(default: %(default)s)")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    parser.add_argument("--plot", help="PNG comparing the models over K (default: next to --json, else none)")
    parser.add_argument(
        "--text-ablation", action="store_true", help="also train and report a model without text (cold items)"
    )
    parser.add_argument("--baselines", default="popularity,item_knn,bpr", help="comma-separated (default: all)")
    parser.add_argument(
        "--two-stage-users",
        type=int,
        default=1000,
        help="users sampled for the two-stage figure (candidate service's top 200, then ours); 0 skips it",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    from bundlerec.evaluation.report import format_table, plot_over_k, write_json
    from bundlerec.evaluation.run import run_evaluation
    from bundlerec.training.export import load_weights

    for flag, out in (("--json", args.json), ("--plot", args.plot)):
        try:  # before the run, not after it: a folder that cannot be made would lose its figures
            if out:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"bundlerec evaluate: {flag} {out}: cannot create its folder ({error.strerror})", file=sys.stderr)
            return 2
    dataset = _read(args.data)
    if args.model:
        model, vocabulary, manifest = load_weights(Path(args.model))
        vectors = None
        if manifest.text_encoder:
            vectors, identity = item_text_vectors(dataset, Path(args.encoder_dir))
            if identity and identity["model_name"] != manifest.text_encoder["model_name"]:
                print(f"warning: the model was trained with {manifest.text_encoder}, the encoder is {identity}")
        ours = ModelScorer("ours", model, dataset, vocabulary, vectors)
    else:
        trained, _, vectors = train_and_write(args, dataset)
        ours = ModelScorer("ours", trained.model, dataset, trained.data.vocabulary, vectors)
    extra: dict[str, Scorer] = {name: PartScorer(ours, part, name) for part, name in _part_names(ours).items()}
    if args.text_ablation and vectors is not None:
        plain = argparse.Namespace(**{**vars(args), "no_text": True})
        trained, _, _ = train_and_write(plain, dataset)
        name = "ours without text"
        extra[name] = ModelScorer(name, trained.model, dataset, trained.data.vocabulary, None)
    baselines = tuple(name for name in args.baselines.split(",") if name)
    report = run_evaluation(
        dataset,
        split=args.split,
        ours=ours,
        extra=extra,
        baselines=baselines,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr),
    )
    if args.two_stage_users:
        _two_stage(report, dataset, ours, vectors, args)
    print(format_table(report))
    if "item_knn" in report.seconds:
        ratio = report.seconds[OURS] / max(report.seconds["item_knn"], 1e-9)
        print(
            f"full ranking took ours {report.seconds[OURS]:.1f} s, item-kNN {report.seconds['item_knn']:.1f} s "
            f"(fit and evaluation): {ratio:.1f}x, on {torch.get_num_threads()} thread(s)"
        )
    for name, row in report.extra.items():
        if "Candidate recall@200" in row:
            print(f"candidate recall@200 ({name}): {row['Candidate recall@200']:.4f}")
    if args.json:
        write_json(report, Path(args.json))
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot:
        plot_over_k(report, Path(plot))
    return 0


def _part_names(ours: ModelScorer) -> dict[str, str]:
    """The rows of the model's two parts alone: the Transformer (the network is trained without the
    co-occurrence tables, so this is what `--neighbours 0` trains) and the co-occurrence part."""
    config = ours.model.config
    if not config.neighbours:
        return {}
    wide = "cosine co-occurrence alone"
    if config.wide_l2 > 0:
        share = f", {config.wide_cosine_share:g} cosine" if config.wide_cosine_share else ""
        text = f", {config.wide_text_share:g} text" if config.wide_text_share else ""
        view = f", item view {config.wide_view_share:g} at l2 {config.wide_view_l2:g}" if config.wide_view_share else ""
        wide = f"EASE alone (l2 {config.wide_l2:g}{share}{view}{text})"
    return {"neural": "Transformer alone", "wide": wide}


def _two_stage(
    report: Report, dataset: Dataset, ours: ModelScorer, vectors: np.ndarray | None, args: argparse.Namespace
) -> None:
    """Adds two rows on the same sample of users: ours over the whole catalogue, and ours over the
    candidate service's top 200 only (its row also carries the candidate recall)."""
    from bundlerec.candidate.offline import DatasetRetriever
    from bundlerec.evaluation.metrics import evaluate_scorer
    from bundlerec.evaluation.protocol import build_split
    from bundlerec.evaluation.run import KS
    from bundlerec.evaluation.two_stage import CandidatesOnly, sample_users

    split = sample_users(build_split(dataset, args.split), args.two_stage_users, args.seed)
    retriever = DatasetRetriever(dataset, vectors)
    staged = CandidatesOnly("two-stage", ours, retriever, k=200)
    on_candidates = evaluate_scorer(split, staged, ks=KS)
    on_candidates["Candidate recall@200"] = staged.recall
    report.extra[f"ours, {len(split.users)} users, full ranking"] = evaluate_scorer(split, ours, ks=KS)
    report.extra[f"ours, {len(split.users)} users, candidates@200 only"] = on_candidates
    print(f"two-stage: candidate recall@200 {staged.recall:.4f} over {len(split.users)} users", file=sys.stderr)
