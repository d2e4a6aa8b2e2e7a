"""BalanceCheck on real storage (SQLite, and PostgreSQL when reachable): the trial-balance gauge is 0
for balanced books and shows the difference when the stored books were changed around the writer;
open payments are counted by state and age, and those past their polling window apart; a failing
read counts a failure and leaves the last success alone; the task checks at once and every interval
and stops cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prometheus_client import REGISTRY

from dualflow.core.balance_check import AGE_BUCKETS, BalanceCheck, interval_from_env
from dualflow.core.ledger.model import (
    NS_PER_S,
    Account,
    AccountCode,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferFlags,
)
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.ledger.store import CurrencyTotals
from dualflow.core.payments.records import PAYMENT_SCHEMA

T0 = 1_700_000_000 * NS_PER_S


class Clock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        return self.now_ns


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def difference(currency: str, balance: str) -> float | None:
    return REGISTRY.get_sample_value("dualflow_ledger_trial_balance_difference",
                                     {"currency": currency, "balance": balance})


async def open_books(ledger: LedgerService) -> None:
    accounts = [Account(i, c, int(AccountCode.OPERATING), 0, 0) for i, c in ((1, "CNY"), (2, "CNY"), (3, "USD"),
                                                                               (4, "USD"))]
    assert (await ledger.create_accounts(accounts)).results == [CreateAccountResult.OK] * 4
    transfers = [Transfer(1, 1, 2, 1_000, currency="CNY", code=1),
                 Transfer(2, 3, 4, 70, currency="USD", code=1, flags=int(TransferFlags.PENDING))]
    assert (await ledger.create_transfers(transfers)).results == [CreateTransferResult.OK] * 2


async def test_balanced_books_read_zero_and_a_tampered_row_shows_its_difference(ledger: LedgerService) -> None:
    await open_books(ledger)
    clock = Clock()
    check = BalanceCheck(ledger, interval_s=60, clock_ns=clock)
    result = await check.check_once()
    assert result.balanced
    # currency, balance, debits - credits
    for currency, balance, expected in (
        ("CNY", "posted", 0),
        ("CNY", "pending", 0),
        ("USD", "posted", 0),
        ("USD", "pending", 0),
    ):
        assert difference(currency, balance) == expected, (currency, balance)
    assert REGISTRY.get_sample_value("dualflow_ledger_balance_check_last_success_timestamp_seconds") == T0 / NS_PER_S

    # Around the writer (its own assertion never sees this): a debit of 5 with no credit, a
    # pending credit of 3 with no debit.
    await ledger.write([("UPDATE accounts SET debits_posted = debits_posted + 5 WHERE id = ?", (1,)),
                        ("UPDATE accounts SET credits_pending = credits_pending + 3 WHERE id = ?", (4,))])
    clock.now_ns += 15 * NS_PER_S
    result = await check.check_once()
    assert not result.balanced
    for currency, balance, expected in (
        ("CNY", "posted", 5),
        ("CNY", "pending", 0),
        ("USD", "posted", 0),
        ("USD", "pending", -3),
    ):
        assert difference(currency, balance) == expected, (currency, balance)
    assert REGISTRY.get_sample_value("dualflow_ledger_balance_check_last_success_timestamp_seconds") == T0 / NS_PER_S + 15


# status (1 CREATED, 2 PROCESSING, 3 SUCCEEDED, 5 UNKNOWN), seconds since its last change,
# its poll row (kind, seconds until the window ends) or None
PAYMENTS: tuple[tuple[int, int, tuple[str, int] | None], ...] = (
    (1, 10, None),              # CREATED, 0-1m: not polled yet, not counted as past a window
    (2, 30, ("pay", 3570)),     # PROCESSING, 0-1m, polled
    (2, 400, ("pay", 3200)),    # PROCESSING, 5m-1h, polled
    (5, 120, ("pay", 3480)),    # UNKNOWN, 1m-5m, polled
    (5, 4000, ("reverse", 30)),  # UNKNOWN, 1h-1d, past its window: being reversed
    (5, 5000, None),            # UNKNOWN, 1h-1d, past its window: left to reconciliation
    (5, 90000, ("pay", -10)),   # UNKNOWN, 1d+, window ended, the poller has not closed it yet
    (3, 99999, None),           # SUCCEEDED: final, never counted
)
# (status, age bucket) -> count; every other pair is 0
OPEN = {("CREATED", "0-1m"): 1, ("PROCESSING", "0-1m"): 1, ("PROCESSING", "5m-1h"): 1,
        ("UNKNOWN", "1m-5m"): 1, ("UNKNOWN", "1h-1d"): 2, ("UNKNOWN", "1d+"): 1}
PAST_WINDOW = {"PROCESSING": 0, "UNKNOWN": 3}


async def test_open_payments_by_state_and_age_and_past_their_window(ledger: LedgerService) -> None:
    await ledger.ensure_schema(PAYMENT_SCHEMA)
    statements: list[tuple[str, Sequence[Any]]] = []
    for i, (status, age_s, poll) in enumerate(PAYMENTS):
        at = T0 - age_s * NS_PER_S
        statements.append(("INSERT INTO payments (payment_id, request_id, merchant_id, asset, status, created_at_ns, "
                           "updated_at_ns, body) VALUES (?, ?, 'shop', 3, ?, ?, ?, '{}')",
                           (f"pay_{i}", f"r{i}", status, at, at)))
        if poll is not None:
            kind, window_left_s = poll
            statements.append(("INSERT INTO channel_polls (object_id, kind, next_at_ns, attempts, window_ends_ns) "
                               "VALUES (?, ?, ?, 0, ?)", (f"pay_{i}", kind, T0, T0 + window_left_s * NS_PER_S)))
    await ledger.write(statements)
    result = await BalanceCheck(ledger, interval_s=60, clock_ns=Clock()).check_once()
    expected = {(s, label): OPEN.get((s, label), 0) for s in ("CREATED", "PROCESSING", "UNKNOWN")
                for label, _ in AGE_BUCKETS}
    assert result.open_payments == expected
    assert result.past_poll_window == PAST_WINDOW
    for (status, label), n in expected.items():
        assert REGISTRY.get_sample_value("dualflow_payments_open", {"status": status, "age_bucket": label}) == n
    for status, n in PAST_WINDOW.items():
        assert REGISTRY.get_sample_value("dualflow_payments_past_poll_window", {"status": status}) == n


async def test_a_ledger_without_payment_tables_still_gets_its_trial_balance(ledger: LedgerService) -> None:
    await open_books(ledger)
    result = await BalanceCheck(ledger, interval_s=60).check_once()
    assert result.balanced and result.open_payments is None and result.past_poll_window is None


class Broken:
    async def currency_totals(self) -> list[CurrencyTotals]:
        raise OSError("database gone")

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise AssertionError("not reached")


async def test_a_failed_read_counts_a_failure_and_keeps_the_last_success() -> None:
    before = REGISTRY.get_sample_value("dualflow_ledger_balance_check_failures_total") or 0
    last = REGISTRY.get_sample_value("dualflow_ledger_balance_check_last_success_timestamp_seconds")
    with pytest.raises(OSError):
        await BalanceCheck(Broken(), interval_s=60).check_once()
    assert REGISTRY.get_sample_value("dualflow_ledger_balance_check_failures_total") == before + 1
    assert REGISTRY.get_sample_value("dualflow_ledger_balance_check_last_success_timestamp_seconds") == last


class Counting:
    def __init__(self) -> None:
        self.reads = 0

    async def currency_totals(self) -> list[CurrencyTotals]:
        self.reads += 1
        return [CurrencyTotals("EUR", 0, 10, 0, 10)]

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return []


async def test_the_task_checks_at_once_then_every_interval_and_stops() -> None:
    books = Counting()
    check = BalanceCheck(books, interval_s=0.05)
    await check.start()
    await asyncio.sleep(0.01)
    assert books.reads == 1, "the first check runs at start"
    await asyncio.sleep(0.2)
    await check.stop()
    reads = books.reads
    assert 3 <= reads <= 6
    await asyncio.sleep(0.1)
    assert books.reads == reads, "no check after stop()"
    assert difference("EUR", "posted") == 0


@pytest.mark.parametrize(("raw", "expected"), [("", 15.0), ("2.5", 2.5), ("0", 15.0), ("-1", 15.0), ("x", 15.0)])
def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, expected: float) -> None:
    monkeypatch.setenv("DUALFLOW_BALANCE_CHECK_INTERVAL_S", raw)
    assert interval_from_env() == expected
