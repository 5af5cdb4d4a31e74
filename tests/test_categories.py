"""Category paths are read one way by every service (bundlerec.categories)."""

from __future__ import annotations

from bundlerec import categories
from bundlerec.privacy import SensitiveCategories


def test_a_prefix_matches_whole_levels_whatever_the_spacing_and_case() -> None:
    assert categories.within("Home > Kitchen > Kettles", "home>kitchen")
    assert categories.within("Home > Kitchen", "Home > Kitchen")
    assert not categories.within("Homeware > Vases", "Home"), "a level is matched whole, not as a string prefix"
    assert not categories.within("Home", "Home > Kitchen")
    assert not categories.within("Home > Kitchen", "")
    assert categories.department(" Home > Kitchen") == "home" and categories.department("") == ""
    assert categories.levels("A > > B") == ("a", "", "b"), "empty levels stay, for checks to refuse"


def test_sensitive_names_match_by_the_same_levels() -> None:
    sensitive = SensitiveCategories(["Health", "Adult > Toys"])
    assert "Health > Vitamins" in sensitive and "Shop > health > Tests" in sensitive  # a one-level name: any level
    assert "Healthy snacks" not in sensitive and "Adult > Books" not in sensitive
