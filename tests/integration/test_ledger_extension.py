"""Extensions: side tables, ledger postings and reads in one group commit, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import pytest

from dualflow.core.ledger.batch import Context, Operation
from dualflow.core.ledger.model import Account, AccountCode, AccountFlags, Transfer, TransferFlags
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.ledger.state_machine import T_OK

SIDE = ["CREATE TABLE IF NOT EXISTS side_orders (id TEXT PRIMARY KEY, status TEXT NOT NULL, seq BIGINT NOT NULL)"]


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await service.start()
    await service.ensure_schema(SIDE)
    await service.ensure_schema(SIDE)  # idempotent
    try:
        yield service
    finally:
        await service.stop()


@dataclass
class PayOnce:
    """Move `amount` from wallet 1 to 2 and record the order, unless the order exists."""

    order: str
    transfer_id: int
    amount: int
    max_items: int = 2

    def run(self, ctx: Context) -> Generator[Operation, Any, str]:
        rows = yield from ctx.query("SELECT status FROM side_orders WHERE id = ?", (self.order,))
        if rows:
            return f"replayed:{rows[0][0]}"
        results = yield from ctx.create_transfers([Transfer(
            id=self.transfer_id, debit_account_id=1, credit_account_id=2, amount=self.amount,
            currency="CNY", code=1, flags=TransferFlags.NONE)])
        status = "PAID" if results[0] == T_OK else "DECLINED"
        yield from ctx.execute("INSERT INTO side_orders (id, status, seq) VALUES (?, ?, ?)",
                               (self.order, status, ctx.timestamp()))
        return status


async def open_wallets(ledger: LedgerService) -> None:
    funding = Account(id=3, currency="CNY", code=AccountCode.EQUITY)
    wallet = Account(id=1, currency="CNY", code=AccountCode.WALLET, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    shop = Account(id=2, currency="CNY", code=AccountCode.MERCHANT)
    await ledger.create_accounts([funding, wallet, shop])
    await ledger.create_transfers([Transfer(id=100, debit_account_id=3, credit_account_id=1, amount=500,
                                            currency="CNY", code=1)])


async def test_extension_commits_side_rows_with_postings(ledger: LedgerService) -> None:
    await open_wallets(ledger)
    # Same batch: the second command sees the first one's side row and its balance change.
    outcomes = await asyncio.gather(
        ledger.run(PayOnce("o1", 201, 300)),
        ledger.run(PayOnce("o1", 202, 300)),
        ledger.run(PayOnce("o2", 203, 300)),
    )
    assert outcomes == ["PAID", "replayed:PAID", "DECLINED"]
    [wallet] = await ledger.lookup_accounts([1])
    assert wallet.credits_posted - wallet.debits_posted == 200
    rows = await ledger.query("SELECT id, status, seq FROM side_orders ORDER BY seq")
    assert [(r[0], r[1]) for r in rows] == [("o1", "PAID"), ("o2", "DECLINED")]
    assert rows[0][2] < rows[1][2]
    assert [t.id for t in await ledger.lookup_transfers([201, 202, 203])] == [201]


@dataclass
class Broken:
    max_items: int = 1

    def run(self, ctx: Context) -> Generator[Operation, Any, None]:
        yield from ctx.execute("INSERT INTO side_orders (id, status, seq) VALUES (?, ?, ?)", ("b", "X", 1))
        yield from ctx.create_transfers([Transfer(id=300, debit_account_id=3, credit_account_id=2, amount=1,
                                                  currency="CNY", code=1)])
        raise RuntimeError("bug after writing")


async def test_failing_extension_leaves_nothing_and_spares_its_batch(ledger: LedgerService) -> None:
    await open_wallets(ledger)
    good, bad = await asyncio.gather(ledger.run(PayOnce("g", 401, 100)), ledger.run(Broken()),
                                     return_exceptions=True)
    assert good == "PAID"
    assert isinstance(bad, Exception)
    assert await ledger.query("SELECT id FROM side_orders WHERE id = ?", ("b",)) == []
    assert await ledger.lookup_transfers([300]) == []
    await ledger.write([("INSERT INTO side_orders (id, status, seq) VALUES (?, ?, ?)", ("w", "100%", 7))])
    assert await ledger.query("SELECT status FROM side_orders WHERE id = ?", ("w",)) == [("100%",)]
