"""Shared fixtures: real databases (SQLite file, PostgreSQL), real servers on port 0, real channels,
the real sentence encoder, the test models and the gateway's shop. What they are built from lives
in tests/harness/."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness.databases import postgres_database
from tests.harness.models import Artifacts, build_artifacts
from tests.harness.servers import ProfileServer, running_profile
from tests.harness.shops import Suite, build_suite


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'profile.sqlite3'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
async def profile(database_url: str) -> AsyncIterator[ProfileServer]:
    async with running_profile(database_url) as server:
        yield server


@pytest.fixture
def user_id() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real sentence encoder, exported to ONNX once per test session (needs the train extra)."""
    pytest.importorskip("torch", reason="exporting the encoder needs the train extra (torch)")
    from bundlerec.encoder.export import export_text_encoder

    out = tmp_path_factory.mktemp("encoder")
    export_text_encoder(out)
    return str(out)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    """Ranker models trained once per session (harness/models.py)."""
    return build_artifacts(tmp_path_factory.mktemp("ranker"))


@pytest.fixture(scope="module")
async def suite(tmp_path_factory: pytest.TempPathFactory, encoder_dir: str) -> Suite:
    """The gateway's demo shop, imported, with a ranker trained on it (harness/shops.py)."""
    return await build_suite(tmp_path_factory.mktemp("gateway"), encoder_dir)
