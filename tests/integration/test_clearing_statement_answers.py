"""What reconciliation reads of the clearing center and how a statement's word reaches it, on SQLite
and PostgreSQL, with a scripted executor: the settlement instructions sent on a day (with their
creation time), by id, as reconciliation rows (adapters/transfer/settlement.py
SettlementInstructions), and `ClearingService.apply_statement_answer`: an open instruction moves
once, with its one pool-to-pool posting; a final one never changes; an absence is declined."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest

from dualflow.adapters.transfer.settlement import SettlementInstructions, rail_id
from dualflow.clearing.pools import CODE_SETTLEMENT
from dualflow.clearing.service import ClearingService
from dualflow.clearing.settings import ClearingSettings
from dualflow.clearing.settlement import ScriptedExecutor, SettlementOrder
from dualflow.clearing.window import InstructionState, WindowState
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome
from dualflow.reconciliation.model import Action, Class, Instruction, Line, Result
from dualflow.reconciliation.ours import day_bounds_ns

RAIL = "bank-rail"
SETTINGS = ClearingSettings(pools=("bank-a", "bank-b", "bank-c"), currencies=("CNY",), settle_interval_s=0,
                            invariant_interval_s=0, settlement_retries=1)
# Nets to W000001/0 bank-a pays bank-b 500 (its reply lost: UNKNOWN), W000001/1 bank-a pays bank-c 300 (SUCCEEDED).
OBLIGATIONS = [("bank-a", "bank-b", 900), ("bank-b", "bank-c", 400), ("bank-c", "bank-a", 100)]


def script(order: SettlementOrder) -> ChannelAnswer:
    if order.instruction_id.endswith("/0"):
        return ChannelAnswer(ChannelOutcome.UNKNOWN, "TIMEOUT")
    return ChannelAnswer(ChannelOutcome.SUCCEEDED, channel_reference="TR1")


@pytest.fixture
async def service(db_url: str) -> AsyncIterator[ClearingService]:
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    clearing = ClearingService(ledger, SETTINGS, executor=ScriptedExecutor(script))
    try:
        await clearing.start()
        yield clearing
    finally:
        await clearing.stop()
        await ledger.stop()


async def postings(service: ClearingService) -> int:
    rows = await service.ledger.query("SELECT COUNT(*) FROM transfers WHERE code = ?", (CODE_SETTLEMENT,))
    return int(rows[0][0])


def line(instruction_id: str, status: str, reference: str = "TR9") -> Line:
    return Line(rail_id(instruction_id), reference, "payout", 500, "CNY", status, 0, 1)


def proposal(row: tuple[Any, ...], action: Action, *lines: Line) -> Result:
    return Result(Class.STATUS_MISMATCH if lines else Class.MISSING_AT_CHANNEL, action, Instruction._make(row),
                  tuple(lines))


async def test_the_statement_moves_an_open_settlement_once_and_never_a_final_one(service: ClearingService) -> None:
    for i, (debtor, creditor, amount) in enumerate(OBLIGATIONS):
        await service.record(f"o{i}", debtor, creditor, amount, "CNY")
    closed = await service.close_window()
    await service.drive()
    for i, (debtor, creditor, amount) in enumerate(OBLIGATIONS):  # a second window, closed and never sent
        await service.record(f"p{i}", debtor, creditor, amount, "CNY")
    await service.close_window()
    today = datetime.now(timezone.utc).date().isoformat()

    source = SettlementInstructions(service, RAIL)
    rows = await source.day(*day_bounds_ns(today))
    assert [r[:8] for r in rows] == [
        ("stl.W000001.0", "payout", "W000001/0", RAIL, "", 500, "CNY", "UNKNOWN"),
        ("stl.W000001.1", "payout", "W000001/1", RAIL, "TR1", 300, "CNY", "SUCCEEDED")]
    assert all(r[8] == closed.closed_at_ns and r[9] == 0 for r in rows)
    assert await source.day(*day_bounds_ns("2020-01-01")) == []
    # By rail id whatever the day, sent or not (a statement line proves the send); others' ids ignored.
    found = await source.find(["stl.W000001.1", "stl.W000002.0", "pay_1-1", "stl.h.0123", "rfd_1-1", "stl.W9.0"])
    assert {k: v[7] for k, v in found.items()} == {"stl.W000001.1": "SUCCEEDED", "stl.W000002.0": "PROCESSING"}

    unknown, succeeded = rows
    # A final state never changes: the statement's contradiction is refused (a discrepancy for a person).
    assert not await source.resolve("rcn_1", "W000001/1", Action.MARK_FAILED,
                                    proposal(succeeded, Action.MARK_FAILED, line("W000001/1", "FAILED")))
    # An absence alone is declined: the driver asks the rail and sends the same id again.
    assert not await source.resolve("rcn_1", "W000001/0", Action.MARK_FAILED, proposal(unknown, Action.MARK_FAILED))
    assert await postings(service) == 1
    # The statement settled the open one: SUCCEEDED with its posting, once.
    assert await source.resolve("rcn_1", "W000001/0", Action.MARK_SUCCEEDED,
                                proposal(unknown, Action.MARK_SUCCEEDED, line("W000001/0", "SUCCEEDED")))
    assert not await source.resolve("rcn_2", "W000001/0", Action.MARK_SUCCEEDED,
                                    proposal(unknown, Action.MARK_SUCCEEDED, line("W000001/0", "SUCCEEDED")))
    assert await postings(service) == 2
    window = await service.window("W000001")
    assert [(i.state, i.reason, i.reference) for i in window.instructions] == [
        (InstructionState.SUCCEEDED, "SETTLED_ON_STATEMENT", "TR9"), (InstructionState.SUCCEEDED, "", "TR1")]
    await service.drive()  # the driver finishes the window; the executor is not asked again about /0
    assert (await service.window("W000001")).state is WindowState.SETTLED
    assert service.executor.sent("W000001/0") == 1  # type: ignore[union-attr]
    # A finished window's instructions: nothing to apply.
    assert not await service.apply_statement_answer("W000001/0", False)
