"""What a load test found: a summary of a run (throughput, latency percentiles, errors and
degradations by reason, time per stage), printed as a table, written as JSON and drawn as a PNG.

Percentiles are nearest-rank (the smallest latency that at least p % of requests stayed within),
over every request in the measured window, failed ones included: a request that ran into its
deadline counts at the time it gave up, so errors cannot make the latency look better.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from bundlerec.loadtest.driver import Run, Sample, StepResult

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
LAG_WARNING_MS = 5.0  # the generator's p99 send delay past which its own lateness is flagged


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank: the value at rank ceil(p/100 * n) of the ascending values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def distribution(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {name: round(percentile(ordered, p), 3) for name, p in PERCENTILES}
    out["max"] = round(ordered[-1], 3) if ordered else 0.0
    out["mean"] = round(sum(ordered) / len(ordered), 3) if ordered else 0.0
    return out


def summarize(run: Run) -> dict[str, Any]:
    samples = run.samples
    ok = [s for s in samples if s.code == "OK"]
    end = max((s.due + s.latency_ms / 1000 for s in samples), default=run.warmup + run.duration)
    span = max(end - run.warmup, 1e-9)
    codes = Counter(s.code for s in samples if s.code != "OK")
    reasons = Counter(r for s in samples for r in s.degraded)
    stages: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for stage, ms in s.stages:
            stages[stage].append(ms)
    labels: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        labels[s.label].append(s.latency_ms)
    lag = distribution([max(0.0, s.sent - s.due) * 1000 for s in samples]) if run.mode == "open" else None
    sent_span = (max(s.sent for s in samples) - min(s.sent for s in samples)) if len(samples) > 1 else 0.0
    return {
        "target": run.target,
        "mode": run.mode,
        "offered_rps": run.rate if run.mode == "open" else None,
        "concurrency": run.concurrency if run.mode == "closed" else None,
        "duration_s": run.duration,
        "warmup_s": run.warmup,
        "deadline_ms": run.deadline_ms,
        "requests": len(samples),
        "sent_rps": round((len(samples) - 1) / sent_span, 2) if sent_span > 0 else 0.0,
        "achieved_rps": round(len(ok) / span, 2),
        "latency_ms": distribution([s.latency_ms for s in samples]),
        "service_ms": distribution([s.service_ms for s in samples]),
        "ok_latency_ms": distribution([s.latency_ms for s in ok]),
        "errors": sum(codes.values()),
        "errors_by_code": dict(codes.most_common()),
        "degraded": sum(1 for s in samples if s.degraded),
        "degraded_by_reason": dict(reasons.most_common()),
        "traced": sum(1 for s in samples if s.stages),
        "stages_ms": {stage: distribution(ms) for stage, ms in sorted(stages.items())},
        "by_label": {k: {"requests": len(v), **distribution(v)} for k, v in sorted(labels.items())},
        "send_lag_ms": lag,
        "generator_behind": bool(lag and lag["p99"] > LAG_WARNING_MS),
    }


def ratios(ours: dict[str, Any], floor: dict[str, Any]) -> dict[str, float | None]:
    """Our latency as a multiple of the floor's (same load, empty handlers)."""
    out: dict[str, float | None] = {}
    for name, _ in PERCENTILES:
        base = floor["latency_ms"][name]
        out[name] = round(ours["latency_ms"][name] / base, 2) if base > 0 else None
    return out


def step_summary(result: StepResult) -> dict[str, Any]:
    return {
        "objective": {
            "p99_ms": result.objective.p99_ms,
            "max_bad_share": result.objective.max_bad_share,
            "min_achieved": result.objective.min_achieved,
        },
        "best_rate": result.best_rate,
        "steps": [
            {
                "offered_rps": rate,
                "met": met,
                "why_not": why,
                "achieved_rps": s["achieved_rps"],
                "latency_ms": s["latency_ms"],
                "errors": s["errors"],
                "degraded": s["degraded"],
                "generator_behind": s["generator_behind"],
            }
            for rate, s, met, why in result.steps
        ],
    }


def print_table(summary: dict[str, Any], out: TextIO, *, title: str = "", floor: dict[str, Any] | None = None) -> None:
    w = lambda line="": print(line, file=out)  # noqa: E731
    load = (
        f"open loop at {summary['offered_rps']:g}/s"
        if summary["mode"] == "open"
        else f"closed loop, {summary['concurrency']} clients"
    )
    w(title or f"{summary['target']}: {load}, {summary['duration_s']:g} s after {summary['warmup_s']:g} s warm-up")
    w(
        f"  requests {summary['requests']}, achieved {summary['achieved_rps']:.1f} OK/s "
        f"(sent {summary['sent_rps']:.1f}/s), deadline {summary['deadline_ms']:g} ms"
    )
    header = f"  {'':18}" + "".join(f"{name:>9}" for name, _ in PERCENTILES) + f"{'max':>9}"
    w(header)
    rows = [("latency ms", summary["latency_ms"])]
    if summary["mode"] == "open":
        rows.append(("  from send ms", summary["service_ms"]))
    if floor is not None:
        rows.append(("floor ms", floor["latency_ms"]))
    for name, d in rows:
        w(f"  {name:18}" + "".join(f"{d[p]:9.2f}" for p, _ in PERCENTILES) + f"{d['max']:9.2f}")
    if floor is not None:
        r = ratios(summary, floor)
        w(f"  {'x floor':18}" + "".join(f"{r[p]:9.1f}" if r[p] else f"{'-':>9}" for p, _ in PERCENTILES))
    errors = ", ".join(f"{k} {v}" for k, v in summary["errors_by_code"].items()) or "none"
    w(f"  errors {summary['errors']}: {errors}")
    degraded = ", ".join(f"{k} {v}" for k, v in summary["degraded_by_reason"].items()) or "none"
    w(f"  degraded {summary['degraded']}: {degraded}")
    if summary["stages_ms"]:
        w(
            f"  time per stage (gateway trace, {summary['traced']} traced requests): "
            + ", ".join(f"{k} p50 {v['p50']:.2f} / p99 {v['p99']:.2f} ms" for k, v in summary["stages_ms"].items())
        )
    if summary["send_lag_ms"] is not None:
        lag = summary["send_lag_ms"]
        note = "  GENERATOR BEHIND SCHEDULE: the figures include its own delay" if summary["generator_behind"] else ""
        w(
            f"  send lag behind schedule: p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, "
            f"max {lag['max']:.2f} ms{note}"
        )


def print_steps(result: dict[str, Any], out: TextIO, *, name: str = "") -> None:
    o = result["objective"]
    print(
        f"step search{' (' + name + ')' if name else ''}: p99 <= {o['p99_ms']:g} ms, "
        f"<= {o['max_bad_share']:.0%} failed or degraded",
        file=out,
    )
    for s in result["steps"]:
        p = s["latency_ms"]
        verdict = "ok" if s["met"] else f"missed: {s['why_not']}"
        print(
            f"  {s['offered_rps']:8.1f}/s -> {s['achieved_rps']:8.1f}/s  p50 {p['p50']:7.2f}  p99 {p['p99']:7.2f} ms  "
            f"{verdict}",
            file=out,
        )
    best = result["best_rate"]
    print(
        f"  highest sustainable rate: {f'{best:g}/s' if best is not None else 'none (the first step missed)'}", file=out
    )


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_png(
    path: Path,
    run: Run,
    *,
    floor: Run | None = None,
    steps: dict[str, Any] | None = None,
    floor_steps: dict[str, Any] | None = None,
    title: str = "",
) -> str | None:
    """Draws latency over time and a latency histogram of `run`, beside `floor` (the same load on the
    empty services), and, after a step search, p50/p99 against the offered rate of both. Returns
    why not when matplotlib is missing, else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or the train extra): no PNG drawn"
    panels = 3 if steps else 2
    fig, axes = plt.subplots(panels, 1, figsize=(13, 4.2 * panels))
    _timeline(axes[0], run, floor)
    _histogram(axes[1], run, floor)
    if steps:
        _steps(axes[2], steps, floor_steps)
    fig.suptitle(title or f"bundlerec loadtest: {run.target}", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _windows(samples: Sequence[Sample], offset: float, width: float = 1.0) -> tuple[list[float], ...]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        buckets[int((s.due - offset) // width)].append(s.latency_ms)
    keys = sorted(buckets)
    at = [(k + 0.5) * width for k in keys]
    p50 = [percentile(sorted(buckets[k]), 50) for k in keys]
    p99 = [percentile(sorted(buckets[k]), 99) for k in keys]
    return at, p50, p99


def _timeline(ax: Any, run: Run, floor: Run | None) -> None:
    w = run.warmup  # x: seconds into the measured window
    ok = [s for s in run.samples if s.code == "OK" and not s.degraded]
    degraded = [s for s in run.samples if s.code == "OK" and s.degraded]
    failed = [s for s in run.samples if s.code != "OK"]
    ax.scatter([s.due - w for s in ok], [s.latency_ms for s in ok], s=3, alpha=0.35, color="tab:blue", label="request")
    if degraded:
        ax.scatter(
            [s.due - w for s in degraded],
            [s.latency_ms for s in degraded],
            s=8,
            color="tab:orange",
            label=f"degraded ({len(degraded)})",
        )
    if failed:
        ax.scatter(
            [s.due - w for s in failed],
            [s.latency_ms for s in failed],
            s=14,
            marker="x",
            color="tab:red",
            label=f"error ({len(failed)})",
        )
    at, p50, p99 = _windows(run.samples, w)  # per second of the window
    ax.plot(at, p50, color="black", lw=1.5, label="p50 per second")
    ax.plot(at, p99, color="tab:purple", lw=1.5, label="p99 per second")
    if floor is not None and floor.samples:
        f50 = percentile(sorted(s.latency_ms for s in floor.samples), 50)
        ax.axhline(f50, color="tab:green", ls=":", lw=1.5, label=f"floor p50 {f50:.2f} ms")
    ax.axhline(run.deadline_ms, color="tab:red", ls="--", lw=1, label=f"deadline {run.deadline_ms:g} ms")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis)
    ax.set_xlabel(f"seconds into the measured window (after {run.warmup:g} s warm-up)")
    ax.set_ylabel("latency, ms (log)")
    load = f"{run.rate:g} requests/s, open loop" if run.mode == "open" else f"{run.concurrency} clients, closed loop"
    ax.set_title(f"latency over time: {run.target}, {load}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _histogram(ax: Any, run: Run, floor: Run | None) -> None:
    values = [s.latency_ms for s in run.samples]
    floor_values = [s.latency_ms for s in floor.samples] if floor is not None else []
    everything = [v for v in values + floor_values if v > 0]
    if not everything:
        ax.set_title("latency histogram: no requests")
        return
    low, high = min(everything), max(everything)
    edges = [low * (high / low) ** (i / 60) for i in range(61)] if high > low else [low * 0.9, high * 1.1]
    share = 100 / len(values)  # bars in % of the run's requests, so runs of different sizes compare
    ax.hist(values, bins=edges, weights=[share] * len(values), color="tab:blue", alpha=0.7,
            label=f"{run.target} ({len(values)} requests)")  # fmt: skip
    if floor_values:
        ax.hist(floor_values, bins=edges, weights=[100 / len(floor_values)] * len(floor_values), color="tab:green",
                alpha=0.5, label=f"floor: empty handlers, same load ({len(floor_values)} requests)")  # fmt: skip
    ordered = sorted(values)
    top = ax.get_ylim()[1]
    for n, (name, p) in enumerate(PERCENTILES):
        v = percentile(ordered, p)
        ax.axvline(v, color="black", ls="--", lw=0.8)
        ax.text(v, top * (0.97 - 0.22 * n), f" {name} {v:.1f} ms", va="top", fontsize=8)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("% of requests")
    ax.set_title("latency histogram")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _plain_ticks(axis: Any) -> None:
    """1, 10, 100 rather than 10^0, 10^1, 10^2 on a log axis."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def _steps(ax: Any, steps: dict[str, Any], floor_steps: dict[str, Any] | None) -> None:
    for result, name, color in ((steps, "ours", "tab:blue"), (floor_steps, "floor", "tab:green")):
        if not result:
            continue
        ordered = sorted(result["steps"], key=lambda s: s["offered_rps"])
        rates = [s["offered_rps"] for s in ordered]
        ax.plot(rates, [s["latency_ms"]["p99"] for s in ordered], "o-", color=color, label=f"{name} p99")
        ax.plot(rates, [s["latency_ms"]["p50"] for s in ordered], "s--", color=color, alpha=0.6, label=f"{name} p50")
        if result["best_rate"] is not None:
            ax.axvline(
                result["best_rate"],
                color=color,
                ls=":",
                lw=1,
                label=f"{name}: highest sustainable {result['best_rate']:g}/s",
            )
    ax.axhline(
        steps["objective"]["p99_ms"],
        color="tab:red",
        ls="--",
        lw=1,
        label=f"objective p99 {steps['objective']['p99_ms']:g} ms",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis)
    _plain_ticks(ax.yaxis)
    ax.set_xlabel("offered rate, requests/s (log)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("step search: latency against the offered rate")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
