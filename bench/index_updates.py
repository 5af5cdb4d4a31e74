"""What a catalogue write costs the next retrieval: the first Retrieve after a write against a
steady Retrieve (the baseline), on an in-memory catalogue of synthetic items.

    python bench/index_updates.py [--items 100000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bundlerec.candidate.index import CatalogueIndex
from bundlerec.candidate.model import Filter, Item, RecentInteraction, RetrievalRequest
from bundlerec.candidate.retrieval import retrieve
from bundlerec.candidate.statistics import EMPTY
from bundlerec.events import EventType


def timed_ms(request: RetrievalRequest, index: CatalogueIndex) -> float:
    started = time.perf_counter()
    retrieve(index, request)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    index = CatalogueIndex(args.dim)
    index.load(
        [
            (
                Item(f"i{i}", f"t{i}", f"C{i % 50} > S{i % 7}", f"b{i % 30}", float(i % 90)),
                rng.standard_normal(args.dim),
            )
            for i in range(args.items)
        ],
        [],
        EMPTY,
    )
    request = RetrievalRequest(
        recent=(RecentInteraction("i5", False, EventType.VIEW),),
        item_limit=200,
        bundle_limit=0,
        filter=Filter(in_stock_only=True, max_price=50, exclude_categories=("C3",)),
    )
    timed_ms(request, index)  # warm-up
    steady = [timed_ms(request, index) for _ in range(args.repeats)]
    after_stock, after_upsert = [], []
    for n in range(args.repeats):
        index.set_availability(f"i{n}", n % 2 == 0, None)
        after_stock.append(timed_ms(request, index))
        index.upsert_item(Item(f"new{n}", "x", "C1", "b"), rng.standard_normal(args.dim))
        after_upsert.append(timed_ms(request, index))
    print(f"{args.items:,} items, d={args.dim}, median of {args.repeats}, ms")
    print(f"  steady Retrieve (baseline):        {statistics.median(steady):7.1f}")
    print(f"  first Retrieve after SetAvailability: {statistics.median(after_stock):4.1f}")
    print(f"  first Retrieve after UpsertItems:  {statistics.median(after_upsert):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
