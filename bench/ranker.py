"""Ranker benchmark: one request's latency on each runtime, then throughput through the service.

    python bench/ranker.py [MODEL_DIR] [--runs 300] [--seconds 4] [--json FILE]

MODEL_DIR is one version directory (MODELS_DIR/<version>); without it a model (d=64, 2 layers,
2 heads, sequence 50: the size PERF-FLOORS.md measured) is trained for one epoch on the tiny demo
shop. One request = a 50-step sequence and 200 candidate bundles of 1 to 4 known items.

- latency, one request alone, in this process: onnxruntime as the service loads it (fp32 and the
  int8 export) against PyTorch eager (weights.pt in BundleRanker, wrapped by ServingRanker); and
  8 requests in one onnxruntime call, the model-only ceiling of micro-batching;
- throughput through the real gRPC service (`bundlerec serve ranker`, its own process) at 1, 8 and
  32 concurrent clients, with micro-batching (max_batch 16) and without (max_batch 1), beside a bare
  gRPC call (health Check) on the same server at the same concurrency.
Floors from ../shared/PERF-FLOORS.md (this kind of machine, 2026-11-22) are printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundlerec.ranker.encoding import encode_query
from bundlerec.ranker.model import LoadedModel, load_model
from bundlerec.ranker.servicer import query_from_pb
from bundlerec.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc
from tests.harness.processes import free_port, start_service, wait_serving

FLOORS = {  # PERF-FLOORS.md, "encode the sequence once" row and gRPC table
    "onnxruntime fp32": "0.60-0.75 ms",
    "PyTorch eager": "1.2-1.6 ms",
    "onnxruntime int8": "0.39 ms",
    "batch of 8, one ORT call": "3.0 ms → ~2,700 req/s",
}
GRPC_FLOOR = "aio/aio unary c=16: ~3,800 QPS, p50 4.1 ms"


def train_demo_model(root: Path) -> Path:
    from bundlerec.datasets import read_dataset
    from bundlerec.datasets.demo import generate_demo_shop
    from bundlerec.training.export import write_model_dir
    from bundlerec.training.train import TrainSettings, train

    print("no MODEL_DIR: training one epoch on the tiny demo shop...", file=sys.stderr)
    generate_demo_shop(root / "shop", seed=1, users=60, items=150)
    trained = train(read_dataset(root / "shop"), TrainSettings(max_epochs=1), None, progress=lambda _: None)
    return write_model_dir(trained, root / "models", dataset_name="demo-shop", text_encoder=None, int8=True)


def make_request(item_ids: list[str], seed: int) -> ranker_pb2.RankRequest:
    rng = random.Random(seed)
    start = int(time.time()) - 86_400
    sequence = [
        ranker_pb2.SequenceStep(
            target=common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=rng.choice(item_ids)),
            type=rng.choice([1, 1, 1, 2, 2, 3, 4]),
            timestamp={"seconds": start + 300 * n},
        )
        for n in range(50)
    ]
    candidates = [
        ranker_pb2.BundleCandidate(item_ids=rng.sample(item_ids, rng.randint(1, min(4, len(item_ids)))))
        for _ in range(200)
    ]
    return ranker_pb2.RankRequest(sequence=sequence, candidates=candidates)


def arrays(model: LoadedModel, request: ranker_pb2.RankRequest, batch: int) -> tuple[np.ndarray, ...]:
    """The request as the model's inputs (through the service's own encoder), repeated `batch` times."""
    encoded = encode_query(model, query_from_pb(request, 200), {})
    return tuple(
        np.repeat(a[None], batch, axis=0) for a in (encoded.sequence, encoded.cand_items, encoded.cand_bundles)
    )


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    for _ in range(max(5, runs // 20)):
        fn()
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def latency(
    model_dir: Path, request: ranker_pb2.RankRequest, runs: int
) -> tuple[dict[str, list[float]], float, tuple[float, float] | None]:
    """Per-runtime latencies (ms) of one request, the largest ONNX-vs-PyTorch score difference,
    and int8's accuracy cost on it: (largest |score difference|, share of fp32's top 20 it keeps)."""
    import torch

    from bundlerec.training.export import ServingRanker, load_weights

    fp32 = load_model(model_dir, providers="cpu")
    int8 = load_model(model_dir, providers="cpu", use_int8=True)
    one, eight = arrays(fp32, request, 1), arrays(fp32, request, 8)
    model, _, manifest = load_weights(model_dir)
    eager = ServingRanker(model)  # freezes its tables from the loaded weights, as the export does
    torch_inputs = [torch.from_numpy(a) for a in one] + [torch.zeros(1, max(manifest.text_dim, 1))]

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return eager(*torch_inputs)[0].numpy()

    figures = {
        "onnxruntime fp32": timed(lambda: fp32.run(*one, None), runs),
        "PyTorch eager": timed(run_torch, runs),
        "onnxruntime int8": timed(lambda: int8.run(*one, None), runs) if int8.quantized else [],
        "batch of 8, one ORT call": timed(lambda: fp32.run(*eight, None), max(20, runs // 4)),
    }
    reference = fp32.run(*one, None)[0][0]
    cost = None
    if int8.quantized:
        quantized = int8.run(*one, None)[0][0]
        top = set(np.argsort(-reference)[:20].tolist()) & set(np.argsort(-quantized)[:20].tolist())
        cost = (float(np.abs(quantized - reference).max()), len(top) / 20)
    return figures, float(np.abs(reference - run_torch()[0]).max()), cost


async def drive(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Requests/s and per-call latencies (ms) of `concurrency` clients calling back to back."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def mean_batch(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("bundlerec_ranker_batch_size_")
    }
    return values.get("bundlerec_ranker_batch_size_sum", 0.0), values.get("bundlerec_ranker_batch_size_count", 0.0)


async def service_throughput(
    address: str, metrics_port: int, requests: list[ranker_pb2.RankRequest], levels: list[int], seconds: float
) -> dict[int, dict[str, float]]:
    out = {}
    async with grpc.aio.insecure_channel(address) as channel:
        ranker = ranker_pb2_grpc.RankerServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        counter = iter(range(10**12))

        async def rank() -> None:
            await ranker.Rank(requests[next(counter) % len(requests)], timeout=30)

        await drive(rank, 4, 1.0)  # warm-up
        for level in levels:
            size_before, count_before = mean_batch(metrics_port)
            rate, lat = await drive(rank, level, seconds)
            size, count = mean_batch(metrics_port)
            bare, _ = await drive(lambda: health.Check(health_pb2.HealthCheckRequest()), level, min(seconds, 2.0))
            out[level] = {
                "rps": rate,
                "p50_ms": pct(lat, 50),
                "p99_ms": pct(lat, 99),
                "mean_batch": (size - size_before) / max(count - count_before, 1),
                "bare_rps": bare,
            }
    return out


def run_service(model_dir: Path, max_batch: int, max_wait_ms: float, *args: object) -> dict[int, dict[str, float]]:
    port, metrics_port = free_port(), free_port()
    env = {
        "BUNDLEREC_RANKER_MODELS_DIR": str(model_dir.parent),
        "BUNDLEREC_RANKER_MODEL_VERSION": model_dir.name,
        "BUNDLEREC_RANKER_PORT": str(port),
        "BUNDLEREC_RANKER_METRICS_PORT": str(metrics_port),
        "BUNDLEREC_RANKER_MAX_BATCH": str(max_batch),
        "BUNDLEREC_RANKER_MAX_WAIT_MS": str(max_wait_ms),
        "BUNDLEREC_RANKER_POLL_SECONDS": "0",
    }
    process = start_service("ranker", env)
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        return asyncio.run(service_throughput(f"127.0.0.1:{port}", metrics_port, *args))  # type: ignore[arg-type]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", nargs="?", help="one model version directory (default: train a tiny one)")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per latency figure")
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput figure")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="of the micro-batching service")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir).resolve() if args.model_dir else train_demo_model(Path(tmp))
        item_ids = json.loads((model_dir / "vocabulary.json").read_text())["items"]
        requests = [make_request(item_ids, seed) for seed in range(32)]
        lat, difference, int8_cost = latency(model_dir, requests[0], args.runs)
        levels = [int(c) for c in args.concurrency.split(",")]
        batched = run_service(model_dir, 16, args.max_wait_ms, requests, levels, args.seconds)
        single = run_service(model_dir, 1, 0.0, requests, levels, args.seconds)

    print(f"\nranker {model_dir.name}: 1 request = 50 steps × 200 candidates of 1-4 items, {os.cpu_count()} CPUs")
    print(f"{'one request alone':<26}{'p50 ms':>9}{'p99 ms':>9}{'vs ORT':>8}   floor (PERF-FLOORS.md)")
    base = pct(lat["onnxruntime fp32"], 50)
    for name, values in lat.items():
        if not values:
            continue
        extra = f"  = {8 / (pct(values, 50) / 1000):,.0f} req/s" if name.startswith("batch") else ""
        p50, p99 = pct(values, 50), pct(values, 99)
        print(f"{name:<26}{p50:>9.3f}{p99:>9.3f}{p50 / base:>8.2f}   {FLOORS[name]}{extra}")
    print(f"ONNX vs PyTorch on this request, max |score difference|: {difference:.2e}")
    if int8_cost:
        worst, kept = int8_cost
        print(f"int8 vs fp32 on this request: max |score difference| {worst:.3f}, top 20 kept {kept:.0%}")
    print(f"\nthrough gRPC, micro-batching waits at most {args.max_wait_ms} ms for company")
    print(f"{'':<14}{'max_batch 16':>26}{'max_batch 1':>26}{'16 / 1':>8}{'bare gRPC':>11}")
    print(f"{'concurrency':<14}{'req/s  p50  p99  batch':>26}{'req/s  p50  p99':>26}{'':>8}{'req/s':>11}")
    for level in levels:
        b, s = batched[level], single[level]
        print(
            f"{level:<14}{b['rps']:>8,.0f}{b['p50_ms']:>6.1f}{b['p99_ms']:>6.1f}{b['mean_batch']:>6.1f}"
            f"{s['rps']:>14,.0f}{s['p50_ms']:>6.1f}{s['p99_ms']:>6.1f}{b['rps'] / s['rps']:>8.2f}"
            f"{b['bare_rps']:>11,.0f}"
        )
    print(f"floor: bare gRPC health Check on the same server (column above); PERF-FLOORS.md {GRPC_FLOOR}")
    if args.json:
        figures = {"latency_ms": {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in lat.items() if v}}
        figures["grpc"] = {"max_batch_16": batched, "max_batch_1": single}  # type: ignore[dict-item]
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
