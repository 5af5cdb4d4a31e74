"""The rules' schema: what may be on a page, and how the page is shaped.

Loading is strict and every problem names the field: a typo in the rules file must be reported,
never silently ignored (`extra="forbid"`, strict types: `in_stock_only = "no"` is an error, not
True). A request may tighten or loosen a few rules (`RuleOverrides`); `effective_rules` validates
those with the same constraints and names the field as `overrides.<field>`, which the runtime maps
to INVALID_ARGUMENT. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from bundlerec import validation
from bundlerec.categories import levels as category_levels
from bundlerec.errors import InvalidArgument

log = logging.getLogger("bundlerec.gateway")

# Separates the levels of a category path ("Home > Kitchen > Knives"), as in the import format.
# The candidate service accepts at most 100 entries per filter list and 10,000 excluded ids, and
# the gateway passes these rules into its filter: a file may fill half of an exclude list, a
# request the other half, so no valid file and request can make retrieval refuse the filter.
FILTER_ENTRIES = 100
BLOCKLIST_ENTRIES = 5_000  # half of the 10,000 excluded ids: Search adds the caller's own
MAX_OVERRIDE_ENTRIES = FILTER_ENTRIES // 2


def _checked(check: Callable[[str], object]) -> AfterValidator:
    """A pydantic validator from a check that raises InvalidArgument (bundlerec.validation) or ValueError."""

    def run(value: str) -> str:
        try:
            check(value)
        except InvalidArgument as exc:
            raise ValueError(exc.problem) from None
        return value

    return AfterValidator(run)


def _check_category(value: str) -> None:
    validation.text("category", value, max_length=512, required=True)
    if any(not level for level in category_levels(value)):
        raise ValueError("has an empty level (levels are joined by ' > ')")


def _check_brand(value: str) -> None:
    validation.text("brand", value, max_length=256)
    if not value.strip():
        raise ValueError("must not be empty")


Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Budget = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Identifier = Annotated[str, _checked(lambda value: validation.identifier("id", value))]
OptionalIdentifier = Annotated[str, _checked(lambda value: validation.identifier("id", value, required=False))]
CategoryPrefix = Annotated[str, _checked(_check_category)]
Brand = Annotated[str, _checked(_check_brand)]


def _not_below(info: ValidationInfo, low_field: str, high: float | int | None) -> None:
    """The pair check min <= max, reported on the max field (the one read second)."""
    low = info.data.get(low_field)
    if high is not None and low is not None and high < low:
        raise ValueError(f"must not be below {low_field}")


class Promotion(BaseModel):
    """A merchandising decision: pin a bundle or item to a slot, or boost it up the ranking."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Identifier = Field(
        max_length=128, description="Names the promotion in traces (the `rule` of its actions); unique in the file."
    )
    item_id: OptionalIdentifier = Field("", description="The promoted item (or bundle_id).")
    bundle_id: OptionalIdentifier = Field(
        "",
        validate_default=True,
        description="The promoted catalogue bundle; exactly one of item_id and bundle_id is set.",
    )
    kind: Literal["pin", "boost"] = Field(
        description="'pin': placed at `position`; 'boost': `boost` added to its relevance."
    )
    position: int = Field(0, ge=0, le=1000, description="For a pin: the 0-based slot on the page.")
    boost: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        validate_default=True,
        description="For a boost: added to the relevance, normalised to [0, 1].",
    )

    @field_validator("bundle_id")
    @classmethod
    def _one_target(cls, value: str, info: ValidationInfo) -> str:
        if "item_id" not in info.data:  # item_id itself is invalid: reported there
            return value
        if bool(value) == bool(info.data["item_id"]):
            raise ValueError("set exactly one of item_id and bundle_id")
        return value

    @field_validator("position")
    @classmethod
    def _position_for_pins(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("kind") == "boost":
            raise ValueError("is only for kind = 'pin'")
        return value

    @field_validator("boost")
    @classmethod
    def _boost_for_boosts(cls, value: float, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        if kind == "boost" and value <= 0:
            raise ValueError("must be above 0 for kind = 'boost'")
        if kind == "pin" and value:
            raise ValueError("is only for kind = 'boost'")
        return value


class Rules(BaseModel):
    """The business rules. Treat an instance as read-only: one is shared by every request."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    in_stock_only: bool = Field(True, description="Remove a bundle when any member is out of stock.")
    exclude_purchased: bool = Field(True, description="Remove a bundle when the user already bought a member.")
    rebuyable_categories: list[CategoryPrefix] = Field(
        [], description="Category prefixes whose items may be recommended again although bought (consumables)."
    )
    min_price: Price | None = Field(None, description="Remove a bundle with a member priced below this.")
    max_price: Price | None = Field(None, description="Remove a bundle with a member priced above this.")
    include_categories: Annotated[list[CategoryPrefix], Field(max_length=FILTER_ENTRIES)] = Field(
        [], description="If set, a bundle needs a member in one of these category prefixes (whole levels)."
    )
    exclude_categories: Annotated[list[CategoryPrefix], Field(max_length=FILTER_ENTRIES // 2)] = Field(
        [], description="Remove a bundle with a member in one of these category prefixes (whole levels)."
    )
    include_brands: Annotated[list[Brand], Field(max_length=FILTER_ENTRIES)] = Field(
        [], description="If set, a bundle needs a member of one of these brands (case-insensitive)."
    )
    exclude_brands: Annotated[list[Brand], Field(max_length=FILTER_ENTRIES // 2)] = Field(
        [], description="Remove a bundle with a member of one of these brands (case-insensitive)."
    )
    category_depth: int = Field(
        2, ge=1, le=32, description="How many path levels identify 'a category' for max_per_category and diversity."
    )
    max_per_brand: Count | None = Field(None, description="At most this many bundles per page containing a brand.")
    max_per_category: Count | None = Field(
        None, description="At most this many bundles per page containing a category (cut to category_depth)."
    )
    unique_items: bool = Field(True, description="No item on two bundles of one page.")
    diversity_weight: Share = Field(
        0.3, description="Maximal marginal relevance weight: 0 = pure relevance, 1 = only diversity."
    )
    min_bundle_size: Count = Field(1, description="Remove a bundle with fewer members.")
    max_bundle_size: Count = Field(5, description="Remove a bundle with more members.")
    blocklist_items: Annotated[list[Identifier], Field(max_length=BLOCKLIST_ENTRIES)] = Field(
        [], description="Remove every bundle containing one of these items."
    )
    blocklist_bundles: Annotated[list[Identifier], Field(max_length=BLOCKLIST_ENTRIES)] = Field(
        [], description="Never show these catalogue bundles."
    )
    promotions: list[Promotion] = Field([], description="Pins and boosts, each with a unique name.")
    max_promoted_share: Share = Field(
        0.3, description="Share of the page that pins and boosts may take (rounded down, at least 1 when above 0)."
    )

    @field_validator("max_price")
    @classmethod
    def _price_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        _not_below(info, "min_price", value)
        return value

    @field_validator("max_bundle_size")
    @classmethod
    def _size_range(cls, value: int, info: ValidationInfo) -> int:
        _not_below(info, "min_bundle_size", value)
        return value

    @field_validator("promotions")
    @classmethod
    def _distinct_promotions(cls, value: list[Promotion]) -> list[Promotion]:
        names: dict[str, int] = {}
        positions: dict[int, int] = {}
        for i, promotion in enumerate(value):
            if promotion.name in names:
                raise ValueError(f"promotions[{i}] repeats the name of promotions[{names[promotion.name]}]")
            names[promotion.name] = i
            if promotion.kind == "pin":
                earlier = positions.get(promotion.position)
                if earlier is not None:
                    raise ValueError(f"promotions[{i}] pins the same position as promotions[{earlier}]")
                positions[promotion.position] = i
        return value


class EffectiveRules(Rules):
    """The rules for one request: the configured ones with the request's overrides and budget."""

    budget: Budget | None = Field(None, description="The request's budget: most total price of one bundle.")


@dataclass(frozen=True, slots=True)
class RuleOverrides:
    """A request's overrides (proto RuleOverrides); None or empty means "as configured"."""

    in_stock_only: bool | None = None
    max_per_brand: int | None = None
    max_per_category: int | None = None
    diversity_weight: float | None = None
    exclude_brands: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()
    min_price: float | None = None
    max_price: float | None = None
    min_bundle_size: int | None = None
    max_bundle_size: int | None = None


_STRICT = ConfigDict(strict=True)
# The same constraints as the Rules fields, applied to one request's values.
_OVERRIDE_TYPES: dict[str, TypeAdapter[Any]] = {
    "in_stock_only": TypeAdapter(bool, config=_STRICT),
    "max_per_brand": TypeAdapter(Count, config=_STRICT),
    "max_per_category": TypeAdapter(Count, config=_STRICT),
    "diversity_weight": TypeAdapter(Share, config=_STRICT),
    "exclude_brands": TypeAdapter(list[Brand], config=_STRICT),
    "exclude_categories": TypeAdapter(list[CategoryPrefix], config=_STRICT),
    "min_price": TypeAdapter(Price, config=_STRICT),
    "max_price": TypeAdapter(Price, config=_STRICT),
    "min_bundle_size": TypeAdapter(Count, config=_STRICT),
    "max_bundle_size": TypeAdapter(Count, config=_STRICT),
}
_BUDGET = TypeAdapter(Budget, config=_STRICT)
_RANGES = (("min_price", "max_price"), ("min_bundle_size", "max_bundle_size"))
_ADDED = ("exclude_brands", "exclude_categories")


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a path: ('promotions', 1, 'kind') -> 'promotions[1].kind'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def problems(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, message) per error. Messages never quote the input: they end up in logs."""
    found = []
    for detail in error.errors(include_url=False, include_input=False):
        message = str(detail["ctx"]["error"]) if detail["type"] == "value_error" else detail["msg"]
        found.append((prefix + field_path(detail["loc"]), message))
    return found


def _check(adapter: TypeAdapter[Any], field: str, value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        where, problem = problems(exc, field)[0]
        raise InvalidArgument(where, problem) from None


def effective_rules(
    rules: Rules, overrides: RuleOverrides | None = None, budget: float | None = None
) -> EffectiveRules:
    """The configured rules with a request's overrides applied, validated like the rules file.

    Overridden values replace the configured ones, except the exclude lists, which add to them
    (a request may narrow the page, never lift a merchandiser's exclusion). A range that the
    override makes empty (min_price above the configured max_price) is rejected rather than
    yielding an empty page. Raises InvalidArgument naming `overrides.<field>` or `context.budget`.
    """
    updates: dict[str, Any] = {}
    for name, adapter in _OVERRIDE_TYPES.items():
        field, value = f"overrides.{name}", getattr(overrides, name, None)
        if name in _ADDED and value:
            if len(value) > MAX_OVERRIDE_ENTRIES:
                raise InvalidArgument(field, f"has {len(value)} entries; at most {MAX_OVERRIDE_ENTRIES} allowed")
            updates[name] = getattr(rules, name) + _check(adapter, field, list(value))
        elif name not in _ADDED and value is not None:
            updates[name] = _check(adapter, field, value)
    merged = dict(rules) | updates
    for low, high in _RANGES:
        if merged[low] is not None and merged[high] is not None and merged[high] < merged[low]:
            named, other = (high, low) if high in updates else (low, high)
            raise InvalidArgument(f"overrides.{named}", f"conflicts with {other} = {merged[other]}")
    merged["budget"] = None if budget is None else _check(_BUDGET, "context.budget", budget)
    # Every value is valid by now; revalidating the whole (maybe long) blocklists per request would not be.
    return EffectiveRules.model_construct(**merged)
