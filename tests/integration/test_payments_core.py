"""The payment core on both backends: internal settlement, idempotency, refunds,
external payments through a scripted channel, discrepancies and restarts."""

from __future__ import annotations

import asyncio
import json

import pytest

from dualflow.adapters.scripted import PENDING, SUCCEEDED, UNKNOWN, Plan, ScriptedChannel, failed
from dualflow.core.errors import AlreadyExists, InvalidRequest, NotFound, PreconditionFailed
from dualflow.core.payments.accounts import Party, fee_account, holding_account
from dualflow.core.payments.model import Asset, BankAccount, PaymentStatus, RefundStatus
from dualflow.core.payments.service import PaymentService

from payments_fixtures import fund, pay, payment_service

BANK = BankAccount("ICBC", "6789", "Alice")


async def wallet(service: PaymentService, user: str) -> int:
    return (await service.get_balance(user, Asset.WALLET, "CNY")).available


async def settlement(service: PaymentService, merchant: str = "shop") -> int:
    [a] = await service.ledger.lookup_accounts([holding_account(Party("merchant", merchant), Asset.WALLET, "CNY").id])
    return a.credits_posted - a.debits_posted


async def events(service: PaymentService, subject: str = "") -> list[str]:
    return [e.type for e in await service.feed.read_after(0, 1000, subject_id=subject)]


async def wait_status(service: PaymentService, payment_id: str, *statuses: PaymentStatus) -> None:
    for _ in range(2_000):  # 20 s: generous for a loaded CI machine, instant when things work
        if (await service.get_payment(payment_id)).status in statuses:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{payment_id} never reached {statuses}: {(await service.get_payment(payment_id)).status}")


async def test_wallet_payment_settles_with_fee_and_replays(db_url: str) -> None:
    async with payment_service(db_url) as service:
        await fund(service, "alice", Asset.WALLET, 10_000)
        p = await service.create_payment(pay("r1", 2_500))
        assert p.status is PaymentStatus.SUCCEEDED and p.fee == 25
        assert await wallet(service, "alice") == 7_500
        assert await settlement(service) == 2_475
        [fees] = await service.ledger.lookup_accounts([fee_account("CNY").id])
        assert fees.credits_posted == 25
        again = await service.create_payment(pay("r1", 2_500))
        assert again == p
        with pytest.raises(AlreadyExists) as reused:
            await service.create_payment(pay("r1", 2_600))
        assert reused.value.reason == "REQUEST_ID_REUSED"
        assert await wallet(service, "alice") == 7_500
        assert await events(service, p.payment_id) == ["payment.succeeded"]
        assert "balance.updated" in await events(service)


async def test_insufficient_funds_fails_whole_chain(db_url: str) -> None:
    async with payment_service(db_url) as service:
        await fund(service, "bob", Asset.POINTS, 100)
        p = await service.create_payment(pay("p1", 101, Asset.POINTS, payer="user:bob"))
        assert p.status is PaymentStatus.FAILED and p.failure_reason == "INSUFFICIENT_FUNDS"
        assert (await service.get_balance("bob", Asset.POINTS, "CNY")).available == 100
        ok = await service.create_payment(pay("p2", 100, Asset.POINTS, payer="user:bob"))
        assert ok.status is PaymentStatus.SUCCEEDED and ok.fee == 0
        assert (await service.get_balance("bob", Asset.POINTS, "CNY")).available == 0
        # The merchant issues points to a user: its points account goes negative, the user's up.
        issued = await service.create_payment(pay("i1", 50, Asset.POINTS, payer="merchant:shop", payee="user:bob"))
        assert issued.status is PaymentStatus.SUCCEEDED
        assert (await service.get_balance("bob", Asset.POINTS, "CNY")).available == 50


async def test_refunds_partial_then_rest_never_above_captured(db_url: str) -> None:
    async with payment_service(db_url) as service:
        await fund(service, "alice", Asset.WALLET, 1_000)
        p = await service.create_payment(pay("r1", 1_000, merchant="other"))
        r1 = await service.refund_payment("rf1", p.payment_id, 300)
        assert r1.status is RefundStatus.SUCCEEDED
        assert await service.refund_payment("rf1", p.payment_id, 300) == r1
        with pytest.raises(AlreadyExists):
            await service.refund_payment("rf1", p.payment_id, 200)
        with pytest.raises(PreconditionFailed) as too_much:
            await service.refund_payment("rf2", p.payment_id, 701)
        assert too_much.value.reason == "REFUND_EXCEEDS_CAPTURED"
        rest = await service.refund_payment("rf3", p.payment_id, 0)
        assert rest.amount == 700
        assert await wallet(service, "alice") == 1_000
        assert (await service.get_payment(p.payment_id)).refunded_amount == 1_000
        with pytest.raises(PreconditionFailed):
            await service.refund_payment("rf4", p.payment_id, 1)
        with pytest.raises(NotFound):
            await service.refund_payment("rf5", "pay_missing", 1)


async def test_bad_requests_change_nothing(db_url: str) -> None:
    async with payment_service(db_url) as service:
        await fund(service, "alice", Asset.WALLET, 1_000)
        cases = [
            (pay("b1", -5), InvalidRequest, "amount"),
            (pay("b2", 5, currency="EUR"), InvalidRequest, "currency"),
            (pay("b3", 5, currency="XXQ"), InvalidRequest, "currency"),
            (pay("b4", 5, merchant="ghost"), NotFound, "merchant_id"),
            (pay("", 5), InvalidRequest, "request_id"),
            (pay("b6", 5, payer="alice"), InvalidRequest, "payer"),
            (pay("b7", 5, payee="merchant:other"), InvalidRequest, "payee"),
            (pay("b8", 5, Asset.BANK_CARD), InvalidRequest, "method.card_token"),
        ]
        for request, error, field in cases:
            with pytest.raises(error) as caught:
                await service.create_payment(request)
            assert field in {v.field for v in caught.value.violations} or field in caught.value.message, request
        payments, _ = await service.list_payments("")
        assert payments == []
        assert await wallet(service, "alice") == 1_000


async def test_external_payment_succeeds_later_and_posts_hold(db_url: str) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.05))
    async with payment_service(db_url, channel) as service:
        p = await service.create_payment(pay("x1", 5_000, Asset.BANK_TRANSFER, bank_account=BANK))
        assert p.status is PaymentStatus.CREATED and p.channel == "scripted"
        await wait_status(service, p.payment_id, PaymentStatus.SUCCEEDED)
        assert await settlement(service) == 5_000 - 50
        assert await events(service, p.payment_id) == [
            "payment.created", "payment.processing", "payment.succeeded"]
        assert len(channel.submitted) == 1


async def test_failure_voids_hold_and_unknown_is_polled(db_url: str) -> None:
    def script(i):  # noqa: ANN001, ANN202
        if i.amount == 13:
            return Plan(on_submit=failed("DECLINED"))
        return Plan(on_submit=UNKNOWN, final=SUCCEEDED, settle_after_s=0.1, submit_raises=i.amount == 77)

    channel = ScriptedChannel(script)
    async with payment_service(db_url, channel) as service:
        declined = await service.create_payment(pay("x1", 13, Asset.BANK_TRANSFER, bank_account=BANK))
        unknown = await service.create_payment(pay("x2", 200, Asset.BANK_TRANSFER, bank_account=BANK))
        dropped = await service.create_payment(pay("x3", 77, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, declined.payment_id, PaymentStatus.FAILED)
        await wait_status(service, unknown.payment_id, PaymentStatus.SUCCEEDED)
        await wait_status(service, dropped.payment_id, PaymentStatus.SUCCEEDED)
        assert (await service.get_payment(declined.payment_id)).failure_reason == "DECLINED"
        assert "payment.unknown" in await events(service, unknown.payment_id)
        assert "payment.unknown" in await events(service, dropped.payment_id)
        # Unknown submissions are asked about, never sent again.
        assert sorted(i.amount for i in channel.submitted) == [13, 77, 200]
        [receivable] = [a for a in await service.ledger.lookup_accounts(
            [holding_account(Party("merchant", "shop"), Asset.WALLET, "CNY").id])]
        assert receivable.credits_pending == 0 and receivable.credits_posted == 277


async def test_late_contradicting_answer_becomes_discrepancy(db_url: str) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=failed("DECLINED")))
    async with payment_service(db_url, channel) as service:
        p = await service.create_payment(pay("x1", 500, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, p.payment_id, PaymentStatus.FAILED)
        late = await service.apply_channel_answer(p.payment_id, SUCCEEDED, source="callback")
        assert late.status is PaymentStatus.FAILED
        found = await service.feed.read_after(0, 100, types=["payment.discrepancy"])
        assert len(found) == 1
        assert json.loads(found[0].payload_json)["kind"] == "LATE_ANSWER_CONTRADICTS_FINAL"
        assert await settlement(service) == 0


async def test_cancel_only_before_dispatch(db_url: str) -> None:
    gate = asyncio.Event()
    channel = ScriptedChannel(lambda i: Plan(on_submit=SUCCEEDED, submit_delay_s=0.05))
    async with payment_service(db_url, channel) as service:
        await fund(service, "alice", Asset.WALLET, 100)
        internal = await service.create_payment(pay("w1", 10))
        with pytest.raises(PreconditionFailed) as final:
            await service.cancel_payment(internal.payment_id)
        assert final.value.reason == "PAYMENT_NOT_CANCELABLE"
        # A CREATED payment whose dispatch has not run yet can be canceled; the hold is voided.
        service._stopping = True  # keep the dispatcher from picking the next payment up
        p = await service.create_payment(pay("x1", 500, Asset.BANK_TRANSFER, bank_account=BANK))
        service._stopping = False
        canceled = await service.cancel_payment(p.payment_id, "customer changed their mind")
        assert canceled.status is PaymentStatus.CANCELED and canceled.fee == 0
        assert canceled.metadata["status_note"] == "customer changed their mind"
        [acct] = await service.ledger.lookup_accounts([holding_account(Party("merchant", "shop"), Asset.WALLET,
                                                                         "CNY").id])
        assert acct.credits_pending == 0
        gate.set()


async def test_restart_resumes_open_payments_without_resending(db_url: str) -> None:
    never = ScriptedChannel(lambda i: Plan(on_submit=UNKNOWN, final=None))
    async with payment_service(db_url, never) as service:
        p = await service.create_payment(pay("x1", 900, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, p.payment_id, PaymentStatus.UNKNOWN)
    later = ScriptedChannel()
    later.remember(p.instruction_id, Plan(on_submit=UNKNOWN, final=SUCCEEDED))
    async with payment_service(db_url, later) as service:
        await wait_status(service, p.payment_id, PaymentStatus.SUCCEEDED)
        assert later.submitted == []
        assert later.queries >= 1


async def test_request_keys_expire_after_the_window(db_url: str) -> None:
    now = [10**18]
    async with payment_service(db_url, clock_ns=lambda: now[0], key_window_s=60) as service:
        await fund(service, "alice", Asset.WALLET, 1_000)
        first = await service.create_payment(pay("k1", 100))
        now[0] += 59 * 10**9
        assert (await service.create_payment(pay("k1", 100))).payment_id == first.payment_id
        now[0] += 2 * 10**9
        await service.prune()
        second = await service.create_payment(pay("k1", 100))
        assert second.payment_id != first.payment_id
        assert await wallet(service, "alice") == 800


async def test_top_up_own_wallet_by_bank_and_no_fee_when_failed(db_url: str) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=failed("DECLINED")) if i.amount == 13 else Plan())
    async with payment_service(db_url, channel) as service:
        top_up = await service.create_payment(pay("t1", 700, Asset.BANK_TRANSFER, payee="user:alice",
                                                  bank_account=BANK))
        await wait_status(service, top_up.payment_id, PaymentStatus.SUCCEEDED)
        assert await wallet(service, "alice") == 700
        with pytest.raises(InvalidRequest):
            await service.create_payment(pay("t2", 5, Asset.WALLET, payee="user:alice"))
        declined = await service.create_payment(pay("t3", 13, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, declined.payment_id, PaymentStatus.FAILED)
        assert (await service.get_payment(declined.payment_id)).fee == 0
        broke = await service.create_payment(pay("t4", 10_000))
        assert broke.status is PaymentStatus.FAILED and broke.fee == 0


async def test_balance_cache_is_invalidated_by_payments(db_url: str) -> None:
    async with payment_service(db_url, balance_cache_ttl_s=60) as service:
        await fund(service, "alice", Asset.WALLET, 1_000)
        assert await wallet(service, "alice") == 1_000
        await service.create_payment(pay("c1", 300))
        assert await wallet(service, "alice") == 700, "a payment invalidates the payer's cached balance"
        await service.refund_payment("cr1", (await service.list_payments("shop"))[0][0].payment_id, 100)
        assert await wallet(service, "alice") == 800, "a refund invalidates it too"
        # A change that bypasses the payment gateway (a raw ledger transfer) is seen after the TTL only.
        await fund(service, "alice", Asset.WALLET, 5)
        assert await wallet(service, "alice") == 800


async def test_overload_is_refused_fast_and_changes_nothing(db_url: str) -> None:
    from dualflow.core.errors import Overloaded

    async with payment_service(db_url, ledger_kw={"writer_queue_items_max": 64}) as service:
        await fund(service, "alice", Asset.WALLET, 1_000_000)
        outcomes = await asyncio.gather(*(service.create_payment(pay(f"o{i}", 1)) for i in range(40)),
                                        return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, Overloaded)]
        paid = [o for o in outcomes if not isinstance(o, BaseException)]
        assert refused and paid and len(refused) + len(paid) == 40
        assert all(o.retry_after_ms > 0 for o in refused)
        listed, _ = await service.list_payments("shop", page_size=1000)
        assert len(listed) == len(paid)
        assert await wallet(service, "alice") == 1_000_000 - len(paid)


async def test_not_submitted_moves_to_the_next_channel_and_nothing_else_does(db_url: str) -> None:
    from dualflow.adapters.scripted import NOT_SUBMITTED
    from dualflow.core.payments.accounts import receivable_account

    def script(i):  # noqa: ANN001, ANN202 - channel "a" refuses connections; "b" works
        if i.channel == "a":
            return Plan(on_submit=NOT_SUBMITTED)
        return Plan(on_submit=SUCCEEDED)

    channel = ScriptedChannel(script, names=("a", "b"))
    async with payment_service(db_url, channel) as service:
        p = await service.create_payment(pay("n1", 300, Asset.BANK_TRANSFER, bank_account=BANK))
        assert p.channel == "a"
        await wait_status(service, p.payment_id, PaymentStatus.SUCCEEDED)
        done = await service.get_payment(p.payment_id)
        assert (done.channel, done.attempt) == ("b", 2)
        assert [(i.channel, i.instruction_id) for i in channel.submitted] == [
            ("a", f"{p.payment_id}-1"), ("b", f"{p.payment_id}-2")]
        a, b = await service.ledger.lookup_accounts([receivable_account("a", "CNY").id,
                                                     receivable_account("b", "CNY").id])
        assert (a.debits_pending, a.debits_posted) == (0, 0)
        assert (b.debits_pending, b.debits_posted) == (0, 300)
        assert "payment.rerouted" in await events(service, p.payment_id)

    nowhere = ScriptedChannel(lambda i: Plan(on_submit=NOT_SUBMITTED), names=("a",))
    async with payment_service(db_url, nowhere) as service:
        q = await service.create_payment(pay("n2", 300, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, q.payment_id, PaymentStatus.FAILED)
        assert (await service.get_payment(q.payment_id)).failure_reason == "CONNECTION_REFUSED"
        assert len(nowhere.submitted) == 1


async def test_poll_window_closes_reversal_or_reconciliation(db_url: str) -> None:
    from dualflow.core.ledger.model import PendingStatus
    from dualflow.core.payments.accounts import transfer_id

    reversible = ScriptedChannel(lambda i: Plan(on_submit=UNKNOWN, final=None), reversible=True)
    async with payment_service(db_url, reversible, poll_window_s=0.2) as service:
        p = await service.create_payment(pay("v1", 400, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, p.payment_id, PaymentStatus.FAILED)
        failed_payment = await service.get_payment(p.payment_id)
        assert failed_payment.failure_reason == "REVERSED_AFTER_UNKNOWN"
        assert [i.kind for i in reversible.reversed] == ["reverse"]
        [hold] = await service.ledger.lookup_transfers([transfer_id(p.payment_id, "hold")])
        assert hold.pending_status == PendingStatus.VOIDED
        assert await service.ledger.query("SELECT * FROM channel_polls") == []

    stuck = ScriptedChannel(lambda i: Plan(on_submit=UNKNOWN, final=None))
    async with payment_service(db_url, stuck, poll_window_s=0.2) as service:
        q = await service.create_payment(pay("v2", 400, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, q.payment_id, PaymentStatus.UNKNOWN)
        for _ in range(200):
            if not await service.ledger.query("SELECT * FROM channel_polls WHERE object_id = ?", (q.payment_id,)):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the poll row outlived its window")
        assert (await service.get_payment(q.payment_id)).status is PaymentStatus.UNKNOWN


async def test_poll_schedule_survives_a_restart_with_its_window(db_url: str) -> None:
    never = ScriptedChannel(lambda i: Plan(on_submit=UNKNOWN, final=None))
    async with payment_service(db_url, never, poll_window_s=600) as service:
        p = await service.create_payment(pay("s1", 900, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, p.payment_id, PaymentStatus.UNKNOWN)
        [(window_before,)] = await service.ledger.query(
            "SELECT window_ends_ns FROM channel_polls WHERE object_id = ?", (p.payment_id,))
    still = ScriptedChannel()
    still.remember(p.instruction_id, Plan(on_submit=UNKNOWN, final=None))
    async with payment_service(db_url, still, poll_window_s=600) as service:
        await asyncio.sleep(0.1)
        [(window_after, attempts)] = await service.ledger.query(
            "SELECT window_ends_ns, attempts FROM channel_polls WHERE object_id = ?", (p.payment_id,))
        assert window_after == window_before and attempts >= 1


async def test_external_refund_goes_through_the_channel(db_url: str) -> None:
    channel = ScriptedChannel(lambda i: Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.05))
    async with payment_service(db_url, channel) as service:
        p = await service.create_payment(pay("e1", 1_000, Asset.BANK_TRANSFER, bank_account=BANK))
        await wait_status(service, p.payment_id, PaymentStatus.SUCCEEDED)
        refund = await service.refund_payment("er1", p.payment_id, 400)
        assert refund.status is RefundStatus.PROCESSING
        for _ in range(300):
            [current] = await service.refunds_of(p.payment_id)
            if current.status is RefundStatus.SUCCEEDED:
                break
            await asyncio.sleep(0.01)
        assert current.status is RefundStatus.SUCCEEDED
        assert [i.kind for i in channel.submitted] == ["pay", "refund"]
        assert await settlement(service) == 1_000 - 10 - 400
