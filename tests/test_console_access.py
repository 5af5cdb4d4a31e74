"""Who may use the console, without a browser: the auth file's checks, each permission, the
refusal to listen beyond loopback without one, and the counters the health page reads."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from bundlerec.console.access import Access
from bundlerec.console.health import GatewayMetrics, parse
from bundlerec.console.models import ModelsView
from tests.harness.models import Artifacts, models_with, publish
from tests.harness.processes import BUNDLEREC


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return str(path)


def test_each_operator_gets_what_the_file_allows(tmp_path: Path) -> None:
    access = Access.from_file(
        write(
            tmp_path,
            f'[[caller]]\nname = "viewer"\ntoken_sha256 = ["{_digest("v")}"]\nallow = ["console/view"]\n'
            f'[[caller]]\nname = "admin"\ntoken_sha256 = ["{_digest("a")}"]\nallow = ["console/*"]\n'
            f'[[caller]]\nname = "models-only"\ntoken_sha256 = ["{_digest("m")}"]\nallow = ["console/models"]\n',
        )
    )
    viewer, admin, models = (access.operator(t) for t in ("v", "a", "m"))
    assert viewer is not None and viewer.name == "viewer" and not viewer.may_change_models
    assert admin is not None and admin.may_change_models
    assert models is not None and models.may_change_models
    assert access.operator("") is None and access.operator("x") is None and access.operator("v" * 600) is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[[caller]]\nname = "a"\ntoken_sha256 = ["{d}"]\nallow = ["bundlerec.v1.ProfileService/*"]\n', "allow"),
        ('[[caller]]\nname = "a"\ncertificate_names = ["x"]\nallow = ["console/view"]\n', "no token_sha256"),
        ('[[caller]]\nname = "a"\ntoken_sha256 = ["short"]\nallow = ["console/view"]\n', "token_sha256"),
        ("[[caller]\n", "not valid TOML"),
        ('[[caller]]\nname = "a"\ntoken_sha256 = ["{d}"]\nallow = ["console/view"]\nextra = 1\n', "extra"),
    ],
)
def test_a_bad_auth_file_stops_the_start_naming_the_problem(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        Access.from_file(write(tmp_path, text.replace("{d}", _digest("t"))))
    assert named in str(stopped.value)


def test_a_one_off_token_allows_everything_and_only_itself() -> None:
    access, token = Access.one_off()
    operator = access.operator(token)
    assert operator is not None and operator.may_change_models
    other, _ = Access.one_off()
    assert other.operator(token) is None  # a new start, a new token


def test_the_console_will_not_listen_beyond_loopback_without_an_auth_file() -> None:
    result = subprocess.run(
        [BUNDLEREC, "console", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "needs an auth file" in result.stderr


def test_degradations_are_the_counters_growth_over_the_window() -> None:
    def exposition(ranker: int, pages: int) -> str:
        return (
            "# TYPE bundlerec_gateway_degraded_total counter\n"
            f'bundlerec_gateway_degraded_total{{stage="ranker",reason="unavailable"}} {ranker}\n'
            'bundlerec_gateway_degraded_total{stage="profile",reason="deadline_exceeded"} 4\n'
            "# TYPE bundlerec_gateway_pages_total counter\n"
            f'bundlerec_gateway_pages_total{{variant="a",personalized="true"}} {pages}\n'
            f'bundlerec_gateway_pages_total{{variant="b",personalized="false"}} {pages}\n'
        )

    metrics = GatewayMetrics("http://unused")
    assert metrics.recent() == (0.0, 0.0, {})  # one sample or none: nothing to compare yet
    metrics.samples.extend([parse(exposition(3, 10), 100.0), parse(exposition(9, 25), 160.0)])
    seconds, pages, degraded = metrics.recent()
    assert (seconds, pages) == (60.0, 30.0)
    assert degraded == {("ranker", "unavailable"): 6.0}  # the profile's 4 are older than the window


def test_promoting_from_the_console_refuses_a_version_past_the_maximum_age(
    tmp_path: Path, artifacts: Artifacts
) -> None:
    """The same rule as `bundlerec models promote` (promotion.too_old), without its --force."""
    models = models_with(tmp_path / "models", artifacts.plain)
    newer = publish(artifacts.plain, models, "2999010100-000000").name
    with pytest.raises(ValueError, match="past the maximum model age") as refused:
        ModelsView(models, max_age_days=1e-9).change("promote", newer, "ml-oncall")
    assert "--force" in str(refused.value)
    decision = ModelsView(models, max_age_days=30).change("promote", newer, "ml-oncall")
    assert (decision.version, decision.reason) == (newer, "console: ml-oncall")
