"""Reconciliation wired to the payments, on SQLite and PostgreSQL: a run through the
ReconciliationService with the payment service's StatementResolver and ChannelFees moves what the
statement proves (an UNKNOWN payment settled, a PROCESSING one refused, an UNKNOWN refund settled)
through the state machine and outbox ("resolved by reconciliation <run>"), never a final payment
(a FAILED one the channel settled is a discrepancy), posts the statement's fees once per line,
replays a completed pair, and a malformed statement changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow, Outcome, StatementLine, StatementRejected
from dualflow.adapters.scripted import PENDING, SUCCEEDED, UNKNOWN, Plan, ScriptedChannel, failed
from dualflow.core.errors import InvalidRequest
from dualflow.core.payments.accounts import channel_fee_account, receivable_account
from dualflow.core.payments.model import Asset, BankAccount, PaymentStatus, RefundStatus
from dualflow.core.payments.resolution import ChannelFees, FeeLine, StatementResolver, fee_transfer_id
from dualflow.core.payments.service import PaymentService
from dualflow.reconciliation.model import Action, Class, Result
from dualflow.reconciliation.service import ReconciliationService

from payments_fixtures import pay, payment_service

CHANNEL = "scripted"
TODAY = datetime.now(timezone.utc).date().isoformat()
BANK = BankAccount("ICBC", "1234", "Alice")
# By amount, what the channel does with each payment (and refund).
SETTLED_UNKNOWN, REFUSED_PENDING, DECLINED, PAID, FEE_OFF = 10_001, 10_002, 10_003, 10_004, 10_005
REFUND_UNKNOWN = 3_001


def plan(instruction: object) -> Plan:
    amount = getattr(instruction, "amount")
    return {SETTLED_UNKNOWN: Plan(on_submit=UNKNOWN), REFUSED_PENDING: Plan(on_submit=PENDING),
            DECLINED: Plan(on_submit=failed("CARD_DECLINED")), REFUND_UNKNOWN: Plan(on_submit=UNKNOWN)}.get(
        amount, Plan(on_submit=SUCCEEDED))


class StatementOf:
    """The channel's statement of the day, as given."""

    name = CHANNEL

    def __init__(self, lines: list[StatementLine], reject: StatementRejected | None = None) -> None:
        self.lines, self.reject = lines, reject

    def describe(self) -> Capabilities:
        return Capabilities(CHANNEL, frozenset({Asset.BANK_TRANSFER}), frozenset({"CNY"}), frozenset({Flow.STATEMENT}),
                            fees={"CNY": FeeSchedule(bps=50)})

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        if self.reject is not None:
            raise self.reject
        for line in self.lines:
            yield line


def fee(amount: int) -> int:
    return (amount * 50 + 5_000) // 10_000


async def until(service: PaymentService, payment_id: str, *statuses: PaymentStatus) -> None:
    for _ in range(500):
        if (await service.get_payment(payment_id)).status in statuses:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{payment_id} never reached {statuses}")


async def trial_balance(service: PaymentService) -> list[tuple[object, ...]]:
    return await service.ledger.query("SELECT currency, SUM(debits_posted) - SUM(credits_posted), "
                                      "SUM(debits_pending) - SUM(credits_pending) FROM accounts GROUP BY currency")


@pytest.fixture
async def payments(db_url: str) -> AsyncIterator[PaymentService]:
    async with payment_service(db_url, ScriptedChannel(script=plan, names=(CHANNEL,))) as service:
        yield service


async def test_a_run_resolves_open_payments_and_refunds_posts_fees_and_leaves_final_ones(
        payments: PaymentService) -> None:
    made = {}
    for amount in (SETTLED_UNKNOWN, REFUSED_PENDING, DECLINED, PAID, FEE_OFF):
        p = await payments.create_payment(pay(f"r{amount}", amount, Asset.BANK_TRANSFER, bank_account=BANK))
        made[amount] = p.payment_id
    await until(payments, made[SETTLED_UNKNOWN], PaymentStatus.UNKNOWN)
    await until(payments, made[REFUSED_PENDING], PaymentStatus.PROCESSING)
    await until(payments, made[DECLINED], PaymentStatus.FAILED)
    await until(payments, made[PAID], PaymentStatus.SUCCEEDED)
    await until(payments, made[FEE_OFF], PaymentStatus.SUCCEEDED)
    refund = await payments.refund_payment("rf1", made[PAID], REFUND_UNKNOWN)
    for _ in range(500):
        [refund] = await payments.refunds_of(made[PAID])
        if refund.status is RefundStatus.UNKNOWN:
            break
        await asyncio.sleep(0.01)
    assert refund.status is RefundStatus.UNKNOWN

    def line(amount: int, status: str = "SUCCEEDED", charged: int | None = None, kind: str = "pay",
             iid: str = "") -> StatementLine:
        return StatementLine(TODAY, iid or f"{made[amount]}-1", f"REF{amount}", kind, amount, "CNY", Outcome[status],
                             (fee(amount) if charged is None else charged) if status == "SUCCEEDED" else 0)

    statement = StatementOf([
        line(SETTLED_UNKNOWN),  # its reply was lost: the statement says it settled
        line(REFUSED_PENDING, "FAILED"),  # still pending with us: the channel refused it
        line(DECLINED, "SUCCEEDED"),  # we failed it, the channel settled it: a person decides
        line(PAID),
        line(FEE_OFF, charged=fee(FEE_OFF) + 7),  # the channel charged more than our fee model
        line(REFUND_UNKNOWN, kind="refund", iid=f"{refund.refund_id}-1", charged=0),
    ])
    service = ReconciliationService(payments.ledger, {CHANNEL: statement}, resolver=StatementResolver(payments),
                                    fees=ChannelFees(payments.ledger))
    await service.start()
    report = await service.run(CHANNEL, TODAY)
    run_id = report.run.run_id
    assert (report.run.state, report.run.lines, report.run.instructions) == ("completed", 6, 6)
    assert {c: (n["lines"], n["instructions"]) for c, n in report.counts.items()} == {
        "MATCHED": (1, 1), "STATUS_MISMATCH": (4, 4), "FEE_MISMATCH": (1, 1)}
    assert (report.applied, report.refused) == (3, 0)

    settled = await payments.get_payment(made[SETTLED_UNKNOWN])
    assert settled.status is PaymentStatus.SUCCEEDED and settled.channel_reference == f"REF{SETTLED_UNKNOWN}"
    assert settled.metadata["status_note"] == f"resolved by reconciliation {run_id}"
    refused = await payments.get_payment(made[REFUSED_PENDING])
    assert (refused.status, refused.failure_reason) == (PaymentStatus.FAILED, "FAILED_ON_STATEMENT")
    assert (await payments.get_payment(made[DECLINED])).status is PaymentStatus.FAILED  # final never changes
    [refund] = await payments.refunds_of(made[PAID])
    assert (refund.status, refund.status_note) == (RefundStatus.SUCCEEDED, f"resolved by reconciliation {run_id}")
    # Their polling rows went with them.
    assert await payments.ledger.query("SELECT object_id FROM channel_polls") == []
    # Each move is an outbox event that says so.
    events = await payments.ledger.query("SELECT type, payload FROM outbox WHERE subject_id IN (?, ?, ?) "
                                         "ORDER BY seq", (made[SETTLED_UNKNOWN], made[REFUSED_PENDING],
                                                          refund.refund_id))
    last = {json.loads(p).get("payment_id") if t.startswith("payment.") else refund.refund_id: (t, json.loads(p))
            for t, p in events}
    assert last[made[SETTLED_UNKNOWN]][0] == "payment.succeeded"
    assert last[made[SETTLED_UNKNOWN]][1]["metadata"]["status_note"] == f"resolved by reconciliation {run_id}"
    assert last[made[REFUSED_PENDING]][0] == "payment.failed"
    assert last[refund.refund_id] == ("refund.succeeded", {**last[refund.refund_id][1],
                                                           "status_note": f"resolved by reconciliation {run_id}"})

    found, _ = await service.list_discrepancies()
    assert sorted((d.cls.value, d.object_id) for d in found) == sorted([
        ("STATUS_MISMATCH", made[DECLINED]), ("FEE_MISMATCH", made[FEE_OFF])])
    fee_mismatch = next(d for d in found if d.cls is Class.FEE_MISMATCH)
    assert fee_mismatch.body["detail"] == f"fee: expected {fee(FEE_OFF)}, channel {fee(FEE_OFF) + 7}"

    # Fees: every charged line once, from the channel's receivable to its fee expense.
    charged = fee(SETTLED_UNKNOWN) + fee(DECLINED) + fee(PAID) + fee(FEE_OFF) + 7
    assert report.fees == {"CNY": (4, charged, 4)}
    [expense] = await payments.ledger.lookup_accounts([channel_fee_account(CHANNEL, "CNY").id])
    assert (expense.debits_posted, expense.credits_posted) == (charged, 0)
    assert all(d == 0 and p == 0 for _c, d, p in await trial_balance(payments))

    # The pair again: the completed run is the answer, nothing runs; forced, a second attempt that
    # finds everything done (no resolution, no fee posted twice, the same discrepancies).
    again = await service.run(CHANNEL, TODAY)
    assert again.replayed and again.run.run_id == run_id and again.applied == 3
    forced = await service.run(CHANNEL, TODAY, force=True)
    assert (forced.run.attempt, forced.applied, forced.fees) == (2, 0, {"CNY": (4, charged, 0)})
    assert {c: n["lines"] for c, n in forced.counts.items()} == {"MATCHED": 4, "STATUS_MISMATCH": 1,
                                                                  "FEE_MISMATCH": 1}
    [expense] = await payments.ledger.lookup_accounts([channel_fee_account(CHANNEL, "CNY").id])
    assert expense.debits_posted == charged
    assert len((await service.list_discrepancies())[0]) == 2
    # The resolver itself is idempotent: a payment that moved is left alone.
    resolver = StatementResolver(payments)
    proposal = Result(Class.STATUS_MISMATCH, Action.MARK_FAILED, None, ())
    assert not await resolver.resolve("rcn_again", made[SETTLED_UNKNOWN], "pay", Action.MARK_FAILED, proposal)
    assert not await resolver.resolve("rcn_again", made[DECLINED], "pay", Action.MARK_SUCCEEDED, proposal)
    assert (await payments.get_payment(made[SETTLED_UNKNOWN])).status is PaymentStatus.SUCCEEDED


async def test_an_unknown_payment_being_reversed_is_left_to_the_reversal(payments: PaymentService) -> None:
    p = await payments.create_payment(pay("rv", SETTLED_UNKNOWN, Asset.BANK_TRANSFER, bank_account=BANK))
    await until(payments, p.payment_id, PaymentStatus.UNKNOWN)
    await payments.ledger.write([("UPDATE channel_polls SET kind = 'reverse', next_at_ns = ? WHERE object_id = ?",
                                  (2**62, p.payment_id))])
    assert not await payments.resolve_by_reconciliation("rcn_x", p.payment_id, "pay", True)
    assert (await payments.get_payment(p.payment_id)).status is PaymentStatus.UNKNOWN


async def test_a_malformed_statement_through_the_service_changes_nothing(payments: PaymentService) -> None:
    p = await payments.create_payment(pay("mf", SETTLED_UNKNOWN, Asset.BANK_TRANSFER, bank_account=BANK))
    await until(payments, p.payment_id, PaymentStatus.UNKNOWN)
    statement = StatementOf([StatementLine(TODAY, f"{p.payment_id}-1", "R", "pay", SETTLED_UNKNOWN, "CNY",
                                           Outcome.SUCCEEDED, fee(SETTLED_UNKNOWN))],
                            reject=StatementRejected("WRONG_TOTALS", 3, "the trailer counts 2 lines"))
    service = ReconciliationService(payments.ledger, {CHANNEL: statement}, resolver=StatementResolver(payments),
                                    fees=ChannelFees(payments.ledger))
    await service.start()
    outbox = await payments.ledger.query("SELECT COUNT(*) FROM outbox")
    report = await service.run(CHANNEL, TODAY)
    assert (report.run.state, report.run.error_reason, report.run.error_line) == ("rejected", "WRONG_TOTALS", 3)
    assert (await payments.get_payment(p.payment_id)).status is PaymentStatus.UNKNOWN
    assert await payments.ledger.query("SELECT COUNT(*) FROM outbox") == outbox
    assert await payments.ledger.lookup_accounts([channel_fee_account(CHANNEL, "CNY").id]) == []
    assert (await service.list_discrepancies())[0] == []
    # A rejected pair is not an answer: asked again, it runs again (the channel may have fixed its file).
    statement.reject = None
    fixed = await service.run(CHANNEL, TODAY)
    assert (fixed.run.state, fixed.run.attempt, fixed.applied) == ("completed", 2, 1)
    assert (await payments.get_payment(p.payment_id)).status is PaymentStatus.SUCCEEDED


async def test_fee_postings_are_one_per_line(payments: PaymentService) -> None:
    fees = ChannelFees(payments.ledger)
    lines = [FeeLine("pay_a-1", "R1", "pay", "CNY", 55), FeeLine("pay_a-1", "R1", "pay", "CNY", 55),
             FeeLine("", "R9", "pay", "CNY", 3), FeeLine("rfd_b-1", "R2", "refund", "CNY", 2),
             FeeLine("pay_c-1", "R3", "pay", "CNY", 0)]
    first = await fees.post("bank", lines)
    assert (first.posted, first.already, first.amount_minor, first.conflicts) == (
        {"CNY": 3}, {"CNY": 1}, {"CNY": 60}, 0)
    again = await fees.post("bank", lines[:1] + [FeeLine("pay_a-1", "R1", "pay", "CNY", 56)])
    assert (again.posted, again.already, again.conflicts) == ({}, {"CNY": 1}, 1)
    assert fee_transfer_id("bank", lines[0]) != fee_transfer_id("other-bank", lines[0])
    [expense, receivable] = sorted(await payments.ledger.lookup_accounts(
        [channel_fee_account("bank", "CNY").id, receivable_account("bank", "CNY").id]),
        key=lambda a: a.id != channel_fee_account("bank", "CNY").id)
    assert (expense.debits_posted, receivable.credits_posted) == (60, 60)


async def test_bad_requests_change_nothing(payments: PaymentService) -> None:
    service = ReconciliationService(payments.ledger, {CHANNEL: StatementOf([])})
    await service.start()
    with pytest.raises(InvalidRequest) as bad:
        await service.run("nope", "2024-02-30")
    assert [v.field for v in bad.value.violations] == ["channel", "business_date"]
    with pytest.raises(InvalidRequest) as bad:
        await service.run(CHANNEL, "9999-01-01")
    assert [v.field for v in bad.value.violations] == ["business_date"]
    with pytest.raises(InvalidRequest) as bad:
        await service.resolve("", "shrug", "", "me")
    assert [v.field for v in bad.value.violations] == ["discrepancy_id", "action", "reason"]
    with pytest.raises(InvalidRequest):
        await service.list_discrepancies(page_token="garbage!")
    assert (await service.list_runs())[0] == []
