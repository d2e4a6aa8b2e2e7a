"""The clearing center's settlement transfers in the rail channel's reconciliation: a window settles
over the real mock rail (its own process, real sockets; the platform as `dualflow serve` wires it),
then the rail's statement of the day is reconciled against our side, which now includes the
settlement instructions sent over that channel (adapters/transfer/settlement.py
SettlementInstructions, wired by gateway/server.py).

- Every `stl.` line is MATCHED (none MISSING_INTERNALLY), and the rail's fee on each is posted once
  from the channel's receivable to its fee expense: a forced re-run posts nothing.
- A settlement whose every reply was lost, left UNKNOWN by a driver that stopped before learning the
  answer, is resolved by the statement through the clearing service's answer path: SUCCEEDED, its
  pool-to-pool transfer posted exactly once, the window then finishes; a re-run changes nothing.
- A settlement the rail rejected, left UNKNOWN the same way, is failed by the statement and the
  driver then retries it under a new id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_clearing_settlement_e2e import FLOAT, POOLS, RAIL, configure, eventually

from dualflow.adapters.transfer.settlement import SettlementInstructions, rail_id
from dualflow.clearing.pools import CODE_SETTLEMENT, deposit_own_funds, pool_balances
from dualflow.clearing.window import InstructionState, WindowState
from dualflow.core.payments.accounts import channel_fee_account, receivable_account
from dualflow.gateway.sandbox import Sandbox
from dualflow.gateway.server import Platform
from dualflow.reconciliation.service import ReconciliationService

FEE_FIXED, FEE_BPS = 150, 10
# debtor, creditor, amount: nets to bank-a pays 500 to bank-b and 300 to bank-c (two transfers)
OBLIGATIONS = [("bank-a", "bank-b", 900), ("bank-b", "bank-c", 400), ("bank-c", "bank-a", 100)]
NET = {"bank-a": -800, "bank-b": 500, "bank-c": 300}


@pytest.fixture
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("clearing-reconcile"), seed=11).start(kinds=("transfer",))
    yield box
    box.stop()


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    config = configure(tmp_path, sandbox)
    # The rail charges for settlement transfers (its fee on each line of the statement).
    sandbox.banks[RAIL].set_profile(fee_fixed=FEE_FIXED, fee_bps=FEE_BPS, pending_rate=0.5, settle_after_ms=100)
    p = Platform(config)
    await p.start()
    try:
        for pool in POOLS:
            await deposit_own_funds(p.ledger, pool, "CNY", FLOAT, key=f"float-{pool}")
        yield p
    finally:
        await p.stop()


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def fee_of(amount: int) -> int:
    return FEE_FIXED + (amount * FEE_BPS + 5_000) // 10_000


async def balance(platform: Platform, account_id: int) -> int:
    rows = await platform.ledger.query("SELECT debits_posted - credits_posted FROM accounts WHERE id = ?",
                                       (account_id,))
    return int(rows[0][0]) if rows else 0


async def settlement_postings(platform: Platform) -> int:
    rows = await platform.ledger.query("SELECT COUNT(*) FROM transfers WHERE code = ?", (CODE_SETTLEMENT,))
    return int(rows[0][0])


async def close_a_window(platform: Platform) -> list[tuple[str, int]]:
    for i, (debtor, creditor, amount) in enumerate(OBLIGATIONS):
        await platform.clearing.record(f"o{i}", debtor, creditor, amount, "CNY")
    closed = await platform.clearing.close_window()
    return [(i.instruction_id, i.amount_minor) for i in closed.instructions]


async def rail_final(sandbox: Sandbox, instructions: list[tuple[str, int]], status: str) -> None:
    async def booked() -> bool:
        book = {x["instruction_id"]: x for x in await asyncio.to_thread(sandbox.banks[RAIL].book)}
        return all(book.get(rail_id(iid), {}).get("status") == status for iid, _ in instructions)
    await eventually(booked)


def classes(report: object) -> dict[str, tuple[int, int]]:
    """A run's (lines, instructions) by class."""
    return {cls: (n["lines"], n["instructions"]) for cls, n in report.counts.items()}  # type: ignore[attr-defined]


async def results(service: ReconciliationService, run_id: str) -> list[tuple[str, str, str, str]]:
    rows, _token, _total = await service.list_results(run_id, page_size=5000)
    return [(r.cls, r.action, r.instruction_id, r.object_id) for r in rows]


def test_the_server_reconciles_its_settlement_channel_with_the_clearing_instructions(platform: Platform) -> None:
    source = platform.reconciliation.reconciler.sources.get(RAIL)
    assert isinstance(source, SettlementInstructions) and source.clearing is platform.clearing


async def test_settlement_lines_are_matched_and_their_fees_posted_once(platform: Platform,
                                                                       sandbox: Sandbox) -> None:
    instructions = await close_a_window(platform)
    assert sorted(a for _, a in instructions) == [300, 500]

    async def settled() -> bool:
        await platform.clearing.drive()
        return (await platform.clearing.window("W000001")).state is WindowState.SETTLED
    await eventually(settled)
    await rail_final(sandbox, instructions, "SUCCEEDED")

    service = platform.reconciliation
    report = await service.run(RAIL, today())
    assert report.run.state == "completed", report.run
    kept = await results(service, report.run.run_id)
    assert sorted((iid, cls) for cls, _a, iid, _o in kept) == sorted(
        (rail_id(iid), "MATCHED") for iid, _ in instructions)
    assert classes(report) == {"MATCHED": (2, 2)}, classes(report)
    fees = sum(fee_of(a) for _, a in instructions)
    assert report.fees == {"CNY": (2, fees, 2)}
    fee_account, receivable = channel_fee_account(RAIL, "CNY"), receivable_account(RAIL, "CNY")
    assert await balance(platform, fee_account.id) == fees
    assert await balance(platform, receivable.id) == -fees

    again = await service.run(RAIL, today(), force=True)  # a re-run posts no fee twice
    assert again.run.run_id != report.run.run_id and again.fees == {"CNY": (2, fees, 0)}
    assert classes(again) == classes(report) and (again.applied, again.refused) == (0, 0)
    assert await balance(platform, fee_account.id) == fees
    # Pools moved once, by the net; the books balance and the pool invariant holds (fees are ours).
    assert {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])} == \
        {p: FLOAT + NET[p] for p in POOLS}
    assert await settlement_postings(platform) == 2
    assert [i.difference_minor for i in (await platform.clearing.pool_report("CNY")).invariant] == [0]
    # The settlement channel is left out of the receivable drift check (its account carries the
    # pools' transfers and their fees, which no receivable mirrors): the internal check is clean.
    check = await service.internal_check()
    assert check.findings == [] and [d for d in check.balances if d.channel == RAIL] == [], check


async def test_an_unknown_settlement_is_resolved_by_the_statement_and_posted_once(platform: Platform,
                                                                                  sandbox: Sandbox) -> None:
    rail = sandbox.banks[RAIL]
    rail.set_profile(lost_reply_rate=1.0)  # every reply lost: the rail books the transfer, we learn nothing
    instructions = await close_a_window(platform)

    async def all_unknown() -> bool:  # the one pass at cut-off sent each once
        window = await platform.clearing.window("W000001")
        return all(i.state is InstructionState.UNKNOWN for i in window.instructions)
    await eventually(all_unknown)
    await rail_final(sandbox, instructions, "SUCCEEDED")  # ... and the bank settled them
    # The driver stops here (no pass before the answer): nothing posted between the pools yet.
    assert await settlement_postings(platform) == 0

    service = platform.reconciliation
    report = await service.run(RAIL, today())
    assert classes(report) == {"STATUS_MISMATCH": (2, 2)}, classes(report)
    assert (report.applied, report.refused) == (2, 0)
    kept = await results(service, report.run.run_id)
    assert sorted((cls, action, iid, oid) for cls, action, iid, oid in kept) == sorted(
        ("STATUS_MISMATCH", "MARK_SUCCEEDED", rail_id(iid), iid) for iid, _ in instructions)
    window = await platform.clearing.window("W000001")
    assert [(i.state, i.reason) for i in window.instructions] == \
        [(InstructionState.SUCCEEDED, "SETTLED_ON_STATEMENT")] * 2
    assert all(i.reference.startswith("TR") for i in window.instructions)
    assert await settlement_postings(platform) == 2
    balances = {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])}
    assert balances == {p: FLOAT + NET[p] for p in POOLS}

    # A re-run finds them settled on both sides; nothing moves or posts again.
    again = await service.run(RAIL, today(), force=True)
    assert classes(again) == {"MATCHED": (2, 2)} and again.applied == 0
    assert again.fees == {"CNY": (2, sum(fee_of(a) for _, a in instructions), 0)}
    assert await settlement_postings(platform) == 2
    # The driver finishes the window without sending anything again (the rail still loses replies).
    await platform.clearing.drive()
    assert (await platform.clearing.window("W000001")).state is WindowState.SETTLED
    assert {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])} == balances
    book = [x for x in await asyncio.to_thread(rail.book) if x["instruction_id"].startswith("stl.")]
    assert len(book) == 2  # each paid once


async def test_a_settlement_the_rail_rejected_is_failed_by_the_statement_and_retried(platform: Platform,
                                                                                     sandbox: Sandbox) -> None:
    rail = sandbox.banks[RAIL]
    rail.set_profile(lost_reply_rate=1.0, decline_rate=1.0)
    instructions = await close_a_window(platform)

    async def all_unknown() -> bool:
        window = await platform.clearing.window("W000001")
        return all(i.state is InstructionState.UNKNOWN for i in window.instructions)
    await eventually(all_unknown)
    await rail_final(sandbox, instructions, "FAILED")
    rail.set_profile(lost_reply_rate=0.0, decline_rate=0.0)  # the rail works again (for the retries)

    report = await platform.reconciliation.run(RAIL, today())
    assert classes(report) == {"STATUS_MISMATCH": (2, 2)}, classes(report)
    assert (report.applied, report.refused) == (2, 0) and report.fees == {}
    window = await platform.clearing.window("W000001")
    assert [(i.state, i.reason) for i in window.instructions[:2]] == \
        [(InstructionState.FAILED, "FAILED_ON_STATEMENT")] * 2
    assert all(i.retry_of for i in window.instructions[2:])  # the driver was woken: it retries them

    # ... each under a new id, which settles.

    async def settled() -> bool:
        await platform.clearing.drive()
        return (await platform.clearing.window("W000001")).state is WindowState.SETTLED
    await eventually(settled)
    assert await settlement_postings(platform) == 2
    assert {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])} == \
        {p: FLOAT + NET[p] for p in POOLS}
    retried = [i for i in (await platform.clearing.window("W000001")).instructions if i.retry_of]
    await rail_final(sandbox, [(i.instruction_id, i.amount_minor) for i in retried], "SUCCEEDED")
    # The day's statement: the rejected lines match our FAILED ones, the retries our SUCCEEDED ones.
    again = await platform.reconciliation.run(RAIL, today(), force=True)
    assert classes(again) == {"MATCHED": (4, 4)}, classes(again)
    assert again.applied == 0
