"""The gateway's business rules: loading and reloading the rules file, overrides, and the page."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path

import pytest

from bundlerec.errors import InvalidArgument
from bundlerec.gateway.model import PageItem
from bundlerec.gateway.rules import (
    Page,
    PageBundle,
    RuleAction,
    RuleOverrides,
    Rules,
    RulesError,
    RulesSource,
    assemble_page,
    effective_rules,
    load_rules,
)
from tests.harness.servers import eventually

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "rules.example.toml"


def item(item_id: str, category: str = "", brand: str = "", price: float | None = None, in_stock: bool = True):
    return PageItem(item_id, title=item_id, category=category, brand=brand, price=price, in_stock=in_stock)


def bundle(bundle_id: str, *items: PageItem, score: float = 1.0) -> PageBundle:
    return PageBundle(bundle_id, tuple(items), score)


def ids(page: Page) -> list[str]:
    return [b.bundle_id for b in page.bundles]


def removed(page: Page, rule: str) -> list[str]:
    return [a.target_id for a in page.actions if a.action == "removed" and a.rule == rule]


def plain(**fields) -> Rules:
    """Rules with every filter and page shaping off unless asked: each test sees one rule at work."""
    base = dict(in_stock_only=False, exclude_purchased=False, diversity_weight=0.0, unique_items=False)
    return Rules(**(base | fields))


def ranked(n: int, category: str = "A > a") -> list[PageBundle]:
    return [bundle(f"b{i}", item(f"i{i}", category), score=float(n - i)) for i in range(n)]


# --- filters -----------------------------------------------------------------------------------


def test_in_stock_only_removes_a_bundle_with_an_out_of_stock_member() -> None:
    bundles = [bundle("b0", item("i0"), item("i1", in_stock=False)), bundle("b1", item("i2"))]
    page = assemble_page(bundles, plain(in_stock_only=True), page_size=5)
    assert ids(page) == ["b1"]
    assert page.actions == [RuleAction("in_stock_only", "bundle", "b0", "removed", "item i1 is out of stock")]
    assert ids(assemble_page(bundles, plain(in_stock_only=False), page_size=5)) == ["b0", "b1"]


def test_exclude_purchased_spares_rebuyable_categories() -> None:
    bundles = [
        bundle("b0", item("phone", "Electronics > Phones")),
        bundle("b1", item("beans", "Kitchen > Coffee > Coffee Beans")),
        bundle("b2", item("mug", "Kitchen > Mugs")),
    ]
    rules = plain(exclude_purchased=True, rebuyable_categories=["Kitchen > Coffee"])
    page = assemble_page(bundles, rules, page_size=5, purchased_item_ids=frozenset({"phone", "beans"}))
    assert ids(page) == ["b1", "b2"]
    assert removed(page, "exclude_purchased") == ["b0"]


def test_price_range_judges_each_known_price() -> None:
    bundles = [
        bundle("cheap", item("i0", price=2.0)),
        bundle("dear", item("i1", price=500.0), item("i2", price=20.0)),
        bundle("ok", item("i3", price=20.0)),
        bundle("unknown", item("i4")),
    ]
    page = assemble_page(bundles, plain(min_price=5, max_price=100), page_size=5)
    assert ids(page) == ["ok", "unknown"]
    assert removed(page, "price_range") == ["cheap", "dear"]


def test_budget_caps_the_total_and_unknown_prices_count_zero() -> None:
    bundles = [
        bundle("over", item("i0", price=60.0), item("i1", price=50.0)),
        bundle("under", item("i2", price=60.0), item("i3")),
        bundle("unknown", item("i4"), item("i5")),
    ]
    page = assemble_page(bundles, effective_rules(plain(), RuleOverrides(), budget=100.0), page_size=5)
    assert ids(page) == ["under", "unknown"]
    assert removed(page, "budget") == ["over"]


def test_category_prefixes_match_whole_levels() -> None:
    bundles = [
        bundle("kitchen", item("i0", "Home > Kitchen")),
        bundle("homeware", item("i1", "Homeware > Vases")),
        bundle("garden", item("i2", "Garden")),
    ]
    page = assemble_page(bundles, plain(exclude_categories=["Home"]), page_size=5)
    assert ids(page) == ["homeware", "garden"]
    assert removed(page, "categories") == ["kitchen"]
    # An include list needs at least one member in it; "home>kitchen" is "Home > Kitchen" (spacing, case).
    mixed = bundle("mixed", item("i3", "Garden"), item("i4", "Home > Kitchen > Knives"))
    page = assemble_page([*bundles, mixed], plain(include_categories=["home>kitchen"]), page_size=5)
    assert ids(page) == ["kitchen", "mixed"]
    assert removed(page, "categories") == ["homeware", "garden"]


def test_brands_match_case_insensitively() -> None:
    bundles = [
        bundle("b0", item("i0", brand="Acme")),
        bundle("b1", item("i1", brand="Zenith")),
        bundle("b2", item("i2")),
    ]
    page = assemble_page(bundles, plain(exclude_brands=["ACME"]), page_size=5)
    assert ids(page) == ["b1", "b2"]
    assert removed(page, "brands") == ["b0"]
    assert ids(assemble_page(bundles, plain(include_brands=["zenith"]), page_size=5)) == ["b1"]


def test_bundle_size_and_blocklists() -> None:
    bundles = [
        bundle("one", item("i0")),
        bundle("three", item("i1"), item("i2"), item("i3")),
        bundle("blocked", item("i4"), item("i5")),
        bundle("bad-item", item("i6"), item("banned")),
        bundle("ok", item("i7"), item("i8")),
    ]
    rules = plain(min_bundle_size=2, max_bundle_size=2, blocklist_bundles=["blocked"], blocklist_items=["banned"])
    page = assemble_page(bundles, rules, page_size=5)
    assert ids(page) == ["ok"]
    assert removed(page, "bundle_size") == ["one", "three"]
    assert removed(page, "blocklist") == ["blocked", "bad-item"]


def test_a_generated_bundle_is_named_by_its_items() -> None:
    built = PageBundle("", (item("a", in_stock=False), item("b")), 1.0, generated=True)
    single = PageBundle("", (item("c", in_stock=False),), 1.0)
    page = assemble_page([built, single], plain(in_stock_only=True), page_size=5)
    assert [(a.target_kind, a.target_id) for a in page.actions] == [("bundle", "a+b"), ("item", "c")]


# --- overrides ---------------------------------------------------------------------------------


def test_overrides_replace_values_and_add_to_exclude_lists() -> None:
    rules = Rules(exclude_brands=["Acme"], exclude_categories=["Home"], max_per_brand=3)
    overrides = RuleOverrides(
        exclude_brands=["Zenith"], exclude_categories=["Garden"], max_per_brand=1, in_stock_only=False
    )
    effective = effective_rules(rules, overrides, None)
    assert effective.exclude_brands == ["Acme", "Zenith"]
    assert effective.exclude_categories == ["Home", "Garden"]
    assert (effective.max_per_brand, effective.in_stock_only, effective.budget) == (1, False, None)
    assert rules.exclude_brands == ["Acme"]  # the shared rules are untouched
    assert effective_rules(rules, RuleOverrides(), None).model_dump() == rules.model_dump() | {"budget": None}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (RuleOverrides(max_per_brand=0), "overrides.max_per_brand"),
        (RuleOverrides(max_per_category=-2), "overrides.max_per_category"),
        (RuleOverrides(diversity_weight=1.5), "overrides.diversity_weight"),
        (RuleOverrides(diversity_weight=float("nan")), "overrides.diversity_weight"),
        (RuleOverrides(min_price=-1.0), "overrides.min_price"),
        (RuleOverrides(min_price=50.0, max_price=10.0), "overrides.max_price"),
        (RuleOverrides(min_bundle_size=9), "overrides.min_bundle_size"),  # above the configured max of 5
        (RuleOverrides(exclude_brands=["ok", " "]), "overrides.exclude_brands[1]"),
        (RuleOverrides(exclude_categories=["Home >  > Kitchen"]), "overrides.exclude_categories[0]"),
        (RuleOverrides(exclude_brands=["b"] * 101), "overrides.exclude_brands"),
    ],
)
def test_a_bad_override_names_its_field(overrides: RuleOverrides, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        effective_rules(Rules(), overrides, None)
    assert caught.value.field == field


def test_a_bad_budget_names_the_context_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        effective_rules(Rules(), None, -5.0)
    assert caught.value.field == "context.budget"


# --- page shape: caps, unique items, diversity -------------------------------------------------


def test_max_per_brand_skips_to_the_next_best() -> None:
    bundles = [
        bundle("a1", item("i0", brand="Acme")),
        bundle("a2", item("i1", brand="acme")),
        bundle("z1", item("i2", brand="Zenith")),
    ]
    page = assemble_page(bundles, plain(max_per_brand=1), page_size=2)
    assert ids(page) == ["a1", "z1"]
    assert removed(page, "max_per_brand") == ["a2"]


def test_max_per_category_counts_categories_cut_to_depth() -> None:
    bundles = [
        bundle("knives", item("i0", "Home > Kitchen > Knives")),
        bundle("pans", item("i1", "Home > Kitchen > Pans")),
        bundle("beds", item("i2", "Home > Bedroom > Beds")),
    ]
    assert ids(assemble_page(bundles, plain(max_per_category=1, category_depth=2), page_size=3)) == ["knives", "beds"]
    assert ids(assemble_page(bundles, plain(max_per_category=1, category_depth=3), page_size=3)) == [
        "knives",
        "pans",
        "beds",
    ]


def test_unique_items_keeps_an_item_off_a_second_bundle() -> None:
    bundles = [bundle("b0", item("camera"), item("lens")), bundle("b1", item("camera")), bundle("b2", item("bag"))]
    page = assemble_page(bundles, plain(unique_items=True), page_size=3)
    assert ids(page) == ["b0", "b2"]
    assert removed(page, "unique_items") == ["b1"]
    assert ids(assemble_page(bundles, plain(unique_items=False), page_size=3)) == ["b0", "b1", "b2"]


def test_duplicates_are_dropped() -> None:
    page = assemble_page([bundle("b0", item("i0")), bundle("b0", item("i0"))], plain(), page_size=3)
    assert ids(page) == ["b0"]
    assert removed(page, "duplicate") == ["b0"]


def test_without_diversity_the_page_is_the_relevance_order_ties_by_input_order() -> None:
    scores = [0.2, 0.9, 0.5, 0.9, 0.1]
    bundles = [bundle(f"b{i}", item(f"i{i}", "A > a" if i % 2 else "B > b"), score=s) for i, s in enumerate(scores)]
    page = assemble_page(bundles, plain(diversity_weight=0.0), page_size=5)
    assert ids(page) == ["b1", "b3", "b2", "b0", "b4"]
    assert page.actions == []


def test_a_high_diversity_weight_interleaves_categories_and_records_moves() -> None:
    bundles = [
        bundle("a0", item("i0", "Phones > Cases"), score=1.0),
        bundle("a1", item("i1", "Phones > Cases"), score=0.95),
        bundle("a2", item("i2", "Phones > Cases"), score=0.9),
        bundle("b0", item("i3", "Audio > Earbuds"), score=0.5),
        bundle("c0", item("i4", "Cameras > Lenses"), score=0.45),
        bundle("b1", item("i5", "Audio > Earbuds"), score=0.4),
    ]
    assert ids(assemble_page(bundles, plain(diversity_weight=0.0), page_size=4)) == ["a0", "a1", "a2", "b0"]
    page = assemble_page(bundles, plain(diversity_weight=0.7), page_size=4)
    assert ids(page) == ["a0", "b0", "c0", "a1"]
    assert [(a.rule, a.target_id, a.action) for a in page.actions] == [("diversity", "a1", "moved_down")]


def test_diversity_does_not_undo_an_explored_place_and_the_hard_rules_still_judge_it() -> None:
    bundles = [
        bundle("a0", item("i0", "Phones > Cases"), score=1.0),
        dataclasses.replace(bundle("a1", item("i1", "Phones > Cases"), score=0.95), explored=True),
        bundle("b0", item("i3", "Audio > Earbuds"), score=0.5),
        bundle("c0", item("i4", "Cameras > Lenses"), score=0.45),
    ]
    # placed second by exploration: it stays there, where diversity would move a plain one down
    assert ids(assemble_page(bundles, plain(diversity_weight=0.7), page_size=3)) == ["a0", "a1", "b0"]
    plain_a1 = [dataclasses.replace(b, explored=False) for b in bundles]
    assert ids(assemble_page(plain_a1, plain(diversity_weight=0.7), page_size=3)) == ["a0", "b0", "c0"]
    sharing = [bundles[0], dataclasses.replace(bundles[1], items=(item("i0", "Phones > Cases"),)), *bundles[2:]]
    page = assemble_page(sharing, plain(diversity_weight=0.7, unique_items=True), page_size=3)
    assert ids(page) == ["a0", "b0", "c0"]
    assert removed(page, "unique_items") == ["a1"]


# --- promotions --------------------------------------------------------------------------------


def pin(name: str, position: int, *, bundle_id: str = "", item_id: str = "") -> dict:
    return dict(name=name, kind="pin", position=position, bundle_id=bundle_id, item_id=item_id)


def test_a_pin_lands_at_its_position() -> None:
    rules = plain(promotions=[pin("autumn", 2, bundle_id="b7")], max_promoted_share=0.5)
    page = assemble_page(ranked(10), rules, page_size=5)
    assert ids(page) == ["b0", "b1", "b7", "b2", "b3"]
    assert [a for a in page.actions if a.action == "pinned"] == [
        RuleAction("autumn", "bundle", "b7", "pinned", "at position 2")
    ]


def test_an_item_pin_places_the_best_ranked_bundle_containing_it() -> None:
    bundles = [*ranked(4), bundle("x-low", item("x"), score=0.5), bundle("x-high", item("x"), item("y"), score=0.9)]
    rules = plain(promotions=[pin("hero", 0, item_id="x")])
    assert ids(assemble_page(bundles, rules, page_size=3)) == ["x-high", "b0", "b1"]


def test_pins_and_boosts_respect_the_promoted_share() -> None:
    promotions = [
        pin("p0", 0, bundle_id="b9"),
        pin("p1", 1, bundle_id="b8"),
        dict(name="lift", kind="boost", bundle_id="b7", boost=1.0),
    ]
    # 0.2 of 10 slots: 2 promoted. The two pins take them; the boost is not applied.
    page = assemble_page(ranked(10), plain(promotions=promotions, max_promoted_share=0.2), page_size=10)
    assert ids(page)[:2] == ["b9", "b8"]
    assert ids(page).index("b7") == 9
    assert not [a for a in page.actions if a.action == "boosted"]
    # 0.1 of 10: one pin only, recorded.
    page = assemble_page(ranked(10), plain(promotions=promotions, max_promoted_share=0.1), page_size=10)
    assert ids(page)[0] == "b9" and ids(page).index("b8") == 9
    assert removed(page, "max_promoted_share") == ["b8"]
    # 0.3 of 10: both pins and the boost (relevance of b7 is 2/9, + 1 tops the rest).
    page = assemble_page(ranked(10), plain(promotions=promotions, max_promoted_share=0.3), page_size=10)
    assert ids(page)[:3] == ["b9", "b8", "b7"]
    assert [(a.rule, a.target_id) for a in page.actions if a.action == "boosted"] == [("lift", "b7")]
    # Off: no promotion at all.
    assert ids(assemble_page(ranked(10), plain(promotions=promotions, max_promoted_share=0), page_size=10)) == [
        f"b{i}" for i in range(10)
    ]


def test_a_filtered_out_pin_stays_out() -> None:
    bundles = [*ranked(3), bundle("gone", item("g", in_stock=False))]
    page = assemble_page(bundles, plain(in_stock_only=True, promotions=[pin("hero", 0, bundle_id="gone")]), page_size=3)
    assert ids(page) == ["b0", "b1", "b2"]
    assert removed(page, "in_stock_only") == ["gone"]
    assert [a.detail for a in page.actions if a.rule == "hero"] == ["not pinned: removed by in_stock_only"]


def test_a_large_input_is_fast_and_the_page_is_full() -> None:
    categories = [f"D{d} > C{c}" for d in range(10) for c in range(5)]
    bundles = [
        bundle(
            f"b{i}",
            item(f"i{i}", categories[i % 50], f"brand{i % 30}"),
            item(f"j{i}", categories[i * 7 % 50]),
            score=1.0 / (i + 1),
        )
        for i in range(500)
    ]
    rules = Rules(max_per_brand=3, max_per_category=4, diversity_weight=0.5)
    started = time.perf_counter()
    page = assemble_page(bundles, rules, page_size=50)
    assert time.perf_counter() - started < 2.0
    assert len(page.bundles) == 50


# --- the rules file ----------------------------------------------------------------------------

VALID = """
in_stock_only = false
exclude_brands = ["Acme"]
max_per_brand = 2
diversity_weight = 0.5

[[promotions]]
name = "autumn"
bundle_id = "b1"
kind = "pin"
position = 1
"""


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(VALID)
    rules = load_rules(path)
    assert (rules.in_stock_only, rules.exclude_brands, rules.max_per_brand, rules.diversity_weight) == (
        False,
        ["Acme"],
        2,
        0.5,
    )
    assert rules.promotions[0].kind == "pin" and rules.promotions[0].position == 1
    assert load_rules(EXAMPLE).model_dump() != Rules().model_dump()  # the example is valid, and says something


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('in_stock_only = "no"', "in_stock_only"),
        ("max_per_brand = 2.5", "max_per_brand"),
        ("diversity_wieght = 0.2", "diversity_wieght"),
        ("min_price = 10.0\nmax_price = 5.0", "max_price"),
        ("min_bundle_size = 3\nmax_bundle_size = 2", "max_bundle_size"),
        ('exclude_categories = ["Home", ""]', "exclude_categories[1]"),
        (
            '[[promotions]]\nname = "a"\nbundle_id = "b1"\nkind = "pin"\n'
            '[[promotions]]\nname = "b"\nitem_id = "i1"\nkind = "pinned"',
            "promotions[1].kind",
        ),
        ('[[promotions]]\nname = "a"\nkind = "boost"\nboost = 0.1', "promotions[0].bundle_id"),
        ('[[promotions]]\nname = "a"\nitem_id = "i"\nkind = "boost"', "promotions[0].boost"),
        (
            '[[promotions]]\nname = "a"\nbundle_id = "b1"\nkind = "pin"\n'
            '[[promotions]]\nname = "a"\nbundle_id = "b2"\nkind = "pin"\nposition = 1',
            "promotions",
        ),
    ],
)
def test_an_invalid_file_names_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(f"{path}: {field}: ")


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "does not exist"), (b"x = ", "not valid TOML"), (b"\xff", "UTF-8")]
)
def test_a_missing_or_unparsable_file_raises_rules_error(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "rules.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RulesError, match=problem):
        load_rules(path)


def test_rules_source_follows_good_changes_and_keeps_the_last_good_rules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("max_per_brand = 2\n")
    source = RulesSource(path)
    assert source.current.max_per_brand == 2
    assert source.check() is False  # unchanged

    stat = path.stat()
    path.write_text("max_per_brand = 3\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the hash sees the change
    assert source.check() is True
    assert source.current.max_per_brand == 3 and source.last_error is None

    path.write_text('max_per_brand = 4\nexclude_brands = "SECRET-BRAND"\n')
    with caplog.at_level(logging.WARNING, logger="bundlerec.gateway"):
        assert source.check() is False
        assert source.check() is False  # the same bad file is reported once
    assert source.current.max_per_brand == 3
    assert source.last_error is not None and "exclude_brands" in str(source.last_error)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SECRET-BRAND" not in warnings[0].getMessage()

    path.unlink()
    assert source.check() is False and "does not exist" in str(source.last_error)
    assert source.current.max_per_brand == 3
    path.write_text("max_per_brand = 3\n")  # the content in force comes back: the error is over
    assert source.check() is True and source.last_error is None
    path.write_text("max_per_brand = 5\n")
    assert source.check() is True and source.current.max_per_brand == 5


def test_rules_source_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("max_per_brand = 0\n")
    with pytest.raises(RulesError, match="max_per_brand"):
        RulesSource(path)
    with pytest.raises(RulesError, match="does not exist"):
        RulesSource(tmp_path / "missing.toml")
    defaults = RulesSource(None)
    assert defaults.current == Rules() and defaults.check() is False


async def test_watch_reloads_until_stopped(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("max_per_brand = 2\n")
    source = RulesSource(path)
    stop = asyncio.Event()
    watcher = asyncio.create_task(source.watch(0.01, stop))
    path.write_text("max_per_brand = 7\n")

    async def reloaded() -> bool:
        return source.current.max_per_brand == 7

    await eventually(reloaded, seconds=2, every=0.01)
    stop.set()
    await asyncio.wait_for(watcher, 1.0)
