"""The payment gateway's domain core: validate, settle or hold, dispatch, poll, answer.

Internal assets (points, wallet) settle inside one group commit: the payment
row, its idempotency key, its linked ledger chain and its outbox events commit
together. External assets commit CREATED with a pending hold, then a background
task moves them to PROCESSING (durably, before anything leaves the process),
submits through the ChannelDispatcher and applies the answer; PENDING and
UNKNOWN answers are polled with backoff. After a restart `start()` picks up
every payment left CREATED (never sent: send it), PROCESSING or UNKNOWN (maybe
sent: only ask, never resend).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Protocol

from dualflow.core.errors import AlreadyExists, FieldViolation, InvalidRequest, NotFound, PreconditionFailed
from dualflow.core.ledger.service import LedgerService
from dualflow.core.money import CURRENCIES

from . import metrics, records
from .accounts import holding_account, parse_party
from .dispatch import ChannelAnswer, ChannelDispatcher, ChannelOutcome, Instruction
from .model import (
    Asset,
    Balance,
    CardInfo,
    Merchant,
    Payment,
    PaymentRequest,
    PaymentStatus,
    Refund,
    RefundStatus,
)
from .outbox import OutboxFeed
from .procedures import CreatePayment, MovePayment, MoveRefund, Outcome, RefundPayment

log = logging.getLogger(__name__)

AMOUNT_MAX = 2**63 - 1
REQUEST_ID_MAX = 64
METADATA_KEYS_MAX = 20
TEXT_MAX = 500
LIST_PAGE_MAX = 1000
NS = 1_000_000_000


class CardLookup(Protocol):
    async def card(self, token: str) -> Any:
        """The vault's public view of a card (token, bin6, last4, brand, exp_month, exp_year)."""
        ...


def _violation(field: str, description: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {description}", reason="FIELD_INVALID",
                          violations=(FieldViolation(field, description),))


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if not 0 < len(request_id) <= REQUEST_ID_MAX or not request_id.isascii() or not request_id.isprintable():
        raise InvalidRequest(
            f"{field} must be 1..{REQUEST_ID_MAX} printable ASCII characters", reason="REQUEST_ID_INVALID",
            violations=(FieldViolation(field, f"must be 1..{REQUEST_ID_MAX} printable ASCII characters"),))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class PaymentService:
    def __init__(
        self,
        ledger: LedgerService,
        merchants: Mapping[str, Merchant],
        *,
        dispatcher: ChannelDispatcher | None = None,
        cards: CardLookup | None = None,
        key_window_s: int = 24 * 3600,
        submit_timeout_s: float = 10.0,
        poll_initial_s: float = 0.5,
        poll_max_interval_s: float = 30.0,
        poll_give_up_s: float = 3600.0,
        balance_cache_size: int = 100_000,
        balance_cache_ttl_s: float = 2.0,
        outbox_poll_interval_s: float = 0.2,
        outbox_retention_s: int = 7 * 24 * 3600,
        channel_concurrency: int = 256,
        maintenance_interval_s: float = 60.0,
    ) -> None:
        self.ledger = ledger
        self.merchants = dict(merchants)
        self.dispatcher = dispatcher
        self.cards = cards
        # One clock for the whole commit: the ledger's (its writer stamps every change).
        self.clock_ns = ledger.clock_ns
        self.key_window_ns = key_window_s * NS
        self.submit_timeout_s = submit_timeout_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_interval_s = poll_max_interval_s
        self.poll_give_up_s = poll_give_up_s
        self.feed = OutboxFeed(ledger, poll_interval_s=outbox_poll_interval_s)
        self._cache: OrderedDict[int, tuple[float, Balance]] = OrderedDict()
        self._cache_size = balance_cache_size
        self._cache_ttl_s = balance_cache_ttl_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._driving: set[str] = set()
        self._stopping = False
        self.outbox_retention_ns = outbox_retention_s * NS
        # Calls to channels in flight at once: a burst of card payments queues here
        # (still CREATED or PROCESSING, durable) instead of opening unbounded connections.
        self._channel_slots = asyncio.Semaphore(channel_concurrency)
        self.maintenance_interval_s = maintenance_interval_s

    # ---- lifecycle
    async def start(self) -> None:
        await self.ledger.ensure_schema(records.PAYMENT_SCHEMA)
        await self.feed.refresh_head()
        if self.dispatcher is not None:
            await self._resume_open_payments()
        if self.maintenance_interval_s > 0:
            self._spawn(self._maintain_forever(), "maintenance")

    async def stop(self) -> None:
        """Stop driving payments; whatever is open is picked up again by the next start()."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resume_open_payments(self) -> None:
        rows = await self.ledger.query(
            "SELECT body FROM payments WHERE status IN (?, ?, ?) ORDER BY created_at_ns",
            (int(PaymentStatus.CREATED), int(PaymentStatus.PROCESSING), int(PaymentStatus.UNKNOWN)))
        for (body,) in rows:
            self._drive(records.payment_from_body(body))
        rows = await self.ledger.query("SELECT body FROM refunds WHERE status IN (?, ?)",
                                       (int(RefundStatus.PROCESSING), int(RefundStatus.UNKNOWN)))
        for (body,) in rows:
            refund = records.refund_from_body(body)
            payment = await self.get_payment(refund.payment_id)
            self._spawn(self._drive_refund(payment, refund, resumed=True), refund.refund_id)

    # ---- commands
    async def create_payment(self, request: PaymentRequest) -> Payment:
        merchant = self._validate(request)
        card: CardInfo | None = None
        channel = ""
        if request.asset is Asset.BANK_CARD:
            card = await self._card(request.card_token)
        if not request.asset.internal:
            if self.dispatcher is None:
                raise PreconditionFailed(f"no financial gateway is configured for {request.asset.name}",
                                         reason="CHANNEL_UNAVAILABLE")
            channel = self.dispatcher.channel_for(request.asset, request.currency)
        payee = parse_party(request.payee)
        fee = 0
        if payee is not None and payee.kind == "merchant" and request.asset is not Asset.POINTS:
            fee = (request.amount * merchant.fee_bps + 5_000) // 10_000
        procedure = CreatePayment(
            request=request, fingerprint=fingerprint(asdict(request)), payment_id=_new_id("pay"), fee=fee,
            key_window_ns=self.key_window_ns, channel=channel, card=card,
        )
        outcome: Outcome = await self.ledger.run(procedure)
        if outcome.kind == "reused":
            metrics.REQUESTS_REPLAYED.labels("payment", "reused").inc()
            raise AlreadyExists(
                f"request_id {request.request_id!r} was used for a payment with other parameters",
                reason="REQUEST_ID_REUSED", metadata={"request_id": request.request_id})
        assert outcome.payment is not None
        if outcome.kind == "replayed":
            metrics.REQUESTS_REPLAYED.labels("payment", "replayed").inc()
            return outcome.payment
        self._after_commit(outcome)
        payment = outcome.payment
        metrics.PAYMENTS.labels(payment.asset.name, payment.status.name, payment.failure_reason).inc()
        if payment.status is PaymentStatus.CREATED:
            self._drive(payment)
        return payment

    async def cancel_payment(self, payment_id: str, reason: str = "") -> Payment:
        if len(reason) > TEXT_MAX:
            raise _violation("reason", f"must be at most {TEXT_MAX} characters")
        outcome: Outcome = await self.ledger.run(MovePayment(
            payment_id, PaymentStatus.CANCELED, reason="CANCELED_BY_MERCHANT", source="cancel",
            only_from=frozenset({PaymentStatus.CREATED}), note=reason))
        if outcome.kind == "refused" and outcome.payment is None:
            raise NotFound(f"no payment {payment_id!r}", reason="PAYMENT_NOT_FOUND")
        assert outcome.payment is not None
        if outcome.kind == "refused":
            raise PreconditionFailed(
                f"payment {payment_id} is {outcome.payment.status.name}; only a CREATED payment can be canceled",
                reason="PAYMENT_NOT_CANCELABLE", metadata={"status": outcome.payment.status.name})
        if outcome.kind == "moved":
            self._after_commit(outcome, previous=PaymentStatus.CREATED)
        return outcome.payment

    async def refund_payment(self, request_id: str, payment_id: str, amount: int, reason: str = "") -> Refund:
        check_request_id(request_id)
        if amount < 0 or amount > AMOUNT_MAX:
            raise _violation("amount", "must be 0 (the rest) or a positive number of minor units")
        if len(reason) > TEXT_MAX:
            raise _violation("reason", f"must be at most {TEXT_MAX} characters")
        outcome: Outcome = await self.ledger.run(RefundPayment(
            request_id=request_id, payment_id=payment_id, amount=amount, reason=reason,
            fingerprint=fingerprint([payment_id, amount, reason]), refund_id=_new_id("rfd"),
            key_window_ns=self.key_window_ns))
        if outcome.reason == "PAYMENT_NOT_FOUND":
            raise NotFound(f"no payment {payment_id!r}", reason="PAYMENT_NOT_FOUND")
        if outcome.kind == "reused":
            metrics.REQUESTS_REPLAYED.labels("refund", "reused").inc()
            raise AlreadyExists(f"request_id {request_id!r} was used for another refund",
                                reason="REQUEST_ID_REUSED", metadata={"request_id": request_id})
        payment = outcome.payment
        assert payment is not None
        if outcome.kind == "refused":
            if outcome.reason == "REFUND_EXCEEDS_CAPTURED":
                left = payment.amount - payment.refunded_amount
                raise PreconditionFailed(
                    f"refund of {amount or left} exceeds the {left} still refundable on {payment_id}",
                    reason="REFUND_EXCEEDS_CAPTURED",
                    metadata={"refundable": str(left), "requested": str(amount)})
            raise PreconditionFailed(f"payment {payment_id} is {payment.status.name}; only a SUCCEEDED "
                                     "payment can be refunded", reason=outcome.reason,
                                     metadata={"status": payment.status.name})
        assert outcome.refund is not None
        if outcome.kind == "replayed":
            metrics.REQUESTS_REPLAYED.labels("refund", "replayed").inc()
            return outcome.refund
        self._after_commit(outcome)
        refund = outcome.refund
        metrics.REFUNDS.labels(payment.asset.name, refund.status.name, refund.failure_reason).inc()
        if refund.status is RefundStatus.PROCESSING:
            self._spawn(self._drive_refund(payment, refund, resumed=False), refund.refund_id)
        return refund

    async def apply_channel_answer(self, payment_id: str, answer: ChannelAnswer, source: str = "callback") -> Payment:
        """Apply an answer from the financial gateway (submit, poll or a verified callback)."""
        metrics.CHANNEL_ANSWERS.labels(source, answer.outcome.value).inc()
        target = {
            ChannelOutcome.SUCCEEDED: PaymentStatus.SUCCEEDED,
            ChannelOutcome.FAILED: PaymentStatus.FAILED,
            ChannelOutcome.UNKNOWN: PaymentStatus.UNKNOWN,
        }.get(answer.outcome)
        if target is None:  # PENDING: still processing, nothing to record
            return await self.get_payment(payment_id)
        before = await self.get_payment(payment_id)
        outcome: Outcome = await self.ledger.run(MovePayment(
            payment_id, target, reason=answer.reason or target.name, channel_reference=answer.channel_reference,
            source=source))
        if outcome.kind == "refused" and outcome.payment is None:
            raise NotFound(f"no payment {payment_id!r}", reason="PAYMENT_NOT_FOUND")
        if outcome.kind == "discrepancy":
            metrics.DISCREPANCIES.inc()
            log.warning("payment %s: %s answered %s after it became %s; discrepancy recorded",
                        payment_id, source, target.name, before.status.name)
        if outcome.kind in ("moved", "discrepancy"):
            self._after_commit(outcome, previous=before.status, since_ns=before.updated_at_ns)
        assert outcome.payment is not None
        return outcome.payment

    # ---- queries
    async def get_payment(self, payment_id: str) -> Payment:
        rows = await self.ledger.query(records.SELECT_PAYMENT, (payment_id,))
        if not rows:
            raise NotFound(f"no payment {payment_id!r}", reason="PAYMENT_NOT_FOUND",
                           metadata={"payment_id": payment_id[:64]})
        return records.payment_from_body(rows[0][0])

    async def list_payments(self, merchant_id: str, *, statuses: frozenset[PaymentStatus] = frozenset(),
                            asset: Asset | None = None, created_from_ns: int = 0, created_to_ns: int = 0,
                            page_size: int = 100, page_token: str = "") -> tuple[list[Payment], str]:
        if not 0 < page_size <= LIST_PAGE_MAX:
            raise _violation("page_size", f"must be 1..{LIST_PAGE_MAX} (0 means 100)")
        if created_to_ns and created_from_ns >= created_to_ns:
            raise _violation("created_from_ns", "must be before created_to_ns")
        where, params = [], []
        if merchant_id:
            where.append("merchant_id = ?")
            params.append(merchant_id)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += [int(s) for s in sorted(statuses)]
        if asset is not None:
            where.append("asset = ?")
            params.append(int(asset))
        if created_from_ns:
            where.append("created_at_ns >= ?")
            params.append(created_from_ns)
        if created_to_ns:
            where.append("created_at_ns < ?")
            params.append(created_to_ns)
        if page_token:
            created, pid = _decode_page_token(page_token)
            where.append("(created_at_ns < ? OR (created_at_ns = ? AND payment_id < ?))")
            params += [created, created, pid]
        sql = "SELECT body FROM payments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at_ns DESC, payment_id DESC LIMIT ?"
        rows = await self.ledger.query(sql, (*params, page_size))
        payments = [records.payment_from_body(r[0]) for r in rows]
        token = ""
        if len(payments) == page_size:
            last = payments[-1]
            token = _encode_page_token(last.created_at_ns, last.payment_id)
        return payments, token

    async def get_balance(self, user_id: str, asset: Asset, currency: str) -> Balance:
        if not user_id or len(user_id) > 120:
            raise _violation("user_id", "must name a user (1..120 characters)")
        if asset not in (Asset.POINTS, Asset.WALLET):
            raise _violation("asset", "must be POINTS or WALLET: only internal assets have balances here")
        if currency not in CURRENCIES:
            raise _violation("currency", "must be an ISO 4217 code")
        party = parse_party(f"user:{user_id}")
        if party is None:
            raise _violation("user_id", "must be printable")
        account_id = holding_account(party, asset, currency).id
        hit = self._cache.get(account_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._cache_ttl_s:
            self._cache.move_to_end(account_id)
            metrics.BALANCE_CACHE.labels("hit").inc()
            return hit[1]
        metrics.BALANCE_CACHE.labels("miss").inc()
        found = await self.ledger.lookup_accounts([account_id])
        if found:
            a = found[0]
            balance = Balance(user_id, asset, currency, a.credits_posted - a.debits_posted - a.debits_pending,
                              a.credits_pending, a.debits_pending, a.timestamp)
        else:
            balance = Balance(user_id, asset, currency, 0, 0, 0, 0)
        self._cache[account_id] = (now, balance)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return balance

    async def refunds_of(self, payment_id: str) -> list[Refund]:
        rows = await self.ledger.query("SELECT body FROM refunds WHERE payment_id = ? ORDER BY created_at_ns",
                                       (payment_id,))
        return [records.refund_from_body(r[0]) for r in rows]

    async def prune(self) -> None:
        """Forget idempotency keys past their window (the same key then makes a new payment)
        and outbox events past retention (SubscribeEvents from 0 starts at the oldest kept)."""
        now = self.clock_ns()
        await self.ledger.write([
            ("DELETE FROM request_keys WHERE expires_at_ns <= ?", (now,)),
            ("DELETE FROM outbox WHERE created_at_ns < ?", (now - self.outbox_retention_ns,)),
        ])

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.maintenance_interval_s)
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - pruning later is fine; it must not stop
                log.exception("pruning request keys and outbox failed; retrying later")

    # ---- helpers
    def _validate(self, r: PaymentRequest) -> Merchant:
        check_request_id(r.request_id)
        merchant = self.merchants.get(r.merchant_id)
        if merchant is None:
            raise NotFound(f"no merchant {r.merchant_id[:64]!r}", reason="MERCHANT_UNKNOWN",
                           violations=(FieldViolation("merchant_id", "must name a configured merchant"),))
        bad: list[FieldViolation] = []
        if not 0 < r.amount <= AMOUNT_MAX:
            bad.append(FieldViolation("amount", "must be a positive number of minor units"))
        if r.currency not in CURRENCIES:
            bad.append(FieldViolation("currency", "must be an ISO 4217 code"))
        elif r.currency not in merchant.currencies:
            bad.append(FieldViolation("currency", f"merchant accepts {', '.join(sorted(merchant.currencies))}"))
        payer, payee = parse_party(r.payer), parse_party(r.payee)
        if payer is None:
            bad.append(FieldViolation("payer", 'must be "user:<id>" or "merchant:<id>"'))
        if payee is None:
            bad.append(FieldViolation("payee", 'must be "user:<id>" or "merchant:<id>"'))
        if payer is not None and payee is not None:
            # A user may top up their own wallet from their own card or bank account.
            if payer == payee and r.asset.internal:
                bad.append(FieldViolation("payee", "must differ from payer"))
            if payer.kind == "merchant" and not (r.asset is Asset.POINTS and payer.id == r.merchant_id):
                bad.append(FieldViolation("payer", "a merchant can only pay by issuing its own points"))
            if payee.kind == "merchant" and payee.id != r.merchant_id:
                bad.append(FieldViolation("payee", "a merchant payee must be the payment's merchant"))
        if r.asset is Asset.BANK_CARD and not r.card_token:
            bad.append(FieldViolation("method.card_token", "a BANK_CARD payment needs a card token"))
        if r.asset is Asset.BANK_TRANSFER and r.bank_account is None:
            bad.append(FieldViolation("method.bank_account", "a BANK_TRANSFER payment needs a bank account"))
        if r.asset.internal and (r.card_token or r.bank_account is not None):
            bad.append(FieldViolation("method", f"{r.asset.name} payments take no payment method"))
        if len(r.trade_order_id) > REQUEST_ID_MAX:
            bad.append(FieldViolation("trade_order_id", f"must be at most {REQUEST_ID_MAX} characters"))
        if len(r.description) > TEXT_MAX:
            bad.append(FieldViolation("description", f"must be at most {TEXT_MAX} characters"))
        if len(r.metadata) > METADATA_KEYS_MAX or any(
                len(k) > 40 or len(v) > TEXT_MAX for k, v in r.metadata.items()):
            bad.append(FieldViolation("metadata", f"at most {METADATA_KEYS_MAX} keys of 40 and values of "
                                                  f"{TEXT_MAX} characters"))
        if bad:
            raise InvalidRequest(f"the payment request is invalid: {bad[0].field} {bad[0].description}",
                                 reason="PAYMENT_INVALID", violations=tuple(bad))
        return merchant

    async def _card(self, token: str) -> CardInfo:
        if self.cards is None:
            raise PreconditionFailed("no card vault is configured", reason="VAULT_UNAVAILABLE")
        ref = await self.cards.card(token)
        return CardInfo(token=ref.token, bin=ref.bin6, last4=ref.last4, brand=ref.brand,
                        exp_month=ref.exp_month, exp_year=ref.exp_year)

    def _after_commit(self, outcome: Outcome, previous: PaymentStatus | None = None, since_ns: int = 0) -> None:
        for account_id in outcome.touched_accounts:
            self._cache.pop(account_id, None)
        payment = outcome.payment
        if previous is not None and payment is not None and payment.status is not previous:
            metrics.PAYMENTS.labels(payment.asset.name, payment.status.name, payment.failure_reason).inc()
            if since_ns:
                metrics.TRANSITION_SECONDS.labels(previous.name, payment.status.name).observe(
                    max(0, payment.updated_at_ns - since_ns) / NS)
        # Wake event readers without a round trip: this commit's newest event is durable now.
        self.feed.published(outcome.last_seq)

    def _spawn(self, coro: Any, key: str) -> None:
        if self._stopping:
            coro.close()
            return
        task = asyncio.create_task(coro, name=f"drive-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drive(self, payment: Payment) -> None:
        if payment.payment_id in self._driving or self.dispatcher is None:
            return
        self._driving.add(payment.payment_id)
        self._spawn(self._drive_payment(payment), payment.payment_id)

    async def _drive_payment(self, payment: Payment) -> None:
        metrics.OPEN_EXTERNAL.inc()
        try:
            await self._drive_payment_steps(payment)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the payment stays open and is resumed at the next start
            log.exception("driving payment %s failed; it stays %s", payment.payment_id, payment.status.name)
        finally:
            metrics.OPEN_EXTERNAL.dec()
            self._driving.discard(payment.payment_id)

    async def _ask(self, call: Any) -> ChannelAnswer:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that races the inner call's completion, and then stop()
        # would wait forever on a poll loop that never learned it was cancelled.
        async with self._channel_slots:
            async with asyncio.timeout(self.submit_timeout_s):
                answer: ChannelAnswer = await call
        return answer

    def _instruction(self, payment: Payment) -> Instruction:
        return Instruction(
            instruction_id=payment.payment_id, kind="pay", merchant_id=payment.merchant_id, asset=payment.asset,
            amount=payment.amount, currency=payment.currency, channel=payment.channel,
            card_token=payment.card.token if payment.card else "", bank_account=payment.bank_account,
            channel_reference=payment.channel_reference)

    async def _drive_payment_steps(self, payment: Payment) -> None:
        assert self.dispatcher is not None
        if payment.status is PaymentStatus.CREATED:
            # Durable PROCESSING before the instruction leaves: after a crash, CREATED
            # means "never sent" and PROCESSING means "maybe sent, only ask".
            outcome: Outcome = await self.ledger.run(MovePayment(
                payment.payment_id, PaymentStatus.PROCESSING, source="dispatch",
                only_from=frozenset({PaymentStatus.CREATED})))
            if outcome.kind != "moved":
                return  # canceled in the meantime
            self._after_commit(outcome, previous=PaymentStatus.CREATED, since_ns=payment.updated_at_ns)
            assert outcome.payment is not None
            payment = outcome.payment
            try:
                answer = await self._ask(self.dispatcher.submit(self._instruction(payment)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - it may have left: unknown, not failed
                answer = ChannelAnswer(ChannelOutcome.UNKNOWN, f"SUBMIT_{type(exc).__name__.upper()}")
            payment = await self.apply_channel_answer(payment.payment_id, answer, source="submit")
        await self._poll_until_final(payment)

    async def _poll_until_final(self, payment: Payment) -> None:
        assert self.dispatcher is not None
        delay = self.poll_initial_s
        give_up_at = time.monotonic() + self.poll_give_up_s
        while not payment.status.final and time.monotonic() < give_up_at and not self._stopping:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.poll_max_interval_s)
            try:
                answer = await self._ask(self.dispatcher.query(self._instruction(payment)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed poll tells us nothing; ask again later
                log.info("polling %s failed (%s); will ask again", payment.payment_id, type(exc).__name__)
                continue
            payment = await self.apply_channel_answer(payment.payment_id, answer, source="poll")
        if not payment.status.final:
            log.warning("payment %s still %s after polling for %.0f s; reconciliation resolves it",
                        payment.payment_id, payment.status.name, self.poll_give_up_s)

    async def _drive_refund(self, payment: Payment, refund: Refund, *, resumed: bool) -> None:
        assert self.dispatcher is not None
        instruction = Instruction(
            instruction_id=refund.refund_id, kind="refund", merchant_id=refund.merchant_id, asset=payment.asset,
            amount=refund.amount, currency=refund.currency, channel=payment.channel,
            original_id=payment.payment_id, channel_reference=payment.channel_reference)
        try:
            if resumed:
                answer = await self.dispatcher.query(instruction)
            else:
                try:
                    answer = await self._ask(self.dispatcher.submit(instruction))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    answer = ChannelAnswer(ChannelOutcome.UNKNOWN, f"SUBMIT_{type(exc).__name__.upper()}")
            delay = self.poll_initial_s
            give_up_at = time.monotonic() + self.poll_give_up_s
            while True:
                target = {ChannelOutcome.SUCCEEDED: RefundStatus.SUCCEEDED, ChannelOutcome.FAILED: RefundStatus.FAILED,
                          ChannelOutcome.UNKNOWN: RefundStatus.UNKNOWN}.get(answer.outcome)
                if target is not None:
                    outcome: Outcome = await self.ledger.run(MoveRefund(refund.refund_id, target, answer.reason))
                    if outcome.kind == "moved":
                        self._after_commit(outcome)
                        assert outcome.refund is not None
                        metrics.REFUNDS.labels(payment.asset.name, target.name, outcome.refund.failure_reason).inc()
                    if target in (RefundStatus.SUCCEEDED, RefundStatus.FAILED):
                        return
                if time.monotonic() >= give_up_at:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.poll_max_interval_s)
                try:
                    answer = await self._ask(self.dispatcher.query(instruction))
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - ask again later
                    answer = ChannelAnswer(ChannelOutcome.PENDING)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("driving refund %s failed; resumed at the next start", refund.refund_id)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _encode_page_token(created_at_ns: int, payment_id: str) -> str:
    import base64

    return base64.urlsafe_b64encode(f"{created_at_ns}:{payment_id}".encode()).decode()


def _decode_page_token(token: str) -> tuple[int, str]:
    import base64
    import binascii

    try:
        created, _, pid = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if not pid:
            raise ValueError("no payment id")
        return int(created), pid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("page_token is not one this service issued", reason="PAGE_TOKEN_INVALID",
                             violations=(FieldViolation("page_token", "must be a token from a previous page"),)
                             ) from None
