"""The database layer every storing service shares: engines, transactions, migrations.

One URL chooses the backend: `sqlite:///path.db` (the embedded default) or
`postgresql+psycopg://user@host/db` (production). Both run through SQLAlchemy's asyncio
extension (aiosqlite, psycopg 3) so grpc.aio handlers never block the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import JSON, MetaData, Table, Text, bindparam, cast, event, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from bundlerec.errors import Unavailable

log = logging.getLogger("bundlerec.db")

T = TypeVar("T")

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> URL:
    """Maps the URL a user writes to the async driver SQLAlchemy needs."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database {url!r}: use sqlite:///FILE or postgresql+psycopg://...")


def _tune_sqlite(engine: AsyncEngine) -> None:
    """WAL for concurrent readers, FULL sync so an acknowledged commit survives a crash,
    and BEGIN IMMEDIATE so writers queue on busy_timeout instead of failing on lock upgrade."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


READ_ONLY = "bundlerec_read_only"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        database = target.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(target, pool_size=pool_size, max_overflow=0, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    # hide_parameters: SQL errors must not carry user ids or payloads into logs.
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=10,
        hide_parameters=True,
        connect_args={"connect_timeout": 5},
    )


def _is_retryable(exc: DBAPIError) -> bool:
    """Deadlocks, serialization failures and dropped pooled connections: the transaction can
    simply run again. Safe because every write of this project is idempotent (client-supplied
    ids, upserts)."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or sqlstate in {"40001", "40P01"}


class Conflict(Unavailable):
    """A transaction that lost to concurrent ones every time it ran (serialization, deadlock)."""


def _unavailable(exc: DBAPIError) -> Unavailable:
    log.warning("database unavailable", extra={"fields": {"error": type(exc.orig).__name__}})
    return Unavailable("the database is unavailable; retry later")


async def in_transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = 4,
    isolation: str | None = None,
) -> T:
    """Runs `work` in one transaction, committed before returning; retries transient conflicts.
    `isolation` ("REPEATABLE READ"...) applies on PostgreSQL; SQLite's transactions are serializable.

    A connection failure becomes Unavailable (the caller may retry) rather than an internal error.
    """
    for attempt in range(1, attempts + 1):
        committing = False
        try:
            async with engine.connect() as conn:
                if isolation and engine.dialect.name == "postgresql":
                    conn = await conn.execution_options(isolation_level=isolation)
                async with conn.begin():
                    result = await work(conn)
                    committing = True  # a failure from here on may follow a commit that landed
            return result
        except PoolTimeout as exc:
            raise Unavailable("the database connection pool is exhausted; retry later") from exc
        except DBAPIError as exc:
            if _is_retryable(exc) and not committing:
                if attempt < attempts:
                    await asyncio.sleep(0.01 * 2**attempt)
                    continue
                if not exc.connection_invalidated:  # a conflict with concurrent transactions, not an outage
                    raise Conflict("the transaction kept conflicting with concurrent ones; retry") from exc
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise _unavailable(exc) from exc
            raise
    raise AssertionError("unreachable")


async def read(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Runs read-only `work`. Every write committed before the call is visible (read-your-writes).

    PostgreSQL: autocommit, no BEGIN/COMMIT round trips (each statement sees all commits made
    before it). SQLite: one deferred transaction, which takes no writer lock.
    """
    for attempt in (1, 2):
        try:
            async with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    return await work(conn)
                conn = await conn.execution_options(**{READ_ONLY: True})
                async with conn.begin():
                    return await work(conn)
        except PoolTimeout as exc:
            raise Unavailable("the database connection pool is exhausted; retry later") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated and attempt == 1:
                continue
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise _unavailable(exc) from exc
            raise
    raise AssertionError("unreachable")


async def existing(conn: AsyncConnection, column: Any, ids: Iterable[str]) -> set[str]:
    """Which of `ids` are values of `column` (500 to a query: IN lists stay within every driver's limits)."""
    wanted = list(set(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        found.update((await conn.execute(select(column).where(column.in_(wanted[start : start + 500])))).scalars())
    return found


async def insert_rows(
    conn: AsyncConnection,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    key: list[str],
    add_to: str | None = None,
    returning: str | None = None,
) -> set[Any]:
    """INSERT rows; on a conflict on `key` do nothing, or add the new `add_to` to the old.
    Returns the `returning` column of the rows actually inserted (or updated). PostgreSQL: one
    statement for the whole batch (`bulk_insert`); SQLite: one per row."""
    if conn.dialect.name == "postgresql":
        stmt, params = bulk_insert(table, list(rows[0])), columns_of(table, rows)
    else:
        stmt, params = sqlite_insert(table), rows  # type: ignore[assignment]
    if add_to:
        stmt = stmt.on_conflict_do_update(index_elements=key, set_={add_to: table.c[add_to] + stmt.excluded[add_to]})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key)
    if returning is None:
        await conn.execute(stmt, params)
        return set()
    return set((await conn.execute(stmt.returning(table.c[returning]), params)).scalars())


def bulk_insert(table: Table, columns: Sequence[str]) -> Insert:
    """A PostgreSQL INSERT of many rows whose SQL text does not depend on the row count:
    `INSERT ... SELECT unnest(:col1), unnest(:col2)...`, executed with one list per column
    (see `columns_of`). Faster than multi-row VALUES, which psycopg must re-parse every time."""

    def unnest(name: str) -> Any:
        column_type = table.c[name].type
        if isinstance(column_type, JSON):  # json[] does not bind well: send text, cast per element
            return cast(func.unnest(cast(bindparam(name), ARRAY(Text))), column_type)
        return func.unnest(cast(bindparam(name), ARRAY(column_type)))

    return pg_insert(table).from_select(list(columns), select(*[unnest(c) for c in columns]))


def columns_of(table: Table, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows → one list per column, the parameters of a `bulk_insert`."""
    params: dict[str, list[Any]] = {}
    for name in rows[0]:
        values = [row[name] for row in rows]
        if isinstance(table.c[name].type, JSON):
            values = [json.dumps(v) for v in values]
        params[name] = values
    return params


def _version_table(script_location: str) -> str:
    """Each service keeps its own Alembic version table, so services can share one database:
    "bundlerec.profile:migrations" → "alembic_version_profile"."""
    return "alembic_version_" + script_location.partition(":")[0].rsplit(".", 1)[-1]


def _alembic_config(script_location: str) -> Config:
    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["version_table"] = _version_table(script_location)
    return config


def run_alembic_env(target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py.

    Migrations run through `bundlerec migrate SERVICE` (or at start), which passes an open
    connection in `config.attributes["connection"]`. For `alembic revision --autogenerate`
    during development, set `sqlalchemy.url` in the config instead.
    """
    from alembic import context
    from sqlalchemy import create_engine as create_sync_engine

    config = context.config
    options = {
        "target_metadata": target_metadata,
        "render_as_batch": True,  # SQLite needs table copies for most ALTERs
        "version_table": config.attributes.get("version_table", "alembic_version"),
    }
    connection = config.attributes.get("connection")
    if connection is None:
        with create_sync_engine(config.get_main_option("sqlalchemy.url")).begin() as connection:
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                context.run_migrations()
        return
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


async def upgrade_to_head(engine: AsyncEngine, script_location: str) -> None:
    """Applies pending Alembic migrations."""
    config = _alembic_config(script_location)

    def upgrade(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


@functools.cache
def _head(script_location: str) -> str | None:
    """The newest migration of a service's scripts: they ship with the code, so reading them once per
    process is enough (readiness asks every few seconds, and parsing them costs milliseconds)."""
    return ScriptDirectory.from_config(_alembic_config(script_location)).get_current_head()


async def migration_problem(engine: AsyncEngine, script_location: str) -> str | None:
    """None when the database is reachable and at the newest migration, else what is wrong."""
    head = _head(script_location)

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(
            conn, opts={"version_table": _version_table(script_location)}
        ).get_current_revision()

    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{READ_ONLY: True})  # no SQLite writer lock
            try:  # the usual case, in one plain query (readiness asks every few seconds)
                query = text(f"SELECT version_num FROM {_version_table(script_location)}")  # our own name
                revision = (await conn.execute(query)).scalar_one_or_none()
            except DBAPIError:  # no version table yet, or no database: let Alembic tell which
                await conn.rollback()
                revision = await conn.run_sync(current)
    except (DBAPIError, OSError) as exc:
        return f"database unreachable: {type(exc).__name__}"
    if revision != head:
        return f"database at migration {revision}, expected {head}: run `bundlerec migrate`"
    return None
