"""The payment gateway's domain core: validate, settle or hold, dispatch, poll, answer.

Internal assets (points, wallet) settle inside one group commit: the payment
row, its idempotency key, its linked ledger chain and its outbox events commit
together. External assets commit CREATED with a pending hold, then a background
task moves them to PROCESSING (durably, before anything leaves the process),
submits through the ChannelDispatcher and applies the answer; PENDING and
UNKNOWN answers are polled with backoff. After a restart `start()` picks up
every payment left CREATED (never sent: send it), PROCESSING or UNKNOWN (maybe
sent: only ask, never resend).

Payouts (`create_payout`, kind "payout") take the same path in the other direction: a user's
wallet money leaves for the user's own bank account through a bank-transfer channel. Channels in
`channel_pools` collect straight into one of our reserve-fund pools; settling their payments and
refunds sweeps the money between the channel's receivable and the pool (procedures.py).

An optional `admission` (clearing/gate.py: the net debit caps between pools) is asked after
validation and routing, before the commit: a domain error it raises refuses the request and
changes nothing, except for a retry of a request already answered, which is answered as before.
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
from dataclasses import asdict, replace
from typing import Any, Protocol

from tenacity import RetryCallState, wait_exponential_jitter

from dualflow.core.errors import AlreadyExists, DualflowError, FieldViolation, InvalidRequest, NotFound, \
    PreconditionFailed
from dualflow.core.ledger.service import LedgerService
from dualflow.core.money import CURRENCIES

from . import metrics, records
from .accounts import holding_account, parse_party
from .dispatch import ChannelAnswer, ChannelDispatcher, ChannelOutcome, Instruction, RouteQuery
from .model import (
    PAYMENT_KINDS,
    Asset,
    Balance,
    CardInfo,
    Merchant,
    Payment,
    PaymentRequest,
    PaymentStatus,
    Refund,
    RefundStatus,
    Routing,
)
from .outbox import OutboxFeed
from .procedures import (
    CreatePayment,
    MovePayment,
    MoveRefund,
    Outcome,
    PollTiming,
    RefundPayment,
    ReroutePayment,
)

log = logging.getLogger(__name__)

AMOUNT_MAX = 2**63 - 1
REQUEST_ID_MAX = 64
METADATA_KEYS_MAX = 20
TEXT_MAX = 500
LIST_PAGE_MAX = 1000
NS = 1_000_000_000
OPEN_STATUSES = (PaymentStatus.CREATED, PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN)  # = payments_open


class CardLookup(Protocol):
    async def card(self, token: str) -> Any:
        """The vault's public view of a card (token, bin6, last4, brand, exp_month, exp_year)."""
        ...


class Admission(Protocol):
    """A check a movement passes before it is committed, told when the request it admitted did
    not become a new payment (so it can forget what it reserved for `payment_id`)."""

    async def admit(self, request: PaymentRequest, payment_id: str, channel: str) -> None:
        """Raise a domain error to refuse `request`, to become `payment_id` over `channel` ("" if internal)."""
        ...

    def release(self, payment_id: str) -> None:
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
        poll_window_s: float = 3600.0,
        poll_tick_s: float = 0.2,
        balance_cache_size: int = 100_000,
        balance_cache_ttl_s: float = 2.0,
        outbox_poll_interval_s: float = 0.2,
        outbox_retention_s: int = 7 * 24 * 3600,
        channel_concurrency: int = 256,
        maintenance_interval_s: float = 60.0,
        channel_pools: Mapping[str, str] = {},  # noqa: B006 - read only, copied below
        admission: Admission | None = None,
    ) -> None:
        self.ledger = ledger
        self.admission = admission
        # channel -> the pool its money lands in (its account at the bank is that pool's)
        self.channel_pools: dict[str, str] = dict(channel_pools)
        self.merchants = dict(merchants)
        self.dispatcher = dispatcher
        self.cards = cards
        # One clock for the whole commit: the ledger's (its writer stamps every change).
        self.clock_ns = ledger.clock_ns
        self.key_window_ns = key_window_s * NS
        self.submit_timeout_s = submit_timeout_s
        # Polling: first ask after poll_initial_s, then exponential backoff with jitter
        # (tenacity's wait strategy) up to poll_max_interval_s, within poll_window_s.
        self.polls = PollTiming(first_ns=int(poll_initial_s * NS), window_ns=int(poll_window_s * NS))
        self.poll_tick_s = poll_tick_s
        self._backoff = wait_exponential_jitter(multiplier=poll_initial_s, max=poll_max_interval_s,
                                                jitter=poll_initial_s)
        self._backoff_state = RetryCallState(None, None, (), {})
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
            if self.poll_tick_s > 0:
                self._spawn(self._poll_forever(), "poller")
        if self.maintenance_interval_s > 0:
            self._spawn(self._maintain_forever(), "maintenance")

    async def stop(self) -> None:
        """Stop driving payments; the CREATED ones and the polling schedule are picked up
        again by the next start()."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _resume_open_payments(self) -> None:
        """CREATED payments were never sent: send them. Open ones that lost their poll row
        (written by an older version) get one back; the rest is the poller's."""
        # Literal statuses, matching the partial index payments_open (bound parameters
        # would keep the planner from proving the index applies).
        open_statuses = ", ".join(str(int(s)) for s in OPEN_STATUSES)
        rows = await self.ledger.query(
            f"SELECT body FROM payments WHERE status IN ({open_statuses}) ORDER BY created_at_ns")
        now = self.clock_ns()
        schedule = []
        for (body,) in rows:
            payment = records.payment_from_body(body)
            if payment.status is PaymentStatus.CREATED:
                self._drive(payment)
            else:
                schedule.append((records.SCHEDULE_POLL, (payment.payment_id, "pay", now, now + self.polls.window_ns)))
        for (body,) in await self.ledger.query("SELECT body FROM refunds WHERE status IN (?, ?)",
                                               (int(RefundStatus.PROCESSING), int(RefundStatus.UNKNOWN))):
            refund = records.refund_from_body(body)
            schedule.append((records.SCHEDULE_POLL, (refund.refund_id, "refund", now, now + self.polls.window_ns)))
        if schedule:
            await self.ledger.write(schedule)

    # ---- commands
    async def create_payout(self, request: PaymentRequest) -> Payment:
        """Pay a user's wallet money out to the user's own bank account (`bank_account`): a
        BANK_TRANSFER payment of kind "payout" whose payer and payee are the user, fee 0, routed
        like any bank transfer by the beneficiary's bank. The wallet is held now (too little:
        FAILED, INSUFFICIENT_FUNDS), posted when the channel pays out, given back when it fails."""
        return await self.create_payment(replace(request, kind="payout"))

    async def create_payment(self, request: PaymentRequest) -> Payment:
        merchant = self._validate(request)
        card: CardInfo | None = None
        channel = ""
        routing: Routing | None = None
        query: RouteQuery | None = None
        if request.asset is Asset.BANK_CARD:
            card = await self._card(request.card_token)
        if not request.asset.internal:
            if self.dispatcher is None:
                raise PreconditionFailed(f"no financial gateway is configured for {request.asset.name}",
                                         reason="CHANNEL_UNAVAILABLE")
            query = RouteQuery(request.asset, request.currency, request.amount, request.merchant_id,
                               card.bin if card else "",
                               request.bank_account.bank_code if request.bank_account else "")
            routing = self.dispatcher.route(query)
            if not routing.chosen:
                raise PreconditionFailed(
                    f"no channel can carry this {request.asset.name} payment of {request.amount} {request.currency} now",
                    reason="NO_CHANNEL", metadata={
                        "asset": request.asset.name, "currency": request.currency,
                        # Why each configured channel was excluded (DISABLED, BREAKER_OPEN, AMOUNT_LIMIT...).
                        **{f"excluded.{name}": why for name, why in routing.excluded[:20]}})
            channel = routing.chosen
        payee = parse_party(request.payee)
        fee = 0
        if payee is not None and payee.kind == "merchant" and request.asset is not Asset.POINTS:
            fee = (request.amount * merchant.fee_bps + 5_000) // 10_000
        asked = asdict(request)
        if request.kind == "pay":
            del asked["kind"]  # the fingerprint of an ordinary payment stays what it was before payouts
        # Payouts are payments too ("pay_" ids): reconciliation tells them by their kind.
        payment_id = _new_id("pay")
        admitted = await self._admit(request, payment_id, channel)
        procedure = CreatePayment(
            request=request, fingerprint=fingerprint(asked), payment_id=payment_id, fee=fee,
            key_window_ns=self.key_window_ns, channel=channel, card=card, routing=routing,
        )
        try:
            outcome: Outcome = await self.ledger.run(procedure)
        except BaseException:
            # The commit may have happened all the same: the payment then moves over what was
            # reserved for it, as after a crash (its obligation is recorded as a fact).
            if admitted:
                self._release(payment_id)
            raise
        if admitted and (outcome.kind != "created" or outcome.payment is None
                         or outcome.payment.status is PaymentStatus.FAILED):
            self._release(payment_id)  # no new payment, or one that moved nothing
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
        if query is not None and self.dispatcher is not None:
            self.dispatcher.sent(payment.channel, query)  # after the commit: a replay sends nothing
        if payment.status is PaymentStatus.CREATED:
            self._drive(payment)
        return payment

    async def _admit(self, request: PaymentRequest, payment_id: str, channel: str) -> bool:
        """Ask `admission` (True: it admitted the request). A refused request whose id was answered
        before (a live request key) goes on to the commit, which answers it as it was answered."""
        if self.admission is None:
            return False
        try:
            await self.admission.admit(request, payment_id, channel)
        except DualflowError:
            rows = await self.ledger.query(records.SELECT_KEY_ANY, (f"pay:{request.merchant_id}", request.request_id))
            if any(expires > self.clock_ns() for _, _, expires in rows):
                return False
            raise
        return True

    def _release(self, payment_id: str) -> None:
        assert self.admission is not None
        self.admission.release(payment_id)

    async def cancel_payment(self, payment_id: str, reason: str = "") -> Payment:
        if len(reason) > TEXT_MAX:
            raise _violation("reason", f"must be at most {TEXT_MAX} characters")
        outcome = await self._move(payment_id, PaymentStatus.CANCELED, reason="CANCELED_BY_MERCHANT",
                                   source="cancel", only_from=frozenset({PaymentStatus.CREATED}), note=reason)
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
            key_window_ns=self.key_window_ns, polls=self.polls))
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
            if payment.kind == "payout":
                raise PreconditionFailed(f"payment {payment_id} is a payout: a payout cannot be refunded",
                                         reason=outcome.reason, metadata={"kind": payment.kind})
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
        if refund.status is RefundStatus.PROCESSING and not self._stopping:
            self._driving.add(refund.refund_id)
            self._spawn(self._guarded(refund.refund_id, self._submit_refund(payment, refund)), refund.refund_id)
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
        outcome = await self._move(payment_id, target, reason=answer.reason or target.name,
                                   channel_reference=answer.channel_reference, source=source)
        if outcome.kind == "refused" and outcome.payment is None:
            raise NotFound(f"no payment {payment_id!r}", reason="PAYMENT_NOT_FOUND")
        if outcome.kind == "discrepancy":
            metrics.DISCREPANCIES.inc()
            log.warning("payment %s: %s answered %s after it became %s; discrepancy recorded",
                        payment_id, source, target.name, outcome.previous_status.name)
        if outcome.kind in ("moved", "discrepancy"):
            self._after_commit(outcome, previous=outcome.previous_status, since_ns=outcome.previous_updated_at_ns)
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
        # One statement, so the balance and the ledger clock come from the same snapshot:
        # the figure includes every transfer up to `as_of_timestamp`.
        [(as_of, dr_pending, dr_posted, cr_pending, cr_posted)] = await self.ledger.query(
            "SELECT m.last_timestamp, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted "
            "FROM ledger_meta m LEFT JOIN accounts a ON a.id = ? WHERE m.id = 1", (account_id,))
        if dr_pending is None:
            balance = Balance(user_id, asset, currency, 0, 0, 0, as_of)
        else:
            balance = Balance(user_id, asset, currency, cr_posted - dr_posted - dr_pending, cr_pending, dr_pending,
                              as_of)
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

    # Background loops test `_stopping` as well as being cancelled: on Python 3.11 a
    # cancellation can be swallowed inside a library's wait_for (psycopg_pool's was seen
    # doing it), and a loop that only relies on CancelledError then never ends.
    async def _maintain_forever(self) -> None:
        while not self._stopping:
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
        if r.kind == "payout":
            self._validate_payout(r, bad)
        elif r.kind == "pay":
            self._validate_pay(r, bad)
        else:
            bad.append(FieldViolation("kind", f"must be one of {', '.join(PAYMENT_KINDS)}"))
        if len(r.trade_order_id) > REQUEST_ID_MAX:
            bad.append(FieldViolation("trade_order_id", f"must be at most {REQUEST_ID_MAX} characters"))
        if len(r.description) > TEXT_MAX:
            bad.append(FieldViolation("description", f"must be at most {TEXT_MAX} characters"))
        if len(r.metadata) > METADATA_KEYS_MAX or any(
                len(k) > 40 or len(v) > TEXT_MAX for k, v in r.metadata.items()):
            bad.append(FieldViolation("metadata", f"at most {METADATA_KEYS_MAX} keys of 40 and values of "
                                                  f"{TEXT_MAX} characters"))
        if bad:
            what = "payout" if r.kind == "payout" else "payment"
            raise InvalidRequest(f"the {what} request is invalid: {bad[0].field} {bad[0].description}",
                                 reason="PAYMENT_INVALID", violations=tuple(bad))
        return merchant

    @staticmethod
    def _validate_pay(r: PaymentRequest, bad: list[FieldViolation]) -> None:
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

    @staticmethod
    def _validate_payout(r: PaymentRequest, bad: list[FieldViolation]) -> None:
        """A payout moves a user's own wallet money to the user's own bank account."""
        payer, payee = parse_party(r.payer), parse_party(r.payee)
        if payer is None or payer.kind != "user":
            bad.append(FieldViolation("payer", 'must be "user:<id>": only a user\'s wallet is paid out'))
        elif payee != payer:
            bad.append(FieldViolation("payee", "must be the payer: a payout goes to the user's own account"))
        if r.asset is not Asset.BANK_TRANSFER:
            bad.append(FieldViolation("asset", "a payout is a BANK_TRANSFER"))
        if r.bank_account is None:
            bad.append(FieldViolation("bank_account", "a payout needs the beneficiary's bank account"))
        if r.card_token:
            bad.append(FieldViolation("method.card_token", "a payout takes no card"))

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
        if payment.payment_id in self._driving or self.dispatcher is None or self._stopping:
            return
        self._driving.add(payment.payment_id)
        self._spawn(self._guarded(payment.payment_id, self._submit_payment(payment)), payment.payment_id)

    async def _guarded(self, object_id: str, steps: Any) -> None:
        """Run one piece of channel work; a failure leaves the object open (its poll row or
        CREATED state brings it back), never half-done."""
        metrics.OPEN_EXTERNAL.inc()
        try:
            await steps
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("channel work for %s failed; it stays open and is retried", object_id)
        finally:
            metrics.OPEN_EXTERNAL.dec()
            self._driving.discard(object_id)

    async def _ask(self, call: Any) -> ChannelAnswer:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that races the inner call's completion, and then stop()
        # would wait forever on a poll loop that never learned it was cancelled.
        async with self._channel_slots:
            async with asyncio.timeout(self.submit_timeout_s):
                answer: ChannelAnswer = await call
        return answer

    async def _send(self, call: Any) -> ChannelAnswer:
        """Submit once: any failure after the call started may have left the process."""
        try:
            return await self._ask(call)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - it may have left: unknown, not failed
            return ChannelAnswer(ChannelOutcome.UNKNOWN, f"SUBMIT_{type(exc).__name__.upper()}")

    def _instruction(self, payment: Payment, kind: str = "pay") -> Instruction:
        if kind == "reverse":
            return Instruction(
                instruction_id=f"{payment.instruction_id}r", object_id=payment.payment_id, kind="reverse",
                merchant_id=payment.merchant_id, asset=payment.asset, amount=payment.amount,
                currency=payment.currency, channel=payment.channel, original_instruction_id=payment.instruction_id,
                channel_reference=payment.channel_reference)
        return Instruction(  # "pay" or "payout": what the payment is
            instruction_id=payment.instruction_id, object_id=payment.payment_id, kind=payment.kind,
            merchant_id=payment.merchant_id, asset=payment.asset, amount=payment.amount, currency=payment.currency,
            channel=payment.channel, card_token=payment.card.token if payment.card else "",
            bank_account=payment.bank_account, channel_reference=payment.channel_reference,
            description=payment.description)

    @staticmethod
    def _route_query(payment: Payment) -> RouteQuery:
        return RouteQuery(payment.asset, payment.currency, payment.amount, payment.merchant_id,
                          payment.card.bin if payment.card else "",
                          payment.bank_account.bank_code if payment.bank_account else "")

    def _refund_instruction(self, payment: Payment, refund: Refund) -> Instruction:
        return Instruction(
            instruction_id=f"{refund.refund_id}-1", object_id=refund.refund_id, kind="refund",
            merchant_id=refund.merchant_id, asset=payment.asset, amount=refund.amount, currency=refund.currency,
            channel=payment.channel, original_instruction_id=payment.instruction_id,
            channel_reference=payment.channel_reference)

    async def _move(self, payment_id: str, target: PaymentStatus, **kw: Any) -> Outcome:
        outcome: Outcome = await self.ledger.run(MovePayment(payment_id, target, polls=self.polls,
                                                             pools=self.channel_pools, **kw))
        return outcome

    async def _submit_payment(self, payment: Payment) -> None:
        """CREATED -> PROCESSING (durably, before anything leaves) -> submit -> apply the answer.

        After a crash, CREATED means "never sent" and PROCESSING means "maybe sent, only
        ask". Only a NOT_SUBMITTED answer (provably never left) moves the payment to the
        next eligible channel; with none left it fails, which is safe for the same reason.
        """
        assert self.dispatcher is not None
        outcome = await self._move(payment.payment_id, PaymentStatus.PROCESSING, source="dispatch",
                                   only_from=frozenset({PaymentStatus.CREATED}))
        if outcome.kind != "moved":
            return  # canceled in the meantime, or another process took it
        self._after_commit(outcome, previous=PaymentStatus.CREATED, since_ns=payment.updated_at_ns)
        assert outcome.payment is not None
        payment = outcome.payment
        tried = {payment.channel}
        while True:
            answer = await self._send(self.dispatcher.submit(self._instruction(payment)))
            if answer.outcome is not ChannelOutcome.NOT_SUBMITTED:
                break
            metrics.CHANNEL_ANSWERS.labels("submit", answer.outcome.value).inc()
            # Only the decision's own fallbacks, each still eligible now, and only within the
            # fallback deadline: never a channel the router excluded.
            query = self._route_query(payment)
            routing = payment.routing or Routing(chosen=payment.channel, reason="STATIC")
            age_s = (self.clock_ns() - payment.created_at_ns) / NS
            following = self.dispatcher.next_channel(query, routing, frozenset(tried), age_s)
            if not following:
                answer = ChannelAnswer(ChannelOutcome.FAILED, answer.reason or "CHANNEL_UNAVAILABLE")
                break
            rerouted: Outcome = await self.ledger.run(ReroutePayment(payment.payment_id, payment.channel, following))
            if rerouted.kind != "moved":
                return
            self._after_commit(rerouted)
            assert rerouted.payment is not None
            payment = rerouted.payment
            tried.add(payment.channel)
            self.dispatcher.sent(payment.channel, query)
            log.info("payment %s never reached its channel; rerouted to %s", payment.payment_id, payment.channel)
        await self.apply_channel_answer(payment.payment_id, answer, source="submit")

    async def _submit_refund(self, payment: Payment, refund: Refund) -> None:
        assert self.dispatcher is not None
        answer = await self._send(self.dispatcher.submit(self._refund_instruction(payment, refund)))
        if answer.outcome is ChannelOutcome.NOT_SUBMITTED:
            answer = ChannelAnswer(ChannelOutcome.FAILED, answer.reason or "CHANNEL_UNAVAILABLE")
        await self.apply_refund_answer(refund.refund_id, answer, source="submit")

    async def apply_refund_answer(self, refund_id: str, answer: ChannelAnswer, source: str = "callback") -> None:
        """Apply a channel's answer about an external refund (submit, poll or a verified callback)."""
        metrics.CHANNEL_ANSWERS.labels(source, answer.outcome.value).inc()
        target = {ChannelOutcome.SUCCEEDED: RefundStatus.SUCCEEDED, ChannelOutcome.FAILED: RefundStatus.FAILED,
                  ChannelOutcome.UNKNOWN: RefundStatus.UNKNOWN}.get(answer.outcome)
        if target is None:
            return
        outcome: Outcome = await self.ledger.run(MoveRefund(refund_id, target, answer.reason, polls=self.polls,
                                                            pools=self.channel_pools))
        if outcome.kind == "refused":
            raise NotFound(f"no refund {refund_id!r}", reason="REFUND_NOT_FOUND")
        if outcome.kind == "moved":
            self._after_commit(outcome)
            assert outcome.refund is not None and outcome.payment is not None
            metrics.REFUNDS.labels(outcome.payment.asset.name, target.name, outcome.refund.failure_reason).inc()
        elif outcome.kind == "discrepancy":
            metrics.DISCREPANCIES.inc()
            log.warning("refund %s: %s answered %s after it became final", refund_id, source, target.name)

    async def resolve_by_reconciliation(self, run_id: str, object_id: str, kind: str, succeeded: bool, *,
                                        reason: str = "", channel_reference: str = "") -> bool:
        """What a channel's statement proved about a payment (kind "pay" or "payout") or refund ("refund")
        that is still PROCESSING or UNKNOWN: SUCCEEDED posts its hold, FAILED voids it, through
        the same procedures, outbox and metrics as a channel's own answer, with the note
        "resolved by reconciliation <run_id>" on the record and in its event; its polling row
        goes with it. The state is checked again inside the commit: a payment or refund that
        is final already (or CREATED: never sent) is left alone, and False says nothing moved
        (so a re-run is harmless). A payment whose reversal is in flight is left to the
        reversal's answer."""
        note = f"resolved by reconciliation {run_id}"
        if kind == "refund":
            target_refund = RefundStatus.SUCCEEDED if succeeded else RefundStatus.FAILED
            outcome: Outcome = await self.ledger.run(MoveRefund(
                object_id, target_refund, "" if succeeded else (reason or "FAILED_ON_STATEMENT"), polls=self.polls,
                only_from=frozenset({RefundStatus.PROCESSING, RefundStatus.UNKNOWN}), note=note,
                pools=self.channel_pools))
            if outcome.kind != "moved":
                return False
            self._after_commit(outcome)
            assert outcome.refund is not None and outcome.payment is not None
            metrics.CHANNEL_ANSWERS.labels("reconciliation", "SUCCEEDED" if succeeded else "FAILED").inc()
            metrics.REFUNDS.labels(outcome.payment.asset.name, target_refund.name, outcome.refund.failure_reason).inc()
            return True
        polled = await self.ledger.query("SELECT kind FROM channel_polls WHERE object_id = ?", (object_id,))
        if polled and polled[0][0] == "reverse":
            return False
        target = PaymentStatus.SUCCEEDED if succeeded else PaymentStatus.FAILED
        outcome = await self._move(object_id, target, reason="" if succeeded else (reason or "FAILED_ON_STATEMENT"),
                                   channel_reference=channel_reference, source="reconciliation", note=note,
                                   only_from=frozenset({PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN}))
        if outcome.kind != "moved":
            return False
        metrics.CHANNEL_ANSWERS.labels("reconciliation", target.name).inc()
        self._after_commit(outcome, previous=outcome.previous_status, since_ns=outcome.previous_updated_at_ns)
        return True

    # ---- the polling schedule (channel_polls): durable, so a restart resumes it
    async def _poll_forever(self) -> None:
        while not self._stopping:
            try:
                await self.poll_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the poller must outlive a bad moment
                log.exception("polling channels failed; retrying")
            await asyncio.sleep(self.poll_tick_s)

    async def poll_due(self) -> int:
        """Start a query for every scheduled object that is due; returns how many started."""
        rows = await self.ledger.query(
            "SELECT object_id, kind, attempts, window_ends_ns FROM channel_polls WHERE next_at_ns <= ? "
            "ORDER BY next_at_ns LIMIT 200", (self.clock_ns(),))
        started = 0
        for object_id, kind, attempts, window_ends_ns in rows:
            if object_id in self._driving or self._stopping:
                continue
            self._driving.add(object_id)
            self._spawn(self._guarded(object_id, self._poll_one(object_id, kind, int(attempts), int(window_ends_ns))),
                        object_id)
            started += 1
        return started

    async def _reschedule(self, object_id: str, attempts: int) -> None:
        self._backoff_state.attempt_number = attempts
        delay_ns = int(self._backoff(self._backoff_state) * NS)
        await self.ledger.write([("UPDATE channel_polls SET next_at_ns = ?, attempts = ? WHERE object_id = ?",
                                  (self.clock_ns() + delay_ns, attempts, object_id))])

    async def _poll_one(self, object_id: str, kind: str, attempts: int, window_ends_ns: int) -> None:
        assert self.dispatcher is not None
        if kind == "refund":
            refund_rows = await self.ledger.query(records.SELECT_REFUND, (object_id,))
            if not refund_rows:
                await self.ledger.write([(records.UNSCHEDULE_POLL, (object_id,))])
                return
            refund = records.refund_from_body(refund_rows[0][0])
            payment = await self.get_payment(refund.payment_id)
            instruction = self._refund_instruction(payment, refund)
        else:
            payment = await self.get_payment(object_id)
            instruction = self._instruction(payment, "reverse" if kind == "reverse" else "pay")
            if payment.status.final:
                await self.ledger.write([(records.UNSCHEDULE_POLL, (object_id,))])
                return
        if self.clock_ns() >= window_ends_ns:
            await self._window_closed(object_id, kind, payment)
            return
        metrics.POLLS.inc()
        try:
            if kind == "reverse":
                # A reversal without a final answer is sent again, not only asked about: the bank
                # deduplicates it by instruction id, and a reversal that never arrived must still
                # happen (the ISO 8583 repeat, 0401, works the same way).
                answer = await self._ask(self.dispatcher.reverse(instruction))
            else:
                answer = await self._ask(self.dispatcher.query(instruction))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed poll tells us nothing; ask again later
            log.info("polling %s failed (%s); will ask again", object_id, type(exc).__name__)
            answer = ChannelAnswer(ChannelOutcome.PENDING)
        if kind == "refund":
            await self.apply_refund_answer(object_id, answer, source="poll")
            final = answer.outcome in (ChannelOutcome.SUCCEEDED, ChannelOutcome.FAILED)
        elif kind == "reverse":
            final = await self._apply_reversal(payment, answer)
        else:
            final = (await self.apply_channel_answer(object_id, answer, source="poll")).status.final
        if not final:
            await self._reschedule(object_id, attempts + 1)

    async def _window_closed(self, object_id: str, kind: str, payment: Payment) -> None:
        """Polling gave no final answer in time. A card authorization still UNKNOWN is
        reversed where the channel can (and the reversal is polled with the same care);
        anything else stays as it is until reconciliation settles it."""
        assert self.dispatcher is not None
        if kind == "pay" and payment.kind == "pay" and payment.status is PaymentStatus.UNKNOWN \
                and self.dispatcher.supports_reversal(payment.channel):
            metrics.REVERSALS.labels("sent").inc()
            answer = await self._send(self.dispatcher.reverse(self._instruction(payment, "reverse")))
            if not await self._apply_reversal(payment, answer):
                now = self.clock_ns()
                await self.ledger.write([(
                    "UPDATE channel_polls SET kind = 'reverse', attempts = 0, next_at_ns = ?, window_ends_ns = ? "
                    "WHERE object_id = ?", (now + self.polls.first_ns, now + self.polls.window_ns, object_id))])
            return
        log.warning("%s %s: no final answer within the polling window; reconciliation settles it", kind, object_id)
        metrics.POLL_WINDOWS_CLOSED.labels(kind).inc()
        await self.ledger.write([(records.UNSCHEDULE_POLL, (object_id,))])

    async def _apply_reversal(self, payment: Payment, answer: ChannelAnswer) -> bool:
        """True when the reversal is settled either way (no more polling)."""
        if answer.outcome is ChannelOutcome.SUCCEEDED:
            metrics.REVERSALS.labels("reversed").inc()
            await self.apply_channel_answer(payment.payment_id, ChannelAnswer(
                ChannelOutcome.FAILED, "REVERSED_AFTER_UNKNOWN", answer.channel_reference), source="reversal")
            return True
        if answer.outcome is ChannelOutcome.FAILED:
            # The bank refused to reverse: the original may well have happened. Only the
            # statement can tell now; the payment stays UNKNOWN for reconciliation.
            metrics.REVERSALS.labels("refused").inc()
            log.warning("reversal of %s refused (%s); reconciliation settles it", payment.payment_id, answer.reason)
            await self.ledger.write([(records.UNSCHEDULE_POLL, (payment.payment_id,))])
            return True
        return False


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
