"""TransferAdapter: the transfer rail's flows over signed HTTP JSON (aiohttp).

It holds an HTTP connection pool, the key ring and two nonce caches (replies, callbacks), and
no payment state. Every request is signed; every reply is verified before a byte of it is
believed. What happened on the network decides between NOT_SUBMITTED (the connection never
opened) and UNKNOWN (anything after that without a verified answer).

Metrics: requests by flow and outcome, latency, polls and callbacks are counted once, by the
financial gateway around every adapter call (adapters/dispatcher.py). This adapter counts what
only it sees: requests in flight, and the flows no dispatcher calls (statements, payouts).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from dualflow.adapters import metrics
from dualflow.adapters.contract import (
    BalanceUnavailable,
    CallbackEvent,
    CallbackRejected,
    Capabilities,
    ChannelBalance,
    ChannelResult,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    PayoutInstruction,
    QueryRequest,
    RefundInstruction,
    StatementLine,
    StatementRejected,
)
from dualflow.adapters.statements import CHUNK_BYTES, Spool, download, temporary_file
from dualflow.core.payments.model import Asset, BankAccount

from .config import TransferSettings
from .signing import NonceCache, SignatureError
from .transformers import (
    DIRECTION_BY_KIND,
    REQUEST_ERROR_REASONS,
    WireAccount,
    WireError,
    callback_event,
    load_json,
    outcome_of,
    parse_error,
    parse_notification,
    parse_transfer,
    return_request,
    scan_statement,
    transfer_request,
    valid_date,
    valid_id,
)

log = logging.getLogger(__name__)

# A verified reply that fails the checks below is not believed either.
_UNVERIFIED = {"BAD_SIGNATURE": "BAD_SIGNATURE", "MALFORMED": "BAD_SIGNATURE", "UNKNOWN_KEY": "UNKNOWN_KEY",
               "STALE": "STALE_REPLY", "REPLAYED": "REPLAYED_REPLY"}


class StatementUnavailable(Exception):
    """The statement could not be fetched or trusted; `reason` says why (retry later)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes


class TransferAdapter:
    def __init__(self, name: str, settings: TransferSettings) -> None:
        self.name = name
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._reply_nonces = NonceCache(settings.window_s)
        self._callback_nonces = NonceCache(settings.window_s)
        base = urlsplit(settings.base_url)
        self._origin = f"{base.scheme}://{base.netloc}"
        self._prefix = base.path.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_ms / 1000,
                                              sock_connect=settings.connect_timeout_ms / 1000)
        self._statement_timeout = aiohttp.ClientTimeout(total=settings.statement_timeout_ms / 1000,
                                                        sock_connect=settings.connect_timeout_ms / 1000)

    def __repr__(self) -> str:
        return f"TransferAdapter(name={self.name!r}, base_url={self.settings.base_url!r})"

    # ---- lifecycle
    def describe(self) -> Capabilities:
        s = self.settings
        return Capabilities(channel=self.name, assets=frozenset({Asset.BANK_TRANSFER}), currencies=s.currencies,
                            flows=frozenset({Flow.PAY, Flow.QUERY, Flow.REFUND, Flow.CALLBACK, Flow.STATEMENT}),
                            min_amount=s.min_amount, max_amount=s.max_amount, fees=dict(s.fees),
                            home_bank=s.pool.bank_code, same_bank_fees=dict(s.same_bank_fees))

    async def start(self) -> None:
        self._client()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=10)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    # ---- money flows
    async def submit(self, instruction: PayInstruction) -> ChannelResult:
        """Collect from the payer's account (named by PayInstruction.bank_account) into our pool."""
        problem = self._check_amount(instruction.amount, instruction.currency, instruction.instruction_id,
                                     instruction.payment_id)
        if not problem and instruction.bank_account is None:
            problem = ("MISSING_BANK_ACCOUNT", "a bank transfer needs the payer's bank account")
        if problem:
            return _not_submitted(*problem)
        assert instruction.bank_account is not None
        debtor = self._counterparty(instruction.bank_account, "")
        if debtor.problem():
            return _not_submitted("INVALID_ACCOUNT", debtor.problem())
        body = transfer_request(instruction_id=instruction.instruction_id, direction="collect",
                                amount=instruction.amount, currency=instruction.currency, debtor=debtor,
                                creditor=self.settings.pool, reference=instruction.payment_id,
                                description=instruction.description, callback_url=self.settings.callback_url)
        return await self._post_transfer("/transfers", body, instruction.instruction_id, instruction.amount,
                                         instruction.currency, "collect")

    async def payout(self, instruction: PayoutInstruction) -> ChannelResult:
        """Pay out from our pool to a beneficiary: the same outcomes as submit."""
        started = time.perf_counter()
        problem = self._check_amount(instruction.amount, instruction.currency, instruction.instruction_id,
                                     instruction.payout_id)
        if problem:
            return self._done("payout", started, _not_submitted(*problem))
        creditor = self._counterparty(instruction.beneficiary, instruction.beneficiary_number)
        if not creditor.number:
            return self._done("payout", started, _not_submitted(
                "BENEFICIARY_NUMBER_UNKNOWN", "a payout needs the beneficiary's full account number"))
        if creditor.problem():
            return self._done("payout", started, _not_submitted("INVALID_ACCOUNT", creditor.problem()))
        body = transfer_request(instruction_id=instruction.instruction_id, direction="payout",
                                amount=instruction.amount, currency=instruction.currency, debtor=self.settings.pool,
                                creditor=creditor, reference=instruction.payout_id,
                                description=instruction.description, callback_url=self.settings.callback_url)
        result = await self._post_transfer("/transfers", body, instruction.instruction_id, instruction.amount,
                                           instruction.currency, "payout")
        return self._done("payout", started, result)

    async def refund(self, instruction: RefundInstruction) -> ChannelResult:
        """A return payment of (part of) a settled collection, back to the account it came from."""
        problem = self._check_amount(instruction.amount, instruction.currency, instruction.instruction_id,
                                     instruction.refund_id, instruction.original_instruction_id)
        if problem:
            return _not_submitted(*problem)
        body = return_request(return_id=instruction.instruction_id, amount=instruction.amount,
                              currency=instruction.currency, reference=instruction.refund_id,
                              callback_url=self.settings.callback_url)
        path = f"/transfers/{_segment(instruction.original_instruction_id)}/return"
        return await self._post_transfer(path, body, instruction.instruction_id, instruction.amount,
                                         instruction.currency, "return")

    async def reverse(self, request: QueryRequest, amount: int, currency: str) -> ChannelResult:
        raise FlowNotSupported(self.name, Flow.REVERSE)

    async def query(self, request: QueryRequest) -> ChannelResult:
        """The bank's state of one instruction by our instruction id; `kind` is pay, payout or
        refund (the bank's directions collect, payout, return); reverse: FlowNotSupported."""
        if request.kind == "reverse":
            raise FlowNotSupported(self.name, Flow.REVERSE)
        direction = DIRECTION_BY_KIND[request.kind]  # a kind we do not know is a programmer error
        if not valid_id(request.instruction_id):
            return ChannelResult(Outcome.UNKNOWN, "INVALID_INSTRUCTION_ID")
        path = f"/transfers/{_segment(request.instruction_id)}"
        reply = await self._exchange("GET", path, b"", self._timeout)
        if isinstance(reply, ChannelResult):
            result = reply
        elif reply.status == 200:
            result = self._transfer_reply(reply.body, request.instruction_id, None, None, direction)
        elif reply.status == 404:
            # The bank has no record of it (yet): a submission may still be on its way.
            result = ChannelResult(Outcome.UNKNOWN, "NOT_FOUND", self._error_code(reply.body))
        else:
            result = ChannelResult(Outcome.UNKNOWN, "BANK_ERROR", self._error_code(reply.body) or str(reply.status))
        return result

    # ---- statements and callbacks
    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        """The bank's CSV statement of one business day (UTC) for our pool account
        (`?account=<bank_code>:<number>`): every final transfer it is the debtor or the creditor of,
        once, and none of the other channels' on the same rail network. The body
        is streamed to a temporary file while its SHA-256 is computed; the reply's signature over
        that digest is the statement's checksum (a bad one: StatementRejected BAD_CHECKSUM, line 0).
        Then every line and the trailer are checked into a spool, and only then streamed."""
        started = time.perf_counter()
        if not valid_date(business_date):
            raise ValueError("business_date must be YYYY-MM-DD")
        spool = Spool(business_date)
        try:
            with temporary_file() as raw:
                pool = self.settings.pool
                account = f"{_segment(pool.bank_code)}:{_segment(pool.number)}"
                path = f"/statements/{_segment(business_date)}?account={account}"
                await self._fetch_statement_file(path, business_date, raw)
                await asyncio.to_thread(scan_statement, raw, business_date, spool.add)
        except BaseException as exc:
            spool.close()
            if isinstance(exc, (StatementUnavailable, StatementRejected)):
                self._observe("statement", started, Outcome.UNKNOWN)
            raise
        self._observe("statement", started, Outcome.SUCCEEDED)
        with spool:
            for line in spool.lines():
                yield line

    async def _fetch_statement_file(self, path: str, business_date: str, into: IO[bytes]) -> None:
        """One signed GET whose 200 body goes to `into`; the reply verified over the body's digest."""
        path = self._prefix + path
        headers = self.settings.keys.sign("GET", path, b"")
        digest = hashlib.sha256()
        metrics.IN_FLIGHT.labels(self.name).inc()
        try:
            async with self._client().request("GET", URL(self._origin + path, encoded=True), headers=headers,
                                              timeout=self._statement_timeout, allow_redirects=False) as resp:
                status, reply_headers = resp.status, {k: v for k, v in resp.headers.items()}
                if status == 200:
                    await download(resp.content.iter_chunked(CHUNK_BYTES), into, digest)
                    body = b""
                else:
                    body = await resp.read()
                    digest.update(body)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StatementUnavailable("CONNECTION_LOST" if not isinstance(exc, TimeoutError) else "TIMEOUT",
                                       f"statement {business_date}: {exc.__class__.__name__}") from None
        finally:
            metrics.IN_FLIGHT.labels(self.name).dec()
        try:
            self.settings.keys.verify("GET", path, reply_headers, b"", now=time.time(), nonces=self._reply_nonces,
                                      window_s=self.settings.window_s, body_sha256=digest.hexdigest())
        except SignatureError as exc:
            if exc.reason == "BAD_SIGNATURE" and status == 200:
                raise StatementRejected("BAD_CHECKSUM", 0, f"statement {business_date}: the reply's signature "
                                        "does not match its body") from None
            raise StatementUnavailable(_UNVERIFIED[exc.reason], f"statement {business_date}: {exc.reason}") from None
        if status != 200:
            code = self._error_code(body) or str(status)
            raise StatementUnavailable("BANK_ERROR", f"statement {business_date}: the bank answered {code}")

    async def fetch_balance(self, currency: str) -> ChannelBalance:
        """Our balance at the bank (`GET /balances/{currency}`): settled collections less returns
        and fees, as its book computes it. Believed only when the reply's signature verifies."""
        if currency not in self.settings.currencies:
            raise BalanceUnavailable("UNSUPPORTED_CURRENCY", f"channel {self.name!r} does not move {currency}")
        reply = await self._exchange("GET", f"/balances/{_segment(currency)}", b"", self._timeout)
        where = f"channel {self.name!r}: balance {currency}"
        if isinstance(reply, ChannelResult):
            reason = ("UNTRUSTED" if reply.reason in _UNVERIFIED.values()
                      else "TIMEOUT" if reply.reason in ("TIMEOUT", "CONNECT_TIMEOUT") else "CONNECTION_FAILED")
            raise BalanceUnavailable(reason, f"{where}: {reply.reason}")
        if reply.status != 200:
            code = self._error_code(reply.body) or str(reply.status)
            raise BalanceUnavailable("BANK_ERROR", f"{where}: the bank answered {code}")
        try:
            obj = load_json(reply.body)
            amount, as_of = obj["amount"], obj["as_of_unix_s"]
            if type(amount) is not int or type(as_of) is not int or obj.get("currency") != currency:
                raise WireError("not a balance")
        except (WireError, KeyError, TypeError, AttributeError):
            raise BalanceUnavailable("GARBLED", f"{where}: garbled reply") from None
        return ChannelBalance(self.name, currency, amount, as_of)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackEvent:
        try:
            self.settings.keys.verify("POST", self.settings.callback_path, headers, body, now=time.time(),
                                      nonces=self._callback_nonces, window_s=self.settings.window_s)
            return callback_event(parse_notification(load_json(body)))
        except SignatureError as exc:
            raise CallbackRejected(exc.reason, f"callback rejected: {exc}") from None
        except WireError as exc:
            raise CallbackRejected("MALFORMED", f"callback rejected: {exc}") from None

    def callback_response(self, accepted: bool) -> tuple[int, bytes, Mapping[str, str]]:
        # The bank redelivers until it sees a 2xx; a rejected callback must not get one.
        if accepted:
            return 200, b'{"received":true}', {"Content-Type": "application/json"}
        return 401, b'{"received":false}', {"Content-Type": "application/json"}

    # ---- plumbing
    def _check_amount(self, amount: int, currency: str, *ids: str) -> tuple[str, str] | None:
        s = self.settings
        if not all(valid_id(i) for i in ids):
            return "INVALID_REQUEST", "ids must be 1..64 of A-Z a-z 0-9 _ . - (not starting with a dot)"
        if currency not in s.currencies:
            return "UNSUPPORTED_CURRENCY", f"channel {self.name!r} does not move {currency}"
        if isinstance(amount, bool) or not isinstance(amount, int) or not s.min_amount <= amount <= s.max_amount:
            return "AMOUNT_OUT_OF_RANGE", f"amount outside {s.min_amount}..{s.max_amount}"
        return None

    def _counterparty(self, account: BankAccount, number: str) -> WireAccount:
        number = number or self.settings.accounts.get(f"{account.bank_code}:{account.account_last4}", "")
        return WireAccount(bank_code=account.bank_code, name=account.holder_name, number=number,
                           last4=account.account_last4)

    async def _post_transfer(self, path: str, body: bytes, instruction_id: str, amount: int,
                             currency: str, direction: str) -> ChannelResult:
        reply = await self._exchange("POST", path, body, self._timeout)
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status in (200, 201):
            return self._transfer_reply(reply.body, instruction_id, amount, currency, direction)
        code = self._error_code(reply.body)
        if reply.status in (400, 409, 422) and code in REQUEST_ERROR_REASONS:
            # The bank refused the request itself: nothing was created for this instruction.
            return ChannelResult(Outcome.FAILED, REQUEST_ERROR_REASONS[code], code)
        if reply.status == 409:
            # INSTRUCTION_REUSED: this id exists at the bank with other fields. What became of
            # that one is not an answer about this request.
            return ChannelResult(Outcome.UNKNOWN, "INSTRUCTION_CONFLICT", code)
        return ChannelResult(Outcome.UNKNOWN, "BANK_ERROR", code or str(reply.status))

    def _transfer_reply(self, raw: bytes, instruction_id: str, amount: int | None, currency: str | None,
                        direction: str) -> ChannelResult:
        try:
            transfer = parse_transfer(load_json(raw))
        except WireError:
            return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY")
        # A signed answer about some other transfer is no answer about ours.
        if (transfer.instruction_id != instruction_id or transfer.direction != direction
                or (amount is not None and transfer.amount != amount)
                or (currency is not None and transfer.currency != currency)):
            return ChannelResult(Outcome.UNKNOWN, "REPLY_MISMATCH", transfer.status, transfer.reference)
        return outcome_of(transfer)

    @staticmethod
    def _error_code(raw: bytes) -> str:
        try:
            return parse_error(load_json(raw))[0]
        except WireError:
            return ""

    async def _exchange(self, method: str, path: str, body: bytes,
                        timeout: aiohttp.ClientTimeout) -> _Reply | ChannelResult:
        """One signed request and its verified reply, or the outcome its failure implies."""
        path = self._prefix + path  # the path the bank sees, a base_url prefix included
        headers = self.settings.keys.sign(method, path, body)
        if body:
            headers["Content-Type"] = "application/json"
        metrics.IN_FLIGHT.labels(self.name).inc()
        try:
            url = URL(self._origin + path, encoded=True)  # the path exactly as signed
            async with self._client().request(method, url, data=body or None, headers=headers, timeout=timeout,
                                              allow_redirects=False) as resp:
                raw = await resp.read()
                status, reply_headers = resp.status, {k: v for k, v in resp.headers.items()}
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # The connection never opened: nothing was written.
            return ChannelResult(Outcome.NOT_SUBMITTED,
                                 "CONNECT_TIMEOUT" if isinstance(exc, TimeoutError) else "CONNECTION_REFUSED")
        except TimeoutError:
            return ChannelResult(Outcome.UNKNOWN, "TIMEOUT")
        except (aiohttp.ClientError, OSError) as exc:
            log.info("channel %s: %s %s lost after sending: %s", self.name, method, path, exc.__class__.__name__)
            return ChannelResult(Outcome.UNKNOWN, "CONNECTION_LOST")
        finally:
            metrics.IN_FLIGHT.labels(self.name).dec()
        try:
            self.settings.keys.verify(method, path, reply_headers, raw, now=time.time(), nonces=self._reply_nonces,
                                      window_s=self.settings.window_s)
        except SignatureError as exc:
            log.warning("channel %s: unverified reply to %s %s (%s, HTTP %s)", self.name, method, path, exc.reason,
                        status)
            return ChannelResult(Outcome.UNKNOWN, _UNVERIFIED[exc.reason], str(status))
        return _Reply(status, raw)

    def _done(self, flow: str, started: float, result: ChannelResult) -> ChannelResult:
        self._observe(flow, started, result.outcome)
        return result

    def _observe(self, flow: str, started: float, outcome: Outcome) -> None:
        metrics.REQUESTS.labels(self.name, flow, outcome.value).inc()
        metrics.REQUEST_SECONDS.labels(self.name, flow).observe(time.perf_counter() - started)


def _not_submitted(reason: str, message: str) -> ChannelResult:
    log.debug("not submitted: %s", message)
    return ChannelResult(Outcome.NOT_SUBMITTED, reason)


def _segment(value: str) -> str:
    # Our ids are [A-Za-z0-9_.:-]; quoting keeps anything else from changing the signed path.
    return quote(value, safe="")
