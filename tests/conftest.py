"""Shared fixtures: real databases (SQLite file, PostgreSQL), real servers on port 0, real channels."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import psycopg
import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url

from bundlerec import db
from bundlerec.profile.server import build
from bundlerec.profile.settings import ProfileSettings
from bundlerec.runtime.server import RunningServer, start_server
from bundlerec.v1 import profile_pb2_grpc

PG_ADMIN_URL = os.environ.get("BUNDLEREC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("BUNDLEREC_REQUIRE_POSTGRES") == "1"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards. Skips (or fails, in CI) without a server."""
    name = f"bundlerec_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (BUNDLEREC_REQUIRE_POSTGRES=1) but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield (
                make_url(PG_ADMIN_URL)
                .set(drivername="postgresql+psycopg", database=name)
                .render_as_string(hide_password=False)
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'profile.sqlite3'}"
    else:
        with postgres_database() as url:
            yield url


@dataclass
class ProfileServer:
    running: RunningServer
    channel: grpc.aio.Channel
    stub: profile_pb2_grpc.ProfileServiceStub
    settings: ProfileSettings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


def profile_settings(database_url: str, **overrides: object) -> ProfileSettings:
    values: dict[str, object] = {
        "port": 0,
        "metrics_port": 0,
        "database_url": database_url,
        "grace_seconds": 5.0,
        "health_interval_seconds": 0.2,
        **overrides,
    }
    return ProfileSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_profile(database_url: str, **overrides: object) -> AsyncIterator[ProfileServer]:
    settings = profile_settings(database_url, **overrides)
    running = await start_server(settings, await build(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield ProfileServer(running, channel, profile_pb2_grpc.ProfileServiceStub(channel), settings)
    finally:
        await channel.close()
        await running.stop()


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


async def rows_mentioning(database_url: str, needle: str) -> dict[str, int]:
    """Counts, per table of the database (reflected, so new tables are covered too), the rows in
    which any column's value contains `needle`."""
    engine = db.create_engine(database_url)
    found: dict[str, int] = {}

    def scan(sync_conn) -> None:  # type: ignore[no-untyped-def]
        tables = MetaData()
        tables.reflect(sync_conn)
        for table in tables.sorted_tables:
            for row in sync_conn.execute(select(table)):
                if any(needle in str(value) for value in row if value is not None):
                    found[table.name] = found.get(table.name, 0) + 1

    try:
        async with engine.connect() as conn:
            await conn.run_sync(scan)
    finally:
        await engine.dispose()
    return found
