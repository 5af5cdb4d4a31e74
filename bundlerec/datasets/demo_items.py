"""How the demo shop writes a product: its title ('Northpeak Waterproof Trail Boots, Men's, Size
42'), attribute tokens and price, from its category's words and its brand's price tier. The
assortment they draw on is demo_catalogue.py; the shop around them, demo.py."""

from __future__ import annotations

import math
import random
import re

from bundlerec.datasets.demo_catalogue import VARIANT_VALUES, CategorySpec

TIERS = ("budget", "mid-range", "premium")  # a brand's tier sets where its prices sit in a category's range


def title_of(rng: random.Random, spec: CategorySpec, brand: str, taken: set[str]) -> tuple[str, str, tuple[str, ...]]:
    """'Northpeak Waterproof Trail Boots, Men's, Size 42', its noun, and attribute tokens."""
    for attempt in range(20):
        noun = rng.choice(spec.nouns)
        adjectives = rng.sample(spec.adjectives, 2 if rng.random() < 0.3 and len(spec.adjectives) > 1 else 1)
        chosen: list[tuple[str, str]] = []

        def fill(match: re.Match[str], chosen: list[tuple[str, str]] = chosen) -> str:
            value = rng.choice(VARIANT_VALUES[match.group(1)])
            chosen.append((match.group(1), value))
            return value

        variant = re.sub(r"\{(\w+)\}", fill, rng.choice(spec.variants))
        title = f"{brand} {' '.join(adjectives)} {noun}, {variant}"
        if attempt >= 10:
            title += f" ({rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randrange(10, 100)})"  # a model code
        if title not in taken:
            break
    taken.add(title)
    attributes = tuple(f"feature:{slug(a)}" for a in adjectives) + tuple(f"{k}:{slug(v)}" for k, v in chosen)
    return title, noun, attributes


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def price_of(rng: random.Random, spec: CategorySpec, tier: int) -> float:
    """Log-uniform within the brand tier's third of the category's range (tiers overlap a little),
    ending in .49/.99 like shop prices."""
    low, high = spec.price
    position = min(1.0, max(0.0, (tier + rng.uniform(-0.25, 1.25)) / len(TIERS)))
    price = math.exp(math.log(low) + position * (math.log(high) - math.log(low)))
    if price < 20:
        return max(0.99, math.floor(price) + (0.49 if price % 1 < 0.5 else 0.99))
    return float(round(price)) - 0.01
