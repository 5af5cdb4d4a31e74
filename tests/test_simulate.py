"""The loop end to end on real processes, as a new user runs it: the four services with two
experiment variants, `bundlerec simulate` against the gateway, then `bundlerec experiments report`:
every page the shoppers got is in the log, every page they clicked or bought from is attributed, and
the sample-ratio check passes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.processes import four_services
from tests.harness.shops import Suite

torch = pytest.importorskip("torch", reason="training the test model needs the train extra (torch)")

VARIANTS = [
    {"name": "popularity", "share": 0.5, "strategy": "popularity"},
    {"name": "trained", "share": 0.5, "exploration_share": 0.2},
]


@pytest.fixture
def services(suite: Suite, encoder_dir: str) -> Iterator[dict[str, tuple[subprocess.Popen[bytes], str]]]:
    with four_services(
        suite.profile_url,
        suite.catalogue_url,
        suite.models,
        encoder_dir,
        BUNDLEREC_GATEWAY_DEADLINE_MS="2000",
        BUNDLEREC_GATEWAY_EXPERIMENT_VARIANTS=json.dumps(VARIANTS),
        BUNDLEREC_GATEWAY_EXPOSURE_FLUSH_MS="50",
    ) as started:
        yield started


def bundlerec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundlerec", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_simulated_shoppers_are_measured_by_the_report(
    services: dict[str, tuple[subprocess.Popen[bytes], str]], tmp_path: Path
) -> None:
    pages_file, report_file, plot = tmp_path / "pages.json", tmp_path / "report.json", tmp_path / "report.png"
    simulated = bundlerec(
        "simulate", "--gateway", services["gateway"][1], "--shoppers", "40", "--days", "2", "--seed", "5",
        "--json", str(pages_file),
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    seen = json.loads(pages_file.read_text())
    by_variant = Counter(p["variant"] for p in seen)
    assert set(by_variant) == {"popularity", "trained"} and sum(by_variant.values()) > 40
    assert sum(p["clicked"] for p in seen) > 5 and any(p["bought"] for p in seen)

    deadline = time.monotonic() + 30
    while True:  # the gateway's last batch reaches the log a moment after the last page
        reported = bundlerec(
            "experiments", "report", "--profile", services["profile"][1], "--control", "popularity",
            "--json", str(report_file), "--plot", str(plot),
        )  # fmt: skip
        assert reported.returncode == 0, reported.stderr + reported.stdout
        doc = json.loads(report_file.read_text())
        if doc["pages"] >= len(seen) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert doc["pages"] == len(seen)
    for variant, row in doc["variants"].items():
        pages = [p for p in seen if p["variant"] == variant]
        assert row["pages"] == len(pages)
        # every page the shoppers clicked from is attributed, and only those
        assert round(row["click_through"]["value"] * row["pages"]) == sum(p["clicked"] for p in pages)
        assert round(row["purchase"]["value"] * row["pages"]) == sum(p["bought"] for p in pages)
        revenue = sum(p["revenue"] for p in pages)
        assert row["revenue_per_page"]["value"] * row["pages"] == pytest.approx(revenue, rel=1e-6)
    assert "relative_to_control" in doc["variants"]["trained"]["click_through"]
    assert doc["sample_ratio"]["p_value"] is not None and not doc["sample_ratio"]["mismatch"]
    kinds = Counter(k for p in seen for k in p["kinds"])
    assert kinds["explored"] > 0 and "click-through" in reported.stdout and plot.stat().st_size > 0
