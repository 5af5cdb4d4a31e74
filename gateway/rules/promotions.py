"""Promoted (pinned or boosted) bundles and items that retrieval did not return: fetched from the
catalogue and offered as candidates, so a merchandiser's promotion does not depend on whether one
requester's retrieval happened to reach it. They carry no retrieval source (their explanation is
"featured") and still pass every filter of the page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bundlerec.gateway.model import BundleKind, Found, PageItem, Retrieved, Scored
from bundlerec.gateway.ports import CandidatePort, StageFailed
from bundlerec.gateway.rules.schema import Rules

log = logging.getLogger("bundlerec.gateway")


async def with_promoted(found: Retrieved, rules: Rules, candidates: CandidatePort, seconds: float) -> Retrieved:
    """`found` plus the promoted targets it lacks. A failed lookup keeps `found` as it is: the
    retrieval succeeded, and one promotion must not turn it into an outage."""
    if not rules.promotions:  # the usual page: nothing to look at
        return found
    have_bundles = {f.target_id for f in found.bundles}
    have_items = {i for f in (*found.items, *found.bundles) for i in f.item_ids or (f.target_id,)}
    bundle_ids = [p.bundle_id for p in rules.promotions if p.bundle_id and p.bundle_id not in have_bundles]
    item_ids = [p.item_id for p in rules.promotions if p.item_id and p.item_id not in have_items]
    if not bundle_ids and not item_ids:
        return found
    members: Mapping[str, tuple[str, ...]] = {}
    if bundle_ids:
        try:
            members = await candidates.bundles(bundle_ids, seconds)
        except StageFailed as failure:
            log.warning("promoted bundles not fetched", extra={"fields": {"reason": failure.reason}})
    extra_bundles = tuple(Found(b, True, 0.0, frozenset(), members[b]) for b in bundle_ids if b in members)
    extra_items = tuple(Found(i, False, 0.0, frozenset(), (i,)) for i in dict.fromkeys(item_ids))
    return Retrieved(found.items + extra_items, found.bundles + extra_bundles)


def promoted_items_alone(bundles: list[Scored], rules: Rules, catalogue: Mapping[str, PageItem]) -> list[Scored]:
    """A promoted item that no candidate bundle holds is offered alone (an item is a bundle of one)."""
    if not any(p.item_id for p in rules.promotions):
        return []
    held = {i.item_id for bundle in bundles for i in bundle.items}
    return [
        Scored("", (catalogue[item_id],), 0.0, frozenset(), generated=True)
        for item_id in dict.fromkeys(p.item_id for p in rules.promotions if p.item_id)
        if item_id not in held and item_id in catalogue
    ]


def kind_of(bundle: Scored, rules: Rules) -> BundleKind:
    """Featured when a promotion names it (the bundle, or the item a bundle of one is), built when
    made for the request, curated otherwise."""
    if bundle.explored:
        return "explored"
    single = bundle.items[0].item_id if len(bundle.items) == 1 else None
    for promotion in rules.promotions:
        if (bundle.bundle_id and promotion.bundle_id == bundle.bundle_id) or (
            single and not bundle.bundle_id and promotion.item_id == single
        ):
            return "featured"
    return "built" if bundle.generated else "curated"
