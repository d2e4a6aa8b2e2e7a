"""What only the PostgreSQL backend has to get right: writers in several processes, lost
connections, rollback, concurrent schema creation, and the COPY / array paths on both
sides of their size threshold. Semantics shared with SQLite are the backend suite's."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from dualflow.core.ledger.batch import CreateAccounts, CreateTransfers, ExpirePending
from dualflow.core.ledger.model import (
    EXPIRY_ID_BASE,
    NS_PER_S,
    Account,
    AccountFilter,
    AccountFlags,
    CreateTransferResult,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.postgres_store import COPY_ROWS_MIN, PostgresLedgerStore
from dualflow.core.ledger.sqlite_store import SqliteLedgerStore

pytestmark = pytest.mark.postgres

OK = int(CreateTransferResult.OK)
EXISTS = int(CreateTransferResult.EXISTS)
T0 = 1_700_000_000 * NS_PER_S


def _accounts(n: int, first: int = 1, flags: int = 0) -> list[Account]:
    return [Account(first + i, "USD", 1, flags) for i in range(n)]


def _transfer(i: int, dr: int, cr: int, amount: int = 1, flags: int = 0, timeout_s: int = 0) -> Transfer:
    return Transfer(i, dr, cr, amount, 0, "USD", 1, flags, 0, timeout_s)


async def _open(dsn: str) -> PostgresLedgerStore:
    store = PostgresLedgerStore(dsn)
    await store.open()
    return store


def test_store_from_url(tmp_path: object) -> None:
    assert isinstance(store_from_url("postgresql://u@h/db"), PostgresLedgerStore)
    assert isinstance(store_from_url("postgres://u@h/db"), PostgresLedgerStore)
    assert isinstance(store_from_url("/tmp/ledger.db"), SqliteLedgerStore)


async def test_concurrent_open_creates_schema_once(pg_dsn: str) -> None:
    stores = [PostgresLedgerStore(pg_dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        result = await stores[0].commit([CreateAccounts(_accounts(2))], T0)
        assert result[0].results == [1, 1]
        assert [a.id for a in await stores[3].lookup_accounts([1, 2])] == [1, 2]
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("n", [COPY_ROWS_MIN - 1, COPY_ROWS_MIN, 3000])
async def test_small_and_bulk_writes_store_the_same_rows(pg_dsn: str, n: int) -> None:
    """Below COPY_ROWS_MIN rows inserts go by unnest arrays, from it by COPY: same rows."""
    store = await _open(pg_dsn)
    try:
        history = int(AccountFlags.HISTORY)
        accounts = [Account(i, "USD", 1, history, user_data=2**64 - i) for i in range(1, n + 2)]
        assert (await store.commit([CreateAccounts(accounts)], T0))[0].results == [1] * (n + 1)
        transfers = [
            Transfer(2**62 + i, 1 + i % n, 2 + i % n, 1 + i, 0, "USD", 7, int(TransferFlags.PENDING),
                     2**63 + i, 60)
            for i in range(n)
        ]
        out = (await store.commit([CreateTransfers(transfers)], T0))[0]
        assert out.results == [OK] * n
        got = await store.lookup_transfers([t.id for t in transfers])
        assert [(t.id, t.user_data, t.amount, t.code, t.pending_status, t.timestamp) for t in got] == [
            (t.id, t.user_data, t.amount, 7, int(PendingStatus.PENDING), out.timestamps[k])
            for k, t in enumerate(transfers)
        ]
        assert [a.user_data for a in await store.lookup_accounts([1, n + 1])] == [2**64 - 1, 2**64 - n - 1]
        balances = await store.account_balances(AccountFilter(1, limit=8190), 0)
        assert balances and balances[0].transfer_id == transfers[0].id
        totals = await store.currency_totals()
        assert totals[0].balanced and totals[0].debits_pending == sum(t.amount for t in transfers)
        # Replays find every row again (the bigint[] lookup with ids >= 2^62).
        again = (await store.commit([CreateTransfers(transfers)], T0))[0]
        assert again.results == [EXISTS] * n and again.timestamps == out.timestamps
    finally:
        await store.close()


async def test_two_processes_serialise_on_the_meta_row(pg_dsn: str) -> None:
    """Two stores (as two processes would) racing on the same ids: one OK, one EXISTS, never two postings."""
    a, b = await _open(pg_dsn), await _open(pg_dsn)
    try:
        await a.commit([CreateAccounts(_accounts(10))], T0)
        for round_ in range(20):
            batch = [_transfer(1000 * round_ + k + 1, 1 + k % 9, 2 + k % 9, 5) for k in range(50)]
            ra, rb = await asyncio.gather(
                a.commit([CreateTransfers(batch)], T0), b.commit([CreateTransfers(batch)], T0)
            )
            assert sorted([ra[0].results[0], rb[0].results[0]]) == [OK, EXISTS]
            assert ra[0].timestamps == rb[0].timestamps
        totals = await a.currency_totals()
        assert totals[0].debits_posted == totals[0].credits_posted == 20 * 50 * 5
    finally:
        await a.close()
        await b.close()


async def test_error_rolls_back_and_the_next_commit_works(pg_dsn: str) -> None:
    store = await _open(pg_dsn)
    try:
        await store.commit([CreateAccounts(_accounts(3))], T0)
        # A constraint added behind the store's back makes the insert of transfer 9 fail
        # after everything else in the transaction was written: all of it must roll back.
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as other:
            await other.execute("ALTER TABLE transfers ADD CONSTRAINT not_nine CHECK (id <> 9)")
        for n in (1, 100):  # the pipelined INSERT and the COPY
            batch = [_transfer(1000 + k, 1, 2) for k in range(n - 1)] + [_transfer(9, 1, 2)]
            with pytest.raises(psycopg.errors.CheckViolation):
                await store.commit([CreateTransfers([_transfer(8, 2, 3)]), CreateTransfers(batch)], T0)
            assert await store.lookup_transfers([8, 1000]) == []
            assert (await store.lookup_accounts([2]))[0].credits_posted == 0
        out = await store.commit([CreateTransfers([_transfer(8, 2, 3), _transfer(10, 1, 2)])], T0)
        assert out[0].results == [OK, OK]
    finally:
        await store.close()


async def test_lost_writer_connection_fails_one_commit_then_reconnects(pg_dsn: str) -> None:
    store = await _open(pg_dsn)
    try:
        await store.commit([CreateAccounts(_accounts(3))], T0)
        # Reads in parallel so that the pool holds several connections, all about to die.
        await asyncio.gather(*(store.currency_totals() for _ in range(16)))
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(psycopg.OperationalError):
            await store.commit([CreateTransfers([_transfer(1, 1, 2)])], T0)
        assert (await store.commit([CreateTransfers([_transfer(1, 1, 2)])], T0))[0].results == [OK]
        # The readers' pooled connections were dropped too: a read retries on a fresh one.
        assert [t.id for t in await store.lookup_transfers([1])] == [1]
        assert len(await asyncio.gather(*(store.lookup_accounts([1]) for _ in range(16)))) == 16
    finally:
        await store.close()


async def test_expiry_and_reads_in_parallel_with_commits(pg_dsn: str) -> None:
    store = await _open(pg_dsn)
    try:
        await store.commit([CreateAccounts(_accounts(4))], T0)
        pending = [_transfer(100 + k, 1, 2, 3, int(TransferFlags.PENDING), timeout_s=1) for k in range(200)]
        assert (await store.commit([CreateTransfers(pending)], T0))[0].results == [OK] * 200
        due = await store.next_expiry()
        assert due is not None and due > T0

        async def read_while_writing() -> None:
            for _ in range(20):
                totals = await store.currency_totals()
                assert all(t.balanced for t in totals)
                await store.lookup_accounts([1, 2, 3, 4])

        later = T0 + 10 * NS_PER_S
        results, _ = await asyncio.gather(
            store.commit([ExpirePending(150), ExpirePending(100)], later), read_while_writing()
        )
        assert [r.expired for r in results] == [150, 50]
        assert await store.next_expiry() is None
        voids = await store.lookup_transfers([EXPIRY_ID_BASE + 100, EXPIRY_ID_BASE + 299])
        assert [v.pending_id for v in voids] == [100, 299]
        a1 = (await store.lookup_accounts([1]))[0]
        assert a1.debits_pending == 0 and a1.debits_posted == 0
    finally:
        await store.close()


async def test_commit_is_durable_for_a_fresh_reader(pg_dsn: str) -> None:
    store = await _open(pg_dsn)
    try:
        await store.commit([CreateAccounts(_accounts(2))], time.time_ns())
        await store.commit([CreateTransfers([_transfer(1, 1, 2, 42)])], time.time_ns())
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT debits_posted FROM accounts WHERE id = 1")
        assert await cur.fetchone() == (42,)
