"""Real databases for tests: a fresh PostgreSQL database per use, and a scan of every row of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url

from bundlerec import db

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
