"""The card-bank adapter: the contract's flows over one ISO 8583 link.

Pay is a 0200 purchase carrying the card (DE 2, DE 14) and our instruction id (DE 48 II), which
the bank deduplicates on: a resubmitted instruction gets the original answer and RRN, or 94
(duplicate transmission), after which the original stands and we query it. Refund is a 0200
with processing code 20 naming the original (DE 48 OI and OR). Reverse is a 0400 with DE 90.
Query is the private 0800/900 (see `spec`). The card number exists here only inside the
outgoing message; it is never logged, and reprs mask it.

Statements: in real life an SFTP file; here the bank's HTTP statement endpoint. The file has a
trailer with counts, totals and an AES-CMAC over the file (see `statement`); it is downloaded to
a temporary file, verified whole and spooled before the first line is yielded.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import date
from typing import Any

import aiohttp

from dualflow.adapters.contract import (
    BalanceUnavailable,
    CallbackEvent,
    Capabilities,
    ChannelBalance,
    ChannelConfig,
    ChannelResult,
    FeeSchedule,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    QueryRequest,
    RefundInstruction,
    StatementLine,
)
from dualflow.adapters.statements import CHUNK_BYTES, download, temporary_file
from dualflow.core.payments.model import Asset

from . import transformers
from .balance import balance_key, parse_balance
from .link import Link, LinkSettings, NoAnswer, NotSent, log
from .metrics import LATENCY, REQUESTS
from .spec import CURRENCY_NUMERIC, NETWORK, PURCHASE_OR_REFUND, REVERSAL
from .statement import read_statement, statement_key

_REMEMBERED = 10_000  # recent (instruction id -> STAN, transmission time) kept for DE 90


class StatementError(Exception):
    """The bank's statement could not be fetched (transport, HTTP status). A statement that was
    fetched but does not verify raises contract.StatementRejected instead."""


class Iso8583BankAdapter:
    def __init__(self, config: ChannelConfig, key: bytes) -> None:
        s: Mapping[str, Any] = config.settings
        self.name = config.name
        self._acceptor = transformers.Acceptor(str(s.get("terminal_id", "TERM0001")),
                                               str(s.get("merchant_id", s.get("acceptor_id", "DUALFLOW"))))
        if len(self._acceptor.terminal_id) > 8 or len(self._acceptor.acceptor_id) > 15:
            raise ValueError(f"channel {self.name!r}: terminal_id is at most 8 characters, merchant_id 15")
        self._currencies = frozenset(s.get("currencies", ("CNY",)))
        unknown = self._currencies - CURRENCY_NUMERIC.keys()
        if unknown:
            raise ValueError(f"channel {self.name!r}: no ISO 4217 numeric code for {sorted(unknown)}")
        self._min_amount = int(s.get("min_amount", 1))
        self._max_amount = min(int(s.get("max_amount", transformers.MAX_AMOUNT)), transformers.MAX_AMOUNT)
        # `fee` as a table (fixed, bps, minimum, maximum, tiers) or the flat fee_fixed / fee_bps.
        fee = FeeSchedule.from_table(s["fee"]) if "fee" in s else \
            FeeSchedule(int(s.get("fee_fixed", 0)), int(s.get("fee_bps", 0)))
        self._fees = {currency: fee for currency in self._currencies}
        self._bin_ranges = tuple((str(low), str(high)) for low, high in s.get("bin_ranges", ()))
        self._statement_url = str(s.get("statement_url", "")).rstrip("/")
        reply_timeout_s = float(s.get("reply_timeout_s", 10.0))
        self._link = Link(self.name, LinkSettings(
            host=str(s.get("host", "127.0.0.1")), port=int(s["port"]),
            connect_timeout_s=float(s.get("connect_timeout_s", 3.0)),
            connect_wait_s=float(s.get("connect_wait_s", 2.0)),
            reply_timeout_s=reply_timeout_s,
            echo_interval_s=float(s.get("echo_interval_s", 30.0)),
            echo_timeout_s=float(s.get("echo_timeout_s", min(5.0, reply_timeout_s))),
            reconnect_initial_s=float(s.get("reconnect_initial_s", 0.05)),
            reconnect_max_s=float(s.get("reconnect_max_s", 5.0))), key)
        self._sent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._statement_key = statement_key(key)
        self._balance_key = balance_key(key)

    def __repr__(self) -> str:
        return f"Iso8583BankAdapter(name={self.name!r}, link={self._link!r})"

    @property
    def link(self) -> Link:
        return self._link

    def describe(self) -> Capabilities:
        flows = {Flow.PAY, Flow.QUERY, Flow.REFUND, Flow.REVERSE}
        if self._statement_url:
            flows.add(Flow.STATEMENT)
        return Capabilities(channel=self.name, assets=frozenset({Asset.BANK_CARD}), currencies=self._currencies,
                            flows=frozenset(flows), min_amount=self._min_amount, max_amount=self._max_amount,
                            bin_ranges=self._bin_ranges, fees=dict(self._fees), needs_card_number=True)

    async def start(self) -> None:
        await self._link.start()

    async def close(self) -> None:
        await self._link.close()

    # ---- flows
    async def submit(self, instruction: PayInstruction) -> ChannelResult:
        started = time.perf_counter()
        try:
            if instruction.asset is not Asset.BANK_CARD:
                raise transformers.Invalid("UNSUPPORTED_ASSET")
            self._check_terms(instruction.currency, instruction.amount)
            fields = transformers.purchase(instruction, self._acceptor)
        except transformers.Invalid as exc:
            return self._done("pay", ChannelResult(Outcome.NOT_SUBMITTED, exc.reason), started)
        result = await self._exchange(PURCHASE_OR_REFUND, fields, instruction.instruction_id, instruction.amount,
                                      remember=instruction.instruction_id)
        if result.channel_code == "94":
            result = await self._original_stands(QueryRequest(instruction.instruction_id), instruction.amount)
        return self._done("pay", result, started)

    async def refund(self, instruction: RefundInstruction) -> ChannelResult:
        started = time.perf_counter()
        try:
            self._check_terms(instruction.currency, instruction.amount, limits=False)
            fields = transformers.refund(instruction, self._acceptor)
        except transformers.Invalid as exc:
            return self._done("refund", ChannelResult(Outcome.NOT_SUBMITTED, exc.reason), started)
        result = await self._exchange(PURCHASE_OR_REFUND, fields, instruction.instruction_id, instruction.amount)
        if result.channel_code == "94":
            result = await self._original_stands(QueryRequest(instruction.instruction_id, kind="refund"),
                                                 instruction.amount)
        return self._done("refund", result, started)

    async def reverse(self, request: QueryRequest, amount: int, currency: str) -> ChannelResult:
        started = time.perf_counter()
        try:
            self._check_terms(currency, amount, limits=False)
            fields = transformers.reversal(request, amount, currency, self._acceptor,
                                           self._sent.get(request.instruction_id))
        except transformers.Invalid as exc:
            return self._done("reverse", ChannelResult(Outcome.NOT_SUBMITTED, exc.reason), started)
        return self._done("reverse", await self._exchange(REVERSAL, fields, request.instruction_id), started)

    async def query(self, request: QueryRequest) -> ChannelResult:
        started = time.perf_counter()
        return self._done("query", await self._query(request), started)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackEvent:
        raise FlowNotSupported(self.name, Flow.CALLBACK)  # card banks do not call back

    def callback_response(self, accepted: bool) -> tuple[int, bytes, Mapping[str, str]]:
        return 404, b"", {}

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        if not self._statement_url:
            raise FlowNotSupported(self.name, Flow.STATEMENT)
        date.fromisoformat(business_date)
        started, outcome = time.perf_counter(), Outcome.FAILED
        try:
            with temporary_file() as raw:
                try:
                    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
                        async with session.get(f"{self._statement_url}/statement",
                                               params={"date": business_date}) as resp:
                            if resp.status != 200:
                                raise StatementError(
                                    f"channel {self.name!r}: statement for {business_date}: HTTP {resp.status}")
                            await download(resp.content.iter_chunked(CHUNK_BYTES), raw)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise StatementError(f"channel {self.name!r}: statement for {business_date}: {exc!r}") from exc
                # Verified whole (off the event loop: it reads every line) before anything is yielded.
                spool = await asyncio.to_thread(read_statement, raw, business_date, self._statement_key)
            outcome = Outcome.SUCCEEDED
        finally:  # the one flow the financial gateway does not count for us
            REQUESTS.labels(self.name, Flow.STATEMENT.value, outcome.value).inc()
            LATENCY.labels(self.name, Flow.STATEMENT.value).observe(time.perf_counter() - started)
        with spool:
            for line in spool.lines():
                yield line

    async def fetch_balance(self, currency: str) -> ChannelBalance:
        """Our balance at the bank from its MACed balance report (`GET {statement_url}/balance`,
        see `balance`); BalanceUnavailable when there is none to trust."""
        if not self._statement_url:
            raise BalanceUnavailable("UNSUPPORTED", f"channel {self.name!r}: no statement_url configured")
        if currency not in self._currencies:
            raise BalanceUnavailable("UNSUPPORTED_CURRENCY", f"channel {self.name!r} does not settle {currency}")
        where = f"channel {self.name!r}: balance {currency}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.get(f"{self._statement_url}/balance", params={"currency": currency}) as resp:
                    data = await resp.content.read(4096)
                    status = resp.status
        except asyncio.TimeoutError:
            raise BalanceUnavailable("TIMEOUT", f"{where}: timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BalanceUnavailable("CONNECTION_FAILED", f"{where}: {exc.__class__.__name__}") from None
        if status != 200:
            raise BalanceUnavailable("BANK_ERROR", f"{where}: HTTP {status}")
        return parse_balance(data, self.name, currency, self._balance_key, time.time())

    # ---- helpers
    def _check_terms(self, currency: str, amount: int, *, limits: bool = True) -> None:
        if currency not in self._currencies:
            raise transformers.Invalid("UNSUPPORTED_CURRENCY")
        if limits and not self._min_amount <= amount <= self._max_amount:
            raise transformers.Invalid("AMOUNT_OUT_OF_RANGE")

    async def _query(self, request: QueryRequest, amount: int | None = None) -> ChannelResult:
        try:
            fields = transformers.status_query(request)
        except transformers.Invalid as exc:
            return ChannelResult(Outcome.NOT_SUBMITTED, exc.reason)
        return await self._exchange(NETWORK, fields, request.instruction_id, amount)

    async def _original_stands(self, request: QueryRequest, amount: int) -> ChannelResult:
        """94: the bank has this instruction already and the original stands: what is it?"""
        found = await self._query(request, amount)
        if found.outcome is Outcome.NOT_SUBMITTED:  # the query could not go; the 0200 did
            return ChannelResult(Outcome.UNKNOWN, "DUPLICATE_TRANSMISSION", "94")
        return found

    async def _exchange(self, mti: str, fields: dict[str, str], instruction_id: str, amount: int | None = None,
                        remember: str = "") -> ChannelResult:
        def sent(stan: str, transmitted: str) -> None:
            if remember:
                self._sent[remember] = (stan, transmitted)
                self._sent.move_to_end(remember)
                while len(self._sent) > _REMEMBERED:
                    self._sent.popitem(last=False)

        try:
            reply = await self._link.request(mti, fields, on_sent=sent)
        except NotSent as exc:
            return ChannelResult(Outcome.NOT_SUBMITTED, exc.reason)
        except NoAnswer as exc:
            return ChannelResult(Outcome.UNKNOWN, exc.reason)
        return transformers.result(reply, instruction_id=instruction_id, amount=amount)

    def _done(self, flow: str, result: ChannelResult, started: float) -> ChannelResult:
        # Requests, latency, polls and reversals of the contract's flows are counted once, by
        # the financial gateway around every adapter call (adapters/dispatcher.py); counting
        # them here too would double them. Here: only the debug log of the outcome.
        log.debug("channel %s: %s -> %s %s %s (%.1f ms)", self.name, flow, result.outcome.value, result.reason,
                  result.channel_code, (time.perf_counter() - started) * 1000)
        return result

def parse_statement(data: bytes, business_date: str, mac_key: bytes) -> list[StatementLine]:
    """A whole settlement file (bytes) verified and parsed; raises StatementRejected."""
    with read_statement(io.BytesIO(data), business_date, statement_key(mac_key)) as spool:
        return list(spool.lines())
