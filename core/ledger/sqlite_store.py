"""The embedded SQLite ledger backend (the default).

WAL with synchronous=FULL: a commit is on disk when COMMIT returns. All writes
go through one connection owned by one thread (SQLite has one writer anyway);
reads use their own connection in another thread, which WAL lets run beside
the writer. The group-commit procedure runs in the writer thread, so one batch
costs one thread hop and one fsync.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
    run_sync,
)
from .model import Account, AccountFilter, BalanceSnapshot, PendingStatus, Transfer
from .rows import ACCOUNT_COLUMNS, TRANSFER_COLUMNS, account_from_row, transfer_from_row, write_rows
from .store import CurrencyTotals, bounds, from_db, to_db

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL_S = 0.2
# 4 KiB pages: past ~256 MiB of WAL the checkpointer makes the writer wait once.
CHECKPOINT_WAL_PAGES_MAX = 65536
# SQLite caps bound parameters per statement (32766 since 3.32); stay well under.
_CHUNK = 4000

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    currency TEXT NOT NULL,
    code INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    user_data INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    debits_pending INTEGER NOT NULL,
    debits_posted INTEGER NOT NULL,
    credits_pending INTEGER NOT NULL,
    credits_posted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY,
    debit_account_id INTEGER NOT NULL,
    credit_account_id INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    pending_id INTEGER NOT NULL,
    currency TEXT NOT NULL,
    code INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    user_data INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    pending_status INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_debit ON transfers (debit_account_id, timestamp);
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers (credit_account_id, timestamp);
CREATE INDEX IF NOT EXISTS transfers_expiring ON transfers (expires_at)
    WHERE pending_status = 1 AND expires_at > 0;
CREATE TABLE IF NOT EXISTS account_balances (
    account_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    transfer_id INTEGER NOT NULL,
    debits_pending INTEGER NOT NULL,
    debits_posted INTEGER NOT NULL,
    credits_pending INTEGER NOT NULL,
    credits_posted INTEGER NOT NULL,
    PRIMARY KEY (account_id, timestamp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    last_timestamp INTEGER NOT NULL
);
INSERT OR IGNORE INTO ledger_meta (id, schema_version, last_timestamp) VALUES (1, 1, 0);
"""

INSERT_ACCOUNT = f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
INSERT_TRANSFER = f"INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
UPDATE_ACCOUNT = (
    "UPDATE accounts SET flags = ?, debits_pending = ?, debits_posted = ?, "
    "credits_pending = ?, credits_posted = ? WHERE id = ?"
)
UPDATE_PENDING = "UPDATE transfers SET pending_status = ? WHERE id = ?"
INSERT_BALANCE = "INSERT INTO account_balances VALUES (?,?,?,?,?,?,?)"
RESERVE = "UPDATE ledger_meta SET last_timestamp = MAX(last_timestamp + ?, ?) WHERE id = 1 RETURNING last_timestamp"


T = TypeVar("T")


class SqliteLedgerStore:
    backend = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-reader")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-checkpoint")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._cconn: sqlite3.Connection | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    # ---- lifecycle
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._wconn = self._connect()
        self._wconn.executescript(SCHEMA)
        # Checkpoints run on their own connection and thread (below), not inside the
        # writer's COMMIT, where they were about half the commit time of a large ledger.
        self._wconn.execute("PRAGMA wal_autocheckpoint=0")
        self._rconn = self._connect()
        self._cconn = self._connect()

    async def open(self) -> None:
        await self._on(self._writer, self._open_sync)
        self._checkpoints = asyncio.create_task(self._checkpoint_forever(), name="sqlite-checkpoint")

    def _checkpoint(self, mode: str) -> tuple[int, int, int]:
        """Copy committed WAL pages into the database file; (busy, wal pages, pages copied)."""
        assert self._cconn is not None
        row = self._cconn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    async def _checkpoint_forever(self) -> None:
        """A PASSIVE checkpoint never waits for the writer. When the WAL still grew past
        CHECKPOINT_WAL_PAGES_MAX (the checkpointer fell behind), a RESTART checkpoint
        waits for the writer once so the WAL starts over and cannot grow without bound."""
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                _busy, wal_pages, _copied = await self._on(self._checkpointer, self._checkpoint, "PASSIVE")
                if wal_pages > CHECKPOINT_WAL_PAGES_MAX:
                    await self._on(self._checkpointer, self._checkpoint, "RESTART")
            except sqlite3.Error:
                log.warning("SQLite checkpoint failed; retrying", exc_info=True)

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            try:
                await self._checkpoints
            except asyncio.CancelledError:
                pass
            self._checkpoints = None

        def close_c() -> None:
            if self._cconn is not None:
                self._cconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._cconn.close()
                self._cconn = None

        await self._on(self._checkpointer, close_c)
        self._checkpointer.shutdown(wait=True)
        def close_w() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        def close_r() -> None:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None

        await self._on(self._writer, close_w)
        await self._on(self._reader, close_r)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def ensure_schema(self, statements: Sequence[str]) -> None:
        """Create tables that live beside the ledger's (payments, outbox, ...); idempotent."""
        def apply() -> None:
            assert self._wconn is not None, "store is not open"
            self._wconn.execute("BEGIN IMMEDIATE")
            try:
                for sql in statements:
                    self._wconn.execute(sql)
                self._wconn.execute("COMMIT")
            except BaseException:
                self._wconn.execute("ROLLBACK")
                raise

        await self._on(self._writer, apply)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read on the read connection (sees committed data only)."""
        return await self._on(self._reader, self._query, sql, tuple(params))

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self._rconn is not None, "store is not open"
        return self._rconn.execute(sql, params).fetchall()

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # ---- writes
    async def commit(self, commands: Sequence[Command], now_ns: int) -> list[BatchResult]:
        return await self.run_procedure(group_commit(commands, now_ns))

    async def run_procedure(self, procedure: Procedure) -> list[BatchResult]:
        return await self._on(self._writer, self._run_in_transaction, procedure)

    def _run_in_transaction(self, procedure: Procedure) -> list[BatchResult]:
        conn = self._wconn
        assert conn is not None, "store is not open"
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = run_sync(procedure, lambda op: self._execute(conn, op))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def _execute(self, conn: sqlite3.Connection, op: Operation) -> Any:
        if isinstance(op, ReserveTimestamps):
            return conn.execute(RESERVE, (op.count, op.now_ns)).fetchone()[0]
        if isinstance(op, LoadTransfers):
            return {t.id: t for t in map(transfer_from_row, _select_in(
                conn, f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id IN", [to_db(i) for i in op.ids]))}
        if isinstance(op, LoadAccounts):
            return {a.id: a for a in map(account_from_row, _select_in(
                conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN", list(op.ids)))}
        if isinstance(op, LoadExpired):
            rows = conn.execute(
                f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE pending_status = 1 AND expires_at > 0 "
                "AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (op.now_ns, op.limit),
            ).fetchall()
            return [transfer_from_row(r) for r in rows]
        if isinstance(op, Query):
            return conn.execute(op.sql, op.params).fetchall()
        if isinstance(op, Execute):
            conn.execute(op.sql, op.params)
            return None
        if isinstance(op, QueryMany):
            return [conn.execute(sql, params).fetchall() for sql, params in op.queries]
        if isinstance(op, WriteChanges):
            rows = write_rows(op.snapshot)
            for sql, key in (
                (INSERT_ACCOUNT, "insert_accounts"),
                (INSERT_TRANSFER, "insert_transfers"),
                (UPDATE_ACCOUNT, "update_accounts"),
                (UPDATE_PENDING, "update_pending"),
                (INSERT_BALANCE, "insert_balances"),
            ):
                if rows[key]:
                    conn.executemany(sql, rows[key])
            return None
        raise AssertionError(f"unknown operation {op!r}")

    # ---- reads
    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._on(self._reader, self._lookup_accounts, list(ids))

    def _lookup_accounts(self, ids: list[int]) -> list[Account]:
        assert self._rconn is not None
        found = {a.id: a for a in map(account_from_row, _select_in(
            self._rconn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN", [i for i in ids if i < 2**63]))}
        return [found[i] for i in ids if i in found]

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._on(self._reader, self._lookup_transfers, list(ids))

    def _lookup_transfers(self, ids: list[int]) -> list[Transfer]:
        assert self._rconn is not None
        found = {t.id: t for t in map(transfer_from_row, _select_in(
            self._rconn, f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id IN",
            [to_db(i) for i in ids if 0 <= i < 2**64]))}
        return [found[i] for i in ids if i in found]

    async def account_transfers(self, flt: AccountFilter, after_timestamp: int) -> list[Transfer]:
        return await self._on(self._reader, self._account_transfers, flt, after_timestamp)

    def _account_transfers(self, flt: AccountFilter, after_timestamp: int) -> list[Transfer]:
        assert self._rconn is not None
        low, high = bounds(flt, after_timestamp)
        order = "DESC" if flt.newest_first else "ASC"
        parts, params = [], []
        for enabled, column in ((flt.debits, "debit_account_id"), (flt.credits, "credit_account_id")):
            if enabled:
                parts.append(
                    f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {column} = ? AND timestamp BETWEEN ? AND ?"
                )
                params += [flt.account_id, low, high]
        if not parts or low > high:
            return []
        sql = " UNION ALL ".join(parts) + f" ORDER BY timestamp {order} LIMIT ?"
        return [transfer_from_row(r) for r in self._rconn.execute(sql, (*params, flt.limit))]

    async def account_balances(self, flt: AccountFilter, after_timestamp: int) -> list[BalanceSnapshot]:
        return await self._on(self._reader, self._account_balances, flt, after_timestamp)

    def _account_balances(self, flt: AccountFilter, after_timestamp: int) -> list[BalanceSnapshot]:
        assert self._rconn is not None
        low, high = bounds(flt, after_timestamp)
        if low > high:  # e.g. timestamp_min >= 2^63, which no stored timestamp reaches
            return []
        order = "DESC" if flt.newest_first else "ASC"
        rows = self._rconn.execute(
            "SELECT account_id, timestamp, transfer_id, debits_pending, debits_posted, credits_pending, "
            "credits_posted FROM account_balances WHERE account_id = ? AND timestamp BETWEEN ? AND ? "
            f"ORDER BY timestamp {order} LIMIT ?",
            (flt.account_id, low, high, flt.limit),
        ).fetchall()
        return [BalanceSnapshot(r[0], r[1], from_db(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    async def currency_totals(self) -> list[CurrencyTotals]:
        return await self._on(self._reader, self._currency_totals)

    def _currency_totals(self) -> list[CurrencyTotals]:
        assert self._rconn is not None
        try:
            rows = self._rconn.execute(
                "SELECT currency, SUM(debits_pending), SUM(debits_posted), SUM(credits_pending), "
                "SUM(credits_posted) FROM accounts GROUP BY currency ORDER BY currency"
            ).fetchall()
            return [CurrencyTotals(*r) for r in rows]
        except sqlite3.OperationalError:
            # SQLite's SUM raises on int64 overflow; Python's ints do not overflow.
            sums: dict[str, list[int]] = {}
            for currency, *balances in self._rconn.execute(
                "SELECT currency, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts"
            ):
                row = sums.setdefault(currency, [0, 0, 0, 0])
                for k, v in enumerate(balances):
                    row[k] += v
            return [CurrencyTotals(c, *v) for c, v in sorted(sums.items())]

    async def next_expiry(self) -> int | None:
        return await self._on(self._reader, self._next_expiry)

    def _next_expiry(self) -> int | None:
        assert self._rconn is not None
        row = self._rconn.execute(
            "SELECT MIN(expires_at) FROM transfers WHERE pending_status = ? AND expires_at > 0",
            (int(PendingStatus.PENDING),),
        ).fetchone()
        return row[0] if row and row[0] is not None else None


def _select_in(conn: sqlite3.Connection, prefix: str, values: list[int]) -> list[Any]:
    rows: list[Any] = []
    for start in range(0, len(values), _CHUNK):
        chunk = values[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"{prefix} ({marks})", chunk).fetchall()
    return rows
