"""The README's first command as a new user runs it: the whole product on embedded defaults, four
services as separate processes, and a clean stop."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness.processes import BUNDLEREC

pytest.importorskip("torch", reason="the demo trains a model (train extra)")
SERVICES = ("PROFILE", "CANDIDATE", "RANKER", "GATEWAY")


@pytest.mark.slow
def test_the_demo_runs_the_whole_product_and_stops_cleanly(tmp_path: Path) -> None:
    # every service logs everything it logs (debug, JSON) to the demo's stderr: none may name a user
    verbose = {f"BUNDLEREC_{s}_LOG_{k}": v for s in SERVICES for k, v in (("LEVEL", "debug"), ("FORMAT", "json"))}
    result = subprocess.run(
        [BUNDLEREC, "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, **verbose},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 8):
        assert f"[{step}/7]" in out
    assert out.count("; model 20") >= 3  # pages ranked by the trained model (versions are UTC timestamps)
    assert "completes the" in out or "often bought with" in out or "matches your interest" in out
    assert "the page changed after the new events" in out
    assert "exit codes profile 0, candidate 0, ranker 0, gateway 0" in out
    users = set(re.findall(r"^    (\S+) on the home page:", out, flags=re.M)) | {"visitor-1"}
    assert len(users) == 4
    logged = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert logged, "the services logged nothing at debug level"
    assert not [line for line in logged if any(user in line for user in users)]
