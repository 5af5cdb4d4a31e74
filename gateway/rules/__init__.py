"""Where the business rules live, and where they are applied.

- schema.py: the rules (`Rules`), a request's overrides and the rules in force for one request
  (`effective_rules`);
- source.py: the rules file, reloaded while the gateway runs (`RulesSource`);
- retrieval.py: the one mapping of rules to the candidate service's filter, for Recommend and Search;
- page.py (with filters.py and page_state.py): the page, made from ranked bundles under the rules;
- promotions.py: promoted bundles and items that retrieval did not return.
The bundles built for a request keep to the rules' budget and stock through builder.BuildLimits.
"""

from bundlerec.gateway.model import RuleAction
from bundlerec.gateway.rules.page import Page, PageBundle, assemble_page
from bundlerec.gateway.rules.retrieval import candidate_filter
from bundlerec.gateway.rules.schema import (
    BLOCKLIST_ENTRIES,
    MAX_OVERRIDE_ENTRIES,
    EffectiveRules,
    Promotion,
    RuleOverrides,
    Rules,
    effective_rules,
)
from bundlerec.gateway.rules.source import RulesError, RulesSource, load_rules, parse_rules

__all__ = [
    "BLOCKLIST_ENTRIES",
    "MAX_OVERRIDE_ENTRIES",
    "EffectiveRules",
    "Page",
    "PageBundle",
    "Promotion",
    "RuleAction",
    "RuleOverrides",
    "Rules",
    "RulesError",
    "RulesSource",
    "assemble_page",
    "candidate_filter",
    "effective_rules",
    "load_rules",
    "parse_rules",
]
