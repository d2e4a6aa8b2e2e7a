"""Payouts and pool sweeps in the payment core (core/payments/procedures.py, service.py), on SQLite
with a scripted channel: the ledger legs of a payout's hold, post, void and reroute, what a payout
may not be, the sweeps of a pooled channel, and our side of reconciliation telling payouts apart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dualflow.adapters.contract import ChannelResult, Flow, FlowNotSupported, Outcome
from dualflow.adapters.dispatcher import FinancialGateway
from dualflow.adapters.scripted import NOT_SUBMITTED, PENDING, SUCCEEDED, Plan, ScriptedChannel, failed
from dualflow.core.errors import InvalidRequest, PreconditionFailed
from dualflow.core.ledger.model import Account, AccountCode, Transfer
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.ledger.state_machine import T_EXISTS
from dualflow.core.payments.accounts import (
    Party,
    account_id,
    holding_account,
    pool_account,
    receivable_account,
    transfer_id,
)
from dualflow.core.payments.dispatch import Instruction
from dualflow.core.payments.model import Asset, BankAccount, Merchant, PaymentRequest, PaymentStatus, RefundStatus
from dualflow.core.payments.procedures import CODE_SWEEP, MovePayment
from dualflow.core.payments.service import PaymentService
from dualflow.reconciliation.ours import lookup_instructions, read_instructions

MERCHANTS = {"shop": Merchant("shop", "Shop", frozenset({"CNY"}), fee_bps=100)}
BANK = BankAccount("ICBC", "6789", "Alice")
CNY = "CNY"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[LedgerService]:
    ledger = LedgerService(store_from_url(str(tmp_path / "ledger.db")), expiry_interval_s=0)
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.stop()


async def service_of(ledger: LedgerService, channel: ScriptedChannel, **kw: Any) -> PaymentService:
    # No poller: each test says what the channel answers, when.
    service = PaymentService(ledger, MERCHANTS, dispatcher=channel, poll_tick_s=0, balance_cache_ttl_s=0,
                             maintenance_interval_s=0, **kw)
    await service.start()
    return service


def pending_channel(*names: str) -> ScriptedChannel:
    return ScriptedChannel(lambda i: Plan(on_submit=PENDING), names=names or ("scripted",))


async def fund(ledger: LedgerService, user: str, amount: int) -> None:
    source = Account(id=account_id("test:topup:CNY"), currency=CNY, code=AccountCode.EQUITY)
    wallet = holding_account(Party("user", user), Asset.WALLET, CNY)
    await ledger.create_accounts([source, wallet])
    result = await ledger.create_transfers([Transfer(id=account_id(f"fund:{user}:{amount}"), debit_account_id=source.id,
                                                     credit_account_id=wallet.id, amount=amount, currency=CNY,
                                                     code=9)])
    assert result.results == [1]


def payout(request_id: str, amount: int, user: str = "alice", **kw: Any) -> PaymentRequest:
    return PaymentRequest(request_id=request_id, merchant_id="shop", payer=f"user:{user}",
                          payee=kw.pop("payee", f"user:{user}"), amount=amount, currency=CNY,
                          asset=kw.pop("asset", Asset.BANK_TRANSFER), bank_account=kw.pop("bank_account", BANK), **kw)


async def sides(ledger: LedgerService, account: Account) -> tuple[int, int, int, int]:
    """(debits_pending, debits_posted, credits_pending, credits_posted); zeros for an account never opened."""
    found = await ledger.lookup_accounts([account.id])
    if not found:
        return (0, 0, 0, 0)
    a = found[0]
    return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)


def wallet_of(user: str) -> Account:
    return holding_account(Party("user", user), Asset.WALLET, CNY)


async def until(service: PaymentService, payment_id: str, *statuses: PaymentStatus) -> None:
    for _ in range(1_000):
        if (await service.get_payment(payment_id)).status in statuses:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{payment_id}: {(await service.get_payment(payment_id)).status}, not {statuses}")


async def balance_events(service: PaymentService, user: str) -> int:
    return len([e for e in await service.feed.read_after(0, 1000, subject_id=f"user:{user}")
                if e.type == "balance.updated"])


async def test_a_payout_holds_the_wallet_then_posts_or_voids(ledger: LedgerService) -> None:
    channel = pending_channel()
    service = await service_of(ledger, channel)
    try:
        await fund(ledger, "alice", 10_000)
        ok = await service.create_payout(payout("po1", 3_000))
        gone = await service.create_payout(payout("po2", 2_000))
        assert (ok.kind, ok.fee, ok.status, ok.channel) == ("payout", 0, PaymentStatus.CREATED, "scripted")
        for p in (ok, gone):
            await until(service, p.payment_id, PaymentStatus.PROCESSING)
        assert [i.kind for i in channel.submitted] == ["payout", "payout"]
        assert channel.submitted[0].bank_account == BANK
        # Held: the wallet owes 5 000 pending, the channel's receivable is credited as much.
        assert await sides(ledger, wallet_of("alice")) == (5_000, 0, 0, 10_000)
        assert await sides(ledger, receivable_account("scripted", CNY)) == (0, 0, 5_000, 0)
        assert (await service.get_balance("alice", Asset.WALLET, CNY)).available == 5_000

        await service.apply_channel_answer(ok.payment_id, SUCCEEDED)
        await service.apply_channel_answer(gone.payment_id, failed("ACCOUNT_CLOSED"))
        # Posted for good (3 000), the failed one given back (2 000).
        assert await sides(ledger, wallet_of("alice")) == (0, 3_000, 0, 10_000)
        assert await sides(ledger, receivable_account("scripted", CNY)) == (0, 0, 0, 3_000)
        assert (await service.get_balance("alice", Asset.WALLET, CNY)).available == 7_000
        assert (await service.get_payment(gone.payment_id)).failure_reason == "ACCOUNT_CLOSED"
        # Hold (x2), post, void: each one a balance.updated for the user.
        assert await balance_events(service, "alice") == 4

        with pytest.raises(PreconditionFailed) as refused:
            await service.refund_payment("rf1", ok.payment_id, 0)
        assert refused.value.reason == "PAYMENT_NOT_REFUNDABLE"
    finally:
        await service.stop()


async def test_a_payout_beyond_the_wallet_fails_and_is_never_sent(ledger: LedgerService) -> None:
    channel = pending_channel()
    service = await service_of(ledger, channel)
    try:
        await fund(ledger, "bob", 1_000)
        broke = await service.create_payout(payout("po1", 1_001, user="bob"))
        assert (broke.status, broke.failure_reason) == (PaymentStatus.FAILED, "INSUFFICIENT_FUNDS")
        # A user who never had money has a wallet of zero.
        empty = await service.create_payout(payout("po2", 1, user="nobody"))
        assert empty.failure_reason == "INSUFFICIENT_FUNDS"
        await asyncio.sleep(0.05)
        assert channel.submitted == []
        assert await sides(ledger, wallet_of("bob")) == (0, 0, 0, 1_000)
        # The whole balance can go.
        whole = await service.create_payout(payout("po3", 1_000, user="bob"))
        await until(service, whole.payment_id, PaymentStatus.PROCESSING)
    finally:
        await service.stop()


async def test_a_payout_never_submitted_is_held_again_on_the_next_channel(ledger: LedgerService) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=NOT_SUBMITTED if i.channel == "a" else PENDING),
                              names=("a", "b"))
    service = await service_of(ledger, channel)
    try:
        await fund(ledger, "carol", 5_000)
        p = await service.create_payout(payout("po1", 4_000, user="carol"))
        for _ in range(500):
            current = await service.get_payment(p.payment_id)
            if current.channel == "b" and current.status is PaymentStatus.PROCESSING:
                break
            await asyncio.sleep(0.01)
        assert (current.channel, current.attempt, current.kind) == ("b", 2, "payout")
        assert [(i.channel, i.kind) for i in channel.submitted] == [("a", "payout"), ("b", "payout")]
        # One hold on the wallet, now against b's receivable; a's was voided.
        assert await sides(ledger, wallet_of("carol")) == (4_000, 0, 0, 5_000)
        assert await sides(ledger, receivable_account("a", CNY)) == (0, 0, 0, 0)
        assert await sides(ledger, receivable_account("b", CNY)) == (0, 0, 4_000, 0)
        await service.apply_channel_answer(p.payment_id, SUCCEEDED)
        assert await sides(ledger, wallet_of("carol")) == (0, 4_000, 0, 5_000)
    finally:
        await service.stop()


# field         value            the violated field
INVALID = """
payer           merchant:shop    payer
payer           carol            payer
payee           user:dave        payee
bank_account    -                bank_account
asset           WALLET           asset
asset           BANK_CARD        asset
amount          0                amount
"""


@pytest.mark.parametrize("case", INVALID.strip().splitlines())
async def test_payout_validation(ledger: LedgerService, case: str) -> None:
    name, value, field = case.split()
    changed: Any = {"bank_account": None, "asset": Asset[value] if name == "asset" else None,
                    "amount": int(value) if name == "amount" else 0}.get(name, value)
    request = replace(payout("bad", 100), **{name: changed})
    service = await service_of(ledger, pending_channel())
    try:
        for create in (service.create_payout, service.create_payment):
            with pytest.raises(InvalidRequest) as caught:
                await create(replace(request, kind="payout"))
            assert field in {v.field for v in caught.value.violations}, caught.value.violations
        assert (await service.list_payments(""))[0] == []
    finally:
        await service.stop()


async def test_an_unknown_kind_is_refused(ledger: LedgerService) -> None:
    service = await service_of(ledger, pending_channel())
    try:
        with pytest.raises(InvalidRequest) as caught:
            await service.create_payment(payout("k1", 100, kind="withdraw"))
        assert {v.field for v in caught.value.violations} == {"kind"}
    finally:
        await service.stop()


async def sweeps(ledger: LedgerService, object_id: str, leg: str) -> list[Transfer]:
    return await ledger.lookup_transfers([transfer_id(object_id, leg)])


async def test_a_pooled_channel_sweeps_collections_payouts_and_refunds(ledger: LedgerService) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=SUCCEEDED))
    service = await service_of(ledger, channel, channel_pools={"scripted": "icbc"})
    pool, receivable = pool_account("icbc", CNY), receivable_account("scripted", CNY)
    try:
        # A top-up by bank transfer: the money is in the pool, the channel owes nothing.
        topup = await service.create_payment(PaymentRequest(
            request_id="t1", merchant_id="shop", payer="user:dave", payee="user:dave", amount=10_000, currency=CNY,
            asset=Asset.BANK_TRANSFER, bank_account=BANK))
        await until(service, topup.payment_id, PaymentStatus.SUCCEEDED)
        [sweep] = await sweeps(ledger, topup.payment_id, "sweep.1")
        assert (sweep.debit_account_id, sweep.credit_account_id, sweep.amount, sweep.code) == (
            pool.id, receivable.id, 10_000, CODE_SWEEP)
        assert await sides(ledger, pool) == (0, 10_000, 0, 0)
        assert await sides(ledger, receivable) == (0, 10_000, 0, 10_000)

        # A payout of part of it: it left the pool.
        out = await service.create_payout(payout("po1", 3_000, user="dave"))
        await until(service, out.payment_id, PaymentStatus.SUCCEEDED)
        [sweep] = await sweeps(ledger, out.payment_id, "sweep.1")
        assert (sweep.debit_account_id, sweep.credit_account_id, sweep.amount) == (receivable.id, pool.id, 3_000)
        assert await sides(ledger, pool) == (0, 10_000, 0, 3_000)
        assert await sides(ledger, wallet_of("dave")) == (0, 3_000, 0, 10_000)

        # A purchase on the same rail (the merchant's fee taken as usual), then a refund of part of it.
        bought = await service.create_payment(PaymentRequest(
            request_id="b1", merchant_id="shop", payer="user:erin", payee="merchant:shop", amount=5_000,
            currency=CNY, asset=Asset.BANK_TRANSFER, bank_account=BANK))
        await until(service, bought.payment_id, PaymentStatus.SUCCEEDED)
        refund = await service.refund_payment("r1", bought.payment_id, 2_000)
        for _ in range(500):
            [refund] = await service.refunds_of(bought.payment_id)
            if refund.status is RefundStatus.SUCCEEDED:
                break
            await asyncio.sleep(0.01)
        assert refund.status is RefundStatus.SUCCEEDED
        [sweep] = await sweeps(ledger, refund.refund_id, "sweep")
        assert (sweep.debit_account_id, sweep.credit_account_id, sweep.amount) == (receivable.id, pool.id, 2_000)
        # Pool: in 10 000 + 5 000, out 3 000 + 2 000; the channel's receivable nets to nothing.
        assert await sides(ledger, pool) == (0, 15_000, 0, 5_000)
        d_pending, d_posted, c_pending, c_posted = await sides(ledger, receivable)
        assert (d_pending, c_pending, d_posted - c_posted) == (0, 0, 0)

        # Re-driving names the same transfers: the ledger answers EXISTS, nothing moves twice.
        again = await ledger.create_transfers([Transfer(
            id=transfer_id(topup.payment_id, "sweep.1"), debit_account_id=pool.id, credit_account_id=receivable.id,
            amount=10_000, currency=CNY, code=CODE_SWEEP)])
        assert again.results == [T_EXISTS]
        replay = await ledger.run(MovePayment(topup.payment_id, PaymentStatus.SUCCEEDED,
                                              pools=service.channel_pools))
        assert replay.kind == "unchanged"
        assert await sides(ledger, pool) == (0, 15_000, 0, 5_000)
    finally:
        await service.stop()


async def test_a_channel_outside_the_pool_map_sweeps_nothing(ledger: LedgerService) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=SUCCEEDED), names=("other",))
    service = await service_of(ledger, channel, channel_pools={"scripted": "icbc"})
    try:
        await fund(ledger, "frank", 1_000)
        p = await service.create_payout(payout("po1", 600, user="frank"))
        await until(service, p.payment_id, PaymentStatus.SUCCEEDED)
        assert await sweeps(ledger, p.payment_id, "sweep.1") == []
        assert await ledger.lookup_accounts([pool_account("icbc", CNY).id]) == []
        assert await sides(ledger, receivable_account("other", CNY)) == (0, 0, 0, 600)
    finally:
        await service.stop()


class _NoBackend:
    """The Database protocol without a known backend: our side is read from the body's text."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.ledger.query(sql, params)


async def test_our_side_of_reconciliation_tells_payouts_apart(ledger: LedgerService) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=PENDING))
    service = await service_of(ledger, channel)
    try:
        await fund(ledger, "gina", 1_000)
        out = await service.create_payout(payout("po1", 700, user="gina"))
        # A metadata key "kind" must not make an ordinary payment a payout (nor the reverse).
        spoof = await service.create_payment(PaymentRequest(
            request_id="s1", merchant_id="shop", payer="user:gina", payee="user:gina", amount=500, currency=CNY,
            asset=Asset.BANK_TRANSFER, bank_account=BANK, metadata={"kind": "payout", "x": '"kind":"payout"'}))
        plain = await service.create_payment(PaymentRequest(
            request_id="p1", merchant_id="shop", payer="user:gina", payee="merchant:shop", amount=300, currency=CNY,
            asset=Asset.BANK_TRANSFER, bank_account=BANK, description='","kind":"payout'))
        for p in (out, spoof, plain):
            await until(service, p.payment_id, PaymentStatus.PROCESSING)
        expected = {out.instruction_id: "payout", spoof.instruction_id: "pay", plain.instruction_id: "pay"}
        today = datetime.now(timezone.utc).date().isoformat()
        for db in (ledger, _NoBackend(ledger)):
            ours = {i.instruction_id: i.kind async for i in read_instructions(db, "scripted", today)}  # type: ignore[arg-type]
            assert ours == expected, db
            found = await lookup_instructions(db, "scripted", list(expected))  # type: ignore[arg-type]
            assert {k: v.kind for k, v in found.items()} == expected
        # An ordinary payment's body has no "kind" key: code from before payouts reads it.
        [(body,)] = await ledger.query("SELECT body FROM payments WHERE payment_id = ?", (plain.payment_id,))
        assert "kind" not in json.loads(body)
        [(body,)] = await ledger.query("SELECT body FROM payments WHERE payment_id = ?", (out.payment_id,))
        assert '"fee":0,"kind":"payout","merchant_id"' in body
        # Statement resolution moves a payout like a payment.
        assert await service.resolve_by_reconciliation("run1", out.payment_id, "payout", True)
        assert (await service.get_payment(out.payment_id)).status is PaymentStatus.SUCCEEDED
        assert await sides(ledger, wallet_of("gina")) == (0, 700, 500, 1_000)  # the top-up still pending
        # ... and one the statement never showed, past its window, fails: the wallet gets it back.
        lost = await service.create_payout(payout("po2", 300, user="gina"))
        await until(service, lost.payment_id, PaymentStatus.PROCESSING)
        assert await service.resolve_by_reconciliation("run1", lost.payment_id, "payout", False,
                                                       reason="NOT_ON_STATEMENT")
        assert (await service.get_payment(lost.payment_id)).failure_reason == "NOT_ON_STATEMENT"
        assert await sides(ledger, wallet_of("gina")) == (0, 700, 500, 1_000)
    finally:
        await service.stop()


class _Adapter:
    name = "rail"

    def __init__(self, payout: Any = None) -> None:
        if payout is not None:
            self.payout = payout


async def test_the_financial_gateway_answers_not_submitted_without_a_payout_flow() -> None:
    instruction = Instruction(instruction_id="pay_x-1", object_id="pay_x", kind="payout", merchant_id="shop",
                              asset=Asset.BANK_TRANSFER, amount=100, currency=CNY, channel="rail",
                              bank_account=BANK)
    none = await FinancialGateway._payout(_Adapter(), instruction)  # type: ignore[arg-type]
    assert (none.outcome, none.reason) == (Outcome.NOT_SUBMITTED, "FLOW_NOT_SUPPORTED")

    async def refuses(_instruction: Any) -> Any:
        raise FlowNotSupported("rail", Flow.PAY)

    refused = await FinancialGateway._payout(_Adapter(refuses), instruction)  # type: ignore[arg-type]
    assert refused.outcome is Outcome.NOT_SUBMITTED
    seen: list[Any] = []

    async def pays(sent: Any) -> Any:
        seen.append(sent)
        return ChannelResult(Outcome.PENDING)

    assert (await FinancialGateway._payout(_Adapter(pays), instruction)).outcome is Outcome.PENDING  # type: ignore[arg-type]
    [sent] = seen
    assert (sent.instruction_id, sent.payout_id, sent.amount, sent.beneficiary) == ("pay_x-1", "pay_x", 100, BANK)
