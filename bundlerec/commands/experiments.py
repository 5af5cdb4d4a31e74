"""`bundlerec experiments report`: the experiment report (bundlerec/online/report.py) over the pages
the profile service's exposure log kept (ListExposedPages), printed as a table, and optionally as
JSON (--json) and a chart of each rate with its interval per variant (--plot).

    bundlerec experiments report [--profile ADDR] [--since 2026-12-01] [--until 2026-12-08]
                                 [--window-hours 24] [--control NAME] [--json F] [--plot F.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc

from bundlerec.client import add_security_flags, security_from
from bundlerec.online.report import METRICS, Page, report
from bundlerec.runtime.tls import ChannelSecurity, open_sync_channel, token_metadata
from bundlerec.v1 import exposures_pb2, exposures_pb2_grpc
from bundlerec.v1_events import EVENT_TYPES

TIMEOUT_S = 60.0
LABELS = {
    "click_through": "click-through",
    "add_to_cart": "add to cart",
    "purchase": "purchase",
    "revenue_per_page": "revenue / page",
}


def add_experiments_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="experiments_command", required=True)
    run = commands.add_parser("report", help="per variant and placement: rates with 95 %% intervals, SRM check")
    run.add_argument("--profile", default="127.0.0.1:50051", help="the profile service (default: %(default)s)")
    run.add_argument("--since", default="", help="pages served from this date or time (ISO 8601, UTC)")
    run.add_argument("--until", default="", help="pages served before this date or time (default: now)")
    run.add_argument(
        "--window-hours", type=float, default=0, help="attribution window (default: the profile service's setting)"
    )
    run.add_argument("--control", default="", help="the control variant (default: 'control', else the largest)")
    run.add_argument("--json", default="", help="write the whole report here")
    run.add_argument("--plot", default="", help="write a chart of each rate per variant here (PNG)")
    add_security_flags(run)


def run_experiments(args: argparse.Namespace) -> int:
    try:
        since, until = _instant("--since", args.since), _instant("--until", args.until)
        if args.window_hours < 0 or args.window_hours > 90 * 24:
            raise ValueError("--window-hours must be 0 to 2160 (90 days)")
        pages = list(read_pages(args.profile, security_from(args), since, until, round(args.window_hours * 3600)))
        doc = report(pages, args.control)
    except ValueError as error:
        print(f"bundlerec experiments report: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"bundlerec experiments report: the profile service said {error.code().name}: {error.details()}",
              file=sys.stderr)  # fmt: skip
        return 1
    doc["range"] = {"since": args.since or None, "until": args.until or None}
    print_report(doc, sys.stdout)
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    if args.plot and doc["pages"]:
        write_plot(doc, Path(args.plot))
        print(f"wrote {args.plot}")
    return 3 if doc.get("sample_ratio") and doc["sample_ratio"]["mismatch"] else 0


def read_pages(
    address: str, security: ChannelSecurity, since: dt.datetime | None, until: dt.datetime | None, window_s: int
) -> Iterator[Page]:
    metadata = token_metadata(security)
    with open_sync_channel(address, security) as channel:
        stub = exposures_pb2_grpc.ExposureServiceStub(channel)
        request = exposures_pb2.ListExposedPagesRequest(attribution_window_seconds=window_s, page_size=2000)
        if since:
            request.since.FromDatetime(since)
        if until:
            request.until.FromDatetime(until)
        while True:
            reply = stub.ListExposedPages(request, timeout=TIMEOUT_S, metadata=metadata)
            for pb in reply.pages:
                yield Page(
                    requester=pb.requester,
                    variant=pb.variant,
                    share=pb.variant_share,
                    placement=pb.placement,
                    served_at_us=pb.served_at.ToMicroseconds(),
                    positions=len(pb.bundles),
                    outcomes=tuple((EVENT_TYPES[o.type], o.position, o.revenue) for o in pb.outcomes),
                )
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token


def _instant(flag: str, value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _finite(value: Any) -> Any:
    """NaN (an interval that needs two requesters or more) as null, for strict JSON readers."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _interval(e: dict[str, float], percent: bool) -> str:
    def f(x: float) -> str:
        if x is None or math.isnan(x):
            return "-"
        return f"{100 * x:.2f}%" if percent else f"{x:.2f}"

    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def print_report(doc: dict[str, Any], out: TextIO) -> None:
    if not doc["pages"]:
        print(
            "no pages in the range (is the gateway recording exposures? BUNDLEREC_GATEWAY_RECORD_EXPOSURES)", file=out
        )
        return
    print(f"{doc['pages']:,} pages; control: {doc['control']}", file=out)
    _print_table("all placements", doc["variants"], out)
    for placement, table in doc["placements"].items():
        _print_table(placement, table, out)
    srm = doc["sample_ratio"]
    if srm and srm["p_value"] is not None:
        verdict = "MISMATCH: the split or the logging is broken" if srm["mismatch"] else "ok"
        print(f"\nsample ratio (linked requesters {srm['observed']} against {srm['expected']}): "
              f"p = {srm['p_value']:.3g}, {verdict}", file=out)  # fmt: skip


def _print_table(title: str, table: dict[str, Any], out: TextIO) -> None:
    print(f"\n{title}", file=out)
    for variant, row in table.items():
        print(f"  {variant}: {row['pages']:,} pages, {row['requesters']:,} requesters"
              f" (+{row['unlinked_pages']:,} unlinked pages)", file=out)  # fmt: skip
        for metric in METRICS:
            estimate = row[metric]
            line = f"    {LABELS[metric]:<15} {_interval(estimate, metric != 'revenue_per_page')}"
            if "relative_to_control" in estimate:
                line += f"   vs control {_interval(estimate['relative_to_control'], True)}"
            print(line, file=out)


def write_plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(doc["variants"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [doc["variants"][v][metric] for v in variants]
        mid = [e["value"] for e in values]
        err = [
            [max(0.0, e["value"] - e["low"]) if not math.isnan(e["low"]) else 0 for e in values],
            [max(0.0, e["high"] - e["value"]) if not math.isnan(e["high"]) else 0 for e in values],
        ]
        ax.bar(variants, mid, yerr=err, capsize=6, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(variants)])
        ax.set_title(LABELS[metric])
    fig.suptitle(f"{doc['pages']:,} pages; 95 % intervals; control {doc['control']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
