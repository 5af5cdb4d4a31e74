"""Training at shop scale: one epoch of `bundlerec train` on generated shops of growing size, the
catalogue growing with the shoppers (0.8 items and 0.5 bundles a shopper: 40k items and 25k
bundles at 50k shoppers), on one thread. The goal: examples/s falls by at most 30 % from the
smallest shop to the largest, so an epoch costs what its examples do, not what the catalogue does.

    python bench/training.py [--sizes 10000,50000,200000] [--threads 1] [--out var/bench/training]
    python bench/training.py --sizes 10000 --two-tower-negatives 0    # today's exact softmax, to compare
    python bench/training.py --sizes 50000 --to-best                  # goal: best epoch within 20 min

Shops come from `bundlerec demo-data` (seed 1) and are kept under --out, as are the items' text
embeddings under var/cache/; neither counts in the figures. Each epoch is the training settings of
`bundlerec train` (text included) with --epochs 1; the co-occurrence part, which is fitted once
after the last epoch and never during one, is left out of one-epoch runs (--neighbours 0).
Reported per size: examples/s over the epoch's training steps (by the wall clock and by the
process's CPU time, steadier on a shared machine), the epoch time with and without
its validation (2,000 users, full ranking of every item). --to-best trains with every default,
co-occurrence part included, and reports the time until the end of the best validation epoch
and of the whole command. Figures go to stdout and <out>/training.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.datasets.reader import read_dataset
from bundlerec.training.text import item_text_vectors
from bundlerec.training.train import TrainSettings, train

ITEMS_PER_SHOPPER = 0.8
BUNDLES_PER_SHOPPER = 0.5
GOAL_DROP = 0.30
GOAL_TO_BEST_S = 20 * 60


def shop(out: Path, shoppers: int) -> Path:
    """The generated shop of that size, written once and kept."""
    path = out / f"shop-{shoppers}"
    if not (path / "dataset.json").is_file():
        started = time.monotonic()
        items, bundles = round(shoppers * ITEMS_PER_SHOPPER), round(shoppers * BUNDLES_PER_SHOPPER)
        generate_demo_shop(path, seed=1, users=shoppers, items=items, bundles=bundles)
        print(f"generated {path} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


def run(path: Path, settings: TrainSettings, encoder_dir: str) -> dict[str, object]:
    started = time.monotonic()
    dataset = read_dataset(path)
    vectors, _ = item_text_vectors(dataset, Path(encoder_dir))
    counts = dataset.counts()
    prepared_s = time.monotonic() - started
    lines: list[str] = []
    epochs_done: list[float] = []  # seconds into train() at the end of each epoch
    started_training = time.monotonic()

    def progress(line: str) -> None:
        if line.startswith("epoch"):
            epochs_done.append(time.monotonic() - started_training)
        lines.append(f"{time.monotonic() - started_training:7.0f} s  {line}")
        print(f"  {lines[-1]}", file=sys.stderr)

    trained = train(dataset, settings, vectors, progress=progress)
    total_s = time.monotonic() - started_training
    history = trained.history
    best = max(history, key=lambda r: r.metric)
    first = history[0]
    return {
        "shop": path.name,
        "shoppers": counts["users"],
        "items": counts["items"],
        "bundles": counts["bundles"],
        "events": counts["events"],
        "two_tower_negatives": settings.two_tower_negatives,
        "read_and_text_s": round(prepared_s, 1),
        "examples": first.examples,
        "examples_per_s": round(first.examples_per_second, 1),
        "examples_per_cpu_s": round(first.examples / first.train_cpu_seconds, 1),
        "epoch_train_s": round(first.train_seconds, 1),
        "epoch_s": round(first.seconds, 1),
        "epochs": len(history),
        "best_epoch": best.epoch,
        "best_valid": {trained.metric_name: round(best.metric, 4)},
        "to_best_epoch_s": round(epochs_done[best.epoch - 1], 1),
        "command_s": round(total_s, 1),
        "log": lines,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000", help="shoppers per shop, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--two-tower-negatives", type=int, default=TrainSettings().two_tower_negatives)
    parser.add_argument("--to-best", action="store_true", help="train to the best validation epoch, not one epoch")
    parser.add_argument("--encoder-dir", default="var/bundlerec/encoder")
    parser.add_argument("--out", default="var/bench/training", help="shops and training.json (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(TrainSettings(), two_tower_negatives=args.two_tower_negatives)
    if not args.to_best:
        settings = dataclasses.replace(settings, max_epochs=1, neighbours=0)
    figures = []
    for shoppers in (int(size) for size in args.sizes.split(",")):
        path = shop(out, shoppers)
        print(f"{path.name}: {'to the best epoch' if args.to_best else 'one epoch'}", file=sys.stderr)
        figures.append(run(path, settings, args.encoder_dir))
        gc.collect()

    print(f"\ntraining on {args.threads} thread(s), two-tower negatives {args.two_tower_negatives}")
    print(f"{'shop':<14}{'items':>9}{'bundles':>9}{'examples/s':>12}{'per CPU s':>11}{'train s':>9}{'epoch s':>9}")
    for f in figures:
        print(
            f"{f['shop']:<14}{f['items']:>9,}{f['bundles']:>9,}{f['examples_per_s']:>12,.0f}"
            f"{f['examples_per_cpu_s']:>11,.0f}{f['epoch_train_s']:>9.0f}{f['epoch_s']:>9.0f}"
        )
    summary: dict[str, object] = {"threads": args.threads, "runs": figures}
    if len(figures) > 1:
        for key, name in (("examples_per_s", "examples/s"), ("examples_per_cpu_s", "examples per CPU second")):
            drop = 1 - figures[-1][key] / figures[0][key]  # type: ignore[operator]
            summary[f"{key}_drop"] = round(drop, 3)
            verdict = "meets" if drop <= GOAL_DROP else "misses"
            print(
                f"{name} from {figures[0]['shop']} to {figures[-1]['shop']}: {-drop:+.0%} "
                f"({verdict} the goal of a drop of at most {GOAL_DROP:.0%})"
            )
    if args.to_best:
        for f in figures:
            verdict = "meets" if f["to_best_epoch_s"] <= GOAL_TO_BEST_S else "misses"  # type: ignore[operator]
            print(
                f"{f['shop']}: best validation epoch {f['best_epoch']} of {f['epochs']} {f['best_valid']} reached "
                f"after {f['to_best_epoch_s'] / 60:.1f} min ({verdict} the goal of {GOAL_TO_BEST_S // 60} min); "  # type: ignore[operator]
                f"the whole command {f['command_s'] / 60:.1f} min"  # type: ignore[operator]
            )
    name = "training-to-best.json" if args.to_best else "training.json"
    (out / name).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
