"""The clearing service over a real ledger, on SQLite and PostgreSQL: what it stores, what a restart
rebuilds, idempotency across windows, caps, the settlement driver with a scripted executor, and the
pool accounts its confirmed transfers move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dualflow.clearing import (
    Admission,
    CapPolicy,
    InstructionState,
    NetDebitCapExceeded,
    NetDebitCaps,
    ObligationConflict,
    WindowState,
    net,
)
from dualflow.clearing.pools import deposit_own_funds, pool_account, pool_balances
from dualflow.clearing.service import ClearingService
from dualflow.clearing.settings import ClearingSettings
from dualflow.clearing.settlement import ScriptedExecutor, SettlementOrder, answers
from dualflow.core.errors import InvalidRequest, Unavailable
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

S, F, U, P = (InstructionState.SUCCEEDED, InstructionState.FAILED, InstructionState.UNKNOWN,
              InstructionState.PENDING)
OK = ChannelAnswer(ChannelOutcome.SUCCEEDED, channel_reference="rail-1")
NO = ChannelAnswer(ChannelOutcome.FAILED, "ACCOUNT_CLOSED")
MAYBE = ChannelAnswer(ChannelOutcome.UNKNOWN, "TIMEOUT")

SETTINGS = ClearingSettings(pools=("bank-a", "bank-b", "bank-c"), currencies=("CNY", "USD"),
                            settle_interval_s=0, invariant_interval_s=0, settlement_retries=1)


@asynccontextmanager
async def clearing(db_url: str, settings: ClearingSettings = SETTINGS,
                   executor: Any = None) -> AsyncIterator[ClearingService]:
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    service = ClearingService(ledger, settings, executor=executor)
    try:
        await service.start()
        yield service
    finally:
        await service.stop()
        await ledger.stop()


def picture(service: ClearingService) -> list[tuple[Any, ...]]:
    """Everything the center holds of its live windows, as plain values."""
    out = []
    for w in service.center.windows.values():
        out.append((w.window_id, w.state, list(w.obligations), list(w.queued), list(w.summaries),
                    [(i.instruction_id, i.payer_pool, i.payee_pool, i.amount_minor, i.currency, i.state, i.reason,
                      i.reference, i.retry_of, i.retried_by, i.carried_as) for i in w.instructions],
                    list(w.failed_instruction_ids), w.opened_at_ns, w.closed_at_ns,
                    [(p.position.pool, p.position.currency, p.position.net_minor, p.queued_count)
                     for p in service.positions_of(w)]))
    return out


async def test_every_change_is_stored_and_a_restart_rebuilds_the_same_center(db_url: str) -> None:
    settings = ClearingSettings(**{**_fields(SETTINGS), "caps": NetDebitCaps({("bank-a", "CNY"): 100}),
                                   "cap_policy": CapPolicy.QUEUE})
    script = ScriptedExecutor(answers(MAYBE))
    async with clearing(db_url, settings, script) as service:
        assert (await service.record("o1", "bank-a", "bank-b", 100, "CNY")).status is Admission.ADMITTED
        queued = await service.record("o2", "bank-a", "bank-c", 30, "CNY")
        assert (queued.status, queued.window_id) == (Admission.QUEUED, "W000001")
        assert (await service.record("o3", "bank-a", "bank-c", 5, "CNY")).status is Admission.QUEUED, "FIFO"
        released = await service.record("o4", "bank-c", "bank-a", 30, "CNY")
        assert released.released == ("o2",)
        await service.record("o5", "bank-b", "bank-c", 7, "USD")
        closed = await service.close_window()
        assert closed.window_id == "W000001" and [o.obligation_id for o in closed.queued] == ["o3"]
        await service.record("o6", "bank-c", "bank-b", 9, "CNY")
        await service.drive()  # begins settling W000001, every answer UNKNOWN
        assert {i.state for i in service.center.window("W000001").instructions} == {U}
        before = picture(service)
    async with clearing(db_url, settings) as again:
        assert picture(again) == before
        assert again.center.current.window_id == "W000002"
        assert [o.obligation_id for o in again.center.current.obligations] == ["o3", "o6"]
        # The rebuilt center carries on: caps, queues and the id index as they were.
        assert (await again.record("o1", "bank-a", "bank-b", 100, "CNY")).replayed
        with pytest.raises(ObligationConflict):
            await again.record("o5", "bank-b", "bank-c", 8, "USD")
        assert (await again.record("o7", "bank-a", "bank-b", 96, "CNY")).status is Admission.QUEUED
        after = picture(again)
    async with clearing(db_url, settings) as third:
        assert picture(third) == after


async def test_recording_is_idempotent_by_id_across_windows_and_finished_ones_answer_from_the_store(
        db_url: str) -> None:
    async with clearing(db_url, executor=ScriptedExecutor()) as service:
        first = await service.record("pay-1:a-b", "bank-a", "bank-b", 51, "CNY")
        again = await service.record("pay-1:a-b", "bank-a", "bank-b", 51, "CNY")
        assert (first.replayed, again.replayed, again.window_id, again.status) == (
            False, True, "W000001", Admission.ADMITTED)
        with pytest.raises(ObligationConflict) as conflict:
            await service.record("pay-1:a-b", "bank-a", "bank-b", 52, "CNY")
        assert conflict.value.reason == "OBLIGATION_ID_REUSED"
        await service.close_window()
        await service.drive()
        assert "W000001" not in service.center.windows, "a finished window leaves memory"
        assert (await service.window("W000001")).state is WindowState.SETTLED
        replay = await service.record("pay-1:a-b", "bank-a", "bank-b", 51, "CNY")
        assert (replay.replayed, replay.window_id) == (True, "W000001")
        with pytest.raises(ObligationConflict):
            await service.record("pay-1:a-b", "bank-b", "bank-a", 51, "CNY")
        assert service.center.current.obligations == []


async def test_bad_input_and_cap_refusals_change_nothing(db_url: str) -> None:
    settings = ClearingSettings(**{**_fields(SETTINGS), "caps": NetDebitCaps(default_minor=50)})
    async with clearing(db_url, settings) as service:
        await service.record("ok", "bank-a", "bank-b", 50, "CNY")
        with pytest.raises(InvalidRequest) as bad:
            await service.record("has/slash", "bank-x", "bank-x", 0, "EUR")
        assert {v.field for v in bad.value.violations} == {
            "obligation.obligation_id", "obligation.debtor_pool", "obligation.creditor_pool",
            "obligation.amount_minor", "obligation.currency"}
        with pytest.raises(NetDebitCapExceeded) as refused:
            await service.record("too-much", "bank-a", "bank-c", 1, "CNY")
        assert refused.value.metadata == {"pool": "bank-a", "currency": "CNY", "cap_minor": "50",
                                          "net_debit_after_minor": "51", "obligation_id": "too-much"}
        _, positions = await service.positions("CNY")
        assert {(v.position.pool, v.position.net_minor) for v in positions} == {
            ("bank-a", -50), ("bank-b", 50), ("bank-c", 0)}
        assert [o.obligation_id for o in service.center.current.obligations] == ["ok"]
        # Refused means not kept: the same id fits once the position allows it.
        await service.record("back", "bank-b", "bank-a", 20, "CNY")
        assert (await service.record("too-much", "bank-a", "bank-c", 1, "CNY")).status is Admission.ADMITTED
    async with clearing(db_url, settings) as again:
        assert [o.obligation_id for o in again.center.current.obligations] == ["ok", "back", "too-much"]


async def test_close_window_nets_like_net_and_a_repeated_close_closes_nothing_more(db_url: str) -> None:
    async with clearing(db_url) as service:
        for i, (a, b, amount) in enumerate([("bank-a", "bank-b", 51), ("bank-b", "bank-a", 50),
                                            ("bank-c", "bank-b", 7), ("bank-b", "bank-c", 3)]):
            await service.record(f"o{i}", a, b, amount, "CNY")
        obligations = list(service.center.current.obligations)
        closed = await service.close_window("W000001")
        expected = net(obligations).by_currency["CNY"]
        (summary,) = closed.summaries
        assert (summary.gross_minor, summary.net_minor, summary.transfer_count, summary.efficiency) == (
            expected.gross_minor, expected.net_minor, len(expected.transfers), expected.efficiency)
        assert [(i.payer_pool, i.payee_pool, i.amount_minor) for i in closed.instructions] == [
            (t.payer_pool, t.payee_pool, t.amount_minor) for t in expected.transfers]
        assert (await service.close_window("W000001")).window_id == "W000001"
        assert service.center.current.window_id == "W000002", "the retried close did not close W000002"
        page, token = await service.settlements(window_id="W000001", page_size=1)
        rest, end = await service.settlements(window_id="W000001", page_size=1, page_token=token)
        assert [i.instruction_id for i in page + rest] == ["W000001/0", "W000001/1"] and end == ""


async def test_the_driver_settles_retries_and_carries_failures_posting_confirmed_transfers(db_url: str) -> None:
    # A owes B 10 (succeeds), C owes B 5 (fails twice: retried once, then carried), A owes C in USD 4
    # (unknown, then succeeds).
    def script(order: SettlementOrder) -> ChannelAnswer:
        if order.payer_pool == "bank-c":
            return NO
        if order.currency == "USD":
            return MAYBE if order.attempt == 1 else OK
        return OK

    executor = ScriptedExecutor(script)
    async with clearing(db_url, executor=executor) as service:
        await service.record("o1", "bank-a", "bank-b", 10, "CNY")
        await service.record("o2", "bank-c", "bank-b", 5, "CNY")
        await service.record("o3", "bank-a", "bank-c", 4, "USD")
        await service.close_window()
        await service.drive()
        window = service.center.window("W000001")
        assert [(i.instruction_id, i.state) for i in window.instructions] == [
            ("W000001/0", S), ("W000001/1", F), ("W000001/2", U)]
        # The next pass retries W000001/1 as /3, which fails too (settlement_retries=1: carried), and
        # /2 answers SUCCEEDED when sent again: every instruction is final, so the window finishes.
        await service.drive()
        assert "W000001" not in service.center.windows
        finished = await service.window("W000001")
        assert finished.state is WindowState.PARTIALLY_SETTLED
        assert finished.failed_instruction_ids == ["W000001/3"]
        assert [(i.instruction_id, i.state, i.retry_of, i.retried_by) for i in finished.instructions] == [
            ("W000001/0", S, None, None), ("W000001/1", F, None, "W000001/3"), ("W000001/2", S, None, None),
            ("W000001/3", F, "W000001/1", None)]
        assert finished.instructions[0].reference == "rail-1"
        carried = service.center.current.obligations
        assert [(o.obligation_id, o.debtor_pool, o.creditor_pool, o.amount_minor) for o in carried] == [
            ("W000001/3/carry", "bank-c", "bank-b", 5)]
        assert executor.sent("W000001/2") == 2 and executor.sent("W000001/0") == 1
        balances = {(b.pool, b.currency): b.balance_minor
                    for b in await pool_balances(service.ledger, SETTINGS.pools, SETTINGS.currencies)}
        assert balances == {("bank-a", "CNY"): -10, ("bank-b", "CNY"): 10, ("bank-c", "CNY"): 0,
                            ("bank-a", "USD"): -4, ("bank-b", "USD"): 0, ("bank-c", "USD"): 4}
        stored, _ = await service.settlements(states=[InstructionState.FAILED])
        assert [i.instruction_id for i in stored] == ["W000001/1", "W000001/3"]
        assert stored[1].carried_as == "W000001/3/carry" and stored[1].attempts == 1


async def test_a_crash_between_send_and_record_sends_the_same_instruction_again_and_posts_once(db_url: str) -> None:
    sent: list[str] = []
    hang = asyncio.Event()

    class CrashAfterSend:
        async def send(self, order: SettlementOrder) -> ChannelAnswer:
            sent.append(order.instruction_id)  # it left for the rail...
            await hang.wait()  # ...and the process dies before the answer is recorded
            raise AssertionError("unreachable")

    async with clearing(db_url, executor=CrashAfterSend()) as service:
        await deposit_own_funds(service.ledger, "bank-a", "CNY", 1_000, "seed")
        await service.record("o1", "bank-a", "bank-b", 25, "CNY")
        await service.close_window()
        driving = asyncio.create_task(service.drive())
        while not sent:
            await asyncio.sleep(0.005)
        driving.cancel()
        await asyncio.gather(driving, return_exceptions=True)
    rail = ScriptedExecutor()
    async with clearing(db_url, executor=rail) as service:
        assert service.center.window("W000001").state is WindowState.SETTLING
        await service.drive()
        assert [o.instruction_id for o in rail.sends] == sent == ["W000001/0"]
        assert (await service.window("W000001")).state is WindowState.SETTLED
        await service.drive()  # nothing left to do: nothing sent, nothing posted again
        assert len(rail.sends) == 1
        (a, b) = await service.ledger.lookup_accounts([pool_account("bank-a", "CNY").id,
                                                       pool_account("bank-b", "CNY").id])
        assert (a.debits_posted - a.credits_posted, b.debits_posted - b.credits_posted) == (975, 25)


async def test_a_failed_write_is_answered_unavailable_and_the_center_is_rebuilt_from_the_tables(
        db_url: str) -> None:
    async with clearing(db_url) as service:
        await service.record("a", "bank-a", "bank-b", 1, "CNY")
        real_run = service.ledger.run
        calls = 0

        async def flaky(extension: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:  # fails late enough for c's write to be submitted behind it
                await asyncio.sleep(0.2)
                raise Unavailable("disk on fire", reason="COMMIT_FAILED")
            return await real_run(extension)

        service.ledger.run = flaky  # type: ignore[method-assign]
        results = await asyncio.gather(service.record("b", "bank-a", "bank-b", 2, "CNY"),
                                       service.record("c", "bank-a", "bank-b", 3, "CNY"), return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results), "c was chained behind the failed b"
        assert [o.obligation_id for o in service.center.current.obligations] in (["a", "b", "c"], ["a"])
        await service.record("d", "bank-a", "bank-b", 4, "CNY")  # rebuilds first
        assert [o.obligation_id for o in service.center.current.obligations] == ["a", "d"]
        assert (await service.record("b", "bank-a", "bank-b", 2, "CNY")).replayed is False
    async with clearing(db_url) as again:
        assert [o.obligation_id for o in again.center.current.obligations] == ["a", "d", "b"]


def _fields(settings: ClearingSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


async def test_pool_invariant_wallets_merchants_and_own_funds_against_pools_and_money_in_transit(
        db_url: str) -> None:
    from dualflow.clearing.pools import invariant
    from dualflow.core.ledger.model import Account, AccountCode, Transfer
    from dualflow.core.payments.accounts import Party, account_id, fee_account, holding_account, \
        receivable_account
    from dualflow.core.payments.model import Asset

    alice = holding_account(Party("user", "alice"), Asset.WALLET, "CNY")
    shop = holding_account(Party("merchant", "shop"), Asset.WALLET, "CNY")
    alice_points = holding_account(Party("user", "alice"), Asset.POINTS, "CNY")
    shop_points = holding_account(Party("merchant", "shop"), Asset.POINTS, "CNY")
    card = receivable_account("card-bank", "CNY")
    suspense = Account(id=account_id("test:suspense|CNY"), currency="CNY", code=AccountCode.SUSPENSE)
    async with clearing(db_url) as service:
        ledger = service.ledger
        await deposit_own_funds(ledger, "bank-a", "CNY", 1_000, "capital")
        await ledger.create_accounts([alice, shop, alice_points, shop_points, card, fee_account("CNY"), suspense])
        legs = [  # debit, credit, amount: what the platform's flows post
            (pool_account("bank-b", "CNY"), alice, 300),  # a top-up the bank confirmed into pool B
            (card, alice, 200),  # a card top-up the card bank owes us (in transit)
            (alice, shop, 100), (shop, fee_account("CNY"), 1),  # a wallet purchase and its fee
            (shop_points, alice_points, 50),  # points issued: not money, they cancel out
        ]
        result = await ledger.create_transfers([
            Transfer(id=account_id(f"inv:{i}"), debit_account_id=d.id, credit_account_id=c.id, amount=n,
                     currency="CNY", code=1) for i, (d, c, n) in enumerate(legs)])
        assert set(result.results) == {1}
        report = await service.pool_report("CNY")
        (cny,) = report.invariant
        assert (cny.pools_minor, cny.in_transit_minor, cny.wallets_minor, cny.merchants_minor,
                cny.own_funds_minor, cny.difference_minor) == (1_300, 200, 400, 99, 1_001, 0)
        assert {(b.pool, b.balance_minor) for b in report.balances} == {
            ("bank-a", 1_000), ("bank-b", 300), ("bank-c", 0)}
        # Money parked in a suspense account is in no pool and owed to no one: the difference shows it.
        await ledger.create_transfers([Transfer(id=account_id("inv:suspense"), debit_account_id=suspense.id,
                                                credit_account_id=alice.id, amount=7, currency="CNY", code=1)])
        (cny,) = await invariant(ledger, ["CNY"])
        assert (cny.difference_minor, cny.unclassified_minor) == (-7, 7)
        with pytest.raises(InvalidRequest):
            await service.pool_report("EUR")


async def test_the_clock_closes_windows_at_cut_off_and_an_empty_window_is_settled_at_once(db_url: str) -> None:
    now = [10 * 3600 * 10**9 + 5]  # 10:00 UTC and a little

    settings = ClearingSettings(**{**_fields(SETTINGS), "window_s": 3600, "cutoff_offset_s": 1800})
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    service = ClearingService(ledger, settings, clock_ns=lambda: now[0], tick_s=0.005)
    try:
        await service.start()
        assert service.next_cutoff_ns() == (10 * 3600 + 1800) * 10**9
        await service.record("o1", "bank-a", "bank-b", 5, "CNY")
        await asyncio.sleep(0.03)
        assert service.center.current.window_id == "W000001", "not before the cut-off"
        now[0] = (10 * 3600 + 1800) * 10**9  # 10:30: the cut-off
        for _ in range(200):
            if service.center.current.window_id != "W000001":
                break
            await asyncio.sleep(0.005)
        closed = await service.window("W000001")
        assert (closed.state, closed.closed_at_ns) == (WindowState.CLOSED, now[0]), "no executor: it waits"
        assert service.next_cutoff_ns() == (11 * 3600 + 1800) * 10**9
        now[0] = (11 * 3600 + 1800) * 10**9
        for _ in range(200):
            if service.center.current.window_id == "W000003":
                break
            await asyncio.sleep(0.005)
        empty = await service.window("W000002")
        assert empty.state is WindowState.SETTLED and empty.instructions == [], "nothing to move"
        assert "W000002" not in service.center.windows
    finally:
        await service.stop()
        await ledger.stop()


async def test_an_executor_that_raises_counts_as_unknown_and_is_asked_again(db_url: str) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    calls = []

    class Flaky:
        async def send(self, order: SettlementOrder) -> ChannelAnswer:
            calls.append(order.attempt)
            if len(calls) == 1:
                raise ConnectionResetError("reply lost")
            return OK

    before = {k: sample("dualflow_clearing_settlement_transfers_total", outcome=k) for k in ("unknown", "succeeded")}
    refused_before = sample("dualflow_clearing_obligations_total", result="refused")
    async with clearing(db_url, ClearingSettings(**{**_fields(SETTINGS), "caps": NetDebitCaps(default_minor=9)}),
                        Flaky()) as service:
        await service.record("o1", "bank-a", "bank-b", 9, "CNY")
        with pytest.raises(NetDebitCapExceeded):
            await service.record("o2", "bank-a", "bank-b", 1, "CNY")
        assert sample("dualflow_clearing_open_window_net_minor", pool="bank-a", currency="CNY") == -9
        assert sample("dualflow_clearing_obligations_total", result="refused") == refused_before + 1
        await service.close_window()
        await service.drive()
        (inst,) = service.center.window("W000001").instructions
        assert (inst.state, inst.reason) == (U, "EXECUTOR_ERROR")
        await service.drive()
        assert (await service.window("W000001")).state is WindowState.SETTLED and calls == [1, 2]
        assert sample("dualflow_clearing_open_window_net_minor", pool="bank-a", currency="CNY") == 0
    assert sample("dualflow_clearing_settlement_transfers_total", outcome="unknown") == before["unknown"] + 1
    assert sample("dualflow_clearing_settlement_transfers_total", outcome="succeeded") == before["succeeded"] + 1
