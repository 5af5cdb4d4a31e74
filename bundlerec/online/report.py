"""The experiment report: per variant (and per placement), what its pages drew, with 95 % confidence
intervals, the relative difference to the control, and a sample-ratio-mismatch check.

Pages are the unit of measure, requesters the unit of randomization (experiments.py assigns a
requester, not a page), so one shopper's pages are not independent. Every rate is a ratio
Σ outcome / Σ pages over requesters, with its standard error by the delta method on per-requester
sums (the usual treatment of page-level metrics in user-randomized tests). An unlinked page (a user
without personalization consent: the log keeps no pseudonym) is its own cluster.

Metrics per page: click-through (at least one attributed click), add-to-cart and purchase rates
(at least one), revenue per page (attributed purchases at the price shown). The relative difference
of a variant to the control is r_v / r_c − 1, its interval by the delta method for two independent
ratios. The sample-ratio check compares linked requesters per variant with the configured shares
(chi-square); p < 0.001 is a mismatch: the split or the logging is broken, and no figure of the
report should be trusted until it is explained.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from bundlerec.events import EventType

Z95 = 1.959963984540054
SRM_ALPHA = 0.001
METRICS = ("click_through", "add_to_cart", "purchase", "revenue_per_page")


@dataclass(frozen=True, slots=True)
class Page:
    """A page as the report needs it (from ListExposedPages)."""

    requester: str  # "" when unlinked
    variant: str
    share: float
    placement: str
    served_at_us: int
    positions: int  # bundles shown
    outcomes: tuple[tuple[EventType, int, float], ...]  # (type, position, revenue)

    def values(self) -> dict[str, float]:
        types = {t for t, _, _ in self.outcomes}
        return {
            "click_through": float(EventType.CLICK in types),
            "add_to_cart": float(EventType.ADD_TO_CART in types),
            "purchase": float(EventType.PURCHASE in types),
            "revenue_per_page": sum(r for t, _, r in self.outcomes if t is EventType.PURCHASE),
        }


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass
class _Clusters:
    """Per-requester sums of one group of pages."""

    pages: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    sums: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    shown_at: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    clicked_at: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    unlinked: int = 0

    def add(self, page: Page) -> None:
        key = page.requester or f"\0unlinked{self.unlinked}"
        self.unlinked += not page.requester
        self.pages[key] += 1
        for metric, value in page.values().items():
            self.sums[metric][key] += value
        for position in range(page.positions):
            self.shown_at[position] += 1
        for position in {p for t, p, _ in page.outcomes if t is EventType.CLICK}:
            self.clicked_at[position] += 1

    def estimate(self, metric: str) -> tuple[Estimate, float]:
        """The ratio and its interval, and its standard error."""
        keys = list(self.pages)
        n = [self.pages[k] for k in keys]
        y = [self.sums[metric].get(k, 0.0) for k in keys]
        total_n, k = sum(n), len(keys)
        ratio = sum(y) / total_n if total_n else 0.0
        if k < 2:
            return Estimate(ratio, math.nan, math.nan), math.nan
        mean_n = total_n / k
        residual = sum((yi - ratio * ni) ** 2 for yi, ni in zip(y, n, strict=True))
        se = math.sqrt(residual / (k * (k - 1))) / mean_n
        return Estimate(ratio, max(0.0, ratio - Z95 * se), ratio + Z95 * se), se  # no rate is negative


def relative(treatment: tuple[Estimate, float], control: tuple[Estimate, float]) -> Estimate:
    """r_t / r_c − 1 with its delta-method interval (independent groups)."""
    (t, se_t), (c, se_c) = treatment, control
    if c.value == 0 or t.value == 0 or math.isnan(se_t) or math.isnan(se_c):
        diff = t.value / c.value - 1 if c.value else math.nan
        return Estimate(diff, math.nan, math.nan)
    ratio = t.value / c.value
    se = ratio * math.sqrt((se_t / t.value) ** 2 + (se_c / c.value) ** 2)
    return Estimate(ratio - 1, ratio - 1 - Z95 * se, ratio - 1 + Z95 * se)


def sample_ratio(requesters: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, Any]:
    """Chi-square of linked requesters per variant against the configured shares."""
    names = sorted(requesters)
    observed = [requesters[v] for v in names]
    total_share = sum(shares[v] for v in names)
    if len(names) < 2 or sum(observed) == 0 or total_share <= 0:
        return {"p_value": None, "mismatch": False, "observed": dict(zip(names, observed, strict=True))}
    expected = [sum(observed) * shares[v] / total_share for v in names]
    p = float(stats.chisquare(observed, expected).pvalue)
    return {
        "p_value": p,
        "mismatch": p < SRM_ALPHA,
        "observed": dict(zip(names, observed, strict=True)),
        "expected": {v: round(e, 1) for v, e in zip(names, expected, strict=True)},
    }


def choose_control(variants: Iterable[str], shares: Mapping[str, float], asked: str = "") -> str:
    names = sorted(set(variants))
    if asked:
        if asked not in names:
            raise ValueError(f"--control {asked!r} has no pages in the range (variants: {', '.join(names)})")
        return asked
    if "control" in names:
        return "control"
    return min(names, key=lambda v: (-shares.get(v, 0.0), v))  # the largest share; a tie: the first name


def report(pages: Sequence[Page], control: str = "") -> dict[str, Any]:
    """The whole report as plain data (what --json writes)."""
    shares = {p.variant: p.share for p in pages}
    if not pages:
        return {"pages": 0, "variants": {}, "placements": {}, "control": None, "sample_ratio": None}
    control = choose_control(shares, shares, control)
    overall: dict[str, _Clusters] = defaultdict(_Clusters)
    by_placement: dict[str, dict[str, _Clusters]] = defaultdict(lambda: defaultdict(_Clusters))
    days: dict[str, dict[str, _Clusters]] = defaultdict(lambda: defaultdict(_Clusters))
    requesters: dict[str, set[str]] = defaultdict(set)
    for page in pages:
        overall[page.variant].add(page)
        by_placement[page.placement][page.variant].add(page)
        day = dt.datetime.fromtimestamp(page.served_at_us / 1e6, dt.UTC).date().isoformat()
        days[day][page.variant].add(page)
        if page.requester:
            requesters[page.variant].add(page.requester)
    return {
        "pages": len(pages),
        "control": control,
        "variants": _table(overall, control, shares),
        "placements": {
            placement: _table(groups, control, shares) for placement, groups in sorted(by_placement.items())
        },
        "daily": {day: _table(groups, control, shares, positions=False) for day, groups in sorted(days.items())},
        "sample_ratio": sample_ratio({v: len(requesters.get(v, ())) for v in overall}, shares),
    }


def _table(
    groups: Mapping[str, _Clusters], control: str, shares: Mapping[str, float], positions: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reference = groups.get(control)
    for variant in sorted(groups):
        clusters = groups[variant]
        row: dict[str, Any] = {
            "share": shares.get(variant),
            "pages": int(sum(clusters.pages.values())),
            "requesters": len(clusters.pages) - clusters.unlinked,
            "unlinked_pages": clusters.unlinked,
        }
        for metric in METRICS:
            estimate = clusters.estimate(metric)
            row[metric] = estimate[0].as_dict()
            if reference is not None and variant != control:
                row[metric]["relative_to_control"] = relative(estimate, reference.estimate(metric)).as_dict()
        if positions:
            row["exposures_by_position"] = {str(p): n for p, n in sorted(clusters.shown_at.items())}
            row["click_through_by_position"] = {
                str(p): clusters.clicked_at.get(p, 0) / n for p, n in sorted(clusters.shown_at.items()) if n
            }
        out[variant] = row
    return out
