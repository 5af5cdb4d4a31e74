"""Freshness of the model on a drifting shop: a frozen model against daily incremental retrains and
a full retrain, all judged on the shop's last day.

    python bench/freshness.py [--users 4000] [--days 28] [--simulated-days 14] [--seed 1] [--threads 2] [--no-text]

The shop is the demo generator's drifting shop (`generate_demo_shop(drift=True)`: products and
bundles launched during the second half, half the shoppers moving to other departments). Time is
cut into days; "day d" sees the events before the end of day d, and `bundlerec retrain`'s split
trains on all but its newest day and evaluates on that day.
- frozen: a full training on the data of day D - S (S = --simulated-days), never retrained;
- incremental: each of the S days after it, a warm retrain from the version serving (the frozen
  one first), through the promotion gate as `bundlerec retrain` runs it;
- full: a full retrain on the data of the last day.
All three are then ranked over the whole catalogue on the last day's purchases (NDCG@10, HR@10),
and over every bundle for the shoppers who clicked, carted or bought a bundle launched during the
period that day (HR@10: does the launched bundle reach their top 10).

Goals (issue 16): the incremental retrain reaches at least 90 % of the full retrain's NDCG@10 in at
most a fifth of its time (mean incremental retrain against the full one, training only: the gate's
evaluation is the same for both), and both beat the frozen model.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bundlerec.datasets import Dataset, HeldOut
from bundlerec.datasets.demo import generate_demo_shop
from bundlerec.datasets.reader import read_dataset
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import EvalSplit, build_split
from bundlerec.ranking.artifact import ModelManifest
from bundlerec.training.retrain import DAY, Serving, gate, retrain, time_split
from bundlerec.training.scorer import ModelScorer
from bundlerec.training.text import item_text_vectors
from bundlerec.training.train import TrainedModel, TrainSettings

GOAL_QUALITY = 0.9
GOAL_TIME = 0.2
ENGAGED = ("click", "add_to_cart", "purchase")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--bundles", type=int, default=300)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--simulated-days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument("--encoder-dir", default="var/bundlerec/encoder")
    parser.add_argument("--out", default="var/bench/freshness")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    path = out / f"shop-{args.users}-{args.days}-{args.seed}"
    if not (path / "dataset.json").is_file():
        generate_demo_shop(
            path, seed=args.seed, users=args.users, items=args.items, bundles=args.bundles, days=args.days, drift=True
        )
    shop = read_dataset(path)
    vectors = None if args.no_text else item_text_vectors(shop, Path(args.encoder_dir))[0]
    settings = TrainSettings(use_text=vectors is not None, seed=args.seed)
    begin = min(e.timestamp for e in shop.events)
    last, first = args.days, args.days - args.simulated_days
    quiet = lambda line: None  # noqa: E731

    def day(d: int) -> tuple[Dataset, int]:
        return time_split(
            dataclasses.replace(shop, events=[e for e in shop.events if e.timestamp < begin + d * DAY]), 1
        )

    frozen_data, frozen_since = day(first)
    frozen, frozen_s = retrain(frozen_data, None, settings, vectors, full=True, since=0, progress=quiet)
    print(f"frozen: trained on days 1-{first - 1} in {frozen_s:.0f} s", file=sys.stderr)
    serving, since = served("frozen", frozen, settings, frozen_since), frozen_since
    incremental: list[dict[str, object]] = []
    candidate = frozen
    for d in range(first + 1, last + 1):
        data, start = day(d)
        candidate, seconds = retrain(data, serving, settings, vectors, full=False, since=since, progress=quiet)
        promote, why, _ = gate(
            data,
            candidate,
            serving,
            vectors,
            tolerance=0.02,
            max_age_days=365,
            now=dt.datetime.now(dt.UTC),
            window_start=start,
        )
        incremental.append({"day": d, "seconds": round(seconds, 1), "promoted": promote, "why": why})
        print(f"day {d}: incremental retrain in {seconds:.0f} s, {'promoted' if promote else 'rejected'}: {why}")
        if promote:
            serving, since = served(f"day {d}", candidate, settings, start), start
    final, final_start = day(last)
    full, full_s = retrain(final, None, settings, vectors, full=True, since=0, progress=quiet)
    print(f"full retrain on days 1-{last - 1} in {full_s:.0f} s", file=sys.stderr)

    models = {
        "frozen": frozen,
        "incremental (last retrain)": candidate,
        "serving after the gate": serving,
        "full": full,
    }
    split = build_split(final, "test")
    launches = launched_split(final, shop, begin + (args.days // 2) * DAY, final_start)
    rows = {}
    for name, model in models.items():
        vocabulary = model.vocabulary if isinstance(model, Serving) else model.data.vocabulary
        trained_model = model.model
        scorer = ModelScorer(name, trained_model, final, vocabulary, vectors)
        metrics = evaluate_scorer(split, scorer, ks=(10,))
        launch = evaluate_scorer(
            launches, ModelScorer(name, trained_model, launches.dataset, vocabulary, vectors), ks=(10,)
        )
        rows[name] = {
            "NDCG@10": metrics["NDCG@10"],
            "HR@10": metrics["HR@10"],
            "launched bundles HR@10": launch["Recall@10"],  # the bundle task's name for the hit rate
        }
    mean_incremental = sum(float(r["seconds"]) for r in incremental) / len(incremental)
    quality = rows["incremental (last retrain)"]["NDCG@10"] / rows["full"]["NDCG@10"]
    timing = mean_incremental / full_s
    print(f"\nlast day: {len(split.users)} shoppers who bought; {len(launches.users)} engaged with a launched bundle")
    print(f"{'model':28s} {'NDCG@10':>8s} {'HR@10':>7s} {'launched bundles HR@10':>23s}")
    for name, row in rows.items():
        print(f"{name:28s} {row['NDCG@10']:8.4f} {row['HR@10']:7.4f} {row['launched bundles HR@10']:23.4f}")
    beat = all(rows[n]["NDCG@10"] > rows["frozen"]["NDCG@10"] for n in ("incremental (last retrain)", "full"))
    print(
        f"\nincremental / full NDCG@10: {quality:.2f} (goal >= {GOAL_QUALITY}); mean incremental retrain "
        f"{mean_incremental:.1f} s / full {full_s:.1f} s = {timing:.2f} (goal <= {GOAL_TIME}); "
        f"both beat the frozen model: {'yes' if beat else 'no'}"
    )
    met = quality >= GOAL_QUALITY and timing <= GOAL_TIME and beat
    print(f"goals {'met' if met else 'NOT met'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "freshness.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "incremental": incremental,
                "full_seconds": full_s,
                "frozen_seconds": frozen_s,
                "quality": quality,
                "timing": timing,
                "goals_met": met,
            },
            indent=2,
        )
    )
    return 0


def served(version: str, trained: TrainedModel, settings: TrainSettings, data_until: int) -> Serving:
    """A trained model as the serving version a warm start reads (as write_model_dir would record it)."""
    manifest = ModelManifest(
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        dataset="demo-shop",
        task=trained.data.task,
        clock=trained.data.clock,
        model=trained.model.config.to_dict(),
        training=trained.settings.to_dict(),
        metrics=trained.validation,
        text_encoder={"model_name": "bench"} if settings.use_text else None,
        onnx_sha256="",
        data_until=data_until,
    )
    return Serving(version, trained.model, trained.data.vocabulary, manifest)


def launched_split(final: Dataset, shop: Dataset, half: int, start: int) -> EvalSplit:
    """The last day's shoppers who engaged with a bundle first seen in the second half, ranked over
    every bundle (the bundle task's protocol on the same history)."""
    first_seen: dict[str, int] = {}
    for e in shop.events:  # in time order per shopper, not overall: keep the minimum
        if e.target_type == "bundle":
            first_seen[e.target_id] = min(e.timestamp, first_seen.get(e.target_id, e.timestamp))
    rows, taken = [], set()
    for e in shop.events:
        launched = first_seen.get(e.target_id, 0) >= half
        if e.timestamp >= start and e.target_type == "bundle" and e.event_type in ENGAGED and launched:
            if (e.user_id, e.target_id) not in taken:
                taken.add((e.user_id, e.target_id))
                rows.append(HeldOut(e.user_id, e.target_id))
    info = dataclasses.replace(final.info, task="bundle")
    return build_split(dataclasses.replace(final, info=info, test=rows), "test")


if __name__ == "__main__":
    sys.exit(main())
