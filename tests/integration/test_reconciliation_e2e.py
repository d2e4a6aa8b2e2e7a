"""Reconciliation end to end (issue 6): the platform against the three mock banks, each its own
process, over real sockets; reconciliation over real gRPC.

The banks misbehave: replies are lost, callbacks dropped, payments settle after their polling
window closed, the card bank charges a fee our model does not expect once and invents a
transaction nobody sent. Polling settles what it can; what is left (a card payment still pending
when its window closed, a PSP and a rail payment whose every answer was lost) is settled by the day's
statements. Then every payment is final and agrees with the bank's own book, exactly the injected
discrepancies are open (no false positives), the channels' fees are posted once, and the trial
balance holds. A malformed statement ends its run REJECTED with the line number and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest

from dualflow.core.payments.accounts import channel_fee_account
from dualflow.core.payments.model import Asset, BankAccount, Payment, PaymentRequest, PaymentStatus, RefundStatus
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.sandbox import Sandbox
from dualflow.gateway.server import Platform
from dualflow.v1 import reconciliation_pb2 as pb
from dualflow.v1 import reconciliation_pb2_grpc
from shop_day_fixtures import CARD, FEE_BPS, PSP, RAIL, eventually, fee, shop_platform, start_sandbox

VISA = "4111111111111111"
TODAY = datetime.now(timezone.utc).date().isoformat()
LONG = PollTiming(first_ns=50_000_000, window_ns=600 * 10**9)  # polling settles it
SHORT = PollTiming(first_ns=50_000_000, window_ns=1_000_000_000)  # the window closes first
PHANTOM = 4_321


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("recon-sandbox"), seed=11)
    yield box
    box.stop()


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    async with shop_platform(tmp_path, sandbox, LONG) as p:
        yield p


class Day:
    def __init__(self, platform: Platform, sandbox: Sandbox) -> None:
        self.platform, self.sandbox = platform, sandbox
        self.payments: dict[str, str] = {}  # label -> payment id
        self.token = ""

    async def status(self, label: str) -> PaymentStatus:
        return (await self.platform.payments.get_payment(self.payments[label])).status

    async def until(self, label: str, *statuses: PaymentStatus) -> None:
        async def reached() -> bool:
            return await self.status(label) in statuses
        await eventually(reached)

    async def window_closed(self, label: str) -> None:
        async def gone() -> bool:
            rows = await self.platform.ledger.query("SELECT 1 FROM channel_polls WHERE object_id = ?",
                                                    (self.payments[label],))
            return not rows
        await eventually(gone)

    async def booked(self, bank: str, label: str, status: str = "") -> None:
        async def found() -> bool:
            book = await asyncio.to_thread(self.sandbox.banks[bank].book)
            return any(line["instruction_id"].startswith(self.payments[label]) and line["kind"] == "pay"
                       and (not status or line["status"] == status) for line in book)
        await eventually(found)

    async def card(self, label: str, amount: int, merchant: str = "shop") -> Payment:
        if not self.token:
            assert self.platform.vault is not None
            self.token = (await self.platform.vault.tokenize(VISA, 12, 2031)).token
        p = await self.platform.payments.create_payment(PaymentRequest(
            request_id=label, merchant_id=merchant, payer=f"user:{label}", payee=f"merchant:{merchant}",
            amount=amount, currency="CNY", asset=Asset.BANK_CARD, card_token=self.token))
        self.payments[label] = p.payment_id
        return p

    async def transfer(self, label: str, amount: int) -> Payment:
        p = await self.platform.payments.create_payment(PaymentRequest(
            request_id=label, merchant_id="shop", payer=f"user:{label}", payee="merchant:shop", amount=amount,
            currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=BankAccount("ICBC", "6789", "Dave")))
        self.payments[label] = p.payment_id
        return p


async def test_polling_then_statements_settle_everything_and_find_exactly_what_was_injected(
        platform: Platform, sandbox: Sandbox) -> None:
    day = Day(platform, sandbox)
    card, psp, rail = (sandbox.banks[n] for n in (CARD, PSP, RAIL))

    # Morning, a long polling window: what polling can settle, it settles.
    await day.card("c-ok", 10_000)
    await day.until("c-ok", PaymentStatus.SUCCEEDED)
    card.set_profile(decline_rate=1.0)
    await day.card("c-declined", 20_000)
    await day.until("c-declined", PaymentStatus.FAILED)
    card.set_profile(decline_rate=0.0, fee_bps=70)  # the bank charges this one more than its contract
    await day.card("c-fee", 30_000)
    await day.until("c-fee", PaymentStatus.SUCCEEDED)
    card.set_profile(fee_bps=FEE_BPS[CARD], lost_reply_rate=1.0)
    await day.card("c-lost", 40_000)  # booked, its reply lost: UNKNOWN, then polled
    await day.booked(CARD, "c-lost")
    card.set_profile(lost_reply_rate=0.0)
    await day.until("c-lost", PaymentStatus.SUCCEEDED)
    card.set_profile(phantom_amount=PHANTOM)  # a transaction nobody sent
    refund = await platform.payments.refund_payment("c-ok-refund", day.payments["c-ok"], 2_500)

    psp.set_profile(pending_rate=1.0, settle_after_ms=200, callback_drop_rate=1.0)
    await day.card("p-dropped", 11_000, merchant="psp-shop")  # its callback never comes: polled
    await day.until("p-dropped", PaymentStatus.SUCCEEDED)
    assert (await platform.payments.get_payment(day.payments["p-dropped"])).channel == PSP
    psp.set_profile(pending_rate=0.0)

    await day.transfer("r-ok", 12_000)
    await day.until("r-ok", PaymentStatus.SUCCEEDED)
    rail.set_profile(pending_rate=1.0, settle_after_ms=200, callback_drop_rate=1.0)
    await day.transfer("r-dropped", 13_000)
    await day.until("r-dropped", PaymentStatus.SUCCEEDED)
    rail.set_profile(pending_rate=0.0)

    # Afternoon, a short window: each of these is still open when its window closes.
    platform.payments.polls = SHORT
    card.set_profile(pending_rate=1.0, settle_after_ms=2_500)  # settles, but after the window
    await day.card("c-late", 50_000)
    psp.set_profile(lost_reply_rate=1.0)  # settled at once; every answer lost, the callback dropped
    await day.card("p-lost", 60_000, merchant="psp-shop")
    rail.set_profile(lost_reply_rate=1.0)
    await day.transfer("r-lost", 70_000)
    for label in ("c-late", "p-lost", "r-lost"):
        await day.window_closed(label)
    platform.payments.polls = LONG
    card.set_profile(pending_rate=0.0)
    psp.set_profile(lost_reply_rate=0.0, callback_drop_rate=0.0)
    rail.set_profile(lost_reply_rate=0.0, callback_drop_rate=0.0)
    assert [await day.status(x) for x in ("c-late", "p-lost", "r-lost")] == [
        PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN, PaymentStatus.UNKNOWN]
    # The faults happened as arranged: the lost reply made c-lost UNKNOWN before polling settled it;
    # the PSP's and the rail's notifications of the dropped ones were never sent.
    unknown = await platform.ledger.query("SELECT subject_id FROM outbox WHERE type = 'payment.unknown'")
    assert {day.payments[x] for x in ("c-lost", "p-lost", "r-lost")} <= {r[0] for r in unknown}
    for bank, label in ((psp, "p-dropped"), (rail, "r-dropped")):
        notes = await asyncio.to_thread(bank._call, "GET", "/callbacks")
        assert any(n.get("dropped") for n in notes), (label, notes)
        assert not any(n.get("acknowledged") for n in notes if n.get("instruction_id", "").startswith(
            day.payments[label])), notes
    await day.booked(CARD, "c-late", "SUCCEEDED")
    await eventually(lambda: _refund_done(platform, day.payments["c-ok"]))

    # Evening: the day's statements, over gRPC.
    async with grpc.aio.insecure_channel(platform.address) as channel:
        stub = reconciliation_pb2_grpc.ReconciliationStub(channel)
        runs = {name: await stub.RunReconciliation(pb.RunReconciliationRequest(channel=name, business_date=TODAY),
                                                   timeout=60) for name in (CARD, PSP, RAIL)}
        for name, run in runs.items():
            assert run.state == pb.RUN_STATE_COMPLETED, (name, run)
        counts = {name: {pb.ReconciliationClass.Name(c.match_class).removeprefix("RECONCILIATION_CLASS_"): c.lines
                         for c in run.counts} for name, run in runs.items()}
        assert counts == {
            CARD: {"MATCHED": 4, "STATUS_MISMATCH": 1, "FEE_MISMATCH": 1, "MISSING_INTERNALLY": 1},
            PSP: {"MATCHED": 1, "STATUS_MISMATCH": 1},
            RAIL: {"MATCHED": 2, "STATUS_MISMATCH": 1},
        }, counts
        assert {name: run.auto_resolved for name, run in runs.items()} == {CARD: 1, PSP: 1, RAIL: 1}

        # Every payment is final and says what the bank's own book says.
        for label in day.payments:
            assert (await day.status(label)).final, label
        for label in ("c-late", "p-lost", "r-lost"):
            p = await platform.payments.get_payment(day.payments[label])
            assert p.status is PaymentStatus.SUCCEEDED, label
            assert p.metadata["status_note"] == f"resolved by reconciliation {runs[p.channel].run_id}", label
        for name in (CARD, PSP, RAIL):
            book = {(line["instruction_id"], line["kind"]): line
                    for line in await asyncio.to_thread(sandbox.banks[name].book)}
            ours = [await platform.payments.get_payment(pid) for pid in day.payments.values()]
            for p in (p for p in ours if p.channel == name):
                line = book.pop((p.instruction_id, "pay"))
                assert (line["status"], line["amount"]) == (p.status.name, p.amount), (name, p.payment_id, line)
            for (iid, kind), line in book.items():  # what is left: the refund, and the card bank's invention
                assert (name, kind, line["status"]) in ((CARD, "refund", "SUCCEEDED"), (CARD, "pay", "SUCCEEDED")), \
                    (name, iid, line)
                if kind == "pay":
                    assert line["amount"] == PHANTOM

        # Exactly the injected discrepancies: the fee, the invented transaction.
        found = (await stub.ListDiscrepancies(pb.ListDiscrepanciesRequest(), timeout=30)).discrepancies
        assert sorted((d.channel, pb.ReconciliationClass.Name(d.match_class), d.object_id) for d in found) == sorted([
            (CARD, "RECONCILIATION_CLASS_FEE_MISMATCH", day.payments["c-fee"]),
            (CARD, "RECONCILIATION_CLASS_MISSING_INTERNALLY", "")])
        fee_off = next(d for d in found if d.match_class == pb.RECONCILIATION_CLASS_FEE_MISMATCH)
        assert fee_off.detail == f"fee: expected {fee(CARD, 30_000)}, channel {(30_000 * 70 + 5_000) // 10_000}"

        # The channels' fees: one posting per charged line, from each channel's receivable.
        charged = {CARD: fee(CARD, 10_000) + (30_000 * 70 + 5_000) // 10_000 + fee(CARD, 40_000)
                   + fee(CARD, PHANTOM) + fee(CARD, 50_000),
                   PSP: fee(PSP, 11_000) + fee(PSP, 60_000),
                   RAIL: fee(RAIL, 12_000) + fee(RAIL, 13_000) + fee(RAIL, 70_000)}
        for name, run in runs.items():
            [total] = run.fees
            assert (total.currency, total.fee_minor, total.posted_now) == ("CNY", charged[name], total.lines), name
        expenses = await platform.ledger.lookup_accounts([channel_fee_account(n, "CNY").id for n in (CARD, PSP, RAIL)])
        assert sorted(a.debits_posted for a in expenses) == sorted(charged.values())
        await _balanced(platform)

        # Run again: nothing left to resolve, no fee posted twice, the same two discrepancies.
        again = await stub.RunReconciliation(pb.RunReconciliationRequest(channel=CARD, business_date=TODAY,
                                                                          force=True), timeout=60)
        assert (again.attempt, again.auto_resolved, [f.posted_now for f in again.fees]) == (2, 0, [0])
        assert len((await stub.ListDiscrepancies(pb.ListDiscrepanciesRequest(), timeout=30)).discrepancies) == 2

        # A truncated statement: REJECTED with its line, and nothing changes.
        before = await _snapshot(platform)
        rail.set_profile(statement_fault="truncated")
        broken = await stub.RunReconciliation(pb.RunReconciliationRequest(channel=RAIL, business_date=TODAY,
                                                                          force=True), timeout=60)
        rail.set_profile(statement_fault="")
        assert (broken.state, broken.error_reason, broken.attempt) == (pb.RUN_STATE_REJECTED, "TRUNCATED", 2)
        assert broken.error_line == 4, broken  # header, two whole lines, then the one cut in half
        assert list(broken.counts) == [] and broken.auto_resolved == 0
        assert await _snapshot(platform) == before
        assert len((await stub.ListDiscrepancies(pb.ListDiscrepanciesRequest(), timeout=30)).discrepancies) == 2


async def _refund_done(platform: Platform, payment_id: str) -> bool:
    return [r.status for r in await platform.payments.refunds_of(payment_id)] == [RefundStatus.SUCCEEDED]


async def _balanced(platform: Platform) -> None:
    [(debits, credits, pending_debits, pending_credits)] = await platform.ledger.query(
        "SELECT SUM(debits_posted), SUM(credits_posted), SUM(debits_pending), SUM(credits_pending) FROM accounts "
        "WHERE currency = 'CNY'")
    assert (debits, pending_debits) == (credits, pending_credits)
    assert pending_debits == 0  # every hold was posted or voided: nothing waits for an answer


async def _snapshot(platform: Platform) -> tuple[Any, ...]:
    return (await platform.ledger.query("SELECT id, debits_posted, credits_posted, debits_pending, credits_pending "
                                        "FROM accounts ORDER BY id"),
            await platform.ledger.query("SELECT payment_id, status, body FROM payments ORDER BY payment_id"),
            await platform.ledger.query("SELECT COUNT(*) FROM outbox"),
            await platform.ledger.query("SELECT discrepancy_id, status, version FROM recon_discrepancies "
                                        "ORDER BY discrepancy_id"))
