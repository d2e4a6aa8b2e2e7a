"""Test doubles of `dualflow.core.database.Database`: SQLite in memory, and PostgreSQL.

The real store (the ledger's group-commit writer) implements the same two methods; these let the
vault and webhook tests run their portable SQL on both engines without it. `?` placeholders are
rewritten to `%s` for PostgreSQL, as the real PostgreSQL store does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from dualflow.core.database import Statement


class SqliteTestDatabase:
    """One in-memory SQLite connection; each write() is one transaction, as in the real store."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None)
        self._lock = asyncio.Lock()
        self.writes = 0  # write() calls that committed, for tests that count round trips
        self.fail_writes = False  # set to make write() raise, as a storage outage would

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            return [tuple(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    async def write(self, statements: Sequence[Statement]) -> None:
        async with self._lock:
            if self.fail_writes:
                raise OSError("test database: writes are failing")
            self._conn.execute("BEGIN")
            try:
                for sql, params in statements:
                    self._conn.execute(sql, tuple(params))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self.writes += 1

    async def close(self) -> None:
        self._conn.close()


class PostgresTestDatabase:
    """One psycopg async connection to a test schema; each write() is one transaction."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.writes = 0
        self.fail_writes = False

    @classmethod
    async def connect(cls, dsn: str) -> PostgresTestDatabase:
        import psycopg

        return cls(await psycopg.AsyncConnection.connect(dsn, autocommit=True))

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            cur = await self._conn.execute(sql.replace("?", "%s"), tuple(params))
            return [tuple(r) for r in await cur.fetchall()]

    async def write(self, statements: Sequence[Statement]) -> None:
        async with self._lock:
            if self.fail_writes:
                raise OSError("test database: writes are failing")
            async with self._conn.transaction():
                for sql, params in statements:
                    await self._conn.execute(sql.replace("?", "%s"), tuple(params))
            self.writes += 1

    async def close(self) -> None:
        await self._conn.close()


async def apply_schema(db: Any, *schemas: Iterable[str]) -> None:
    """What the real store does at open: run each CREATE ... IF NOT EXISTS."""
    await db.write([(sql, ()) for schema in schemas for sql in schema])
