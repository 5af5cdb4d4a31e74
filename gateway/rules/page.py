"""One page of bundles from the ranker's order and the business rules. Pure: no I/O, no grpc.

The steps, each recording what it did as a RuleAction for the request's trace:

1. Filters remove every bundle a rule forbids (stock, purchases, prices, budget, categories,
   brands, size, blocklists). A bundle is removed whole: showing it without the offending member
   would show a bundle the catalogue or the builder never made.
2. Relevance: the scores of the survivors min-max normalised to [0, 1] (all equal: 1), so that
   boosts and the diversity weight mean the same whatever scale the ranker's scores have.
3. Pins take their slots first (they count toward the caps and the diversity of the rest); a
   pinned bundle must pass the filters too, and one that does not stays off the page.
4. The other slots are filled greedily by maximal marginal relevance,
   `(1 - w) * relevance - w * (max similarity to the bundles already on the page)`,
   skipping a bundle that would break unique_items, max_per_brand or max_per_category. A bundle
   exploration placed (PageBundle.explored) keeps its place against the similarity term: the
   place is what exploration measures; the hard rules judge it as any other.

Similarity of two bundles is 1 when they share an item (the same product twice is the least
diverse page there is), else the Jaccard index of their category keys (category paths cut to
`category_depth` levels; bundles without known categories are not similar). It is cheap, needs
no embeddings, and matches what a shopper sees as "more of the same".

Promotions (pins, then boosts in page order) take at most max(1, floor(max_promoted_share *
page_size)) slots when the share is above 0, none when it is 0: a page of 3 may still carry one
pin. Once the share is used up, further boosted bundles compete with their plain relevance.

Everything is deterministic: ties go to the bundle that came first in the input.

A page of ~10 needs only the best part of its ~100 input bundles: the fill looks at bundles best
score first and stops a round once no bundle not looked at could beat the best gain found (see
_Remaining), so only those bundles get their keys (page_state.Candidates). Without a trace
(actions=False) the filters too judge only those; the page is the same either way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bundlerec.gateway.model import Action, PageItem, RuleAction, TargetKind
from bundlerec.gateway.rules.filters import Filters
from bundlerec.gateway.rules.page_state import Candidate, Candidates, PageState, promotes, similarity
from bundlerec.gateway.rules.schema import Promotion, Rules


@dataclass(frozen=True, slots=True)
class PageBundle:
    bundle_id: str  # "" for a bundle built for this request
    items: tuple[PageItem, ...]
    score: float  # higher is better; comparable within one request
    generated: bool = False
    explored: bool = False  # placed by exploration: diversity does not move it (the hard rules still apply)

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(item.item_id for item in self.items)

    @property
    def key(self) -> str | tuple[str, ...]:
        """Identifies the bundle on a page: its catalogue id, else its members."""
        return self.bundle_id or self.item_ids


@dataclass
class Page:
    bundles: list[PageBundle]
    actions: list[RuleAction] = field(default_factory=list)


def target_of(bundle: PageBundle) -> tuple[TargetKind, str]:
    """What an action names: the catalogue bundle, the item of a one-item entry, else "a+b+c"."""
    if bundle.bundle_id:
        return "bundle", bundle.bundle_id
    if len(bundle.items) == 1:
        return "item", bundle.items[0].item_id
    return "bundle", "+".join(bundle.item_ids)


def promoted_slots(share: float, page_size: int) -> int:
    """How many slots promotions may take: the share rounded down, but one when the share is above 0."""
    return max(1, math.floor(share * page_size + 1e-9)) if share > 0 else 0


Record = Callable[[str, tuple[TargetKind, str], Action, str], None]


def assemble_page(
    ranked: Sequence[PageBundle],
    rules: Rules,
    *,
    page_size: int,
    purchased_item_ids: frozenset[str] = frozenset(),
    actions: bool = True,
) -> Page:
    """The page for ranked bundles (best first) under the rules; `rules` may be EffectiveRules (budget).

    Pins can only place bundles that are among `ranked`: the caller adds pinned targets it did
    not retrieve. The returned bundles are the input objects, in page order. With actions=False
    the page is the same, its `actions` are empty, and the filters judge only the bundles the
    page looks at (those that could still reach it), not every input bundle.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    log: list[RuleAction] = []
    record: Record | None = None
    if actions:

        def record(rule: str, target: tuple[TargetKind, str], action: Action, detail: str) -> None:
            log.append(RuleAction(rule, target[0], target[1], action, detail))

    filters = Filters(rules, purchased_item_ids)
    passed, removed_by = _screen(ranked, filters, record)
    candidates = Candidates(ranked, rules, filters, passed)

    state = PageState(rules)
    quota = promoted_slots(rules.max_promoted_share, page_size)
    pins = _pin(candidates, rules, page_size, quota, state, removed_by, record)
    pinned = {c.order for _, c, _ in pins}
    filled = _fill(candidates, pinned, state, page_size - len(pins), rules.diversity_weight, quota - len(pins), record)

    page = [c.bundle for c in filled]
    for position, candidate, _ in pins:  # ascending positions: each insert keeps the earlier ones in place
        page.insert(min(position, len(page)), candidate.bundle)
    if record is not None:
        for position, candidate, promotion in pins:
            at = page.index(candidate.bundle)
            shorter = "" if at == position else f" (asked {position}: the page is shorter)"
            record(promotion.name, target_of(candidate.bundle), "pinned", f"at position {at}{shorter}")
    return Page(page, log)


def _screen(
    ranked: Sequence[PageBundle], filters: Filters, record: Record | None
) -> tuple[list[bool | None], dict[str | tuple[str, ...], str]]:
    """Per input position, whether the bundle survives the filters and is no duplicate (None: not
    asked yet), and the rule that removed each removed key. With a record, every bundle is judged
    now and each removal recorded; without, only duplicates are found now (cheap), and Candidates
    asks the filters about the bundles the page looks at."""
    passed: list[bool | None] = [None] * len(ranked)
    removed_by: dict[str | tuple[str, ...], str] = {}
    seen: set[str | tuple[str, ...]] = set()
    if record is not None:
        for order, bundle in enumerate(ranked):
            key = bundle.key
            verdict = ("duplicate", "already earlier in the list") if key in seen else filters.verdict(bundle)
            seen.add(key)
            passed[order] = verdict is None
            if verdict is not None:
                removed_by.setdefault(key, verdict[0])
                record(verdict[0], target_of(bundle), "removed", verdict[1])
        return passed, removed_by
    keys = [bundle.bundle_id or bundle.item_ids for bundle in ranked]  # PageBundle.key
    if len(set(keys)) < len(keys):
        for order, key in enumerate(keys):
            if key in seen:
                passed[order] = False
            seen.add(key)
    return passed, removed_by


def _pin(
    candidates: Candidates,
    rules: Rules,
    page_size: int,
    quota: int,
    state: PageState,
    removed_by: dict[str | tuple[str, ...], str],
    record: Record | None,
) -> list[tuple[int, Candidate, Promotion]]:
    """The pinned bundles, (position, candidate, promotion) by position; they join `state`.

    An item pin places the best-ranked surviving bundle containing the item (a one-item entry
    is one of them): the ranker's best context for the product, not the product alone unless
    that is what ranked best. Pins ignore the per-brand and per-category caps (a merchandiser
    chose them) but not unique_items.
    """
    pins: list[tuple[int, Candidate, Promotion]] = []
    ranked = candidates.ranked
    for promotion in sorted((p for p in rules.promotions if p.kind == "pin"), key=lambda p: p.position):
        target: tuple[TargetKind, str] = (
            ("bundle", promotion.bundle_id) if promotion.bundle_id else ("item", promotion.item_id)
        )
        if promotion.position >= page_size:
            if record is not None:
                record(promotion.name, target, "removed", f"position {promotion.position} is beyond the page")
            continue
        options = [
            c
            for i, bundle in enumerate(ranked)
            if promotes(promotion, bundle)
            and (c := candidates.get(i)) is not None
            and all(c is not p for _, p, _ in pins)
        ]
        free = [c for c in options if state.conflict(c, caps=False) is None]
        if not free:
            if record is not None:
                why = _why_not_pinned(promotion, options, removed_by, ranked, state)
                record(promotion.name, target, "removed", why)
            continue
        if len(pins) >= quota:
            if record is not None:
                record("max_promoted_share", target, "removed", f"{promotion.name}: no promoted slot left")
            continue
        best = max(free, key=lambda c: c.relevance)  # the first of equals: the input order
        state.add(best)
        pins.append((promotion.position, best, promotion))
    return pins


def _why_not_pinned(
    promotion: Promotion,
    options: Sequence[Candidate],
    removed_by: dict[str | tuple[str, ...], str],
    ranked: Sequence[PageBundle],
    state: PageState,
) -> str:
    if options:
        conflict = state.conflict(options[0], caps=False)
        return f"not pinned: {conflict[1] if conflict else 'already pinned'}"
    removers = sorted({removed_by[b.key] for b in ranked if promotes(promotion, b) and b.key in removed_by})
    if removers:
        return f"not pinned: removed by {', '.join(removers)}"
    return "not pinned: not among the candidates"


def _gain(c: Candidate, weight: float, boosting: bool) -> float:
    relevance = c.relevance + (c.boost if boosting else 0.0)
    return (1 - weight) * relevance - weight * c.max_similarity


def _fill(
    candidates: Candidates,
    pinned: set[int],
    state: PageState,
    slots: int,
    weight: float,
    quota: int,
    record: Record | None,
) -> list[Candidate]:
    """Greedy maximal marginal relevance over the unpinned survivors (input order), `slots` bundles at most.

    A bundle that would break unique_items or a cap is dropped for good (the page only grows, so
    it would break it later too), recorded only when it was the next pick: the trace explains
    what the page lost, not every low-ranked bundle that never had a chance.
    """
    remaining = _Remaining(candidates, pinned, state, weight, boosting=quota > 0)
    filled: list[Candidate] = []
    while len(filled) < slots:
        if remaining.boosting and quota <= 0:  # the promoted share is used up: boosts no longer count
            remaining.rescore(boosting=False)
        best = remaining.take_best()
        if best is None:
            break
        conflict = state.conflict(best)
        if conflict is not None:
            if record is not None:
                record(conflict[0], target_of(best.bundle), "removed", conflict[1])
            continue
        boosted = remaining.boosting and best.boost > 0
        best.chosen_relevance = best.relevance + (best.boost if boosted else 0.0)
        if boosted:
            quota -= 1
            if record is not None:
                for name in best.boosted_by:
                    detail = f"relevance {best.relevance:.3f} + {best.boost:g}"
                    record(name, target_of(best.bundle), "boosted", detail)
        state.add(best)
        filled.append(best)
        if weight > 0:  # else similarity does not count
            remaining.note_placed(best)
    if weight > 0 and record is not None:
        _record_moved_down(filled, record)
    return filled


class _Remaining:
    """The survivors not placed yet that the fill has looked at, in input order, with their gains
    kept up to date beside them (placing a bundle changes only the gains of those sharing an item
    or a category with it, and the end of the promoted share all of them).

    The fill looks at the others best score first, and only while one of them could still be the
    pick: with no similarity yet a bundle's gain is (1 - w) * relevance at most, its boost aside,
    and relevance falls with the score. So a round stops looking once the best gain so far is above
    that bound for the next bundle (at equal gains the first in input order wins, so equal is not
    enough). Boosted bundles, few, are looked at from the start while boosts count; with a score
    that is not finite (or a weight outside [0, 1]), all of them are."""

    def __init__(
        self, candidates: Candidates, pinned: set[int], state: PageState, weight: float, *, boosting: bool
    ) -> None:
        self.source = candidates
        self.state = state
        self.weight = weight
        self.boosting = boosting
        self.candidates: list[Candidate] = []  # looked at, not placed yet, in input order
        self.gains: list[float] = []
        self.orders: list[int] = []
        self.keys: list[int] = []  # item_bits | category_bits: to find those sharing with a pick
        self.seen = set(pinned)  # input positions looked at (the pins are not in the pool)
        self.near = 0  # the keys of the bundles on the page (pins and picks), ORed
        for placed in state.chosen:
            self.near |= placed.item_bits | placed.category_bits
        self.next = 0  # in by_score, the position before which all have been looked at
        by_score = candidates.by_score
        self.lazy = by_score is not None and 0 <= weight <= 1  # else gains need not be finite
        self.pending: list[int] = by_score if by_score is not None and self.lazy else []
        if not self.lazy:
            for i in range(len(candidates.ranked)):
                if i not in self.seen:
                    self._look_at(i)
        elif boosting:
            for i in candidates.boosted:
                if i not in self.seen:
                    self._look_at(i)

    def _look_at(self, i: int) -> float | None:
        """Adds the survivor at input position i, not looked at before, with its gain (returned);
        None if the filters removed it."""
        self.seen.add(i)
        c = self.source.get(i)
        if c is None:
            return None
        keys = c.item_bits | c.category_bits
        if self.weight and keys & self.near and not c.bundle.explored:  # else similarity does not count, or is 0
            for placed in self.state.chosen:
                if keys & (placed.item_bits | placed.category_bits):
                    s = similarity(c, placed)
                    if s > c.max_similarity:
                        c.max_similarity = s
        gain = _gain(c, self.weight, self.boosting)
        at = bisect.bisect(self.orders, i)
        self.candidates.insert(at, c)
        self.gains.insert(at, gain)
        self.orders.insert(at, i)
        self.keys.insert(at, keys)
        return gain

    def rescore(self, *, boosting: bool) -> None:
        self.boosting = boosting
        self.gains = [_gain(c, self.weight, boosting) for c in self.candidates]

    def take_best(self) -> Candidate | None:
        """The one of the highest gain (the first of equals), taken out; None when none is left."""
        if self.lazy:
            best_gain = max(self.gains, default=-math.inf)
            pending, seen, scores = self.pending, self.seen, self.source.scores
            low, span, keep = self.source.low, self.source.span, 1 - self.weight
            while self.next < len(pending):
                i = pending[self.next]
                if i not in seen:
                    # (1 - w) * its relevance (Candidates.relevance, inline) bounds its gain and those after it
                    if best_gain > keep * ((scores[i] - low) / span if span > 0 else 1.0):
                        break
                    gain = self._look_at(i)
                    if gain is not None and gain > best_gain:
                        best_gain = gain
                self.next += 1
            if not self.candidates:
                return None
            best_i = self.gains.index(best_gain)  # the first of equals; no gain is NaN here
        else:
            if not self.candidates:
                return None
            best_i, best_gain = 0, -math.inf
            for i, gain in enumerate(self.gains):
                if gain > best_gain:
                    best_i, best_gain = i, gain
        del self.gains[best_i], self.orders[best_i], self.keys[best_i]
        return self.candidates.pop(best_i)

    def note_placed(self, placed: Candidate) -> None:
        """Raises the max similarity, and so lowers the gain, of those similar to the bundle just placed."""
        shared = placed.item_bits | placed.category_bits
        self.near |= shared
        for i, keys in enumerate(self.keys):
            c = self.candidates[i]
            if keys & shared and not c.bundle.explored:  # else the similarity is 0 or does not count
                s = similarity(c, placed)
                if s > c.max_similarity:
                    c.max_similarity = s
                    self.gains[i] = _gain(c, self.weight, self.boosting)


def _record_moved_down(filled: Sequence[Candidate], record: Record) -> None:
    """A bundle placed lower than the order by relevance of the same bundles would place it."""
    by_relevance = sorted(filled, key=lambda c: (-c.chosen_relevance, c.order))
    rank = {id(c): i for i, c in enumerate(by_relevance)}
    for i, c in enumerate(filled):
        if i > rank[id(c)]:
            detail = f"position {i} instead of {rank[id(c)]} by relevance, counting unpinned bundles only"
            record("diversity", target_of(c.bundle), "moved_down", detail)
