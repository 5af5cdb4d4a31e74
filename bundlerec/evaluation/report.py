"""One evaluation's figures as a table, a JSON file and a plot over K.

The table puts our model, the baselines and the extra variants in the same columns as the published
reference results of dataset.json, each published row pointing at a footnote that quotes its
protocol, source and caveats as the file states them: a published figure is comparable only when
its protocol is the same, and the reader should not have to look that up elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundlerec.evaluation.metrics import COLD, hit_name
from bundlerec.evaluation.protocol import COLD_THRESHOLD

# The columns of the table per task: FORMAT.md's headline metrics (next_item @10, bundle @20, and
# @10/@40 as CrossCBR reports them), coverage, and the cold subset at the headline K.
HEADLINE = {
    "bundle": ["Recall@10", "Recall@20", "Recall@40", "NDCG@10", "NDCG@20", "NDCG@40", "Coverage@20"],
    "next_item": ["HR@10", "HR@20", "NDCG@10", "NDCG@20", "Coverage@20"],
}
COLD_COLUMNS = {
    "bundle": [f"Recall@20 {COLD}", f"NDCG@20 {COLD}"],
    "next_item": [f"HR@10 {COLD}", f"NDCG@10 {COLD}"],
}
OURS = "ours"


@dataclass
class Report:
    """The figures of one (dataset, split). `seconds` holds fit + evaluation time per row name."""

    dataset: str
    task: str
    split: str
    ours: dict[str, float] | None
    baselines: dict[str, dict[str, float]]
    published: list[dict[str, Any]]
    extra: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def rows(self) -> Iterator[tuple[str, dict[str, float]]]:
        """(name, metrics) for every evaluated model: ours first, then baselines, then extra."""
        if self.ours is not None:
            yield OURS, self.ours
        yield from self.baselines.items()
        yield from self.extra.items()


def format_table(report: Report) -> str:
    """A fixed-width table of every row and the published results, with the protocol footnotes."""
    columns = HEADLINE[report.task] + COLD_COLUMNS[report.task]
    columns += sorted({str(p.get("metric")) for p in report.published} - set(columns))
    published, notes = _published_rows(report.published)
    lines = [*report.rows(), *published.items()]
    width = max(len(name) for name, _ in [("model", {}), *lines])
    cells = [max(len(c), 6) for c in columns]
    header = "  ".join([f"{'model':<{width}}", *(f"{c:>{w}}" for c, w in zip(columns, cells, strict=True))])
    out = [f"{report.dataset} — task {report.task}, split {report.split}, full ranking", header, "-" * len(header)]
    for name, values in lines:
        out.append(
            "  ".join([f"{name:<{width}}", *(_cell(values.get(c), w) for c, w in zip(columns, cells, strict=True))])
        )
    cold = next((values.get(f"{COLD} positives") for _, values in report.rows()), None)
    if cold is not None:
        out.append(f"{COLD}: positives whose target has < {COLD_THRESHOLD} training interactions ({cold:.0f} of them)")
    if report.published and report.split != "test":
        out.append("the published figures are on the test split, the rows above are not")
    out += [f"[{n}] " + "; ".join(f"{k}: {v}" for k, v in note.items()) for n, note in enumerate(notes, 1)]
    return "\n".join(out)


def _published_rows(entries: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Rows "model [n]" of metric -> value, and the footnotes: every key of an entry besides model,
    metric and value (protocol, source, verified, note...), as given; equal footnotes are shared."""
    rows: dict[str, dict[str, Any]] = {}
    notes: list[dict[str, Any]] = []
    for entry in entries:
        note = {k: v for k, v in entry.items() if k not in ("model", "metric", "value")}
        if note not in notes:
            notes.append(note)
        rows.setdefault(f"{entry.get('model', '?')} [{notes.index(note) + 1}]", {})[str(entry.get("metric"))] = (
            entry.get("value")
        )
    return rows, notes


def _cell(value: Any, width: int) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:>{width}.4f}"
    return f"{'-' if value is None else value:>{width}}"


def write_json(report: Report, path: str | Path) -> None:
    """Writes the figures as JSON: the Report's fields, with `seconds` for the run times."""
    document = {
        "dataset": report.dataset,
        "task": report.task,
        "split": report.split,
        "ours": report.ours,
        "baselines": report.baselines,
        "extra": report.extra,
        "published": report.published,
        "seconds": report.seconds,
    }
    Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot_over_k(report: Report, path: str | Path) -> None:
    """PNG: the hit metric (Recall or HR) and NDCG over K, one line per model, published figures
    as crosses. K is every cut-off the metrics were computed at."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    hit = hit_name(report.task)
    figure, panels = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for panel, metric in zip(panels, (hit, "NDCG"), strict=True):
        cutoffs: set[int] = set()
        for name, values in report.rows():
            ks = sorted(int(key.split("@")[1]) for key in values if key.startswith(f"{metric}@") and " " not in key)
            panel.plot(ks, [values[f"{metric}@{k}"] for k in ks], marker="o", label=name)
            cutoffs.update(ks)
        for entry in report.published:
            prefix, _, k = str(entry.get("metric", "")).partition("@")
            if prefix == metric and k.isdigit():
                panel.scatter([int(k)], [entry["value"]], marker="x", color="black")
                panel.annotate(
                    str(entry.get("model")),
                    (int(k), entry["value"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        panel.set_xscale("log", base=2)
        panel.set_xticks(sorted(cutoffs), [str(k) for k in sorted(cutoffs)])
        panel.minorticks_off()
        panel.set_xlabel("K")
        panel.set_ylabel(f"{metric}@K")
        panel.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    figure.suptitle(f"{report.dataset} ({report.split}, full ranking)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
