"""The experiment report's statistics on pages whose truth is known (seeded): intervals that cover
the true rate, a difference found when there is one and not when there is none, intervals that
widen when one shopper's pages move together, and the sample-ratio check."""

from __future__ import annotations

import random

import pytest

from bundlerec.events import EventType
from bundlerec.online.report import Page, report, sample_ratio


def pages(variant: str, users: int, pages_each: int, ctr: float, rng: random.Random, share: float = 0.5) -> list[Page]:
    out = []
    for u in range(users):
        for _ in range(pages_each):
            clicked = rng.random() < ctr
            bought = clicked and rng.random() < 0.2
            outcomes: list[tuple[EventType, int, float]] = []
            if clicked:
                outcomes.append((EventType.CLICK, 0, 0.0))
            if bought:
                outcomes.append((EventType.PURCHASE, 0, 40.0))
            out.append(Page(f"{variant}-{u}", variant, share, "home", 1_700_000_000_000_000, 5, tuple(outcomes)))
    return out


def test_intervals_cover_the_truth_and_find_a_real_difference() -> None:
    rng = random.Random(7)
    doc = report(pages("control", 400, 5, 0.10, rng) + pages("b", 400, 5, 0.16, rng))
    control, treatment = doc["variants"]["control"], doc["variants"]["b"]
    assert control["click_through"]["low"] < 0.10 < control["click_through"]["high"]
    assert treatment["click_through"]["low"] < 0.16 < treatment["click_through"]["high"]
    lift = treatment["click_through"]["relative_to_control"]
    assert lift["low"] > 0 and lift["low"] < 0.6 < lift["high"]  # the truth: +60 %
    assert control["revenue_per_page"]["value"] == pytest.approx(40.0 * control["purchase"]["value"])
    assert control["exposures_by_position"] == {str(p): 2000 for p in range(5)}
    assert doc["placements"]["home"]["b"]["pages"] == 2000 and not doc["sample_ratio"]["mismatch"]


def test_no_difference_is_found_where_there_is_none() -> None:
    rng = random.Random(11)
    doc = report(pages("control", 400, 5, 0.12, rng) + pages("b", 400, 5, 0.12, rng))
    lift = doc["variants"]["b"]["click_through"]["relative_to_control"]
    assert lift["low"] < 0 < lift["high"]


def test_a_shoppers_pages_that_move_together_widen_the_interval() -> None:
    rng = random.Random(3)
    independent = pages("control", 1000, 1, 0.2, rng)
    # the same number of pages from 100 shoppers, each always or never clicking
    together = [
        Page(f"c-{u}", "control", 1.0, "home", 0, 5, ((EventType.CLICK, 0, 0.0),) if u % 5 == 0 else ())
        for u in range(100)
        for _ in range(10)
    ]

    def width(p: list[Page]) -> float:
        e = report(p)["variants"]["control"]["click_through"]
        return float(e["high"] - e["low"])

    assert width(together) > 2.5 * width(independent)


def test_the_sample_ratio_check_flags_a_broken_split() -> None:
    assert not sample_ratio({"a": 1000, "b": 1010}, {"a": 0.5, "b": 0.5})["mismatch"]
    assert sample_ratio({"a": 1000, "b": 850}, {"a": 0.5, "b": 0.5})["mismatch"]
    assert not sample_ratio({"a": 900, "b": 100}, {"a": 0.9, "b": 0.1})["mismatch"]
    assert report([])["pages"] == 0
