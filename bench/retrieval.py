"""Candidate retrieval benchmark: VectorIndex (exact / HNSW) and IVF on synthetic vectors.

    python bench/retrieval.py [--sizes 100000,1000000] [--dims 384] [--index-types exact,hnsw[,ivf]]

For each (n, d): build time and memory, single-query top-200 latency p50/p99 on one FAISS thread,
without and with a 30% bitmap filter (the service always searches with a selector), and
recall@200 against exact search, the baseline measured in the same run. Exact and HNSW go through
bundlerec's VectorIndex, so the figures include what the service adds around FAISS. The fused
vector dimension is 384 (all-MiniLM-L6-v2) + external_vector_dim (0 by default).
These figures back `exact_below` and `ef_search` in services/candidate/vectors.py.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from bundlerec.candidate.vectors import VectorIndex, normalize

K = 200
FILTER_FRACTION = 0.3
PILOT = 20_000  # vectors in the pilot HNSW build that estimates the full one
CHUNK = 65_536
Search = Callable[[np.ndarray, int, np.ndarray | None], list[tuple[str, float]]]


@dataclass
class Row:
    n: int
    d: int
    index: str
    build_s: float
    rss_mib: float  # retained after build
    peak_mib: float  # peak during build, above the RSS before it
    est_mib: float  # vectors + ids (+ graph links / centroids)
    p50_ms: float
    p99_ms: float
    f_p50_ms: float
    f_p99_ms: float
    p50_2t_ms: float
    recall: float
    f_recall: float
    vs_exact: float = 1.0


class IvfIndex:
    """IVF-Flat searched like VectorIndex (slots + IDSelectorBitmap), which does not offer IVF."""

    def __init__(self, dim: int, nlist: int) -> None:
        self.quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.niter = 10
        self.nprobe = 32
        self.key_at: list[str] = []
        self.alive = np.zeros(0, dtype=bool)

    def build(self, keys: list[str], vectors: np.ndarray, rng: np.random.Generator) -> None:
        self.key_at, self.alive = keys, np.ones(len(keys), dtype=bool)
        sample = np.sort(rng.choice(len(keys), min(len(keys), 32 * self.index.nlist), replace=False))
        self.index.train(vectors[sample])
        self.index.add_with_ids(vectors, np.arange(len(keys), dtype=np.int64))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[str, float]]:
        mask = self.alive if allowed is None else self.alive & allowed
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        scores, slots = self.index.search(normalize(query.reshape(1, -1)), k, params=params)
        return [(self.key_at[s], float(x)) for s, x in zip(slots[0], scores[0], strict=True) if s >= 0]


def synthetic(n: int, d: int, args: argparse.Namespace, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors; clustered: skewed Gaussian clusters around random unit centres, noise norm ~args.noise."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    if args.distribution == "clustered":
        centres = normalize(rng.standard_normal((args.clusters, d), dtype=np.float32))
        weights = 1.0 / np.arange(1, args.clusters + 1) ** 0.7
        assign = rng.choice(args.clusters, n, p=weights / weights.sum())
        for s in range(0, n, CHUNK):
            x[s : s + CHUNK] *= args.noise / math.sqrt(d)
            x[s : s + CHUNK] += centres[assign[s : s + CHUNK]]
    for s in range(0, n, CHUNK):  # in place: 1M x 384 float32 is 1.5 GB a copy
        x[s : s + CHUNK] /= np.linalg.norm(x[s : s + CHUNK], axis=1, keepdims=True)
    return x


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured_build(build: Callable[[], object]) -> tuple[float, float, float]:
    """(seconds, retained MiB, peak MiB above the start) of one build, on 2 FAISS threads."""
    gc.collect()
    faiss.omp_set_num_threads(2)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so RSS before is what is live
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, so the peak is this build's
    except OSError:
        pass
    before, t0 = status_mib("VmRSS"), time.perf_counter()
    build()
    seconds = time.perf_counter() - t0
    return seconds, status_mib("VmRSS") - before, status_mib("VmHWM") - before


def timed(search: Search, queries: np.ndarray, allowed: np.ndarray | None) -> tuple[np.ndarray, list[set[str]]]:
    for q in queries[:5]:  # warm-up
        search(q, K, allowed)
    ms, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = search(q, K, allowed)
        ms.append((time.perf_counter() - t0) * 1e3)
        found.append({key for key, _ in hits})
    return np.array(ms), found


def recall(found: list[set[str]], truth: list[set[str]]) -> float:
    return float(np.mean([len(f & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


def measure(
    search: Search, queries: np.ndarray, allowed: np.ndarray
) -> tuple[list[float], list[set[str]], list[set[str]]]:
    """([p50, p99, filtered p50, filtered p99, p50 on 2 threads], found, found with the filter)."""
    faiss.omp_set_num_threads(1)
    ms, found = timed(search, queries, None)
    f_ms, f_found = timed(search, queries, allowed)
    faiss.omp_set_num_threads(2)  # FAISS does not split one query across threads; this shows it
    ms2, _ = timed(search, queries[:50], None)
    pct = [float(np.percentile(a, q)) for a, q in ((ms, 50), (ms, 99), (f_ms, 50), (f_ms, 99), (ms2, 50))]
    return pct, found, f_found


COLUMNS = (  # header, Row field, format
    ("index", "index", "{}"),
    ("build s", "build_s", "{:.1f}"),
    ("RSS MiB", "rss_mib", "{:,.0f}"),
    ("peak MiB", "peak_mib", "{:,.0f}"),
    ("est MiB", "est_mib", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("filt p50", "f_p50_ms", "{:.2f}"),
    ("filt p99", "f_p99_ms", "{:.2f}"),
    ("p50 2t", "p50_2t_ms", "{:.2f}"),
    ("recall@200", "recall", "{:.3f}"),
    ("filt recall", "f_recall", "{:.3f}"),
    ("p50/exact", "vs_exact", "{:.2f}"),
)


def print_table(n: int, d: int, rows: list[Row]) -> None:
    print(f"\n## n={n:,} d={d}  (k={K}; one query at a time, 1 FAISS thread; 2t: 2 threads; filt: 30% allowed)")
    print("| " + " | ".join(h for h, _, _ in COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(fmt.format(getattr(r, f)) for _, f, fmt in COLUMNS) + " |", flush=True)


Builds = dict[int, tuple[int, float]]  # d -> (n, seconds) of the last HNSW build, to estimate the next


def bench(
    n: int, d: int, args: argparse.Namespace, rng: np.random.Generator, notes: list[str], builds: Builds
) -> list[Row]:
    """The rows of one (n, d) table; exact search first, as the baseline and the ground truth."""
    t0 = time.perf_counter()
    data = synthetic(n + args.queries, d, args, rng)
    base, queries = data[:n], data[n:]
    keys = [f"item-{i}" for i in range(n)]
    allowed = rng.random(n) < FILTER_FRACTION
    print(f"\n[n={n:,} d={d}] generated {n + args.queries:,} vectors in {time.perf_counter() - t0:.1f} s", flush=True)
    mib, rows = 1 / 2**20, []

    def add(label: str, search: Search, build: tuple[float, float, float], est_bytes: float) -> None:
        pct, found, f_found = measure(search, queries, allowed)
        truth.extend([] if truth else [found, f_found])  # the first row is exact: the ground truth
        rows.append(Row(n, d, label, *build, est_bytes * mib, *pct, recall(found, truth[0]), recall(f_found, truth[1])))

    truth: list[list[set[str]]] = []
    exact = VectorIndex(d, exact_below=n + 1)
    add("exact (VectorIndex)", exact.search, measured_build(lambda: exact.build(keys, base)), n * (4 * d + 8))
    if "hnsw" in args.index_types:
        n0, s0 = builds.get(d) or (min(n, PILOT), 0.0)
        if n0 < n and not s0:  # no earlier build at this d: time a pilot
            s0 = measured_build(lambda: VectorIndex(d, exact_below=0).build(keys[:n0], base[:n0]))[0]
        estimate = s0 * (n * math.log(n)) / (n0 * math.log(n0))
        if estimate > args.max_build_seconds:
            notes.append(
                f"n={n:,} d={d}: HNSW skipped, estimated build {estimate:.0f} s (n log n from a "
                f"{n0:,}-vector build in {s0:.1f} s) > --max-build-seconds {args.max_build_seconds:.0f}"
            )
            print(notes[-1], flush=True)
        else:
            hnsw = VectorIndex(d, exact_below=0)
            build = measured_build(lambda: hnsw.build(keys, base))
            builds[d] = (n, build[0])
            notes.append(
                f"n={n:,} d={d}: HNSW build {build[0]:.0f} s" + (f", estimated {estimate:.0f} s" if s0 else "")
            )
            for ef in args.ef_search:
                hnsw.ef_search = ef
                add(f"hnsw M={hnsw.hnsw_m} efS={max(ef, K)}", hnsw.search, build, n * (4 * d + 8 + 8 * hnsw.hnsw_m))
            del hnsw
    if "ivf" in args.index_types:
        nlist = int(math.sqrt(n) * 4)
        ivf = IvfIndex(d, nlist)
        build = measured_build(lambda: ivf.build(keys, base, rng))
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            add(f"ivf{nlist} nprobe={nprobe}", ivf.search, build, n * (4 * d + 8) + nlist * d * 4)
        del ivf
    for r in rows:
        r.vs_exact = r.p50_ms / rows[0].p50_ms
    return rows


def main() -> None:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=ints, default=ints("100000,1000000"))
    parser.add_argument("--dims", type=ints, default=ints("384"))
    parser.add_argument("--queries", type=int, default=200, help="held-out queries from the same distribution")
    parser.add_argument("--index-types", default="exact,hnsw", help="exact (always run: the baseline), hnsw, ivf")
    parser.add_argument("--ef-search", type=ints, default=ints("256,512,1024"), help="HNSW efSearch values")
    parser.add_argument("--nprobe", type=ints, default=ints("32,64"), help="IVF nprobe values (nlist = 4 sqrt(n))")
    parser.add_argument("--max-build-seconds", type=float, default=420.0, help="skip HNSW builds estimated longer")
    parser.add_argument("--distribution", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.index_types = set(args.index_types.split(","))
    if unknown := args.index_types - {"exact", "hnsw", "ivf"}:
        parser.error(f"unknown index types: {sorted(unknown)}")
    rng = np.random.default_rng(args.seed)
    what = (
        f"{args.clusters} Gaussian clusters (sizes ∝ rank^-0.7), noise norm {args.noise} around unit centres, "
        "normalized; closer to real embeddings than uniform, still synthetic"
        if args.distribution == "clustered"
        else "uniform random on the sphere (the worst case)"
    )
    print(
        f"retrieval bench: faiss {faiss.__version__}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; "
        f"vectors: {what}; {args.queries} queries; builds on 2 threads. Shared CPU: timings are noisy."
    )
    t0, rows, notes, builds = time.perf_counter(), [], [], {}
    for d in args.dims:
        for n in sorted(args.sizes):
            table = bench(n, d, args, rng, notes, builds)
            print_table(n, d, table)
            rows += table
            gc.collect()
            if args.json:  # after every table, so an interrupted run keeps what it measured
                out = {
                    "vectors": what,
                    "k": K,
                    "queries": args.queries,
                    "notes": notes,
                    "rows": [asdict(r) for r in rows],
                }
                args.json.write_text(json.dumps(out, indent=1))
    print("\n" + "\n".join(notes))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s, load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
