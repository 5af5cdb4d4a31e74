"""`bundlerec recommend-batch`: every shopper's top K of a dataset, for placements that are not
real time (e-mail, push), through the batched full-ranking path `bundlerec evaluate` measures.

Each shopper with any interaction in the dataset is ranked with everything the dataset knows about
them (events.csv, then valid.csv and test.csv rows, the newest), against every bundle (bundle data)
or every item (next-item data), the targets they already have left out. The file is written beside
its final name and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

from bundlerec.commands.training import DEFAULT_ENCODER, DEFAULT_MODELS
from bundlerec.datasets import Dataset, DatasetError, read_dataset
from bundlerec.evaluation.metrics import top_targets
from bundlerec.evaluation.protocol import everything_known
from bundlerec.ranking.artifact import ModelArtifactError
from bundlerec.ranking.promotion import serving_version
from bundlerec.training.export import load_weights
from bundlerec.training.scorer import ModelScorer
from bundlerec.training.text import item_text_vectors

MAX_K = 1000
BATCH_USERS = 1024
COLUMNS = ("user_id", "rank", "target_type", "target_id", "score")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a dataset in the import format")
    parser.add_argument("--out", required=True, help=f"the CSV to write ({', '.join(COLUMNS)})")
    parser.add_argument(
        "--k", type=int, default=10, help=f"recommendations per shopper, 1-{MAX_K} (default: %(default)s)"
    )
    parser.add_argument("--model", help="a model directory (default: the version --models serves)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="models directory (default: %(default)s)")
    parser.add_argument("--encoder-dir", default=DEFAULT_ENCODER, help="exported text encoder (default: %(default)s)")


def run_recommend_batch(args: argparse.Namespace) -> int:
    if not 1 <= args.k <= MAX_K:
        print(f"bundlerec recommend-batch: --k must be between 1 and {MAX_K}, got {args.k}", file=sys.stderr)
        return 2
    model_dir = Path(args.model) if args.model else None
    if model_dir is None:
        version = serving_version(Path(args.models))
        if not version:
            print(f"bundlerec recommend-batch: no model in {args.models}; train one or name --model", file=sys.stderr)
            return 1
        model_dir = Path(args.models) / version
    started = time.monotonic()
    try:
        dataset = read_dataset(args.data)
        model, vocabulary, manifest = load_weights(model_dir)
    except (DatasetError, ModelArtifactError, FileNotFoundError) as error:
        print(f"bundlerec recommend-batch: {error}", file=sys.stderr)
        return 1
    vectors = item_text_vectors(dataset, Path(args.encoder_dir))[0] if manifest.text_encoder else None
    scorer = ModelScorer("ours", model, dataset, vocabulary, vectors)
    known = sum(vocabulary.has_item(item) for item in dataset.items)
    if known < len(dataset.items) / 2:
        print(
            f"warning: model {model_dir.name} knows {known:,} of the dataset's {len(dataset.items):,} items; "
            "the others are scored from their text, or not at all",
            file=sys.stderr,
        )
    rows, shoppers = write_recommendations(scorer, dataset, Path(args.out), args.k)
    print(
        f"{rows:,} recommendations for {shoppers:,} shoppers by model {model_dir.name} "
        f"written to {args.out} ({time.monotonic() - started:.0f} s)",
        file=sys.stderr,
    )
    return 0


def write_recommendations(scorer: ModelScorer, dataset: Dataset, out: Path, k: int) -> tuple[int, int]:
    """Writes every shopper's top `k` to `out` (CSV, best first); returns (rows, shoppers)."""
    split = everything_known(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.{os.getpid()}")
    written = 0
    try:
        with staging.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            for start in range(0, len(split.users), BATCH_USERS):
                users = split.users[start : start + BATCH_USERS]
                scores = scorer.score(split, users)
                for row, user in enumerate(users):
                    scores[row, split.excluded[user]] = -np.inf
                top = top_targets(scores, min(k, scores.shape[1]))
                for row, user in enumerate(users):
                    for rank, target in enumerate(top[row], 1):
                        if np.isfinite(scores[row, target]):
                            target_id = split.target_ids[target]
                            writer.writerow((user, rank, split.target_type, target_id, f"{scores[row, target]:.6g}"))
                            written += 1
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return written, len(split.users)
