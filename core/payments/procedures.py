"""What a payment does inside one group commit: read its rows, post its
transfers, write its new state and its outbox events, all in one transaction.

Each class here is a ledger Extension (core/ledger/batch.py). They decide first
and write last, and report expected refusals as values, so one refused payment
never fails the other requests of its batch. Transfer ids derive from the
payment or refund id (accounts.transfer_id), so a step re-driven after a crash
names the same transfers and the ledger answers EXISTS instead of posting twice.

Payouts (kind "payout") are external payments in the other direction: the hold debits the
user's wallet and credits the channel's receivable, SUCCEEDED posts it, FAILED and CANCELED void
it. Pooled channels (`pools`: channel -> reserve-fund pool, for channels whose money lands
straight in one of our pools) get a sweep in the commit that settles a payment or a refund:
the pool account takes over what the channel's receivable held (CODE_SWEEP).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dualflow.core.ledger.batch import Context, Operation
from dualflow.core.ledger.model import Account, CreateTransferResult, Transfer, TransferFlags
from dualflow.core.ledger.state_machine import A_EXISTS, A_OK, T_EXISTS, T_OK

from . import records
from .accounts import (
    Party,
    fee_account,
    holding_account,
    parse_party,
    pool_account,
    receivable_account,
    transfer_id,
)
from .model import (
    Balance,
    Discrepancy,
    Payment,
    PaymentRequest,
    PaymentStatus,
    Refund,
    RefundStatus,
    Routing,
    may_move,
)

CODE_PAYMENT, CODE_FEE, CODE_REFUND, CODE_HOLD = 1, 2, 3, 4
# A pooled channel's settled money moving between its receivable and its pool account. Not 5:
# that is a channel's fee (core/payments/resolution.py CODE_CHANNEL_FEE).
CODE_SWEEP = 6
_EXTENSION_ITEMS = 16
_Gen = Generator[Operation, Any, Any]
_SETTLED = frozenset({T_OK, T_EXISTS})


@dataclass(slots=True)
class Outcome:
    """What a procedure did. `kind` says how to answer the caller."""

    kind: str  # created | replayed | reused | moved | unchanged | refused | discrepancy
    payment: Payment | None = None
    refund: Refund | None = None
    reason: str = ""
    touched_accounts: list[int] = field(default_factory=list)
    last_seq: int = 0  # the newest ledger timestamp (and so outbox sequence) the commit used
    # The payment's state before this step (for metrics of time spent in a state).
    previous_status: PaymentStatus | None = None
    previous_updated_at_ns: int = 0


class _Procedure:
    """Runs `steps` and notes the newest sequence it used, so readers can be woken precisely."""

    def run(self, ctx: Context) -> _Gen:
        outcome: Outcome = yield from self.steps(ctx)  # type: ignore[attr-defined]
        outcome.last_seq = ctx.last_timestamp
        return outcome


def _emit(ctx: Context, type_: str, merchant_id: str, subject_id: str, data: dict[str, Any] | str) -> _Gen:
    seq = ctx.timestamp()
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), sort_keys=True)
    yield from ctx.execute(records.INSERT_EVENT, (seq, f"evt_{seq}", type_, merchant_id, subject_id,
                                                  ctx.now_ns, payload))


def _load_payment(ctx: Context, payment_id: str) -> Generator[Operation, Any, Payment | None]:
    rows = yield from ctx.query(records.SELECT_PAYMENT, (payment_id,))
    return records.payment_from_body(rows[0][0]) if rows else None


def _open(ctx: Context, accounts: Iterable[Account]) -> Generator[Operation, Any, bool]:
    wanted = list({a.id: a for a in accounts}.values())
    results = yield from ctx.create_accounts(wanted)
    return all(r in (A_OK, A_EXISTS) for r in results)


def _failure_reason(results: list[int]) -> str:
    for r in results:
        if r == CreateTransferResult.EXCEEDS_CREDITS:
            return "INSUFFICIENT_FUNDS"
    for r in results:
        if r not in _SETTLED and r != CreateTransferResult.LINKED_EVENT_FAILED:
            return f"LEDGER_{CreateTransferResult(r).name}"
    return "LEDGER_REJECTED"


def _balance_events(ctx: Context, merchant_id: str, payment: Payment, parties: Iterable[str]) -> Generator[
        Operation, Any, list[int]]:
    """One balance.updated event per user account the change touched; returns their account ids."""
    touched = []
    for text in dict.fromkeys(parties):  # a top-up's payer is its payee: one account, one event
        party = parse_party(text)
        if party is None or party.kind != "user":
            continue
        acct = holding_account(party, payment.asset, payment.currency)
        found = yield from ctx.accounts([acct.id])
        a = found.get(acct.id)
        if a is None:
            continue
        touched.append(acct.id)
        balance = Balance(party.id, payment.asset, payment.currency,
                          available=a.credits_posted - a.debits_posted - a.debits_pending,
                          pending_in=a.credits_pending, pending_out=a.debits_pending,
                          as_of_timestamp=ctx.timestamp())
        data = {"user_id": balance.user_id, "asset": balance.asset.name, "currency": balance.currency,
                "available": balance.available, "pending_in": balance.pending_in,
                "pending_out": balance.pending_out, "as_of_timestamp": balance.as_of_timestamp}
        yield from _emit(ctx, "balance.updated", merchant_id, f"user:{party.id}", data)
    return touched


def _save_payment(ctx: Context, p: Payment, event: str) -> _Gen:
    body = records.payment_body(p)  # the row and its event carry the same JSON
    yield from ctx.execute(records.UPSERT_PAYMENT, records.payment_params(p, body))
    yield from _emit(ctx, event, p.merchant_id, p.payment_id, body)


def _status_event(status: PaymentStatus) -> str:
    return f"payment.{status.name.lower()}"


def hold_leg(attempt: int) -> str:
    """The ledger leg name of an external payment's hold; one per channel attempt."""
    return "hold" if attempt == 1 else f"hold.{attempt}"


def hold_sides(payment: Payment, channel: str) -> tuple[Account, Account]:
    """(debit, credit) of an external payment's hold on `channel`. A collection (kind "pay"):
    the channel will owe us what the payee is credited. A payout: the user's wallet gives what
    the channel will pay out of our money."""
    receivable = receivable_account(channel, payment.currency)
    if payment.kind == "payout":
        payer = parse_party(payment.payer)
        assert payer is not None, "validated before submission"
        return holding_account(payer, payment.asset, payment.currency), receivable
    payee = parse_party(payment.payee)
    assert payee is not None, "validated before submission"
    return receivable, holding_account(payee, payment.asset, payment.currency)


def sweep_leg(ctx: Context, object_id: str, leg: str, channel: str, pool: str, currency: str, amount: int, *,
              into_pool: bool) -> Generator[Operation, Any, Transfer]:
    """The transfer that moves settled money of a pooled channel between its receivable and its pool
    account (opened on first use): `into_pool` for a collection (the money is in the pool now, not
    owed by the channel), else out of it (a payout or a return payment left the pool)."""
    pool_acct, receivable = pool_account(pool, currency), receivable_account(channel, currency)
    opened = yield from _open(ctx, [pool_acct, receivable])
    assert opened, f"the account of pool {pool!r} is misconfigured"
    debit, credit = (pool_acct, receivable) if into_pool else (receivable, pool_acct)
    return Transfer(id=transfer_id(object_id, leg), debit_account_id=debit.id, credit_account_id=credit.id,
                    amount=amount, currency=currency, code=CODE_SWEEP)


def _linked(legs: list[Transfer]) -> list[Transfer]:
    """One chain: every leg but the last LINKED, so they commit all or nothing."""
    for leg in legs[:-1]:
        leg.flags |= TransferFlags.LINKED
    return legs


@dataclass(frozen=True, slots=True)
class PollTiming:
    """When a payment that is not final is first asked about, and for how long."""

    first_ns: int = 500_000_000
    window_ns: int = 3600 * 1_000_000_000


@dataclass(slots=True)
class CreatePayment(_Procedure):
    """A new payment order: internal assets settle now, external ones are held and await a channel."""

    request: PaymentRequest
    fingerprint: str
    payment_id: str
    fee: int
    key_window_ns: int
    channel: str = ""
    routing: Routing | None = None
    card: Any = None  # CardInfo for BANK_CARD
    max_items: int = _EXTENSION_ITEMS

    # Batch hints (core/ledger/batch.py): the key lookup and the rows this payment touches
    # are read once for the whole group commit instead of one round trip each.
    @property
    def prefetch(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(records.SELECT_KEY_ANY, (f"pay:{self.request.merchant_id}", self.request.request_id))]

    @property
    def accounts_hint(self) -> list[int]:
        return [a.id for a in self._accounts()]

    @property
    def transfers_hint(self) -> list[int]:
        pid = self.payment_id
        return [transfer_id(pid, "pay"), transfer_id(pid, "fee")] if self.request.asset.internal \
            else [transfer_id(pid, hold_leg(1))]

    def _accounts(self) -> list[Account]:
        req = self.request
        payer, payee = parse_party(req.payer), parse_party(req.payee)
        assert payer is not None and payee is not None, "validated before submission"
        if req.asset.internal:
            return [holding_account(payer, req.asset, req.currency), holding_account(payee, req.asset, req.currency),
                    fee_account(req.currency)]
        if req.kind == "payout":
            return [holding_account(payer, req.asset, req.currency), receivable_account(self.channel, req.currency)]
        return [receivable_account(self.channel, req.currency), holding_account(payee, req.asset, req.currency),
                fee_account(req.currency)]

    def steps(self, ctx: Context) -> _Gen:
        req = self.request
        scope = f"pay:{req.merchant_id}"
        memo_key = ("request_key", scope, req.request_id)
        known = ctx.memo.get(memo_key)  # written by an earlier payment of this batch
        if known is None:
            rows = ctx.prefetched[0] if ctx.prefetched else (
                yield from ctx.query(records.SELECT_KEY_ANY, (scope, req.request_id)))
            live = [(f, o) for f, o, expires in rows if expires > ctx.now_ns]
            known = live[0] if live else None
        if known is not None:
            fingerprint, existing_id = known
            if fingerprint != self.fingerprint:
                return Outcome("reused", reason="REQUEST_ID_REUSED")
            existing = yield from _load_payment(ctx, existing_id)
            return Outcome("replayed", payment=existing)
        ctx.memo[memo_key] = (self.fingerprint, self.payment_id)

        payer = parse_party(req.payer)
        payee = parse_party(req.payee)
        assert payer is not None and payee is not None, "validated before submission"
        now = ctx.now_ns
        payment = Payment(
            payment_id=self.payment_id, request_id=req.request_id, merchant_id=req.merchant_id,
            payer=req.payer, payee=req.payee, amount=req.amount, currency=req.currency, asset=req.asset,
            status=PaymentStatus.CREATED, fee=self.fee, created_at_ns=now, updated_at_ns=now,
            trade_order_id=req.trade_order_id, description=req.description, metadata=dict(req.metadata),
            card=self.card, bank_account=req.bank_account, channel=self.channel, routing=self.routing,
            kind=req.kind,
        )
        if req.asset.internal:
            outcome = yield from self._settle_internal(ctx, payment, payer, payee)
        else:
            outcome = yield from self._hold_external(ctx, payment)
        yield from ctx.execute(records.UPSERT_KEY, (scope, req.request_id, self.fingerprint, self.payment_id,
                                                    ctx.now_ns + self.key_window_ns))
        return outcome

    def _settle_internal(self, ctx: Context, payment: Payment, payer: Party, payee: Party) -> _Gen:
        cur = payment.currency
        src = holding_account(payer, payment.asset, cur)
        dst = holding_account(payee, payment.asset, cur)
        fees = fee_account(cur)
        opened = yield from _open(ctx, [src, dst, fees])
        if not opened:
            failed = replace(payment, status=PaymentStatus.FAILED, failure_reason="ACCOUNT_MISCONFIGURED", fee=0)
            yield from _save_payment(ctx, failed, "payment.failed")
            return Outcome("created", payment=failed)
        legs = [Transfer(id=transfer_id(payment.payment_id, "pay"), debit_account_id=src.id,
                         credit_account_id=dst.id, amount=payment.amount, currency=cur, code=CODE_PAYMENT)]
        if payment.fee:
            legs[0].flags |= TransferFlags.LINKED
            legs.append(Transfer(id=transfer_id(payment.payment_id, "fee"), debit_account_id=dst.id,
                                 credit_account_id=fees.id, amount=payment.fee, currency=cur, code=CODE_FEE))
        results = yield from ctx.create_transfers(legs)
        if all(r in _SETTLED for r in results):
            done = replace(payment, status=PaymentStatus.SUCCEEDED)
            yield from _save_payment(ctx, done, "payment.succeeded")
            touched = yield from _balance_events(ctx, payment.merchant_id, done, (payment.payer, payment.payee))
            return Outcome("created", payment=done, touched_accounts=touched)
        failed = replace(payment, status=PaymentStatus.FAILED, failure_reason=_failure_reason(results), fee=0)
        yield from _save_payment(ctx, failed, "payment.failed")
        return Outcome("created", payment=failed)

    def _hold_external(self, ctx: Context, payment: Payment) -> _Gen:
        cur = payment.currency
        src, dst = hold_sides(payment, payment.channel)
        opened = yield from _open(ctx, [src, dst, fee_account(cur)])
        hold = Transfer(id=transfer_id(payment.payment_id, hold_leg(payment.attempt)), debit_account_id=src.id,
                        credit_account_id=dst.id, amount=payment.amount, currency=cur, code=CODE_HOLD,
                        flags=TransferFlags.PENDING)
        # A payout's wallet may not be overdrawn: too little money fails it here, INSUFFICIENT_FUNDS.
        results = (yield from ctx.create_transfers([hold])) if opened else []
        if not opened or results[0] not in _SETTLED:
            failed = replace(payment, status=PaymentStatus.FAILED, fee=0,
                             failure_reason=_failure_reason(results) if opened else "ACCOUNT_MISCONFIGURED")
            yield from _save_payment(ctx, failed, "payment.failed")
            return Outcome("created", payment=failed)
        yield from _save_payment(ctx, payment, "payment.created")
        touched: list[int] = []
        if payment.kind == "payout":  # the wallet's available balance dropped now
            touched = yield from _balance_events(ctx, payment.merchant_id, payment, (payment.payer,))
        return Outcome("created", payment=payment, touched_accounts=touched)


@dataclass(slots=True)
class MovePayment(_Procedure):
    """One state change of an external payment, with its ledger effect.

    SUCCEEDED posts the hold (and takes the fee, and sweeps a pooled channel's money
    into or out of its pool), FAILED and CANCELED void it, PROCESSING and UNKNOWN
    leave it. A move the state machine does not allow changes nothing; if the
    payment is already final and the move contradicts it, the contradiction is
    recorded as a discrepancy for a person.
    """

    payment_id: str
    target: PaymentStatus
    reason: str = ""
    channel_reference: str = ""
    source: str = ""  # who asks: dispatch, poll, callback, cancel, statement
    only_from: frozenset[PaymentStatus] | None = None  # refuse unless the payment is in one of these
    note: str = ""  # a person's words (a cancel reason): kept in metadata["status_note"]
    polls: PollTiming = PollTiming()
    pools: Mapping[str, str] = field(default_factory=dict)  # channel -> pool its money lands in
    max_items: int = _EXTENSION_ITEMS

    def steps(self, ctx: Context) -> _Gen:
        payment = yield from _load_payment(ctx, self.payment_id)
        if payment is None:
            return Outcome("refused", reason="PAYMENT_NOT_FOUND")
        outcome = yield from self._move(ctx, payment)
        outcome.previous_status, outcome.previous_updated_at_ns = payment.status, payment.updated_at_ns
        return outcome

    def _move(self, ctx: Context, payment: Payment) -> _Gen:
        if payment.status == self.target:
            return Outcome("unchanged", payment=payment)
        if self.only_from is not None and payment.status not in self.only_from:
            return Outcome("refused", payment=payment, reason="PAYMENT_STATE_CONFLICT")
        if not may_move(payment.status, self.target):
            if payment.status.final and self.target in (PaymentStatus.SUCCEEDED, PaymentStatus.FAILED):
                found = yield from self._discrepancy(ctx, payment)
                return found
            return Outcome("refused", payment=payment, reason="PAYMENT_STATE_CONFLICT")
        changes: dict[str, Any] = {}
        if self.channel_reference:
            changes["channel_reference"] = self.channel_reference
        if self.target in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
            changes["failure_reason"] = self.reason or self.target.name
            changes["fee"] = 0  # nothing was charged
        if self.note:
            changes["metadata"] = {**payment.metadata, "status_note": self.note}
        moved = payment.moved(self.target, ctx.now_ns, **changes)
        hold_id = transfer_id(payment.payment_id, hold_leg(payment.attempt))
        touched: list[int] = []
        if self.target is PaymentStatus.SUCCEEDED:
            dst = holding_account(parse_party(payment.payee), payment.asset, payment.currency)  # type: ignore[arg-type]
            legs = [Transfer(id=transfer_id(payment.payment_id, f"post.{payment.attempt}"), pending_id=hold_id,
                             flags=TransferFlags.POST_PENDING)]
            if payment.fee:
                legs.append(Transfer(id=transfer_id(payment.payment_id, "fee"), debit_account_id=dst.id,
                                     credit_account_id=fee_account(payment.currency).id, amount=payment.fee,
                                     currency=payment.currency, code=CODE_FEE))
            pool = self.pools.get(payment.channel)
            if pool:
                sweep = yield from sweep_leg(ctx, payment.payment_id, f"sweep.{payment.attempt}", payment.channel,
                                             pool, payment.currency, payment.amount,
                                             into_pool=payment.kind != "payout")
                legs.append(sweep)
            results = yield from ctx.create_transfers(_linked(legs))
            assert all(r in _SETTLED for r in results), f"posting a hold failed: {results}"
        elif self.target in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
            results = yield from ctx.create_transfers([Transfer(
                id=transfer_id(payment.payment_id, f"void.{payment.attempt}"), pending_id=hold_id,
                flags=TransferFlags.VOID_PENDING)])
            assert results[0] in _SETTLED, f"voiding a hold failed: {results}"
        yield from _save_payment(ctx, moved, _status_event(self.target))
        if self.target.final:
            yield from ctx.execute(records.UNSCHEDULE_POLL, (payment.payment_id,))
        else:  # PROCESSING or UNKNOWN: polled until final; a restart keeps the original window
            yield from ctx.execute(records.SCHEDULE_POLL, (payment.payment_id, "pay", ctx.now_ns + self.polls.first_ns,
                                                           ctx.now_ns + self.polls.window_ns))
        if self.target is PaymentStatus.SUCCEEDED:
            touched = yield from _balance_events(ctx, moved.merchant_id, moved, (moved.payee,))
        elif moved.kind == "payout" and self.target in (PaymentStatus.FAILED, PaymentStatus.CANCELED):
            touched = yield from _balance_events(ctx, moved.merchant_id, moved, (moved.payer,))  # money back
        return Outcome("moved", payment=moved, touched_accounts=touched)

    def _discrepancy(self, ctx: Context, payment: Payment) -> _Gen:
        seq = ctx.timestamp()
        found = Discrepancy(
            discrepancy_id=f"dsc_{seq}", payment_id=payment.payment_id, kind="LATE_ANSWER_CONTRADICTS_FINAL",
            recorded_status=payment.status, channel_outcome=self.target.name,
            detail=f"{self.source or 'channel'} answered {self.target.name} ({self.reason or 'no reason'}) "
                   f"after the payment became {payment.status.name}",
            created_at_ns=ctx.now_ns,
        )
        data = records.discrepancy_to_dict(found)
        yield from ctx.execute(records.INSERT_DISCREPANCY, (found.discrepancy_id, found.payment_id,
                                                            found.created_at_ns, json.dumps(data)))
        yield from _emit(ctx, "payment.discrepancy", payment.merchant_id, payment.payment_id, data)
        return Outcome("discrepancy", payment=payment, reason=found.kind)


@dataclass(slots=True)
class ReroutePayment(_Procedure):
    """Move a PROCESSING payment whose submission provably never left (NOT_SUBMITTED) to
    another channel: void the old channel's hold, hold on the new one (in the same direction:
    a payout's wallet stays held), next attempt."""

    payment_id: str
    from_channel: str
    to_channel: str
    max_items: int = _EXTENSION_ITEMS

    def steps(self, ctx: Context) -> _Gen:
        payment = yield from _load_payment(ctx, self.payment_id)
        if payment is None or payment.status is not PaymentStatus.PROCESSING or payment.channel != self.from_channel:
            return Outcome("refused", payment=payment, reason="PAYMENT_STATE_CONFLICT")
        old_hold = transfer_id(payment.payment_id, hold_leg(payment.attempt))
        moved = payment.moved(PaymentStatus.PROCESSING, ctx.now_ns, channel=self.to_channel,
                              attempt=payment.attempt + 1, channel_reference="",
                              routing=payment.routing.rerouted(payment.channel) if payment.routing else None)
        src, dst = hold_sides(payment, self.to_channel)
        opened = yield from _open(ctx, [src, dst])
        assert opened, "a receivable account is misconfigured"
        results = yield from ctx.create_transfers([
            Transfer(id=transfer_id(payment.payment_id, f"void.{payment.attempt}"), pending_id=old_hold,
                     flags=TransferFlags.VOID_PENDING | TransferFlags.LINKED),
            Transfer(id=transfer_id(payment.payment_id, hold_leg(moved.attempt)), debit_account_id=src.id,
                     credit_account_id=dst.id, amount=payment.amount, currency=payment.currency, code=CODE_HOLD,
                     flags=TransferFlags.PENDING),
        ])
        assert all(r in _SETTLED for r in results), f"moving a hold failed: {results}"
        yield from _save_payment(ctx, moved, "payment.rerouted")
        return Outcome("moved", payment=moved)


@dataclass(slots=True)
class RefundPayment(_Procedure):
    """A full or partial refund. Internal assets: the merchant pays the payer back now.
    External assets: the merchant's side is held until the channel confirms the refund."""

    request_id: str
    payment_id: str
    amount: int  # 0: everything not refunded yet
    reason: str
    fingerprint: str
    refund_id: str
    key_window_ns: int
    polls: PollTiming = PollTiming()
    max_items: int = _EXTENSION_ITEMS

    def steps(self, ctx: Context) -> _Gen:
        payment = yield from _load_payment(ctx, self.payment_id)
        if payment is None:
            return Outcome("refused", reason="PAYMENT_NOT_FOUND")
        scope = f"refund:{payment.merchant_id}"
        keys = yield from ctx.query(records.SELECT_KEY, (scope, self.request_id, ctx.now_ns))
        if keys:
            fingerprint, existing_id = keys[0]
            if fingerprint != self.fingerprint:
                return Outcome("reused", payment=payment, reason="REQUEST_ID_REUSED")
            rows = yield from ctx.query(records.SELECT_REFUND, (existing_id,))
            return Outcome("replayed", payment=payment, refund=records.refund_from_body(rows[0][0]))
        if payment.status is not PaymentStatus.SUCCEEDED or payment.kind == "payout":
            # A payout's money went to the user's own account: there is nothing to send back.
            return Outcome("refused", payment=payment, reason="PAYMENT_NOT_REFUNDABLE")
        left = payment.amount - payment.refunded_amount
        amount = self.amount or left
        if amount > left or amount <= 0:
            return Outcome("refused", payment=payment, reason="REFUND_EXCEEDS_CAPTURED")
        now = ctx.now_ns
        refund = Refund(self.refund_id, payment.payment_id, self.request_id, payment.merchant_id, amount,
                        payment.currency, RefundStatus.PROCESSING, now, now, reason=self.reason)
        payee = parse_party(payment.payee)
        payer = parse_party(payment.payer)
        assert payee is not None and payer is not None
        merchant_side = holding_account(payee, payment.asset, payment.currency)
        if payment.asset.internal:
            back_to = holding_account(payer, payment.asset, payment.currency)
            flags = TransferFlags.NONE
        else:
            back_to = receivable_account(payment.channel, payment.currency)
            flags = TransferFlags.PENDING  # held until the channel confirms
        results = yield from ctx.create_transfers([Transfer(
            id=transfer_id(self.refund_id, "refund"), debit_account_id=merchant_side.id,
            credit_account_id=back_to.id, amount=amount, currency=payment.currency, code=CODE_REFUND, flags=flags)])
        touched: list[int] = []
        if results[0] not in _SETTLED:
            refund = replace(refund, status=RefundStatus.FAILED, failure_reason=_failure_reason(results))
        else:
            # The refunded amount counts from the moment funds are held, so two
            # racing partial refunds can never exceed what was captured.
            payment = payment.moved(payment.status, now, refunded_amount=payment.refunded_amount + amount)
            if payment.asset.internal:
                refund = replace(refund, status=RefundStatus.SUCCEEDED)
            yield from _save_payment(ctx, payment, "payment.refunded")
        yield from ctx.execute(records.UPSERT_REFUND, records.refund_params(refund))
        yield from _emit(ctx, f"refund.{refund.status.name.lower()}", refund.merchant_id, refund.refund_id,
                         records.refund_to_dict(refund))
        if refund.status is RefundStatus.PROCESSING:
            yield from ctx.execute(records.SCHEDULE_POLL, (refund.refund_id, "refund", ctx.now_ns + self.polls.first_ns,
                                                           ctx.now_ns + self.polls.window_ns))
        if results[0] in _SETTLED:
            # Both sides moved (a user payee is debited; an external refund holds the payee's
            # side until the channel answers), so both balances are reported and uncached.
            touched = yield from _balance_events(ctx, payment.merchant_id, payment, (payment.payer, payment.payee))
        yield from ctx.execute(records.UPSERT_KEY, (scope, self.request_id, self.fingerprint, refund.refund_id,
                                                    ctx.now_ns + self.key_window_ns))
        return Outcome("created", payment=payment, refund=refund, touched_accounts=touched)


@dataclass(slots=True)
class MoveRefund(_Procedure):
    """A channel's answer to an external refund: post or void its hold. A refund that succeeds on a
    pooled channel left the pool: the sweep takes it out in the same commit."""

    refund_id: str
    target: RefundStatus
    reason: str = ""
    polls: PollTiming = PollTiming()
    pools: Mapping[str, str] = field(default_factory=dict)  # channel -> pool its money lands in
    only_from: frozenset[RefundStatus] | None = None  # refuse unless the refund is in one of these
    note: str = ""  # who settled it, when not the channel's answer: kept in the refund's status_note
    max_items: int = _EXTENSION_ITEMS

    def steps(self, ctx: Context) -> _Gen:
        rows = yield from ctx.query(records.SELECT_REFUND, (self.refund_id,))
        if not rows:
            return Outcome("refused", reason="REFUND_NOT_FOUND")
        refund = records.refund_from_body(rows[0][0])
        if refund.status == self.target:
            return Outcome("unchanged", refund=refund)
        if self.only_from is not None and refund.status not in self.only_from:
            return Outcome("refused", refund=refund, reason="REFUND_STATE_CONFLICT")
        if refund.status in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
            return Outcome("discrepancy", refund=refund, reason="LATE_ANSWER_CONTRADICTS_FINAL")
        payment = yield from _load_payment(ctx, refund.payment_id)
        assert payment is not None
        hold_id = transfer_id(refund.refund_id, "refund")
        if self.target is RefundStatus.SUCCEEDED:
            legs = [Transfer(id=transfer_id(refund.refund_id, "post"), pending_id=hold_id,
                             flags=TransferFlags.POST_PENDING)]
            pool = self.pools.get(payment.channel)
            if pool and not payment.asset.internal:
                sweep = yield from sweep_leg(ctx, refund.refund_id, "sweep", payment.channel, pool, refund.currency,
                                             refund.amount, into_pool=False)
                legs.append(sweep)
            results = yield from ctx.create_transfers(_linked(legs))
        elif self.target is RefundStatus.FAILED:
            results = yield from ctx.create_transfers([Transfer(
                id=transfer_id(refund.refund_id, "void"), pending_id=hold_id, flags=TransferFlags.VOID_PENDING)])
            payment = payment.moved(payment.status, ctx.now_ns,
                                    refunded_amount=payment.refunded_amount - refund.amount)
            yield from _save_payment(ctx, payment, "payment.refund_reverted")
        else:
            results = [T_OK]
        assert all(r in _SETTLED for r in results), f"settling a refund hold failed: {results}"
        touched: list[int] = []
        if self.target in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):  # the hold was posted or voided
            touched = yield from _balance_events(ctx, payment.merchant_id, payment, (payment.payer, payment.payee))
        refund = replace(refund, status=self.target, updated_at_ns=ctx.now_ns,
                         failure_reason=self.reason if self.target is RefundStatus.FAILED else "",
                         status_note=self.note or refund.status_note)
        yield from ctx.execute(records.UPSERT_REFUND, records.refund_params(refund))
        yield from _emit(ctx, f"refund.{self.target.name.lower()}", refund.merchant_id, refund.refund_id,
                         records.refund_to_dict(refund))
        if self.target in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
            yield from ctx.execute(records.UNSCHEDULE_POLL, (refund.refund_id,))
        else:
            yield from ctx.execute(records.SCHEDULE_POLL, (refund.refund_id, "refund", ctx.now_ns + self.polls.first_ns,
                                                           ctx.now_ns + self.polls.window_ns))
        return Outcome("moved", payment=payment, refund=refund, touched_accounts=touched)
