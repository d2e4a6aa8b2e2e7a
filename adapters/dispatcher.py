"""The financial gateway (金融网关): the payment gateway's ChannelDispatcher over channel adapters.

It turns channel-neutral instructions into adapter calls (revealing a card
from the vault only at the moment the card adapter needs it), maps adapter
results to the payment gateway's answers, and runs the callback listener: a
small HTTP server on its own port where channels POST asynchronous
notifications, each verified by its adapter before anything is believed.

Payment state lives in the payment gateway, never here: a callback's answer is
handed to `on_answer`, which applies it idempotently (a duplicate or a replay
changes nothing, in any order relative to poll answers).

Which channel carries a payment is the smart router's decision
(routing/policy.py): eligibility, learned health and fees. The gateway feeds it
every answer a channel gives to a payment, so it learns from real outcomes.

A payout (instruction kind "payout") goes to the adapter's `payout` flow with a
contract.PayoutInstruction; a channel without one answers NOT_SUBMITTED, so the
router's next channel, or FAILED, follows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome, Instruction, RouteQuery
from dualflow.core.payments.model import RouteCandidate, Routing
from dualflow.routing import metrics as routing_metrics
from dualflow.routing.config import RoutingConfig
from dualflow.routing.health import is_payer_decline
from dualflow.routing.policy import RouteRequest, Router

from . import metrics
from .contract import (
    CallbackEvent,
    CallbackRejected,
    CardData,
    ChannelAdapter,
    ChannelResult,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    PayoutInstruction,
    QueryRequest,
    RefundInstruction,
)

log = logging.getLogger(__name__)

# Where a verified callback's answer goes: (kind "pay" | "payout" | "refund", payment or refund id, answer).
AnswerSink = Callable[[str, str, ChannelAnswer], Awaitable[None]]

_NO_PAYOUT = "FLOW_NOT_SUPPORTED"  # NOT_SUBMITTED: the channel has no payout flow

_OUTCOMES = {
    Outcome.SUCCEEDED: ChannelOutcome.SUCCEEDED,
    Outcome.FAILED: ChannelOutcome.FAILED,
    Outcome.PENDING: ChannelOutcome.PENDING,
    Outcome.UNKNOWN: ChannelOutcome.UNKNOWN,
    Outcome.NOT_SUBMITTED: ChannelOutcome.NOT_SUBMITTED,
}


class CardSource(Protocol):
    async def reveal_card(self, token: str) -> tuple[Any, str]: ...


def answer_of(result: ChannelResult) -> ChannelAnswer:
    return ChannelAnswer(_OUTCOMES[result.outcome], result.reason, result.channel_reference)


def object_id_of(instruction_id: str) -> str:
    """`pay_x-2` -> `pay_x`: instruction ids are the payment or refund id, "-", the attempt."""
    return instruction_id.split("-", 1)[0]


class FinancialGateway:
    def __init__(self, adapters: Sequence[ChannelAdapter], *, cards: CardSource | None = None,
                 callback_host: str = "127.0.0.1", callback_port: int | None = 0,
                 routing: RoutingConfig = RoutingConfig(), seed: int | None = None) -> None:
        self.adapters: dict[str, ChannelAdapter] = {a.name: a for a in adapters}
        # Without a seed the router explores differently in each process (Thompson sampling);
        # tests pass one to make decisions reproducible.
        self.router = Router([a.describe() for a in adapters], routing,
                             seed=seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        routing_metrics.track(self.router)
        self.cards = cards
        self.callback_host = callback_host
        self.callback_port = callback_port  # None: no listener
        self.on_answer: AnswerSink | None = None
        self._runner: web.AppRunner | None = None
        self.callback_url = ""

    # ---- lifecycle
    async def start(self) -> None:
        for adapter in self.adapters.values():
            await adapter.start()
        if self.callback_port is not None:
            app = web.Application(client_max_size=1 << 20)
            app.router.add_post("/callbacks/{channel}", self._callback)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.callback_host, self.callback_port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.callback_port = port
            self.callback_url = f"http://{self.callback_host}:{port}/callbacks"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for adapter in self.adapters.values():
            try:
                await adapter.close()
            except Exception:  # noqa: BLE001 - close the others anyway
                log.warning("closing channel %s failed", adapter.name, exc_info=True)

    # ---- ChannelDispatcher
    def route(self, query: RouteQuery) -> Routing:
        started = time.perf_counter()
        decision = self.router.decide(_request(query))
        routing_metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        routing_metrics.DECISIONS.labels(decision.chosen or "none", decision.reason).inc()
        for name, why in decision.excluded.items():
            routing_metrics.EXCLUSIONS.labels(name, why).inc()
        return Routing(
            chosen=decision.chosen or "", reason=decision.reason, fallbacks=decision.fallbacks,
            candidates=tuple(RouteCandidate(c.channel, c.success, c.fee, c.score) for c in decision.candidates),
            excluded=tuple(sorted(decision.excluded.items())), config_version=decision.config_version)

    def sent(self, channel: str, query: RouteQuery) -> None:
        if channel in self.router.capabilities:
            self.router.sent(channel, _request(query))

    def next_channel(self, query: RouteQuery, routing: Routing, tried: frozenset[str], age_s: float) -> str:
        if age_s > self.router.config.fallback_deadline_s:
            routing_metrics.DECISIONS.labels("none", "FALLBACK_DEADLINE_PASSED").inc()
            return ""
        request = _request(query)
        for name in routing.fallbacks:
            if name in tried:
                continue
            why = self.router.eligible(name, request) or ("" if self.router.claim(name) else "BREAKER_OPEN")
            if not why:
                routing_metrics.DECISIONS.labels(name, "FALLBACK").inc()
                return name
            routing_metrics.EXCLUSIONS.labels(name, why).inc()
        routing_metrics.DECISIONS.labels("none", "NO_FALLBACK_LEFT").inc()
        return ""

    def supports_reversal(self, channel: str) -> bool:
        adapter = self.adapters.get(channel)
        return adapter is not None and Flow.REVERSE in adapter.describe().flows

    async def submit(self, instruction: Instruction) -> ChannelAnswer:
        adapter = self._adapter(instruction.channel)
        started = time.perf_counter()
        if instruction.kind == "refund":
            result = await adapter.refund(RefundInstruction(
                instruction_id=instruction.instruction_id, refund_id=instruction.object_id,
                payment_id=object_id_of(instruction.original_instruction_id),
                original_instruction_id=instruction.original_instruction_id,
                original_reference=instruction.channel_reference, amount=instruction.amount,
                currency=instruction.currency))
        else:
            try:
                if instruction.kind == "payout":
                    result = await self._payout(adapter, instruction)
                else:
                    reveal = adapter.describe().needs_card_number
                    result = await adapter.submit(await self._pay_instruction(instruction, reveal_card=reveal))
            except BaseException as exc:  # noqa: BLE001 - the caller's timeout cancels us: a fault too
                self._learn(adapter.name, ChannelResult(Outcome.UNKNOWN, f"SUBMIT_{type(exc).__name__.upper()}"),
                            started)
                raise
            if result.reason != _NO_PAYOUT:  # a channel without payouts is not at fault for lacking them
                self._learn(adapter.name, result, started)
        if instruction.kind != "payout":  # the transfer adapter counts its payouts itself
            self._observe(adapter.name, instruction.kind, result, started)
        return answer_of(result)

    async def query(self, instruction: Instruction) -> ChannelAnswer:
        adapter = self._adapter(instruction.channel)
        started = time.perf_counter()
        # A reversal is known to the channel by the payment it reverses, not by an id of its own.
        asked = instruction.original_instruction_id if instruction.kind == "reverse" else instruction.instruction_id
        request = QueryRequest(asked, instruction.channel_reference, kind=instruction.kind)
        result = await adapter.query(request)
        metrics.POLLS.labels(adapter.name, result.outcome.value).inc()
        self._observe(adapter.name, "query", result, started)
        return answer_of(result)

    async def reverse(self, instruction: Instruction) -> ChannelAnswer:
        adapter = self._adapter(instruction.channel)
        started = time.perf_counter()
        result = await adapter.reverse(
            QueryRequest(instruction.original_instruction_id, instruction.channel_reference, kind="pay"),
            instruction.amount, instruction.currency)
        metrics.REVERSALS.labels(adapter.name, result.outcome.value).inc()
        self._observe(adapter.name, "reverse", result, started)
        return answer_of(result)

    # ---- helpers
    def _adapter(self, channel: str) -> ChannelAdapter:
        adapter = self.adapters.get(channel)
        if adapter is None:
            # Configuration changed under an open payment: nothing can be sent or asked.
            raise LookupError(f"channel {channel!r} is not configured")
        return adapter

    @staticmethod
    async def _payout(adapter: ChannelAdapter, instruction: Instruction) -> ChannelResult:
        """A payout through a channel that has the flow (the transfer rail's `payout`); one without
        it never received anything: NOT_SUBMITTED, so the router's next channel (or FAILED) follows."""
        payout = getattr(adapter, "payout", None)
        if payout is None or instruction.bank_account is None:
            return ChannelResult(Outcome.NOT_SUBMITTED, _NO_PAYOUT if payout is None else "MISSING_BANK_ACCOUNT")
        try:
            result: ChannelResult = await payout(PayoutInstruction(
                instruction_id=instruction.instruction_id, payout_id=instruction.object_id,
                merchant_id=instruction.merchant_id, amount=instruction.amount, currency=instruction.currency,
                beneficiary=instruction.bank_account, description=instruction.description))
        except FlowNotSupported:
            return ChannelResult(Outcome.NOT_SUBMITTED, _NO_PAYOUT)
        return result

    async def _pay_instruction(self, instruction: Instruction, *, reveal_card: bool) -> PayInstruction:
        card = None
        if instruction.card_token and reveal_card:
            if self.cards is None:
                raise LookupError("a card payment needs the vault")
            ref, pan = await self.cards.reveal_card(instruction.card_token)
            card = CardData(pan=pan, exp_month=ref.exp_month, exp_year=ref.exp_year)
        return PayInstruction(
            instruction_id=instruction.instruction_id, payment_id=instruction.object_id,
            merchant_id=instruction.merchant_id, asset=instruction.asset, amount=instruction.amount,
            currency=instruction.currency, card=card, bank_account=instruction.bank_account,
            description=instruction.description)

    def _learn(self, channel: str, result: ChannelResult, started: float) -> None:
        """What a payment's submission says about the channel. PENDING counts as the channel
        working (it accepted the order; PSPs answer later by callback); a later final answer is
        not counted again. NOT_SUBMITTED, UNKNOWN and non-payer failures are channel faults."""
        succeeded = result.outcome in (Outcome.SUCCEEDED, Outcome.PENDING)
        self.router.record(channel, succeeded=succeeded, reason=result.reason,
                           latency_ms=(time.perf_counter() - started) * 1_000)
        if succeeded:
            kind, fault = "success", ""
        elif is_payer_decline(result.reason):
            kind, fault = "payer_decline", ""
        else:
            kind = "channel_fault"
            fault = ("timeout" if "TIMEOUT" in result.reason else "unknown" if result.outcome is Outcome.UNKNOWN
                     else "not_submitted" if result.outcome is Outcome.NOT_SUBMITTED else "declined_by_channel")
        routing_metrics.OUTCOMES.labels(channel, kind, fault).inc()

    @staticmethod
    def _observe(channel: str, flow: str, result: ChannelResult, started: float) -> None:
        metrics.REQUESTS.labels(channel, flow, result.outcome.value).inc()
        metrics.REQUEST_SECONDS.labels(channel, flow).observe(time.perf_counter() - started)

    async def _callback(self, request: web.Request) -> web.Response:
        adapter = self.adapters.get(request.match_info["channel"])
        if adapter is None:
            return web.Response(status=404)
        body = await request.read()
        headers: Mapping[str, str] = {k.lower(): v for k, v in request.headers.items()}
        try:
            event: CallbackEvent = adapter.parse_callback(headers, body)
        except CallbackRejected as rejected:
            metrics.CALLBACKS.labels(adapter.name, rejected.reason).inc()
            log.warning("callback from %s rejected: %s", adapter.name, rejected.reason)
            return _response(adapter.callback_response(False))
        metrics.CALLBACKS.labels(adapter.name, "ACCEPTED").inc()
        if self.on_answer is not None:
            try:
                await self.on_answer(event.kind, object_id_of(event.instruction_id), answer_of(event.result))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - not acknowledged: the channel sends it again
                log.exception("applying a callback from %s failed", adapter.name)
                return _response(adapter.callback_response(False), status=500)
        return _response(adapter.callback_response(True))


def _request(query: RouteQuery) -> RouteRequest:
    return RouteRequest(query.asset, query.currency, query.amount, card_bin=query.card_bin,
                        bank_code=query.bank_code, merchant_id=query.merchant_id)


def _response(parts: tuple[int, bytes, Mapping[str, str]], status: int | None = None) -> web.Response:
    code, body, headers = parts
    return web.Response(status=status or code, body=body, headers=dict(headers))
