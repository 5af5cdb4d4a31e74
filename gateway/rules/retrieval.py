"""The one mapping of business rules to the candidate service's filter, so retrieval never returns
what the page would remove anyway (the page applies every rule again: page.py).

- Every request (Recommend and Search): stock, excluded categories and brands, blocked items, added
  to what the caller asked for.
- A page (Recommend, no filter of the caller's): also its scope, the included categories and
  brands, the price range and the blocked bundles. A search's scope is the caller's own filter.
"""

from __future__ import annotations

from bundlerec.gateway.ports import CandidateFilter
from bundlerec.gateway.rules.schema import Rules


def candidate_filter(rules: Rules, caller: CandidateFilter | None = None) -> CandidateFilter:
    """`rules`: the rules in force (a page's: effective_rules); `caller`: a search's own filter."""
    if caller is None:
        return CandidateFilter(
            in_stock_only=rules.in_stock_only,
            include_categories=tuple(rules.include_categories),
            exclude_categories=tuple(rules.exclude_categories),
            include_brands=tuple(rules.include_brands),
            exclude_brands=tuple(rules.exclude_brands),
            min_price=rules.min_price,
            max_price=rules.max_price,
            exclude_item_ids=tuple(rules.blocklist_items),
            exclude_bundle_ids=tuple(rules.blocklist_bundles),
        )
    return CandidateFilter(
        in_stock_only=caller.in_stock_only or rules.in_stock_only,
        include_categories=caller.include_categories,
        exclude_categories=caller.exclude_categories + tuple(rules.exclude_categories),
        include_brands=caller.include_brands,
        exclude_brands=caller.exclude_brands + tuple(rules.exclude_brands),
        min_price=caller.min_price,
        max_price=caller.max_price,
        exclude_item_ids=caller.exclude_item_ids + tuple(rules.blocklist_items),
        exclude_bundle_ids=caller.exclude_bundle_ids,
    )
