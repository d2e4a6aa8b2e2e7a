"""The PSP channel: pay, query, refund, close, callbacks and the daily bill over signed HTTP
JSON (WeChat Pay API v3 conventions), with aiohttp and one ClientSession per adapter.

Trust: a reply counts only when the platform key named by its `Wechatpay-Serial` signed it,
its timestamp is within +/- 5 minutes and its nonce is new; anything else (unsigned, badly
signed, unknown serial, stale, replayed, garbled, for another order or amount) is UNKNOWN,
never success and never failure. Transport: a refused or failed connect is NOT_SUBMITTED for
pay and refund (nothing was written); a timeout or a connection lost after writing is
UNKNOWN. A query never answers NOT_SUBMITTED or an error-code FAILED: only the trade state it
reads can be final.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import IO, Any
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
    StatementRejected,
)
from dualflow.adapters.statements import CHUNK_BYTES, Spool, download, temporary_file
from dualflow.core.payments.model import Asset

from . import signing, transformers
from .keys import NonceCache, PlatformKeys, load_private_key

log = logging.getLogger(__name__)

TIMESTAMP_WINDOW_S = 300


class StatementUnavailable(Exception):
    """The bill could not be fetched, or the reply about it is not trusted (transport, signature).
    A bill that was fetched but does not verify raises contract.StatementRejected (its hash,
    its lines, its summary)."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    trusted: bool  # signed by a known platform key, fresh, never seen
    distrust: str = ""  # why not: BAD_SIGNATURE, UNKNOWN_KEY, STALE_REPLY, REPLAYED_REPLY, UNSIGNED

    def json(self) -> Any:
        return json.loads(self.body)


class _Transport(Exception):
    """A request that got no reply; `sent` says whether it may have left."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


def _bin_ranges(settings: Mapping[str, Any], channel: str) -> tuple[tuple[str, str], ...]:
    """`bin_ranges = [[low, high], ...]`: the card numbers this merchant account may take, as
    inclusive ranges of prefixes of equal length (`[["4", "4"]]`: Visa only). Absent or empty: any
    card. The PSP collects the card itself, so no card number reaches this adapter to check: the
    router applies the ranges (Capabilities.bin_ranges) before it ever chooses this channel."""
    raw = settings.get("bin_ranges", ())
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"channel {channel!r}: psp setting 'bin_ranges' must be a list of [low, high] prefixes")
    ranges = []
    for i, pair in enumerate(raw):
        where = f"channel {channel!r}: psp setting 'bin_ranges[{i}]'"
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
                isinstance(p, str) and p.isascii() and p.isdigit() and 1 <= len(p) <= 6 for p in pair)):
            # Six: routing sees a card's BIN as its first six digits (the vault's bin6).
            raise ValueError(f"{where} must be [low, high], each a card number prefix of 1 to 6 digits")
        low, high = pair
        # Capabilities compares the card's first len(low) digits with both ends: equal lengths.
        if len(low) != len(high):
            raise ValueError(f"{where}: low and high must have as many digits ({low!r}, {high!r})")
        if low > high:
            raise ValueError(f"{where}: low {low!r} is above high {high!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _fees(settings: Mapping[str, Any], currencies: frozenset[str]) -> dict[str, FeeSchedule]:
    fee = settings.get("fee") or {}
    if not isinstance(fee, Mapping):
        raise ValueError("psp setting 'fee' must be a table: {fixed, bps, minimum, maximum, tiers} or one per currency")
    if not fee or set(fee) & {"fixed", "bps", "minimum", "maximum", "tiers"}:
        schedule = FeeSchedule.from_table(fee)
        return {currency: schedule for currency in currencies}
    return {str(c): FeeSchedule.from_table(v, f"fee.{c}") for c, v in fee.items()}


class PspAdapter:
    """A ChannelAdapter for one merchant account at the PSP."""

    def __init__(self, config: ChannelConfig) -> None:
        s = config.settings
        self.name = config.name
        self.base_url = str(s["base_url"]).rstrip("/")
        self.mch_id = str(s["mch_id"])
        self.serial_no = str(s.get("serial_no") or s["key_serial"])
        self.notify_url = str(s.get("notify_url", ""))
        self.description = str(s.get("description", "dualflow payment"))
        self.timeout_s = float(s.get("timeout_ms", 10_000)) / 1000
        self.connect_timeout_s = float(s.get("connect_timeout_ms", min(3_000, s.get("timeout_ms", 10_000)))) / 1000
        self.max_connections = int(s.get("max_connections", 100))
        currencies = frozenset(str(c) for c in s.get("currencies", ("CNY",)))
        self._caps = Capabilities(
            channel=self.name,
            assets=frozenset(Asset[a] if isinstance(a, str) else Asset(a) for a in s.get("assets", ("BANK_CARD",))),
            currencies=currencies,
            flows=frozenset({Flow.PAY, Flow.QUERY, Flow.REFUND, Flow.CALLBACK, Flow.STATEMENT}),
            min_amount=int(s.get("min_amount", 1)),
            max_amount=int(s.get("max_amount", 2**63 - 1)),
            bin_ranges=_bin_ranges(s, self.name),
            fees=_fees(s, currencies),
        )
        self._private_key = load_private_key(config.read_key("merchant_private_key"))
        self._api_v3_key = config.read_key("api_v3_key")
        if len(self._api_v3_key) != signing.API_V3_KEY_BYTES:
            raise ValueError(f"channel {self.name!r}: api_v3_key must hold exactly 32 bytes")
        self.platform_keys = PlatformKeys(config.key_files["platform_certificates"],
                                          check_interval_s=float(s.get("certificates_check_ms", 1000)) / 1000)
        self.nonces = NonceCache(ttl_s=float(s.get("nonce_ttl_s", 600)),
                                 max_entries=int(s.get("nonce_cache_entries", 100_000)))
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle

    def describe(self) -> Capabilities:
        return self._caps

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=15),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=self.connect_timeout_s),
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- HTTP with signatures

    def _verify_reply(self, headers: Mapping[str, str], body: bytes) -> str:
        """'' when the reply is trustworthy, else why not."""
        h = signing.lower_keys(headers)
        serial = h.get(signing.HEADER_SERIAL.lower())
        signature = h.get(signing.HEADER_SIGNATURE.lower())
        timestamp = h.get(signing.HEADER_TIMESTAMP.lower())
        nonce = h.get(signing.HEADER_NONCE.lower())
        if not (serial and signature and timestamp and nonce):
            return "UNSIGNED"
        key = self.platform_keys.get(serial)
        if key is None:
            return "UNKNOWN_KEY"
        if not signing.verify(key, signing.response_message(timestamp, nonce, body), signature):
            return "BAD_SIGNATURE"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW_S:
            return "STALE_REPLY"
        if not self.nonces.check_and_add("reply:" + nonce):
            return "REPLAYED_REPLY"
        return ""

    async def _request(self, method: str, path_query: str, body: Any = None, *, url: str | None = None,
                       signed_reply: bool = True, sink: tuple[IO[bytes], Any] | None = None) -> _Reply:
        """One signed request. With `sink` (a file and a hasher), a 200 body is streamed into the
        file and the hasher instead of being held (statements), and the reply's body is empty."""
        await self.start()
        assert self._session is not None
        raw = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        target_text = url or self.base_url + path_query
        parts = urlsplit(target_text)  # sign the path the PSP sees, with any prefix of base_url
        signed_path = parts.path + (f"?{parts.query}" if parts.query else "")
        timestamp, nonce = int(time.time()), signing.new_nonce()
        headers = {
            "Authorization": signing.sign_request(self._private_key, self.mch_id, self.serial_no, method, signed_path,
                                                  raw, timestamp, nonce),
            "Accept": "application/json",
            "User-Agent": "dualflow-psp-adapter",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        target = URL(target_text, encoded=True)
        try:
            async with self._session.request(method, target, data=raw if body is not None else None,
                                             headers=headers, allow_redirects=False) as resp:
                if sink is not None and resp.status == 200:
                    await download(resp.content.iter_chunked(CHUNK_BYTES), *sink)
                    data = b""
                else:
                    data = await resp.read()
                reply_headers = {k: v for k, v in resp.headers.items()}
                status = resp.status
        except aiohttp.ConnectionTimeoutError:
            raise _Transport("CONNECT_TIMEOUT", sent=False) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            raise _Transport("CONNECTION_REFUSED" if refused else "CONNECT_FAILED", sent=False) from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise _Transport("TIMEOUT", sent=True) from None
        except (aiohttp.ClientError, OSError):
            raise _Transport("CONNECTION_LOST", sent=True) from None
        if not signed_reply:
            return _Reply(status, data, trusted=False, distrust="UNSIGNED")
        distrust = self._verify_reply(reply_headers, data)
        return _Reply(status, data, trusted=not distrust, distrust=distrust)

    def _error_code(self, reply: _Reply) -> str:
        try:
            code = reply.json().get("code")
        except (ValueError, AttributeError):
            return ""
        return code if isinstance(code, str) else ""

    # ---- flows

    async def _measured(self, flow: str, call: Any) -> ChannelResult:
        # Requests by outcome, latency, polls and callbacks are counted once, by the financial
        # gateway around every adapter call (adapters/dispatcher.py); in flight only we can see.
        gauge = metrics.IN_FLIGHT.labels(self.name)
        gauge.inc()
        try:
            result: ChannelResult = await call
        finally:
            gauge.dec()
        return result

    def _rejected_locally(self, instruction: PayInstruction) -> ChannelResult | None:
        if not transformers.TRADE_NO.match(instruction.instruction_id):
            return ChannelResult(Outcome.NOT_SUBMITTED, "INVALID_REQUEST", channel_code="LOCAL")
        if not self._caps.accepts(instruction.asset, instruction.currency, instruction.amount):
            return ChannelResult(Outcome.NOT_SUBMITTED, "NOT_ACCEPTED_BY_CHANNEL", channel_code="LOCAL")
        return None

    async def submit(self, instruction: PayInstruction) -> ChannelResult:
        return await self._measured(Flow.PAY.value, self._submit(instruction))

    async def _submit(self, ins: PayInstruction) -> ChannelResult:
        local = self._rejected_locally(ins)
        if local is not None:
            return local
        body = transformers.pay_body(self.mch_id, ins.instruction_id, ins.payment_id, ins.merchant_id, ins.amount,
                                     ins.currency, ins.description or self.description, self.notify_url)
        try:
            reply = await self._request("POST", "/v3/pay/transactions/native", body)
        except _Transport as exc:
            return ChannelResult(Outcome.UNKNOWN if exc.sent else Outcome.NOT_SUBMITTED, exc.reason)
        result = self._money_reply(reply, ins.instruction_id, "out_trade_no", transformers.transaction_result,
                                   amount=(ins.amount, ins.currency))
        if result is None:  # the PSP already has this out_trade_no: the original stands
            return await self._query_pay(ins.instruction_id, amount=(ins.amount, ins.currency))
        return result

    def _money_reply(self, reply: _Reply, our_id: str, id_field: str, mapper: Any,
                     amount: tuple[int, str] | None = None) -> ChannelResult | None:
        """Map a pay or refund reply. None: a duplicate the caller settles with a query."""
        if reply.status >= 500:
            return ChannelResult(Outcome.UNKNOWN, "CHANNEL_ERROR", channel_code=str(reply.status))
        if not reply.trusted:
            return ChannelResult(Outcome.UNKNOWN, reply.distrust, channel_code=str(reply.status))
        if 200 <= reply.status < 300:
            try:
                obj = reply.json()
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
            except ValueError:
                return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY", channel_code=str(reply.status))
            if obj.get(id_field) != our_id:
                return ChannelResult(Outcome.UNKNOWN, "MISMATCHED_REPLY", channel_code=str(obj.get(id_field))[:64])
            result: ChannelResult = mapper(obj)
            if result.outcome is Outcome.SUCCEEDED and amount is not None and \
                    not transformers.amount_matches(obj, *amount):
                # Money moved, but not the amount we asked for: a person must look, not us guess.
                return ChannelResult(Outcome.UNKNOWN, "AMOUNT_MISMATCH", channel_code=result.channel_code,
                                     channel_reference=result.channel_reference)
            return result
        code = self._error_code(reply)
        if code in transformers.DUPLICATE_CODES:
            return None
        if not code:
            return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY", channel_code=str(reply.status))
        return transformers.error_result(code)

    async def query(self, request: QueryRequest) -> ChannelResult:
        if request.kind == "reverse":
            raise FlowNotSupported(self.name, Flow.REVERSE)
        return await self._measured(Flow.QUERY.value, self._query(request))

    async def _query(self, request: QueryRequest) -> ChannelResult:
        if request.kind == "refund":
            return await self._query_refund(request.instruction_id)
        return await self._query_pay(request.instruction_id)

    async def _query_pay(self, instruction_id: str, amount: tuple[int, str] | None = None) -> ChannelResult:
        path = f"/v3/pay/transactions/out-trade-no/{quote(instruction_id, safe='')}?mchid={quote(self.mch_id)}"
        return await self._query_path(path, instruction_id, "out_trade_no", transformers.transaction_result, amount)

    async def _query_refund(self, instruction_id: str) -> ChannelResult:
        path = f"/v3/refund/domestic/refunds/{quote(instruction_id, safe='')}"
        return await self._query_path(path, instruction_id, "out_refund_no", transformers.refund_result)

    async def _query_path(self, path: str, our_id: str, id_field: str, mapper: Any,
                          amount: tuple[int, str] | None = None) -> ChannelResult:
        if not transformers.TRADE_NO.match(our_id):
            return ChannelResult(Outcome.UNKNOWN, "INVALID_REQUEST", channel_code="LOCAL")
        try:
            reply = await self._request("GET", path)
        except _Transport as exc:
            return ChannelResult(Outcome.UNKNOWN, exc.reason)  # a query's failure says nothing of the payment
        if 200 <= reply.status < 300 or not reply.trusted or reply.status >= 500:
            result = self._money_reply(reply, our_id, id_field, mapper, amount)
            assert result is not None
            return result
        code = self._error_code(reply)
        reason = "NOT_FOUND" if code in ("ORDER_NOT_EXIST", "RESOURCE_NOT_EXISTS") else "QUERY_REJECTED"
        return ChannelResult(Outcome.UNKNOWN, reason, channel_code=code or str(reply.status))

    async def refund(self, instruction: RefundInstruction) -> ChannelResult:
        return await self._measured(Flow.REFUND.value, self._refund(instruction))

    async def _refund(self, ins: RefundInstruction) -> ChannelResult:
        for trade_no in (ins.instruction_id, ins.original_instruction_id):
            if not transformers.TRADE_NO.match(trade_no):
                return ChannelResult(Outcome.NOT_SUBMITTED, "INVALID_REQUEST", channel_code="LOCAL")
        if ins.currency not in self._caps.currencies or ins.amount <= 0:
            return ChannelResult(Outcome.NOT_SUBMITTED, "NOT_ACCEPTED_BY_CHANNEL", channel_code="LOCAL")
        body = transformers.refund_body(ins.instruction_id, ins.original_instruction_id, ins.original_reference,
                                        ins.amount, ins.currency, self.notify_url)
        try:
            reply = await self._request("POST", "/v3/refund/domestic/refunds", body)
        except _Transport as exc:
            return ChannelResult(Outcome.UNKNOWN if exc.sent else Outcome.NOT_SUBMITTED, exc.reason)
        result = self._money_reply(reply, ins.instruction_id, "out_refund_no", transformers.refund_result)
        if result is None:
            return await self._query_refund(ins.instruction_id)
        return result

    async def reverse(self, request: QueryRequest, amount: int, currency: str) -> ChannelResult:
        raise FlowNotSupported(self.name, Flow.REVERSE)

    async def close_order(self, instruction_id: str) -> ChannelResult:
        """Close an unpaid order so it can never be paid, then answer what the PSP now says:
        FAILED CLOSED, or SUCCEEDED if the payment won the race. This is how a pay whose
        query keeps saying NOT_FOUND becomes final without guessing."""
        if not transformers.TRADE_NO.match(instruction_id):
            return ChannelResult(Outcome.UNKNOWN, "INVALID_REQUEST", channel_code="LOCAL")
        path = f"/v3/pay/transactions/out-trade-no/{quote(instruction_id, safe='')}/close"
        try:
            reply = await self._request("POST", path, {"mchid": self.mch_id})
        except _Transport as exc:
            return ChannelResult(Outcome.UNKNOWN, exc.reason)
        if not reply.trusted:
            return ChannelResult(Outcome.UNKNOWN, reply.distrust or "CHANNEL_ERROR", channel_code=str(reply.status))
        return await self._query_pay(instruction_id)

    # ---- callbacks

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackEvent:
        """Verify (serial, signature, +/- 5 min, nonce), decrypt, map. The listener counts results."""
        if not isinstance(body, (bytes, bytearray)):
            raise CallbackRejected("MALFORMED", "callback body is not bytes")
        body = bytes(body)
        try:
            h = signing.lower_keys(headers)
        except AttributeError:
            raise CallbackRejected("MALFORMED", "callback headers are not a mapping") from None
        serial = h.get(signing.HEADER_SERIAL.lower(), "")
        signature = h.get(signing.HEADER_SIGNATURE.lower(), "")
        timestamp = h.get(signing.HEADER_TIMESTAMP.lower(), "")
        nonce = h.get(signing.HEADER_NONCE.lower(), "")
        if not (serial and signature and timestamp and nonce):
            raise CallbackRejected("BAD_SIGNATURE", "callback is not signed (Wechatpay-* headers missing)")
        kind = h.get(signing.HEADER_SIGNATURE_TYPE.lower(), signing.SCHEME)
        if kind != signing.SCHEME:
            raise CallbackRejected("BAD_SIGNATURE", "callback signature type is not " + signing.SCHEME)
        key = self.platform_keys.get(serial)
        if key is None:
            raise CallbackRejected("UNKNOWN_KEY", "callback signed with a platform serial we do not hold")
        if not signing.verify(key, signing.response_message(timestamp, nonce, body), signature):
            raise CallbackRejected("BAD_SIGNATURE", "callback signature does not verify")
        if not timestamp.isdigit():
            raise CallbackRejected("MALFORMED", "callback timestamp is not a number")
        if abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW_S:
            raise CallbackRejected("STALE", "callback timestamp is outside the 5 minute window")
        if not self.nonces.check_and_add("callback:" + nonce):
            raise CallbackRejected("REPLAYED", "callback nonce was seen before")
        try:
            envelope = json.loads(body)
            resource = envelope["resource"]
            notification_id = envelope["id"]
            event_type = envelope.get("event_type", "")
            algorithm = resource["algorithm"]
            parts = (resource["nonce"], resource.get("associated_data", ""), resource["ciphertext"])
            original_type = resource.get("original_type", "")
            if not all(isinstance(p, str) for p in (notification_id, event_type, algorithm, original_type, *parts)):
                raise TypeError("not strings")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CallbackRejected("MALFORMED", "callback envelope is not a notification") from None
        if not notification_id:
            raise CallbackRejected("MALFORMED", "callback has no id")
        if algorithm != "AEAD_AES_256_GCM":
            raise CallbackRejected("UNDECRYPTABLE", "callback resource uses an algorithm we do not accept")
        try:
            plaintext = signing.decrypt_resource(self._api_v3_key, *parts)
        except ValueError:
            raise CallbackRejected("UNDECRYPTABLE", "callback resource does not decrypt under the API v3 key") from None
        try:
            decoded = json.loads(plaintext)
            if not isinstance(decoded, dict):
                raise ValueError("not an object")
            if decoded.get("mchid", self.mch_id) != self.mch_id:
                raise ValueError("for another merchant")
            return transformers.callback_event(notification_id, event_type, original_type, decoded)
        except (ValueError, TypeError, AttributeError) as exc:
            raise CallbackRejected("MALFORMED", f"callback resource is not a transaction or refund ({exc})") from None

    def callback_response(self, accepted: bool) -> tuple[int, bytes, Mapping[str, str]]:
        if accepted:
            return 200, b"", {}
        body = json.dumps({"code": "FAIL", "message": "verification failed"}).encode()
        return 401, body, {"Content-Type": "application/json"}

    # ---- the daily bill

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        """The day's trade bill, downloaded to a temporary file while its SHA1 is computed, checked
        against the hash in the signed tradebill reply (else StatementRejected BAD_CHECKSUM, line
        0), then read whole (every line and the summary, else StatementRejected) into a spool, and
        only then streamed. A day without business (NO_STATEMENT_EXIST) is an empty statement."""
        if not transformers.BILL_DATE.match(business_date):
            raise ValueError(f"business date must be YYYY-MM-DD, not {business_date!r}")
        # The statement flow is not the dispatcher's: counted here.
        started = time.perf_counter()
        outcome = "FAILED"
        spool: Spool | None = None
        try:
            with temporary_file() as raw:
                if await self._download_bill(business_date, raw):
                    spool = Spool(business_date)
                    try:
                        await asyncio.to_thread(transformers.scan_bill, raw, business_date, spool.add)
                    except BaseException:
                        spool.close()
                        raise
            outcome = "SUCCEEDED"
        finally:
            metrics.REQUESTS.labels(self.name, Flow.STATEMENT.value, outcome).inc()
            metrics.REQUEST_SECONDS.labels(self.name, Flow.STATEMENT.value).observe(time.perf_counter() - started)
        if spool is None:
            return
        with spool:
            for line in spool.lines():
                yield line

    async def fetch_balance(self, currency: str) -> ChannelBalance:
        """Our balance at the PSP (GET /v3/merchant/fund/balance/BASIC, WeChat's fund balance query
        with the currency named): believed only when the reply's signature verifies like any other
        reply's; `available_amount` is what it holds for us net of its fees and refunds paid out."""
        if currency not in self._caps.currencies:
            raise BalanceUnavailable("UNSUPPORTED_CURRENCY", f"channel {self.name!r} does not settle {currency}")
        try:
            reply = await self._request("GET", f"/v3/merchant/fund/balance/BASIC?currency={quote(currency)}")
        except _Transport as exc:
            raise BalanceUnavailable("TIMEOUT" if exc.reason == "TIMEOUT" else "CONNECTION_FAILED",
                                     f"channel {self.name!r}: balance {currency}: {exc.reason}") from None
        if not reply.trusted:
            raise BalanceUnavailable("UNTRUSTED", f"channel {self.name!r}: balance {currency}: reply not trusted "
                                                  f"({reply.distrust})")
        if reply.status != 200:
            raise BalanceUnavailable("BANK_ERROR", f"channel {self.name!r}: balance {currency}: HTTP {reply.status} "
                                                   f"{self._error_code(reply)}")
        try:
            obj = reply.json()
            amount, as_of, theirs = obj["available_amount"], obj["as_of_unix_s"], obj.get("currency", currency)
            if type(amount) is not int or type(as_of) is not int or theirs != currency:
                raise ValueError(obj)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BalanceUnavailable("GARBLED", f"channel {self.name!r}: balance {currency}: garbled reply") from None
        return ChannelBalance(self.name, currency, amount, as_of)

    async def _download_bill(self, business_date: str, into: IO[bytes]) -> bool:
        """Fetch the bill into `into`; False when the PSP says there is none for that day."""
        try:
            reply = await self._request("GET", f"/v3/bill/tradebill?bill_date={business_date}&bill_type=ALL")
        except _Transport as exc:
            raise StatementUnavailable(f"bill for {business_date}: {exc.reason}") from None
        if not reply.trusted:
            raise StatementUnavailable(f"bill for {business_date}: reply not trusted ({reply.distrust})")
        if reply.status == 400 and self._error_code(reply) == "NO_STATEMENT_EXIST":
            return False  # nothing happened that day
        if reply.status != 200:
            raise StatementUnavailable(f"bill for {business_date}: HTTP {reply.status} {self._error_code(reply)}")
        try:
            meta = reply.json()
            download_url, hash_type, hash_value = meta["download_url"], meta["hash_type"], meta["hash_value"]
        except (ValueError, KeyError, TypeError):
            raise StatementUnavailable(f"bill for {business_date}: garbled reply") from None
        ours, theirs = urlsplit(self.base_url), urlsplit(str(download_url))
        if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
            raise StatementUnavailable("the bill's download_url is not on the PSP's host; not following it")
        algorithm = {"SHA1": "sha1", "SHA256": "sha256"}.get(str(hash_type))
        if algorithm is None:
            raise StatementUnavailable(f"bill for {business_date}: hash type {hash_type!r} is not one we check")
        digest = hashlib.new(algorithm)
        try:
            # The file itself is not signed (as WeChat's): the signed hash above vouches for it.
            file = await self._request("GET", "", url=str(download_url), signed_reply=False, sink=(into, digest))
        except _Transport as exc:
            raise StatementUnavailable(f"bill file for {business_date}: {exc.reason}") from None
        if file.status != 200:
            raise StatementUnavailable(f"bill file for {business_date}: HTTP {file.status}")
        if not hmac.compare_digest(digest.hexdigest(), str(hash_value).lower()):
            raise StatementRejected("BAD_CHECKSUM", 0, f"bill file for {business_date}: its {hash_type} does not "
                                    "match the signed reply's")
        return True
