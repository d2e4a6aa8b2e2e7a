"""The PostgreSQL ledger backend: the same tables and the same group-commit procedure as SQLite.

One dedicated writer connection runs each group commit as one transaction. The
procedure's first statement locks the single `ledger_meta` row, so writers in
several processes take turns, and each reads the rows the one before it
committed (READ COMMITTED takes a fresh snapshot per statement). No statement
is sent per row: loads are one `= ANY(array)` query each, bulk inserts go by
binary COPY, and updates (and small inserts) are one set-based statement over
one array per column, pipelined with COMMIT. A batch of any size costs about
six round trips. COMMIT returns once the server has flushed its WAL
(synchronous_commit is left at the server's setting, `on` by default).

Reads go through a small connection pool, one statement each in autocommit, so
they never wait for the writer and never see half a commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper
from psycopg_pool import AsyncConnectionPool

from .batch import (
    BatchResult,
    Command,
    Execute,
    LoadAccounts,
    LoadExpired,
    LoadTransfers,
    Operation,
    Procedure,
    Query,
    QueryMany,
    ReserveTimestamps,
    WriteChanges,
    group_commit,
    run_async,
)
from .model import Account, AccountFilter, BalanceSnapshot, Transfer
from .rows import (
    ACCOUNT_COLUMNS,
    BALANCE_COLUMNS,
    TRANSFER_COLUMNS,
    account_from_row,
    transfer_from_row,
    write_rows,
)
from .store import CurrencyTotals, bounds, from_db, to_db

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Any fixed number: held while one process creates the schema, so several
# processes opening one empty database at once do not race on CREATE.
_SCHEMA_LOCK_KEY = 0x6466_6C65_6467_6572  # "dfledger"

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id BIGINT PRIMARY KEY,
    currency TEXT NOT NULL,
    code BIGINT NOT NULL,
    flags BIGINT NOT NULL,
    user_data BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    debits_pending BIGINT NOT NULL,
    debits_posted BIGINT NOT NULL,
    credits_pending BIGINT NOT NULL,
    credits_posted BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id BIGINT PRIMARY KEY,
    debit_account_id BIGINT NOT NULL,
    credit_account_id BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    pending_id BIGINT NOT NULL,
    currency TEXT NOT NULL,
    code BIGINT NOT NULL,
    flags BIGINT NOT NULL,
    user_data BIGINT NOT NULL,
    timeout_s BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    pending_status BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_debit ON transfers (debit_account_id, timestamp);
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers (credit_account_id, timestamp);
CREATE INDEX IF NOT EXISTS transfers_expiring ON transfers (expires_at)
    WHERE pending_status = 1 AND expires_at > 0;
CREATE TABLE IF NOT EXISTS account_balances (
    account_id BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    transfer_id BIGINT NOT NULL,
    debits_pending BIGINT NOT NULL,
    debits_posted BIGINT NOT NULL,
    credits_pending BIGINT NOT NULL,
    credits_posted BIGINT NOT NULL,
    PRIMARY KEY (account_id, timestamp)
);
CREATE TABLE IF NOT EXISTS ledger_meta (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    schema_version BIGINT NOT NULL,
    last_timestamp BIGINT NOT NULL
);
INSERT INTO ledger_meta (id, schema_version, last_timestamp) VALUES (1, 1, 0) ON CONFLICT (id) DO NOTHING;
"""

RESERVE = (
    "UPDATE ledger_meta SET last_timestamp = GREATEST(last_timestamp + %s, %s) WHERE id = 1 "
    "RETURNING last_timestamp"
)
SELECT_TRANSFERS = f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ANY(%b::bigint[])"
SELECT_ACCOUNTS = f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY(%b::bigint[])"
# Literal 1 and 0, not parameters: a prepared (generic) plan can then use the partial index.
# Ties on expires_at go by id, the order SQLite's index gives them.
SELECT_EXPIRED = (
    f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE pending_status = 1 AND expires_at > 0 "
    "AND expires_at <= %s ORDER BY expires_at, id LIMIT %s"
)
SELECT_NEXT_EXPIRY = "SELECT MIN(expires_at) FROM transfers WHERE pending_status = 1 AND expires_at > 0"


# From this many rows an insert goes by COPY: two extra round trips, but
# PostgreSQL inserts a COPY stream in multi-row batches, about twice as fast
# as INSERT ... SELECT FROM unnest at 8,000 rows.
COPY_ROWS_MIN = 64


class _Write:
    """One kind of row a commit writes: set-based SQL over one array per column, or COPY for many inserts."""

    __slots__ = ("key", "text_at", "statement", "copy_sql", "copy_types")

    def __init__(self, key: str, types: tuple[str, ...], sql: str, copy_into: str = "") -> None:
        self.key = key  # in write_rows()
        self.text_at = tuple(i for i, t in enumerate(types) if t == "text")
        arrays = ", ".join(f"%b::{'text' if t == 'text' else 'bigint'}[]" for t in types)
        self.statement = sql.format(arrays=f"unnest({arrays})")
        self.copy_sql = f"COPY {copy_into} FROM STDIN (FORMAT BINARY)" if copy_into else ""
        self.copy_types = types


_ACCOUNT_TYPES = ("int8", "text") + ("int8",) * 8
_TRANSFER_TYPES = ("int8",) * 5 + ("text",) + ("int8",) * 7
# In the order SQLite writes them; no statement depends on another's rows.
_WRITES = (
    _Write("insert_accounts", _ACCOUNT_TYPES,
           f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) SELECT * FROM {{arrays}}",
           f"accounts ({ACCOUNT_COLUMNS})"),
    _Write("insert_transfers", _TRANSFER_TYPES,
           f"INSERT INTO transfers ({TRANSFER_COLUMNS}) SELECT * FROM {{arrays}}",
           f"transfers ({TRANSFER_COLUMNS})"),
    _Write("update_accounts", ("int8",) * 6,
           "UPDATE accounts AS a SET flags = v.flags, debits_pending = v.dp, debits_posted = v.dpo, "
           "credits_pending = v.cp, credits_posted = v.cpo "
           "FROM {arrays} AS v(flags, dp, dpo, cp, cpo, id) WHERE a.id = v.id"),
    _Write("update_pending", ("int8",) * 2,
           "UPDATE transfers AS t SET pending_status = v.status FROM {arrays} AS v(status, id) WHERE t.id = v.id"),
    _Write("insert_balances", ("int8",) * 7,
           f"INSERT INTO account_balances ({BALANCE_COLUMNS}) SELECT * FROM {{arrays}}",
           f"account_balances ({BALANCE_COLUMNS})"),
)

_INT8_OID = 20
_INT8_ARRAY_OID = 1016
_U64_END = 2**64
_I64_END = 2**63


class _Int8s(list):  # type: ignore[type-arg]
    """A list of ints sent as one binary bigint[] parameter."""


_ARRAY_HEAD = struct.Struct(">5i")
_EMPTY_INT8_ARRAY = struct.pack(">3i", 0, 0, _INT8_OID)


class _Int8ArrayBinaryDumper(Dumper):
    """psycopg's generic list dumper costs several ms per 8,000 ints; one struct.pack does not."""

    format = Format.BINARY
    oid = _INT8_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        n = len(obj)
        if not n:
            return _EMPTY_INT8_ARRAY
        # Binary array: ndim, has-nulls, element type, (length, lower bound), then (size, value) pairs.
        items: list[int] = [8] * (2 * n)
        items[1::2] = obj
        return _ARRAY_HEAD.pack(1, 0, _INT8_OID, n, 1) + struct.pack(">" + "iq" * n, *items)


def _columns(rows: list[tuple[Any, ...]], text_at: Sequence[int] = ()) -> list[list[Any]]:
    # One comprehension per column: zip(*rows) over 8,000 rows is three times slower.
    return [
        [r[i] for r in rows] if i in text_at else _Int8s([r[i] for r in rows]) for i in range(len(rows[0]))
    ]


def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # Every integer column is BIGINT: send ints as int8 so arrays and prepared
    # statements have one stable type (an out-of-range value fails loudly).
    conn.adapters.register_dumper(int, Int8Dumper)
    conn.adapters.register_dumper(int, Int8BinaryDumper)
    conn.adapters.register_dumper(_Int8s, _Int8ArrayBinaryDumper)


class PostgresLedgerStore:
    backend = "postgres"

    def __init__(self, dsn: str, *, read_pool_max: int = 4) -> None:
        self.dsn = dsn
        self.read_pool_max = read_pool_max
        self._wconn: psycopg.AsyncConnection[Any] | None = None
        self._pool: AsyncConnectionPool | None = None
        # commit() has one caller, the group-commit writer; run_procedure() may
        # have others (benchmarks): they take turns on the one writer connection.
        self._write_lock = asyncio.Lock()

    # ---- lifecycle
    async def _connect_writer(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        _configure(conn)
        return conn

    async def open(self) -> None:
        conn = await self._connect_writer()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                await conn.execute(SCHEMA)
        except BaseException:
            await conn.close()
            raise
        self._wconn = conn

        async def configure(c: psycopg.AsyncConnection[Any]) -> None:
            _configure(c)

        pool: AsyncConnectionPool = AsyncConnectionPool(
            self.dsn, min_size=1, max_size=max(1, self.read_pool_max), open=False,
            kwargs={"autocommit": True}, configure=configure, name="ledger-readers",
        )
        try:
            await pool.open(wait=True)
        except BaseException:
            await pool.close()
            await self._close_writer()
            raise
        self._pool = pool

    async def close(self) -> None:
        await self._close_writer()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _close_writer(self) -> None:
        if self._wconn is not None:
            await self._wconn.close()
            self._wconn = None

    # ---- writes
    async def commit(self, commands: Sequence[Command], now_ns: int) -> list[BatchResult]:
        return await self.run_procedure(group_commit(commands, now_ns))

    async def run_procedure(self, procedure: Procedure) -> list[BatchResult]:
        async with self._write_lock:
            conn = await self._writer_connection()
            tx = _Transaction(conn)
            try:
                out = await run_async(procedure, tx.execute)
                await tx.commit()
            except BaseException:
                await tx.abandon()
                raise
            return out

    async def _writer_connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._wconn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            log.warning("ledger writer connection was lost; reconnecting")
            await conn.close()
            self._wconn = None
        assert self._pool is not None, "store is not open"
        self._wconn = await self._connect_writer()
        return self._wconn

    # ---- reads
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        pool = self._pool
        assert pool is not None, "store is not open"
        for attempt in (1, 2):
            async with pool.connection() as conn:
                try:
                    cur = await conn.execute(sql, params, binary=True)
                    return await cur.fetchall()
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            # The server dropped this connection (restart, idle timeout), and likely
            # its idle siblings too: let the pool test them all, then repeat the
            # read (reads are safe to repeat) on one that works.
            await pool.check()
        raise AssertionError("unreachable")

    async def ensure_schema(self, statements: Sequence[str]) -> None:
        """Create tables that live beside the ledger's (payments, outbox, ...); idempotent,
        and safe when several processes start at once (the schema lock)."""
        async with self._write_lock:
            conn = await self._writer_connection()
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                for sql in statements:
                    await conn.execute(sql)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read on a pooled connection; `sql` uses `?` placeholders (core/database.py)."""
        return await self._fetch(pg_sql(sql), params)

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        wanted = _Int8s(i for i in ids if 0 <= i < _I64_END)
        if not wanted:
            return []
        found = {a.id: a for a in map(account_from_row, await self._fetch(SELECT_ACCOUNTS, (wanted,)))}
        return [found[i] for i in ids if i in found]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        wanted = _Int8s(to_db(i) for i in ids if 0 <= i < _U64_END)
        if not wanted:
            return []
        found = {t.id: t for t in map(transfer_from_row, await self._fetch(SELECT_TRANSFERS, (wanted,)))}
        return [found[i] for i in ids if i in found]

    async def account_transfers(self, flt: AccountFilter, after_timestamp: int) -> list[Transfer]:
        low, high = bounds(flt, after_timestamp)
        if not (flt.debits or flt.credits) or low > high or not 0 <= flt.account_id < _I64_END:
            return []
        order = "DESC" if flt.newest_first else "ASC"
        parts: list[str] = []
        params: list[Any] = []
        for enabled, column in ((flt.debits, "debit_account_id"), (flt.credits, "credit_account_id")):
            if enabled:
                # ORDER BY and LIMIT inside each side too: PostgreSQL 15 plans a bare
                # UNION ALL as an append it must sort whole (a seq scan for a busy
                # account); limited sides become a merge of two short index scans.
                parts.append(
                    f"(SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {column} = %s "
                    f"AND timestamp BETWEEN %s AND %s ORDER BY timestamp {order} LIMIT %s)"
                )
                params += [flt.account_id, low, high, flt.limit]
        if len(parts) == 1:
            sql = parts[0][1:-1]
        else:
            sql = " UNION ALL ".join(parts) + f" ORDER BY timestamp {order} LIMIT %s"
            params.append(flt.limit)
        return [transfer_from_row(r) for r in await self._fetch(sql, params)]

    async def account_balances(self, flt: AccountFilter, after_timestamp: int) -> list[BalanceSnapshot]:
        low, high = bounds(flt, after_timestamp)
        if low > high or not 0 <= flt.account_id < _I64_END:
            return []
        order = "DESC" if flt.newest_first else "ASC"
        rows = await self._fetch(
            f"SELECT {BALANCE_COLUMNS} FROM account_balances WHERE account_id = %s "
            f"AND timestamp BETWEEN %s AND %s ORDER BY timestamp {order} LIMIT %s",
            (flt.account_id, low, high, flt.limit),
        )
        return [BalanceSnapshot(r[0], r[1], from_db(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    async def currency_totals(self) -> list[CurrencyTotals]:
        # SUM(bigint) is numeric in PostgreSQL: exact, and never overflows.
        rows = await self._fetch(
            "SELECT currency, SUM(debits_pending), SUM(debits_posted), SUM(credits_pending), "
            'SUM(credits_posted) FROM accounts GROUP BY currency ORDER BY currency COLLATE "C"',
            (),
        )
        return [CurrencyTotals(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def next_expiry(self) -> int | None:
        rows = await self._fetch(SELECT_NEXT_EXPIRY, ())
        return rows[0][0] if rows and rows[0][0] is not None else None


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """Portable SQL (`?` placeholders, core/database.py) in psycopg's dialect."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Transaction:
    """One group commit on the writer connection: BEGIN ... COMMIT, in as few round trips as possible.

    The connection is in autocommit mode and the transaction is opened with an
    explicit BEGIN sent in one pipeline with the first statement. Writes are
    queued in a pipeline that COMMIT joins, so they cost no round trip of their
    own; bulk inserts go by COPY, which pipelines cannot carry.
    """

    __slots__ = ("conn", "begun", "_pipeline")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.begun = False
        self._pipeline: AsyncExitStack | None = None

    async def _enter_pipeline(self) -> None:
        if self._pipeline is None:
            stack = AsyncExitStack()
            await stack.enter_async_context(self.conn.pipeline())
            self._pipeline = stack
        if not self.begun:
            await self.conn.execute("BEGIN")
            self.begun = True

    async def _leave_pipeline(self) -> None:
        """Send everything queued and wait for its results (raising the first error)."""
        stack, self._pipeline = self._pipeline, None
        if stack is not None:
            await stack.aclose()

    async def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        await self._enter_pipeline()
        cur = await self.conn.execute(sql, params, binary=True)
        # Fetching flushes the pipeline and waits for this result only.
        return await cur.fetchall()

    async def execute(self, op: Operation) -> Any:
        if isinstance(op, ReserveTimestamps):
            rows = await self._query(RESERVE, (op.count, op.now_ns))
            assert rows, "ledger_meta has no row"
            return rows[0][0]
        if isinstance(op, LoadTransfers):
            # Ids outside uint64 cannot be stored; the state machine rejects them before looking.
            ids = _Int8s(to_db(i) for i in op.ids if 0 <= i < _U64_END)
            return {t.id: t for t in map(transfer_from_row, await self._query(SELECT_TRANSFERS, (ids,)))}
        if isinstance(op, LoadAccounts):
            return {a.id: a for a in map(account_from_row, await self._query(SELECT_ACCOUNTS, (_Int8s(op.ids),)))}
        if isinstance(op, LoadExpired):
            return [transfer_from_row(r) for r in await self._query(SELECT_EXPIRED, (op.now_ns, op.limit))]
        if isinstance(op, Query):
            return await self._query(pg_sql(op.sql), op.params)
        if isinstance(op, Execute):
            await self._enter_pipeline()
            await self.conn.execute(pg_sql(op.sql), op.params)
            return None
        if isinstance(op, QueryMany):
            # All sent first, then all read: one round trip in pipeline mode.
            await self._enter_pipeline()
            cursors = [await self.conn.execute(pg_sql(sql), params, binary=True) for sql, params in op.queries]
            return [await cur.fetchall() for cur in cursors]
        if isinstance(op, WriteChanges):
            await self._write(write_rows(op.snapshot))
            return None
        raise AssertionError(f"unknown operation {op!r}")

    async def _write(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        bulk = [w for w in _WRITES if w.copy_sql and len(rows[w.key]) >= COPY_ROWS_MIN]
        if bulk:
            await self._leave_pipeline()
            if not self.begun:
                await self.conn.execute("BEGIN")
                self.begun = True
            cur = self.conn.cursor()
            for w in bulk:
                async with cur.copy(w.copy_sql) as copy:
                    copy.set_types(w.copy_types)
                    for row in rows[w.key]:
                        await copy.write_row(row)
        for w in _WRITES:
            if rows[w.key] and w not in bulk:
                await self._enter_pipeline()
                await self.conn.execute(w.statement, _columns(rows[w.key], w.text_at))

    async def commit(self) -> None:
        if not self.begun:  # a procedure that touched nothing
            return
        await self._enter_pipeline()
        done = await self.conn.execute("COMMIT")
        await self._leave_pipeline()
        if done.statusmessage != "COMMIT":
            # PostgreSQL answers COMMIT of a failed transaction with ROLLBACK, not an error.
            raise psycopg.errors.InFailedSqlTransaction(f"COMMIT answered {done.statusmessage!r}")

    async def abandon(self) -> None:
        """Roll back after an error; a connection that cannot roll back is closed, not reused."""
        conn = self.conn
        try:
            await self._leave_pipeline()
        except BaseException:  # noqa: BLE001 - the first error is the one being raised
            pass
        if conn.broken or conn.closed:
            return
        try:
            await conn.execute("ROLLBACK")
        except BaseException:  # noqa: BLE001
            log.warning("ledger writer could not roll back; dropping its connection", exc_info=True)
            await conn.close()
