"""The one read behind most GetProfile calls, a user's snapshot row (snapshots.py), without the ORM.

Through SQLAlchemy's async engine this primary-key lookup cost about 1 ms of CPU (SQLite, whose
driver runs every call on a thread of its own) and 0.9 ms (PostgreSQL): more than the RPC itself.
One adapter per backend, each as lean as its driver allows:
- SQLite: a plain sqlite3 connection, read on the event loop. WAL readers never wait for writers,
  and the lookup takes tens of microseconds; a database locked anyway (a checkpoint) answers None
  within `busy_ms`, and the caller reads the usual way.
- PostgreSQL: a psycopg pool of autocommit connections running a prepared statement.
Both see every write committed before the call (read-your-writes).
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Protocol

from psycopg import OperationalError as PgOperationalError
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import make_url

from bundlerec.errors import Unavailable

# What snapshots.read selects, as plain SQL (the same row, the same meaning).
QUERY = (
    "SELECT s.snapshot, s.snapshot_key,"
    " EXISTS (SELECT 1 FROM profile_changes c WHERE c.user_id = u.user_id) AS changed"
    " FROM profile_users u LEFT OUTER JOIN profile_snapshots s ON s.user_id = u.user_id"
    " WHERE u.user_id = {}"
)
MISSING = object()  # the adapter could not answer: read the usual way


class SnapshotRow(tuple):  # type: ignore[type-arg]
    """(snapshot, snapshot_key, changed) with names, as snapshots.fresh reads them."""

    __slots__ = ()
    snapshot = property(lambda self: self[0])
    snapshot_key = property(lambda self: self[1])
    changed = property(lambda self: bool(self[2]))


class HotReader(Protocol):
    async def read(self, user_id: str) -> Any:
        """The user's SnapshotRow, None for an unknown user, or MISSING when it could not tell."""

    async def close(self) -> None: ...


class SqliteHotReader:
    def __init__(self, url: str, busy_ms: int = 20) -> None:
        self.path = make_url(url).database or ""
        self.busy_ms = busy_ms
        self._conn: sqlite3.Connection | None = None

    async def read(self, user_id: str) -> Any:
        if self.path in ("", ":memory:"):
            return MISSING  # a database of its own connection: only the engine sees it
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
                self._conn.execute(f"PRAGMA busy_timeout={self.busy_ms}")
            row = self._conn.execute(QUERY.format("?"), (user_id,)).fetchone()
        except sqlite3.Error:
            self._drop()
            return MISSING
        return None if row is None else SnapshotRow(row)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    async def close(self) -> None:
        self._drop()


class PostgresHotReader:
    def __init__(self, url: str, size: int) -> None:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=size,
            open=False,
            timeout=5,
            kwargs={"autocommit": True, "connect_timeout": 5},
        )
        self._opened = False

    async def read(self, user_id: str) -> Any:
        if not self._opened:
            await self.pool.open(wait=False)
            self._opened = True
        try:
            async with self.pool.connection() as conn:
                row = await (await conn.execute(QUERY.format("%s"), (user_id,), prepare=True)).fetchone()
        except (PoolTimeout, PgOperationalError) as exc:  # no connection in time, or one that broke
            raise Unavailable("the database is unavailable; retry later") from exc
        return None if row is None else SnapshotRow(row)

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()


def hot_reader(url: str, pool_size: int) -> HotReader:
    if make_url(url).get_backend_name() == "sqlite":
        return SqliteHotReader(url)
    return PostgresHotReader(url, pool_size)
