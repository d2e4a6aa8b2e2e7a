"""The clearing center's settlement transfers in reconciliation: a window settles over the real mock
rail (its own process, real sockets; the platform as `dualflow serve` wires it), then each channel's
statement of the day is reconciled against our side. A statement is one account's: a settlement
transfer is on the payer pool's account's and the payee pool's, so it is reconciled on the channels
of those pools (`[clearing] channel_pools`; here three transfer channels on the same rail, one per
pool, besides the sandbox's settlement channel `bank-rail`, whose own account DFPOOL no settlement
transfer touches), with the settlement instructions of that pool (adapters/transfer/settlement.py
SettlementInstructions, wired by gateway/server.py for every pooled transfer channel).

- Every `stl.` line is MATCHED on each pool's channel (none MISSING_INTERNALLY), the settlement
  channel's statement has none, and the rail's fee on each is posted once overall: on the payer
  pool's channel, from its receivable to its fee expense; a forced re-run posts nothing.
- A settlement whose every reply was lost, left UNKNOWN by a driver that stopped before learning the
  answer, is resolved by the first statement that shows it (the payee's here) through the clearing
  service's answer path: SUCCEEDED, its pool-to-pool transfer posted exactly once, the window then
  finishes; the other pool's statement, and re-runs, change nothing.
- A settlement the rail rejected, left UNKNOWN the same way, is failed by the statement and the
  driver then retries it under a new id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_clearing_settlement_e2e import FLOAT, POOLS, RAIL, _inline, configure, eventually

from dualflow.adapters.transfer.settlement import SettlementInstructions, rail_id
from dualflow.clearing.pools import CODE_SETTLEMENT, deposit_own_funds, pool_balances
from dualflow.clearing.window import InstructionState, WindowState
from dualflow.core.payments.accounts import channel_fee_account, receivable_account
from dualflow.gateway.sandbox import Sandbox
from dualflow.gateway.server import Platform, ServerConfig
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


# One transfer channel per pool, on the same rail as the settlement channel: its own account is the
# pool's account at its bank, so its statement is that account's.
CHANNEL_OF = {pool: f"chan-{pool[-1]}" for pool in POOLS}


def with_pooled_channels(config: ServerConfig, sandbox: Sandbox) -> ServerConfig:
    rail = sandbox.banks[RAIL]
    extra = "".join(f"""
[[channels]]
name = "{channel}"
kind = "transfer"
[channels.settings]
base_url = "http://127.0.0.1:{rail.port}"
pool_account = {_inline(POOLS[pool])}
currencies = ["CNY"]
fees = {{ CNY = {{ fixed = 0, bps = {FEE_BPS} }} }}
callback_url = "{sandbox.callback_base}/{channel}"
timeout_ms = 2000
[channels.keys]
hmac_key = "{sandbox.folder / 'rail-hmac.hex'}"
""" for pool, channel in CHANNEL_OF.items())
    path = Path(config.config_path)
    path.write_text(path.read_text() + extra)
    return config


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    config = with_pooled_channels(configure(tmp_path, sandbox), sandbox)
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


def test_each_pooled_channel_reconciles_its_pools_settlements(platform: Platform) -> None:
    sources = platform.reconciliation.reconciler.sources
    assert platform.settings.clearing.channel_pools == {c: p for p, c in CHANNEL_OF.items()}
    assert sorted(sources) == sorted(CHANNEL_OF.values()) and RAIL not in sources  # DFPOOL is no pool
    for pool, channel in CHANNEL_OF.items():
        source = sources[channel]
        assert isinstance(source, SettlementInstructions) and source.clearing is platform.clearing
        assert (source.channel, source.pool) == (channel, pool)


async def run_all(service: ReconciliationService, *, force: bool = False) -> dict[str, object]:
    return {channel: await service.run(channel, today(), force=force) for channel in (*CHANNEL_OF.values(), RAIL)}


async def test_settlement_lines_are_matched_on_both_pools_channels_and_their_fees_posted_once(
        platform: Platform, sandbox: Sandbox) -> None:
    instructions = await close_a_window(platform)
    assert sorted(a for _, a in instructions) == [300, 500]  # bank-a pays bank-b 500, bank-c 300

    async def settled() -> bool:
        await platform.clearing.drive()
        return (await platform.clearing.window("W000001")).state is WindowState.SETTLED
    await eventually(settled)
    await rail_final(sandbox, instructions, "SUCCEEDED")
    window = await platform.clearing.window("W000001")
    touching = {pool: sorted(rail_id(i.instruction_id) for i in window.instructions
                             if pool in (i.payer_pool, i.payee_pool)) for pool in POOLS}
    assert [len(touching[p]) for p in POOLS] == [2, 1, 1]

    service = platform.reconciliation
    reports = await run_all(service)
    for pool, channel in CHANNEL_OF.items():
        report = reports[channel]
        assert report.run.state == "completed", report.run  # type: ignore[attr-defined]
        kept = await results(service, report.run.run_id)  # type: ignore[attr-defined]
        assert sorted((iid, cls) for cls, _a, iid, _o in kept) == [(r, "MATCHED") for r in touching[pool]], kept
        n = len(touching[pool])
        assert classes(report) == {"MATCHED": (n, n)}, (channel, classes(report))
    # The settlement channel's own account is neither debtor nor creditor of any: not on its statement.
    assert classes(reports[RAIL]) == {} and reports[RAIL].fees == {}  # type: ignore[attr-defined]

    # Each fee posted once, by the payer pool's channel (bank-a's); the payees' see the line, post nothing.
    amount_of = {rail_id(iid): a for iid, a in instructions}
    fees = sum(fee_of(a) for _, a in instructions)
    assert reports["chan-a"].fees == {"CNY": (2, fees, 2)}  # type: ignore[attr-defined]
    for pool in ("bank-b", "bank-c"):
        (line,) = touching[pool]
        assert reports[CHANNEL_OF[pool]].fees == {"CNY": (1, fee_of(amount_of[line]), 0)}  # type: ignore[attr-defined]
    fee_postings = await platform.ledger.query("SELECT COUNT(*), SUM(amount) FROM transfers WHERE code = 5")
    assert tuple(fee_postings[0]) == (2, fees)
    assert await balance(platform, channel_fee_account("chan-a", "CNY").id) == fees
    assert await balance(platform, receivable_account("chan-a", "CNY").id) == -fees
    for channel in ("chan-b", "chan-c", RAIL):
        assert await balance(platform, channel_fee_account(channel, "CNY").id) == 0

    again = await run_all(service, force=True)  # a re-run posts no fee twice
    for channel, report in again.items():
        assert classes(report) == classes(reports[channel])
        assert (report.applied, report.refused) == (0, 0)  # type: ignore[attr-defined]
        assert all(posted == 0 for _n, _f, posted in report.fees.values())  # type: ignore[attr-defined]
    assert tuple((await platform.ledger.query("SELECT COUNT(*) FROM transfers WHERE code = 5"))[0]) == (2,)
    # Pools moved once, by the net; the books balance and the pool invariant holds (fees are ours).
    assert {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])} == \
        {p: FLOAT + NET[p] for p in POOLS}
    assert await settlement_postings(platform) == 2
    assert [i.difference_minor for i in (await platform.clearing.pool_report("CNY")).invariant] == [0]
    check = await service.internal_check()
    assert check.findings == [] and [d for d in check.balances if d.channel == RAIL] == [], check


async def test_an_unknown_settlement_is_resolved_by_either_statement_and_posted_once(platform: Platform,
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
    window = await platform.clearing.window("W000001")
    to_b = next(i.instruction_id for i in window.instructions if i.payee_pool == "bank-b")
    to_c = next(i.instruction_id for i in window.instructions if i.payee_pool == "bank-c")

    # The payee's statement first: bank-b's shows its transfer settled, which resolves it.
    service = platform.reconciliation
    report = await service.run("chan-b", today())
    assert classes(report) == {"STATUS_MISMATCH": (1, 1)}, classes(report)
    assert (report.applied, report.refused) == (1, 0)
    kept = await results(service, report.run.run_id)
    assert kept == [("STATUS_MISMATCH", "MARK_SUCCEEDED", rail_id(to_b), to_b)]
    assert await settlement_postings(platform) == 1
    # The payer's statement shows both: the one resolved already matches, the other is resolved now.
    report = await service.run("chan-a", today())
    assert classes(report) == {"MATCHED": (1, 1), "STATUS_MISMATCH": (1, 1)}, classes(report)
    assert (report.applied, report.refused) == (1, 0)
    assert report.fees == {"CNY": (2, sum(fee_of(a) for _, a in instructions), 2)}
    window = await platform.clearing.window("W000001")
    assert [(i.state, i.reason) for i in window.instructions] == \
        [(InstructionState.SUCCEEDED, "SETTLED_ON_STATEMENT")] * 2
    assert all(i.reference.startswith("TR") for i in window.instructions)
    assert await settlement_postings(platform) == 2
    report = await service.run("chan-c", today())  # the other payee's: resolved already, nothing moves
    assert classes(report) == {"MATCHED": (1, 1)} and (report.applied, report.refused) == (0, 0)
    assert [(cls, iid) for cls, _a, iid, _o in await results(service, report.run.run_id)] == \
        [("MATCHED", rail_id(to_c))]
    balances = {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])}
    assert balances == {p: FLOAT + NET[p] for p in POOLS}

    # A re-run finds them settled on both sides; nothing moves or posts again.
    again = await run_all(service, force=True)
    assert [classes(again[c]) for c in CHANNEL_OF.values()] == [{"MATCHED": (2, 2)}, {"MATCHED": (1, 1)},
                                                                 {"MATCHED": (1, 1)}]
    assert all(r.applied == 0 for r in again.values())  # type: ignore[attr-defined]
    fees = sum(fee_of(a) for _, a in instructions)
    assert again["chan-a"].fees == {"CNY": (2, fees, 0)}  # type: ignore[attr-defined]
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

    report = await platform.reconciliation.run("chan-a", today())  # the payer's: both transfers
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
    # The day's statements: the rejected lines match our FAILED ones, the retries our SUCCEEDED ones.
    again = await run_all(platform.reconciliation, force=True)
    assert [classes(again[c]) for c in CHANNEL_OF.values()] == [{"MATCHED": (4, 4)}, {"MATCHED": (2, 2)},
                                                                 {"MATCHED": (2, 2)}]
    assert all(r.applied == 0 for r in again.values())  # type: ignore[attr-defined]
