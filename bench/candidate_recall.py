"""Candidate recall on real data: the share of held-out test targets that retrieval puts among
the candidates, for each source alone and for all merged. It is the ceiling the ranker can reach.

    python bench/candidate_recall.py ../shared/data/amazon-beauty [more datasets...] [--k 200]

Protocol (FORMAT.md): next-item datasets — for each user in test.csv, the history is events.csv
plus the user's valid.csv row, items already in the history are excluded, and a hit is the test
item among the k item candidates. Bundle datasets — the history is events.csv, bundles already in
it are excluded, and recall divides the user's test bundles found among the k bundle candidates by
their number. Item texts are embedded with the exported encoder (cached under var/cache/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.candidate.model import Source
from bundlerec.candidate.offline import DatasetRetriever
from bundlerec.candidate.retrieval import SOURCE_WEIGHTS
from bundlerec.datasets.reader import read_dataset
from bundlerec.evaluation.protocol import build_split
from bundlerec.evaluation.two_stage import sample_users
from bundlerec.training.text import item_text_vectors


def evaluate(path: str, k: int, users: int, encoder_dir: str, seed: int, split: str) -> dict[str, object]:
    dataset = read_dataset(path)
    started = time.monotonic()
    vectors, _ = item_text_vectors(dataset, Path(encoder_dir))
    retriever = DatasetRetriever(dataset, vectors)
    build_s = time.monotonic() - started
    data = sample_users(build_split(dataset, split), users, seed)
    configs: dict[str, frozenset[Source]] = {
        "vector": frozenset({Source.VECTOR}),
        "co-occurrence": frozenset({Source.CO_OCCURRENCE}),
        "bundle membership": frozenset({Source.BUNDLE_MEMBERSHIP}),
        "popularity": frozenset({Source.POPULARITY}),
        "merged": frozenset(Source),
    }
    if dataset.info.task != "bundle":
        del configs["bundle membership"]
    results: dict[str, float] = {}
    for name, sources in configs.items():
        started = time.monotonic()
        total = 0.0
        for user in data.users:
            found = {data.target_index[t] for t in retriever.candidates(data, user, k, sources)}
            positives = set(data.positives[user].tolist())
            total += len(found & positives) / len(positives)
        results[name] = total / len(data.users)
        per_user_ms = (time.monotonic() - started) / len(data.users) * 1000
        print(f"  {name:<18} recall@{k} {results[name]:.4f}   ({per_user_ms:.1f} ms a user)", file=sys.stderr)
    return {
        "dataset": dataset.info.name,
        "task": dataset.info.task,
        "users": len(data.users),
        "k": k,
        "index_build_s": round(build_s, 1),
        "recall": {n: round(r, 4) for n, r in results.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--users", type=int, default=2000, help="test users sampled per dataset")
    parser.add_argument("--encoder-dir", default="var/bundlerec/encoder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--split", choices=["test", "valid"], default="test", help="valid: for choosing settings without the test split"
    )
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="SOURCE=W",
        help="override a source's fusion weight, e.g. --weight co_occurrence=2 (repeatable)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    for override in args.weight:
        name, _, value = override.partition("=")
        SOURCE_WEIGHTS[Source[name.upper()]] = float(value)
    figures = []
    for path in args.datasets:
        print(f"{path}:", file=sys.stderr)
        figures.append(evaluate(path, args.k, args.users, args.encoder_dir, args.seed, args.split))
    names = sorted({n for f in figures for n in f["recall"]}, key=lambda n: (n == "merged", n))  # type: ignore[attr-defined]
    print(f"\ncandidate recall@{args.k} ({args.users} {args.split} users sampled per dataset)")
    print(f"{'dataset':<20}" + "".join(f"{n:>19}" for n in names))
    for f in figures:
        row = "".join(f"{f['recall'].get(n, float('nan')):>19.4f}" for n in names)  # type: ignore[attr-defined]
        print(f"{f['dataset']:<20}{row}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
