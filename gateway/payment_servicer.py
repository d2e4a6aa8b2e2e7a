"""The `dualflow.v1.PaymentGateway` gRPC service: protobuf <-> domain, plus the
merchant checks that need the caller (the interceptor has already authenticated
it and checked the method's permission).

Everything else lives in core.payments; domain errors become statuses in the
interceptor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from dualflow.core.errors import FieldViolation, InvalidRequest, PreconditionFailed
from dualflow.core.payments import records
from dualflow.core.payments.model import (
    Asset,
    Balance,
    BankAccount,
    Discrepancy,
    Payment,
    PaymentRequest,
    PaymentStatus,
    Refund,
)
from dualflow.core.payments.outbox import OutboxEvent
from dualflow.core.payments.service import PaymentService
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

from .auth import ALL_MERCHANTS, current_caller

EVENT_PAGE = 500
WAIT_S = 5.0
_PAYMENT_EVENTS = records.PAYMENT_EVENT_TYPES


# ---- domain -> protobuf
def payment_to_pb(p: Payment) -> pb.Payment:
    msg = pb.Payment(
        payment_id=p.payment_id, request_id=p.request_id, merchant_id=p.merchant_id, payer=p.payer,
        payee=p.payee, amount=p.amount, currency=p.currency, asset=int(p.asset), status=int(p.status),  # type: ignore[arg-type]
        failure_reason=p.failure_reason, fee=p.fee, refunded_amount=p.refunded_amount,
        trade_order_id=p.trade_order_id, description=p.description, metadata=p.metadata, channel=p.channel,
        channel_reference=p.channel_reference, created_at_ns=p.created_at_ns, updated_at_ns=p.updated_at_ns,
        version=p.version, attempt=p.attempt, kind=p.kind,
    )
    if p.card is not None:
        msg.card.CopyFrom(pb.CardSummary(token=p.card.token, bin=p.card.bin, last4=p.card.last4, brand=p.card.brand,
                                         exp_month=p.card.exp_month, exp_year=p.card.exp_year))
    if p.bank_account is not None:
        msg.bank_account.CopyFrom(pb.BankAccountRef(bank_code=p.bank_account.bank_code,
                                                    account_last4=p.bank_account.account_last4,
                                                    holder_name=p.bank_account.holder_name))
    if p.routing is not None:
        r = p.routing
        msg.routing.CopyFrom(pb.RoutingDecision(
            chosen=r.chosen, reason=r.reason, fallbacks=r.fallbacks, config_version=r.config_version,
            rerouted_from=r.rerouted_from,
            candidates=[pb.RouteCandidate(channel=c.channel, estimated_success=c.estimated_success, fee=c.fee,
                                          score=c.score) for c in r.candidates],
            excluded=[pb.RouteExclusion(channel=name, reason=why) for name, why in r.excluded]))
    return msg


def refund_to_pb(r: Refund) -> pb.Refund:
    return pb.Refund(
        refund_id=r.refund_id, payment_id=r.payment_id, request_id=r.request_id, merchant_id=r.merchant_id,
        amount=r.amount, currency=r.currency, status=int(r.status), failure_reason=r.failure_reason,  # type: ignore[arg-type]
        reason=r.reason, created_at_ns=r.created_at_ns, updated_at_ns=r.updated_at_ns,
    )


def balance_to_pb(b: Balance) -> pb.Balance:
    return pb.Balance(user_id=b.user_id, asset=int(b.asset), currency=b.currency, available=b.available,  # type: ignore[arg-type]
                      pending_in=b.pending_in, pending_out=b.pending_out, as_of_timestamp=b.as_of_timestamp)


def discrepancy_to_pb(d: Discrepancy) -> pb.Discrepancy:
    return pb.Discrepancy(discrepancy_id=d.discrepancy_id, payment_id=d.payment_id, kind=d.kind,
                          recorded_status=int(d.recorded_status), channel_outcome=d.channel_outcome,  # type: ignore[arg-type]
                          detail=d.detail, created_at_ns=d.created_at_ns)


def event_to_pb(e: OutboxEvent) -> pb.Event:
    msg = pb.Event(sequence=e.seq, event_id=e.event_id, type=e.type, merchant_id=e.merchant_id,
                   created_at_ns=e.created_at_ns, data_json=e.payload_json)
    data = json.loads(e.payload_json)
    if e.type == "payment.discrepancy":
        msg.discrepancy.CopyFrom(discrepancy_to_pb(records.discrepancy_from_dict(data)))
    elif e.type in _PAYMENT_EVENTS:
        msg.payment.CopyFrom(payment_to_pb(records.payment_from_dict(data)))
    elif e.type.startswith("refund."):
        msg.refund.CopyFrom(refund_to_pb(records.refund_from_dict(data)))
    elif e.type == "balance.updated":
        msg.balance.CopyFrom(pb.Balance(
            user_id=data["user_id"], asset=Asset[data["asset"]].value, currency=data["currency"],  # type: ignore[arg-type]
            available=data["available"], pending_in=data["pending_in"], pending_out=data["pending_out"],
            as_of_timestamp=data["as_of_timestamp"]))
    return msg


# ---- protobuf -> domain
def _asset(value: int, field: str, *, optional: bool = False) -> Asset | None:
    if value == 0 and optional:
        return None
    try:
        return Asset(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be one of {', '.join(a.name for a in Asset)}", reason="ASSET_INVALID",
                             violations=(FieldViolation(field, "must name an asset"),)) from None


def payment_request_from_pb(r: pb.CreatePaymentRequest) -> PaymentRequest:
    asset = _asset(r.asset, "asset")
    assert asset is not None
    which = r.method.WhichOneof("method")
    bank = None
    if which == "bank_account":
        b = r.method.bank_account
        bank = BankAccount(b.bank_code, b.account_last4, b.holder_name)
    return PaymentRequest(
        request_id=r.request_id, merchant_id=r.merchant_id, payer=r.payer,
        payee=r.payee or f"merchant:{r.merchant_id}", amount=r.amount, currency=r.currency, asset=asset,
        trade_order_id=r.trade_order_id, description=r.description, metadata=dict(r.metadata),
        card_token=r.method.card_token if which == "card_token" else "", bank_account=bank,
    )


def payout_request_from_pb(r: pb.CreatePayoutRequest) -> PaymentRequest:
    b = r.bank_account if r.HasField("bank_account") else None
    return PaymentRequest(
        request_id=r.request_id, merchant_id=r.merchant_id, payer=r.payer, payee=r.payer, amount=r.amount,
        currency=r.currency, asset=Asset.BANK_TRANSFER, description=r.description, metadata=dict(r.metadata),
        bank_account=BankAccount(b.bank_code, b.account_last4, b.holder_name) if b is not None else None,
        kind="payout")


def _endpoint_to_pb(endpoint: Any, secret: str = "") -> pb.WebhookEndpoint:
    return pb.WebhookEndpoint(endpoint_id=endpoint.id, merchant_id=endpoint.merchant_id, url=endpoint.url,
                              event_types=[t for t in endpoint.event_types if t != "*"], enabled=endpoint.enabled,
                              secret=secret)


def _merchant_scope(merchant_id: str, field: str = "merchant_id") -> str:
    """The merchant filter a listing or stream may use: required unless the caller sees every merchant."""
    caller = current_caller()
    if merchant_id:
        caller.check_merchant(merchant_id)
    elif ALL_MERCHANTS not in caller.merchants:
        raise InvalidRequest(f"{field} is required: this caller acts for specific merchants",
                             reason="MERCHANT_REQUIRED",
                             violations=(FieldViolation(field, "name one of your merchants"),))
    return merchant_id


class PaymentGatewayServicer(payments_pb2_grpc.PaymentGatewayServicer):
    def __init__(self, payments: PaymentService, vault: Any = None, webhooks: Any = None) -> None:
        self.payments = payments
        self.vault = vault
        self.webhooks = webhooks

    async def _payment_for_caller(self, payment_id: str) -> Payment:
        payment = await self.payments.get_payment(payment_id)
        current_caller().check_merchant(payment.merchant_id)
        return payment

    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: grpc.aio.ServicerContext) -> pb.Payment:
        current_caller().check_merchant(request.merchant_id)
        return payment_to_pb(await self.payments.create_payment(payment_request_from_pb(request)))

    async def CreatePayout(self, request: pb.CreatePayoutRequest, context: grpc.aio.ServicerContext) -> pb.Payment:
        current_caller().check_merchant(request.merchant_id)
        return payment_to_pb(await self.payments.create_payout(payout_request_from_pb(request)))

    async def GetPayment(self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext) -> pb.Payment:
        return payment_to_pb(await self._payment_for_caller(request.payment_id))

    async def ListPayments(self, request: pb.ListPaymentsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListPaymentsResponse:
        merchant_id = _merchant_scope(request.merchant_id)
        statuses = set()
        for s in request.statuses:
            try:
                statuses.add(PaymentStatus(s))
            except ValueError:
                raise InvalidRequest("statuses must name payment statuses", reason="FILTER_INVALID",
                                     violations=(FieldViolation("statuses", f"{s} is not a status"),)) from None
        payments, token = await self.payments.list_payments(
            merchant_id, statuses=frozenset(statuses), asset=_asset(request.asset, "asset", optional=True),
            created_from_ns=request.created_from_ns, created_to_ns=request.created_to_ns,
            page_size=request.page_size or 100, page_token=request.page_token)
        return pb.ListPaymentsResponse(payments=[payment_to_pb(p) for p in payments], next_page_token=token)

    async def CancelPayment(self, request: pb.CancelPaymentRequest, context: grpc.aio.ServicerContext) -> pb.Payment:
        await self._payment_for_caller(request.payment_id)
        return payment_to_pb(await self.payments.cancel_payment(request.payment_id, request.reason))

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: grpc.aio.ServicerContext) -> pb.Refund:
        await self._payment_for_caller(request.payment_id)
        refund = await self.payments.refund_payment(request.request_id, request.payment_id, request.amount,
                                                    request.reason)
        return refund_to_pb(refund)

    async def WatchPayment(self, request: pb.WatchPaymentRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Payment]:
        feed = self.payments.feed
        cursor = feed.head  # before the read: a change after it shows up as an event
        payment = await self._payment_for_caller(request.payment_id)
        yield payment_to_pb(payment)
        while not payment.status.final:
            await feed.wait_for_new(cursor, WAIT_S)
            seen = feed.head
            for event in await feed.read_after(cursor, EVENT_PAGE, subject_id=payment.payment_id):
                seen = max(seen, event.seq)
                if event.type in _PAYMENT_EVENTS:
                    changed = records.payment_from_dict(json.loads(event.payload_json))
                    if changed.version > payment.version:
                        payment = changed
                        yield payment_to_pb(payment)
            cursor = max(cursor, seen)

    async def GetBalance(self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext) -> pb.Balance:
        asset = _asset(request.asset, "asset")
        assert asset is not None
        return balance_to_pb(await self.payments.get_balance(request.user_id, asset, request.currency))

    async def SubscribeEvents(self, request: pb.SubscribeEventsRequest,
                              context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Event]:
        merchant_id = _merchant_scope(request.merchant_id)
        feed = self.payments.feed
        types = list(request.types)
        cursor = request.after_sequence
        while True:
            head = feed.head
            events = await feed.read_after(cursor, EVENT_PAGE, types=types, merchant_id=merchant_id)
            for event in events:
                yield event_to_pb(event)
                cursor = event.seq
            if len(events) < EVENT_PAGE:
                # Everything up to `head` was read (filters may have skipped it): wait past it.
                cursor = max(cursor, head)
                await feed.wait_for_new(cursor, WAIT_S)

    # ---- webhooks (the notification system)
    def _registry(self) -> Any:
        if self.webhooks is None:
            raise PreconditionFailed("this server has no webhook registry", reason="WEBHOOKS_UNAVAILABLE")
        return self.webhooks

    async def _endpoint_for_caller(self, endpoint_id: str) -> Any:
        endpoint = await self._registry().endpoint(endpoint_id)
        current_caller().check_merchant(endpoint.merchant_id)
        return endpoint

    async def RegisterWebhook(self, request: pb.RegisterWebhookRequest,
                              context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        current_caller().check_merchant(request.merchant_id)
        endpoint, secret = await self._registry().add_endpoint(request.merchant_id, request.url,
                                                               list(request.event_types) or "*")
        return _endpoint_to_pb(endpoint, secret)

    async def ListWebhooks(self, request: pb.ListWebhooksRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListWebhooksResponse:
        current_caller().check_merchant(request.merchant_id)
        endpoints = await self._registry().list_endpoints(request.merchant_id)
        return pb.ListWebhooksResponse(endpoints=[_endpoint_to_pb(e) for e in endpoints])

    async def DisableWebhook(self, request: pb.DisableWebhookRequest,
                             context: grpc.aio.ServicerContext) -> pb.WebhookEndpoint:
        await self._endpoint_for_caller(request.endpoint_id)
        await self._registry().disable_endpoint(request.endpoint_id)
        return _endpoint_to_pb(await self._registry().endpoint(request.endpoint_id))

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDeadLettersResponse:
        current_caller().check_merchant(request.merchant_id)
        dead = await self._registry().list_dead_letters(request.merchant_id, request.limit or 100)
        return pb.ListDeadLettersResponse(dead_letters=[pb.DeadLetter(
            delivery_id=d.id, endpoint_id=d.endpoint_id, event_id=d.event_id, attempts=d.attempts,
            last_error=d.last_error or "", updated_at_ns=d.updated_at_ms * 1_000_000) for d in dead])

    async def RedeliverWebhook(self, request: pb.RedeliverWebhookRequest,
                               context: grpc.aio.ServicerContext) -> pb.RedeliverWebhookResponse:
        delivery = await self._registry().delivery(request.delivery_id)
        await self._endpoint_for_caller(delivery.endpoint_id)
        await self._registry().redeliver(request.delivery_id)
        return pb.RedeliverWebhookResponse()

    async def TokenizeCard(self, request: pb.TokenizeCardRequest,
                           context: grpc.aio.ServicerContext) -> pb.CardSummary:
        if self.vault is None:
            raise PreconditionFailed("this server has no card vault configured", reason="VAULT_UNAVAILABLE")
        ref = await self.vault.tokenize(request.card_number, request.exp_month, request.exp_year)
        return pb.CardSummary(token=ref.token, bin=ref.bin6, last4=ref.last4, brand=ref.brand,
                              exp_month=ref.exp_month, exp_year=ref.exp_year)
