"""Exploration: a capped share of each page's positions goes to catalogue bundles that have been
shown little, chosen by Thompson sampling on what their pages drew, so a new bundle earns its place
from shoppers' behaviour instead of waiting for a model that has never seen it.

- Who may be explored: the page's own candidates (retrieved for this shopper, filtered by the
  same rules and consent as every other), catalogue bundles only, shown on fewer than
  `max_exposures` pages, below the page's lead: one off the page, or one already on it by its
  score, whose draw may lift it (a launch retrieval already finds, low on its segment's pages,
  climbs there once they engage with it).
- How one is chosen: among the `pool` × page size most relevant of them (relevance: the rank among
  the candidates by the ranker's order or by retrieval's, whichever is better: a model knows
  nothing of a bundle launched after it was trained, retrieval knows its text), each one's
  engagement rate (pages where it was clicked, added or bought, over pages that showed it) is drawn
  from its Beta posterior; the prior is optimistic (BanditState.prior, worth `prior_pages` pages),
  the draw is weighed by the relevance, and the best draws take the slots.
- Where it goes: above the first bundle of the page whose estimated rate (posterior mean; an
  explored one's draw) its draw beats, but never first (nor above a product page's bundles of its
  item): the page's lead is the ranker's. A bundle that draws well climbs the page; one that does
  not stays low until it leaves exploration, after `max_exposures` pages. The page's diversity
  preference does not move it again (rules/page.py); the hard rules still judge it.
- How many slots: `share` × page size per page, the fraction drawn (0.1 on a page of 10: one slot;
  of 5: one slot on half the pages). Per placement and per experiment variant (settings.py).

The counts are the profile service's (ListBundleOutcomes: every replica reads the same, durable
across restarts), refreshed every few seconds; the pages this replica serves in between count at
once, so it does not explore one bundle many times before the next refresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bundlerec.gateway.consent import Allowed
from bundlerec.gateway.model import PageItem, RuleAction, Scored
from bundlerec.gateway.rules import PageBundle

log = logging.getLogger("bundlerec.gateway")
KNOWN_AFTER = 20  # pages after which a bundle's own rate counts towards the prior
SEGMENT_LEVELS = 2  # "Kitchen > Coffee": what a page is about, for per-segment counts


@dataclass(frozen=True, slots=True)
class BundleCounts:
    shown: int
    engaged: int


Key = tuple[str, str]  # (bundle id, segment); segment "": all the bundle's pages


class OutcomesPort(Protocol):
    async def bundle_outcomes(self, seconds: float) -> Mapping[Key, BundleCounts]: ...


@dataclass(frozen=True)
class ExplorationSettings:
    share: float = 0.1  # of a page's positions, when the variant does not set its own
    placement_caps: Mapping[str, float] | None = None  # the most a placement's pages explore
    max_exposures: int = 300  # pages after which a bundle is no longer explored
    prior_pages: float = 10.0  # how many pages the prior is worth
    pool: int = 1  # × the page size: the most relevant rarely shown candidates the draws choose from


class BanditState:
    """Pages and engagements per catalogue bundle: the profile service's counts, plus this replica's
    pages since the last refresh."""

    def __init__(self, source: OutcomesPort | None = None, timeout_seconds: float = 5.0) -> None:
        self.source = source
        self.timeout_seconds = timeout_seconds
        self._counts: Mapping[Key, BundleCounts] = {}
        self._shown_since: dict[Key, int] = {}
        self._prior = 0.0

    def counts(self, bundle_id: str, segment: str = "") -> BundleCounts:
        key = (bundle_id, segment)
        kept = self._counts.get(key, BundleCounts(0, 0))
        return BundleCounts(kept.shown + self._shown_since.get(key, 0), kept.engaged)

    @property
    def prior(self) -> float:
        """The prior's mean, optimistic: the engagement rate of a bundle among the best quarter of
        those shown on enough pages to tell (all bundles' rate while fewer than 5 are), so a bundle
        nobody has seen yet is given the chance of a good one until its pages say otherwise."""
        return self._prior

    def shown(self, bundle_ids: Sequence[str], segment: str = "") -> None:
        for bundle_id in bundle_ids:
            for key in dict.fromkeys(((bundle_id, ""), (bundle_id, segment))):
                self._shown_since[key] = self._shown_since.get(key, 0) + 1

    def replace(self, counts: Mapping[Key, BundleCounts]) -> None:
        self._counts, self._shown_since = counts, {}
        overall = [c for (_, segment), c in counts.items() if not segment]
        rates = sorted(c.engaged / c.shown for c in overall if c.shown >= KNOWN_AFTER)
        if len(rates) >= 5:
            self._prior = rates[(3 * len(rates)) // 4]
        else:
            shown = sum(c.shown for c in overall)
            self._prior = sum(c.engaged for c in overall) / shown if shown else 0.0

    async def refresh(self) -> bool:
        if self.source is None:
            return False
        try:
            self.replace(await self.source.bundle_outcomes(self.timeout_seconds))
        except Exception as error:  # keep the last counts: exploration goes on, a little staler
            log.warning("bundle outcomes not refreshed", extra={"fields": {"reason": str(error)}})
            return False
        return True

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass


class Explorer:
    def __init__(self, state: BanditState, settings: ExplorationSettings, seed: int | None = None) -> None:
        self.state = state
        self.settings = settings
        self.rng = np.random.default_rng(seed)

    def share(self, variant_share: float | None, placement: str) -> float:
        share = self.settings.share if variant_share is None else variant_share
        cap = (self.settings.placement_caps or {}).get(placement)
        return share if cap is None else min(share, cap)

    def explore(
        self, scored: list[Scored], page_size: int, share: float, anchor: str = "", segment: str = ""
    ) -> list[Scored]:
        """`scored` (best first) with the explored bundles moved to their places and marked; none
        first, nor above the leading bundles that hold `anchor` (a product page's item). The draws
        read the counts of the page's `segment` (page_segment), with the bundle's own as prior."""
        if share <= 0:
            return scored
        first = 1
        while anchor and first < len(scored) and any(i.item_id == anchor for i in scored[first].items):
            first += 1
        slots = self._slots(page_size, share)
        if not slots:
            return scored
        return self._explore(scored, page_size, slots, first, segment)

    def _slots(self, page_size: int, share: float) -> int:
        expected = share * page_size
        whole = math.floor(expected)
        return whole + int(self.rng.random() < expected - whole)

    def _explore(self, scored: list[Scored], page_size: int, slots: int, first: int, segment: str) -> list[Scored]:
        # relevant by the ranker's order or by retrieval's (a new bundle's only evidence may be its
        # text); a rarely shown bundle already on the page takes part too: its draw may lift it
        eligible = sorted(
            (
                (1.0 - min(rank, b.retrieval_rank) / len(scored), b)
                for rank, b in enumerate(scored)
                if rank >= first and b.bundle_id and not b.generated and self._explorable(b.bundle_id)
            ),
            key=lambda pair: -pair[0],
        )[: self.settings.pool * page_size]
        if not eligible:
            return scored
        posteriors = [self._posterior(b.bundle_id, segment) for _, b in eligible]
        draws = self.rng.beta([a for a, _ in posteriors], [b for _, b in posteriors])
        relevance = [r for r, _ in eligible]
        chosen = sorted(range(len(eligible)), key=lambda i: -draws[i] * relevance[i])[:slots]
        moved = {id(eligible[i][1]) for i in chosen}
        page = [b for b in scored[:page_size] if id(b) not in moved]
        drawn: dict[int, float] = {}  # the explored bundles placed so far: their draws
        for i in chosen:
            bundle, draw = eligible[i][1], float(draws[i])
            beaten = (n for n in range(first, len(page)) if drawn.get(id(page[n]), self._mean(page[n], segment)) < draw)
            at = min(next(beaten, len(page)), page_size - 1)
            placed = _explored(bundle, page, at)
            page.insert(at, placed)
            drawn[id(placed)] = draw
        rest = [b for b in scored[page_size:] if id(b) not in moved]
        return page + rest

    def _explorable(self, bundle_id: str) -> bool:
        return self.state.counts(bundle_id).shown < self.settings.max_exposures

    @property
    def _prior(self) -> float:
        return min(max(self.state.prior, 0.01), 0.99)

    def _posterior(self, bundle_id: str, segment: str) -> tuple[float, float]:
        """The Beta posterior of a bundle's engagement rate on the segment's pages: the optimistic
        prior, updated by all the bundle's pages, is in turn the prior of the segment's."""
        strength, prior = self.settings.prior_pages, self._prior
        overall = self.state.counts(bundle_id)
        alpha, beta = (
            strength * prior + overall.engaged,
            strength * (1 - prior) + max(0, overall.shown - overall.engaged),
        )
        if not segment:
            return alpha, beta
        mean, local = alpha / (alpha + beta), self.state.counts(bundle_id, segment)
        return strength * mean + local.engaged, strength * (1 - mean) + max(0, local.shown - local.engaged)

    def _mean(self, bundle: Scored, segment: str) -> float:
        if not bundle.bundle_id:
            return self._prior
        alpha, beta = self._posterior(bundle.bundle_id, segment)
        return alpha / (alpha + beta)


def _explored(bundle: Scored, page: Sequence[Scored], at: int) -> Scored:
    """The bundle marked explored, its score between its new neighbours' (the page is in score order)."""
    above = page[at - 1].score if at > 0 else None
    below = page[at].score if at < len(page) else None
    if above is None and below is None:
        score = bundle.score
    elif above is None:
        score = below + 1e-3  # type: ignore[operator]
    elif below is None:
        score = above - 1e-3
    else:
        score = (above + below) / 2
    return dataclasses.replace(bundle, score=score, explored=True)


def lead_not_explored(page: Sequence[PageBundle], origins: Mapping[int, Scored]) -> tuple[list[PageBundle], float]:
    """The page with an explored bundle never first (when the rules removed the bundles above it,
    the first one that is not explored takes the lead, with the best score of those it passed)."""
    lead = next((n for n, b in enumerate(page) if not origins[id(b)].explored), 0)
    if not page:
        return [], 0.0
    return [page[lead], *page[:lead], *page[lead + 1 :]], max(b.score for b in page[: lead + 1])


def explored_actions(page: Sequence[Scored]) -> list[RuleAction]:
    """What exploration did, for a debug trace."""
    return [
        RuleAction("exploration", "bundle", b.bundle_id, "boosted", "shown little: explored")
        for b in page
        if b.explored
    ]


def page_segment(anchor: PageItem | None, allowed: Allowed) -> str:
    """What a page is about, two category levels deep: its anchor item's (the page's, the cart's
    or, for a consenting shopper, their newest), else the shopper's strongest interest; never a
    category the request may not use as evidence (consent); "" when nothing says."""
    if anchor is not None and anchor.category and allowed.evidence(anchor.category):
        return _two_levels(anchor.category)
    for category, _ in allowed.affinities:
        if category and allowed.evidence(category):
            return _two_levels(category)
    return ""


def _two_levels(category: str) -> str:
    return " > ".join(level.strip() for level in category.split(">")[:SEGMENT_LEVELS])
