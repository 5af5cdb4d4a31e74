"""Full-ranking evaluation cost: our model against item-kNN on the same split, in the same run.

    python bench/full_ranking.py --data ../shared/data/amazon-beauty [--runs 2] [--threads 1]

The issue's goal: evaluating ours (scoring every target for every test user, as `bundlerec
evaluate` does) costs at most 3 times item-kNN's fit and evaluation. What full ranking costs does
not depend on the weights, so the model here is untrained, of the default size (d=64, 2 layers,
sequence 50), with the co-occurrence tables filled (cosine, 100 neighbours per column), on the
dataset's own vocabulary: no training run is needed to measure it. Each run times both, one after
the other, and prints the ratio; the metrics harness (masking, top-K) is in both figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bundlerec.datasets import read_dataset
from bundlerec.evaluation.baselines import fit_item_knn
from bundlerec.evaluation.metrics import evaluate_scorer
from bundlerec.evaluation.protocol import build_split
from bundlerec.evaluation.run import KS
from bundlerec.training.cooccurrence import cosine_tables
from bundlerec.training.data import prepare
from bundlerec.training.model import BundleRanker, ModelConfig
from bundlerec.training.scorer import ModelScorer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset in the import format")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (item-kNN uses one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = read_dataset(args.data)
    split = build_split(dataset, "test")
    data = prepare(dataset, None, ModelConfig.max_members, order="auto")
    config = ModelConfig(
        num_item_rows=data.vocabulary.num_item_rows,
        num_bundle_rows=data.vocabulary.num_bundle_rows,
        text_dim=0,
        causal=data.causal,
    )
    model = BundleRanker(config, torch.from_numpy(data.item_text), torch.from_numpy(data.vocabulary.bundle_members))
    model.set_neighbours(cosine_tables(data, config.neighbours))
    model.wide_weight.fill_(1.0)
    print(
        f"{dataset.info.name}: {len(split.users):,} test users × {len(split.target_ids):,} targets, "
        f"{args.threads} torch thread(s)"
    )
    ratios = []
    for run in range(1, args.runs + 1):
        started = time.perf_counter()
        evaluate_scorer(split, fit_item_knn(split), ks=KS)
        knn = time.perf_counter() - started
        started = time.perf_counter()
        evaluate_scorer(split, ModelScorer("ours", model, dataset, data.vocabulary, None), ks=KS)
        ours = time.perf_counter() - started
        ratios.append(ours / knn)
        print(f"run {run}: item-kNN fit and evaluation {knn:.2f} s, ours {ours:.2f} s: {ours / knn:.1f}x (goal: 3x)")
    print(f"ours / item-kNN: {min(ratios):.1f}-{max(ratios):.1f}x over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
