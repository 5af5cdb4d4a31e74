"""The README's first command as a new user runs it: the whole product on embedded defaults, four
services as separate processes, and a clean stop."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness.processes import BUNDLEREC

pytest.importorskip("torch", reason="the demo trains a model (train extra)")
SERVICES = ("PROFILE", "CANDIDATE", "RANKER", "GATEWAY")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo directory for the module: whichever test runs first prepares the shop and the
    model, the other keeps them (--keep), as a user running the demo twice would."""
    return tmp_path_factory.mktemp("demo") / "demo"


@pytest.mark.slow
def test_the_demo_runs_the_whole_product_and_stops_cleanly(workdir: Path) -> None:
    # every service logs everything it logs (debug, JSON) to the demo's stderr: none may name a user
    verbose = {f"BUNDLEREC_{s}_LOG_{k}": v for s in SERVICES for k, v in (("LEVEL", "debug"), ("FORMAT", "json"))}
    result = subprocess.run(
        [BUNDLEREC, "demo", "--workdir", str(workdir), "--keep"],
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


@pytest.mark.slow
def test_serving_the_demo_starts_the_console_and_prints_an_address_that_signs_in(workdir: Path) -> None:
    """`bundlerec demo --serve` on the default ports, as the README says: the console's printed
    address opens its health page, every service ready, and a SIGTERM stops all five cleanly."""
    demo = subprocess.Popen(
        [BUNDLEREC, "demo", "--workdir", str(workdir), "--keep", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 900
        address = ""
        while not address and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "the operator console: " in line:
                address = line.split("the operator console: ", 1)[1].strip()
        assert address.startswith("http://127.0.0.1:8090/login?token="), "".join(lines[-30:])
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with browser.open(address, timeout=30) as page:  # signs in, then lands on the health page
            html = page.read().decode()
        assert page.url == "http://127.0.0.1:8090/"
        for service in ("gateway", "profile", "candidate", "ranker"):
            assert f'data-service="{service}">SERVING<' in html
    finally:
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=120)
    out = "".join(lines) + rest
    assert demo.returncode == 0, out[-3000:]
    assert "exit codes profile 0, candidate 0, ranker 0, gateway 0, console 0" in out
