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
import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Bundle, Filter, Item, RecentInteraction, RetrievalRequest, Source
from bundlerec.candidate.retrieval import SOURCE_WEIGHTS, retrieve
from bundlerec.datasets.reader import Dataset, read_dataset
from bundlerec.encoder.runtime import TextEncoder, item_text
from bundlerec.events import EventType
from bundlerec.importer import dataset_statistics

HISTORY = 50  # most recent interactions sent as the user's context


def embeddings(dataset: Dataset, encoder_dir: str) -> np.ndarray:
    texts = [item_text(it.title, it.category, it.brand) for it in dataset.items.values()]
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    cache = Path("var/cache") / f"embeddings-{dataset.info.name}-{digest}.npy"
    if cache.exists():
        return np.load(cache)
    started = time.monotonic()
    vectors = TextEncoder(encoder_dir).encode(texts)
    print(f"  embedded {len(texts):,} item texts in {time.monotonic() - started:.0f} s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def build_index(dataset: Dataset, vectors: np.ndarray) -> CatalogueIndex:
    statistics = dataset_statistics(dataset)  # as `bundlerec import` computes them
    index = CatalogueIndex(vectors.shape[1])
    items = [
        (Item(it.item_id, it.title, it.category, it.brand, it.price), vectors[i])
        for i, it in enumerate(dataset.items.values())
    ]
    bundles = [Bundle(b.bundle_id, b.item_ids, b.title) for b in dataset.bundles.values()]
    index.load(items, bundles, statistics)
    return index


# (timestamp, file order, is a bundle, target id, event type): sorts into the user's sequence.
HistoryStep = tuple[int, int, bool, str, str]


def histories(dataset: Dataset, split: str) -> dict[str, list[HistoryStep]]:
    found: dict[str, list[HistoryStep]] = defaultdict(list)
    for n, e in enumerate(dataset.events):
        found[e.user_id].append((e.timestamp, n, e.target_type == "bundle", e.target_id, e.event_type))
    if dataset.info.task == "next_item" and split == "test":  # the valid row is history too (FORMAT.md)
        for row in dataset.valid:
            found[row.user_id].append((2**62, 0, False, row.target_id, "purchase"))
    for steps in found.values():
        steps.sort()
    return found


def evaluate(path: str, k: int, users: int, encoder_dir: str, seed: int, split: str) -> dict[str, object]:
    dataset = read_dataset(path)
    started = time.monotonic()
    index = build_index(dataset, embeddings(dataset, encoder_dir))
    build_s = time.monotonic() - started
    bundle_task = dataset.info.task == "bundle"
    targets: dict[str, set[str]] = defaultdict(set)
    for row in dataset.test if split == "test" else dataset.valid:
        targets[row.user_id].add(row.target_id)
    history = histories(dataset, split)
    sample = sorted(targets)
    random.Random(seed).shuffle(sample)
    sample = sample[:users]
    configs: dict[str, frozenset[Source]] = {
        "vector": frozenset({Source.VECTOR}),
        "co-occurrence": frozenset({Source.CO_OCCURRENCE}),
        "bundle membership": frozenset({Source.BUNDLE_MEMBERSHIP}),
        "popularity": frozenset({Source.POPULARITY}),
        "merged": frozenset(Source),
    }
    if not bundle_task:
        del configs["bundle membership"]
    results: dict[str, float] = {}
    for name, sources in configs.items():
        started = time.monotonic()
        total = 0.0
        for user in sample:
            steps = history.get(user, [])
            seen_items = {t for _, _, is_bundle, t, _ in steps if not is_bundle}
            seen_bundles = {t for _, _, is_bundle, t, _ in steps if is_bundle}
            recent = tuple(
                RecentInteraction(t, is_bundle, EventType(kind)) for _, _, is_bundle, t, kind in steps[-HISTORY:]
            )
            request = RetrievalRequest(
                recent=recent,
                item_limit=0 if bundle_task else k,
                bundle_limit=k if bundle_task else 0,
                filter=Filter(exclude_item_ids=frozenset(seen_items), exclude_bundle_ids=frozenset(seen_bundles)),
                sources=sources,
            )
            got = retrieve(index, request)
            found = {c.target_id for c in (got.bundles if bundle_task else got.items)}
            total += len(found & targets[user]) / len(targets[user])
        results[name] = total / len(sample)
        per_user_ms = (time.monotonic() - started) / len(sample) * 1000
        print(f"  {name:<18} recall@{k} {results[name]:.4f}   ({per_user_ms:.1f} ms a user)", file=sys.stderr)
    return {
        "dataset": dataset.info.name,
        "task": dataset.info.task,
        "users": len(sample),
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
