"""A mock third-party PSP speaking WeChat Pay API v3's wire conventions, as its own process.

It verifies each request as a real PSP would (Authorization scheme, merchant id, key serial,
+/- 5 minute timestamp, unused nonce, SHA256withRSA over `METHOD\\nPATH?QUERY\\nTS\\nNONCE\\nBODY\\n`)
and answers 401 SIGN_ERROR otherwise; signs every reply with its current platform key; keeps
its own book (deduplicated by out_trade_no / out_refund_no); POSTs encrypted, signed callbacks
and retries them with backoff until a 2xx; serves the daily trade bill as WeChat's CSV. It
imports nothing of dualflow.

API (on --port):
  POST /v3/pay/transactions/native                       create an order; answers the transaction
                                                         (WeChat's Native answers only a code_url;
                                                         this one also says its trade_state, which
                                                         is SUCCESS at once unless pending)
  GET  /v3/pay/transactions/out-trade-no/{no}?mchid=     the transaction
  POST /v3/pay/transactions/out-trade-no/{no}/close      close an unpaid order (204); an unknown
                                                         out_trade_no is closed for good too
  POST /v3/refund/domestic/refunds                       refund (amount.total optional here)
  GET  /v3/refund/domestic/refunds/{out_refund_no}       the refund
  GET  /v3/bill/tradebill?bill_date=YYYY-MM-DD           download_url + SHA1 of the bill
  GET  /v3/billdownload/file?token=...                   the bill (CSV, unsigned as WeChat's)
  GET  /v3/merchant/fund/balance/BASIC?currency=CNY      our balance here, signed like every reply:
                                                         {available_amount, pending_amount,
                                                         currency, as_of_unix_s} (minor units)
Business days and times are UTC (WeChat's are China Standard Time).

Callbacks: TRANSACTION.SUCCESS for every successful payment, REFUND.SUCCESS for every
successful refund (WeChat does not notify failures), to the profile's `callback_url`, else
the order's `notify_url`. Extra profile fields beyond the launcher's: `callback_url`,
`callback_reorder_ms` (each callback waits a random 0..N ms first, so later events overtake
earlier ones), `callback_retry_ms` (first retry delay, doubling to 5 s),
`callback_max_attempts`, `hang_ms` (how long a timed-out request hangs), `statement_fault` (a
broken trade bill: bad_row, wrong_totals, truncated, bad_checksum; see STATEMENT_FAULTS),
`callback_drop_rate` (notifications never sent: the platform must query or reconcile; drawn from a
generator of its own, only while above 0, so a seeded run's other draws stay the same),
`balance_offset` (minor units, may be negative: added to every balance reported, a drifted book
for reconciliation tests).

Admin (on --admin-port): GET/PUT /profile, GET /book, GET /statement?date=, POST /rotate,
GET /callbacks (each notification's id, type, attempts and acknowledgements), GET /keys.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import json
import logging
import random
import re
import secrets
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from .crypto import KeyStore, init_keys, parse_authorization, random_text, reply_string, request_string, \
    rsa_sign, rsa_verify, seal

log = logging.getLogger("mock_banks.psp")

EXPONENTS = {"CNY": 2, "HKD": 2, "USD": 2, "EUR": 2, "GBP": 2, "SGD": 2, "AUD": 2, "CAD": 2, "CHF": 2,
             "JPY": 0, "KRW": 0}
TRADE_NO = re.compile(r"^[A-Za-z0-9_\-|*]{6,32}$")
WINDOW_S = 300

DEFAULT_PROFILE: dict[str, Any] = {
    "latency_ms": 0, "jitter_ms": 0, "decline_rate": 0.0, "insufficient_funds_rate": 0.0, "timeout_rate": 0.0,
    "lost_reply_rate": 0.0, "late_reply_ms": 0, "pending_rate": 0.0, "settle_after_ms": 1000,
    "duplicate_callback_rate": 0.0, "bad_signature_rate": 0.0, "outage": False, "fee_fixed": 0, "fee_bps": 0,
    "callback_url": "", "callback_reorder_ms": 0, "callback_retry_ms": 200, "callback_max_attempts": 15,
    "hang_ms": 30_000, "statement_fault": "", "callback_drop_rate": 0.0, "balance_offset": 0,
}
# How the trade bill comes out broken, for reconciliation tests: "" (a good bill), "bad_row" (the
# middle line's 交易状态 is garbled), "wrong_totals" (the summary counts one line too many),
# "truncated" (the summary is missing and the last line cut in half), "bad_checksum" (the signed
# tradebill reply's hash_value is not the file's). The hash covers whatever the bill holds, so only
# "bad_checksum" fails it.
STATEMENT_FAULTS = ("", "bad_row", "wrong_totals", "truncated", "bad_checksum")


def _coerce(name: str, value: Any) -> Any:
    default = DEFAULT_PROFILE[name]
    if name == "balance_offset":  # the one signed field: a drift either way
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("balance_offset must be an integer (minor units)")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        if name == "statement_fault" and value not in STATEMENT_FAULTS:
            raise ValueError(f"statement_fault must be one of {STATEMENT_FAULTS}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0")
    if isinstance(default, float):
        if value > 1:
            raise ValueError(f"{name} is a rate in 0..1")
        return float(value)
    return int(value)


def _now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _major(amount: int, currency: str, places: int | None = None) -> str:
    exp = EXPONENTS.get(currency, 2)
    value = Decimal(amount).scaleb(-exp)
    return f"{value:.{exp if places is None else places}f}"


@dataclass
class Order:
    out_trade_no: str
    transaction_id: str
    amount: int
    currency: str
    description: str
    attach: str
    notify_url: str
    trade_state: str
    created_at: float
    trade_state_desc: str = ""
    payerror_code: str = ""
    success_at: float | None = None
    fee: int = 0
    refunded: int = 0
    tombstone: bool = False  # closed before we ever saw it

    def transaction(self, mch_id: str) -> dict[str, Any]:
        tx: dict[str, Any] = {
            "appid": "wxd0a1f10e5c0c0a11", "mchid": mch_id, "out_trade_no": self.out_trade_no,
            "transaction_id": self.transaction_id, "trade_type": "NATIVE", "trade_state": self.trade_state,
            "trade_state_desc": self.trade_state_desc, "bank_type": "OTHERS", "attach": self.attach,
            "amount": {"total": self.amount, "currency": self.currency},
        }
        if self.success_at is not None:
            tx["success_time"] = _rfc3339(self.success_at)
            tx["amount"].update(payer_total=self.amount, payer_currency=self.currency)
            tx["payer"] = {"openid": "oMock" + hashlib.sha1(self.out_trade_no.encode()).hexdigest()[:23]}
        if self.payerror_code:
            tx["payerror_code"] = self.payerror_code
        return tx


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    order: Order
    amount: int
    status: str
    created_at: float
    notify_url: str
    success_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refund_id": self.refund_id, "out_refund_no": self.out_refund_no,
            "transaction_id": self.order.transaction_id, "out_trade_no": self.order.out_trade_no,
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱", "create_time": _rfc3339(self.created_at),
            "status": self.status,
            "amount": {"total": self.order.amount, "refund": self.amount, "payer_total": self.order.amount,
                       "payer_refund": self.amount, "currency": self.order.currency},
        }
        if self.success_at is not None:
            out["success_time"] = _rfc3339(self.success_at)
        return out


@dataclass
class Notification:
    id: str
    event_type: str
    instruction_id: str
    body: bytes
    notify_url: str
    created_at: float
    attempts: int = 0
    acknowledged: int = 0
    abandoned: bool = False
    dropped: bool = False  # never sent (callback_drop_rate)


@dataclass
class Fate:
    timeout: bool
    lost: bool
    pending: bool
    decline: bool
    insufficient: bool
    bad_signature: bool
    jitter_ms: float


class Reply:
    def __init__(self, status: int, obj: Any = None, *, raw: bytes | None = None, signed: bool = True,
                 content_type: str = "application/json") -> None:
        self.status, self.signed, self.content_type = status, signed, content_type
        if raw is not None:
            self.body = raw
        elif obj is None:
            self.body = b""
        else:
            self.body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _error(status: int, code: str, message: str) -> Reply:
    return Reply(status, {"code": code, "message": message})


class MockPsp:
    def __init__(self, keys: KeyStore, seed: int, profile: dict[str, Any], host: str) -> None:
        self.keys = keys
        self.rng = random.Random(seed)  # request fates: reproducible for a given request sequence
        self.callback_rng = random.Random(seed ^ 0x5EED)  # callback timing, kept apart from fates
        self.drop_rng = random.Random(seed ^ 0xD809)  # callback_drop_rate, kept apart from both
        self.profile = dict(DEFAULT_PROFILE)
        self.profile.update({k: _coerce(k, v) for k, v in profile.items()})
        self.host = host
        self.orders: dict[str, Order] = {}
        self.refunds: dict[str, Refund] = {}
        self.notifications: list[Notification] = []
        self.bills: dict[str, tuple[float, bytes]] = {}
        self.nonces: dict[str, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._id_prefix = _now_utc().strftime("%Y%m%d%H%M%S")
        self._counter = 0
        self.api_runner: web.AppRunner | None = None
        self.api_site: web.SockSite | None = None
        self.port = 0
        self.client: aiohttp.ClientSession | None = None

    # ---- ids, fates, time

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._id_prefix}{self._counter:012d}"

    def draw(self) -> Fate:
        r = [self.rng.random() for _ in range(7)]
        p = self.profile
        return Fate(r[0] < p["timeout_rate"], r[1] < p["lost_reply_rate"], r[2] < p["pending_rate"],
                    r[3] < p["decline_rate"], r[4] < p["insufficient_funds_rate"], r[5] < p["bad_signature_rate"],
                    r[6] * p["jitter_ms"])

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- request verification and reply signing

    def verify_request(self, request: web.Request, body: bytes) -> Reply | None:
        auth = parse_authorization(request.headers.get("Authorization", ""))
        if auth is None:
            return _error(401, "SIGN_ERROR", "Authorization is not WECHATPAY2-SHA256-RSA2048")
        missing = [k for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not auth.get(k)]
        if missing:
            return _error(401, "SIGN_ERROR", f"Authorization lacks {', '.join(missing)}")
        if auth["mchid"] != self.keys.mch_id:
            return _error(400, "MCH_NOT_EXISTS", "商户号不存在")
        if auth["serial_no"] != self.keys.merchant_serial:
            return _error(401, "SIGN_ERROR", "证书序列号错误 (unknown merchant key serial)")
        if not auth["timestamp"].isdigit() or abs(time.time() - int(auth["timestamp"])) > WINDOW_S:
            return _error(401, "SIGN_ERROR", "timestamp outside the 5 minute window")
        message = request_string(request.method, request.raw_path, auth["timestamp"], auth["nonce_str"], body)
        if not rsa_verify(self.keys.merchant_key, message, auth["signature"]):
            return _error(401, "SIGN_ERROR", "签名错误 (signature does not verify)")
        now = time.monotonic()
        if len(self.nonces) > 200_000:
            self.nonces = {n: t for n, t in self.nonces.items() if now - t < 2 * WINDOW_S}
        if auth["nonce_str"] in self.nonces and now - self.nonces[auth["nonce_str"]] < 2 * WINDOW_S:
            return _error(401, "SIGN_ERROR", "nonce_str was used before")
        self.nonces[auth["nonce_str"]] = now
        return None

    def signed_headers(self, body: bytes, bad: bool) -> dict[str, str]:
        current = self.keys.current
        timestamp, nonce = str(int(time.time())), random_text(32)
        signer = self.keys.wrong_key if bad else current.key
        return {"Wechatpay-Serial": current.serial, "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": rsa_sign(signer, reply_string(timestamp, nonce, body)),
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}

    def respond(self, reply: Reply, bad_signature: bool = False) -> web.Response:
        headers = {"Request-ID": uuid.uuid4().hex}
        if reply.signed:
            headers.update(self.signed_headers(reply.body, bad_signature))
        return web.Response(status=reply.status, body=reply.body, headers=headers,
                            content_type=reply.content_type if reply.body else None)

    # ---- the API middleware: verification, faults, then the handler

    @web.middleware
    async def api_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.profile["outage"]:
            self._drop(request)
            await asyncio.sleep(3600)  # cancelled when the connection is gone
        body = await request.read()
        rejected = self.verify_request(request, body)
        if rejected is not None:
            return self.respond(rejected)
        fate = self.draw()
        delay_ms = self.profile["latency_ms"] + fate.jitter_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if fate.timeout:  # never processed, never answered
            await asyncio.sleep(self.profile["hang_ms"] / 1000)
            self._drop(request)
            await asyncio.sleep(3600)
        reply: Reply = await handler(request, body, fate)
        if fate.lost:  # processed, the answer lost on the way
            self._drop(request)
            await asyncio.sleep(3600)
        if self.profile["late_reply_ms"]:
            await asyncio.sleep(self.profile["late_reply_ms"] / 1000)
        return self.respond(reply, bad_signature=fate.bad_signature and reply.signed)

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    # ---- pay, query, close

    def _body(self, body: bytes) -> dict[str, Any] | Reply:
        try:
            obj = json.loads(body)
        except ValueError:
            return _error(400, "PARAM_ERROR", "body is not JSON")
        if not isinstance(obj, dict):
            return _error(400, "PARAM_ERROR", "body is not a JSON object")
        return obj

    async def pay(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        obj = self._body(body)
        if isinstance(obj, Reply):
            return obj
        if obj.get("mchid") != self.keys.mch_id:
            return _error(400, "PARAM_ERROR", "mchid does not match the signer")
        no, amount = obj.get("out_trade_no"), obj.get("amount")
        if not isinstance(no, str) or not TRADE_NO.match(no):
            return _error(400, "PARAM_ERROR", "out_trade_no must be 6..32 of [A-Za-z0-9_-|*]")
        if not isinstance(amount, dict) or type(amount.get("total")) is not int or amount["total"] <= 0:
            return _error(400, "PARAM_ERROR", "amount.total must be a positive integer")
        currency = amount.get("currency", "CNY")
        if currency not in EXPONENTS:
            return _error(400, "PARAM_ERROR", f"currency {currency!r} is not supported")
        description = obj.get("description", "")
        if not isinstance(description, str) or len(description) > 127:
            return _error(400, "PARAM_ERROR", "description must be a string of at most 127 characters")
        existing = self.orders.get(no)
        if existing is not None:
            if existing.trade_state == "CLOSED":
                return _error(400, "ORDER_CLOSED", "订单已关闭")
            if (existing.amount, existing.currency) != (amount["total"], currency):
                return _error(400, "OUT_TRADE_NO_USED", "商户订单号重复")
            if existing.trade_state in ("SUCCESS", "REFUND"):
                return _error(403, "ORDERPAID", "该订单已支付")
            return Reply(200, {**existing.transaction(self.keys.mch_id), "code_url": self._code_url(existing)})
        order = Order(no, self._next_id("42"), amount["total"], currency, description, str(obj.get("attach", "")),
                      str(obj.get("notify_url", "")), "NOTPAY", time.time())
        self.orders[no] = order
        final = ("PAYERROR", "TRADE_ERROR", "支付失败，银行拒绝") if fate.decline else \
            ("PAYERROR", "NOTENOUGH", "余额不足") if fate.insufficient else ("SUCCESS", "", "支付成功")
        if fate.pending:
            order.trade_state, order.trade_state_desc = "USERPAYING", "用户支付中"
            self.spawn(self._settle_order(order, final))
        else:
            self._finish_order(order, final)
        return Reply(200, {**order.transaction(self.keys.mch_id), "code_url": self._code_url(order)})

    @staticmethod
    def _code_url(order: Order) -> str:
        return "weixin://wxpay/bizpayurl?pr=" + hashlib.sha1(order.transaction_id.encode()).hexdigest()[:7]

    def _finish_order(self, order: Order, final: tuple[str, str, str]) -> None:
        order.trade_state, order.payerror_code, order.trade_state_desc = final
        if order.trade_state == "SUCCESS":
            order.success_at = time.time()
            p = self.profile
            order.fee = p["fee_fixed"] + (order.amount * p["fee_bps"] + 5_000) // 10_000
            self.notify("TRANSACTION.SUCCESS", "transaction", "支付成功", order.transaction(self.keys.mch_id),
                        order.out_trade_no, order.notify_url)

    async def _settle_order(self, order: Order, final: tuple[str, str, str]) -> None:
        await asyncio.sleep(self.profile["settle_after_ms"] / 1000)
        if order.trade_state in ("NOTPAY", "USERPAYING"):  # not closed meanwhile
            self._finish_order(order, final)

    async def query(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        if request.query.get("mchid") != self.keys.mch_id:
            return _error(400, "PARAM_ERROR", "mchid is required and must be the signer's")
        order = self.orders.get(request.match_info["no"])
        if order is None:
            return _error(404, "ORDER_NOT_EXIST", "订单不存在")
        return Reply(200, order.transaction(self.keys.mch_id))  # a closed tombstone answers CLOSED

    async def close(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        obj = self._body(body)
        if isinstance(obj, Reply):
            return obj
        if obj.get("mchid") != self.keys.mch_id:
            return _error(400, "PARAM_ERROR", "mchid does not match the signer")
        no = request.match_info["no"]
        if not TRADE_NO.match(no):
            return _error(400, "PARAM_ERROR", "bad out_trade_no")
        order = self.orders.get(no)
        if order is None:
            self.orders[no] = Order(no, self._next_id("42"), 0, "", "", "", "", "CLOSED", time.time(),
                                    trade_state_desc="订单已关闭", tombstone=True)
        elif order.trade_state in ("SUCCESS", "REFUND"):
            return _error(400, "ORDERPAID", "该订单已支付")
        else:
            order.trade_state, order.trade_state_desc = "CLOSED", "订单已关闭"
        return Reply(204)

    # ---- refunds

    async def refund(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        obj = self._body(body)
        if isinstance(obj, Reply):
            return obj
        no, amount = obj.get("out_refund_no"), obj.get("amount")
        if not isinstance(no, str) or not TRADE_NO.match(no):
            return _error(400, "PARAM_ERROR", "out_refund_no must be 6..32 of [A-Za-z0-9_-|*]")
        if not isinstance(amount, dict) or type(amount.get("refund")) is not int or amount["refund"] <= 0:
            return _error(400, "PARAM_ERROR", "amount.refund must be a positive integer")
        existing = self.refunds.get(no)
        if existing is not None:  # 同一退款单号多次请求只退一笔
            return Reply(200, existing.as_json())
        order = self.orders.get(str(obj.get("out_trade_no", "")))
        if order is None and obj.get("transaction_id"):
            order = next((o for o in self.orders.values() if o.transaction_id == obj["transaction_id"]), None)
        if order is None or order.tombstone:
            return _error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        if order.trade_state not in ("SUCCESS", "REFUND"):
            return _error(400, "INVALID_REQUEST", "订单未支付 (the order is not paid)")
        if amount.get("currency", order.currency) != order.currency:
            return _error(400, "PARAM_ERROR", "refund currency differs from the order's")
        if "total" in amount and amount["total"] != order.amount:
            return _error(400, "PARAM_ERROR", "amount.total is not the order's total")
        if order.refunded + amount["refund"] > order.amount:
            return _error(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
        order.refunded += amount["refund"]
        refund = Refund(no, self._next_id("50"), order, amount["refund"], "PROCESSING", time.time(),
                        str(obj.get("notify_url", "")) or order.notify_url)
        self.refunds[no] = refund
        if fate.pending:
            self.spawn(self._settle_refund(refund))
        else:
            self._finish_refund(refund)
        return Reply(200, refund.as_json())

    def _finish_refund(self, refund: Refund) -> None:
        refund.status, refund.success_at = "SUCCESS", time.time()
        refund.order.trade_state, refund.order.trade_state_desc = "REFUND", "转入退款"
        resource = {"mchid": self.keys.mch_id, "out_trade_no": refund.order.out_trade_no,
                    "transaction_id": refund.order.transaction_id, "out_refund_no": refund.out_refund_no,
                    "refund_id": refund.refund_id, "refund_status": "SUCCESS",
                    "success_time": _rfc3339(refund.success_at), "user_received_account": "支付用户零钱",
                    "amount": {"total": refund.order.amount, "refund": refund.amount,
                               "payer_total": refund.order.amount, "payer_refund": refund.amount}}
        self.notify("REFUND.SUCCESS", "refund", "退款成功", resource, refund.out_refund_no, refund.notify_url)

    async def _settle_refund(self, refund: Refund) -> None:
        await asyncio.sleep(self.profile["settle_after_ms"] / 1000)
        self._finish_refund(refund)

    async def refund_query(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        refund = self.refunds.get(request.match_info["no"])
        if refund is None:
            return _error(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return Reply(200, refund.as_json())

    # ---- the trade bill

    def bill(self, date: str) -> tuple[bytes, int]:
        """WeChat's trade bill (bill_type=ALL) for a UTC business day, and its line count."""
        rows: list[tuple[float, list[str]]] = []
        pay_sum = refund_sum = Decimal(0)
        fee_sum = Decimal(0)
        mch = self.keys.mch_id

        def day(ts: float | None) -> str:
            return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).date().isoformat()

        def stamp(ts: float) -> str:
            return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

        for o in self.orders.values():
            if o.success_at is None or day(o.success_at) != date:
                continue
            total = _major(o.amount, o.currency)
            fee = _major(o.fee, o.currency, places=5)
            pay_sum += Decimal(total)
            fee_sum += Decimal(fee)
            rate = f"{Decimal(self.profile['fee_bps']) / 100:.2f}%"
            rows.append((o.success_at, [stamp(o.success_at), "wxd0a1f10e5c0c0a11", mch, "0", "", o.transaction_id,
                                        o.out_trade_no, "oMock", "NATIVE", "SUCCESS", "OTHERS", o.currency, total,
                                        "0.00", "0", "0", "0.00", "0.00", "", "", o.description, o.attach, fee, rate,
                                        total, "0.00", ""]))
        for r in self.refunds.values():
            if day(r.created_at) != date:
                continue
            o, refund = r.order, _major(r.amount, r.order.currency)
            refund_sum += Decimal(refund)
            rows.append((r.created_at, [stamp(r.created_at), "wxd0a1f10e5c0c0a11", mch, "0", "", o.transaction_id,
                                        o.out_trade_no, "oMock", "NATIVE", "REFUND", "OTHERS", o.currency,
                                        _major(o.amount, o.currency), "0.00", r.refund_id, r.out_refund_no, refund,
                                        "0.00", "ORIGINAL", r.status, o.description, o.attach,
                                        _major(0, o.currency, places=5), "0.00%", _major(o.amount, o.currency),
                                        refund, ""]))
        rows.sort(key=lambda row: row[0])
        fault = self.profile["statement_fault"]
        if fault == "bad_row" and rows:
            rows[len(rows) // 2][1][9] = "GARBLED"
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(["交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
                    "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
                    "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
                    "手续费", "费率", "订单金额", "申请退款金额", "费率备注"])
        for _, cells in rows:
            w.writerow(["`" + c for c in cells])
        body_end = out.tell()
        w.writerow(["总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                    "申请退款总金额"])
        w.writerow(["`" + str(v) for v in (len(rows) + (fault == "wrong_totals"), pay_sum, refund_sum, "0.00",
                                          f"{fee_sum:.5f}", pay_sum, refund_sum)])
        text = out.getvalue()
        if fault == "truncated":
            body = text[:body_end - 2]  # without the summary and the last line's CRLF
            last = body.rfind("\n")
            text = body[: last + 1 + (len(body) - last - 1) // 2]
        return text.encode("utf-8"), len(rows)

    async def tradebill(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        date = request.query.get("bill_date", "")
        try:
            datetime.strptime(date, "%Y-%m-%d")
        except ValueError:
            return _error(400, "PARAM_ERROR", "bill_date must be YYYY-MM-DD")
        data, count = self.bill(date)
        if count == 0:
            return _error(400, "NO_STATEMENT_EXIST", "账单不存在")
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        self.bills = {t: v for t, v in self.bills.items() if now - v[0] < 300}
        self.bills[token] = (now, data)
        digest = hashlib.sha1(data + (b"tampered" if self.profile["statement_fault"] == "bad_checksum" else b""))
        return Reply(200, {"hash_type": "SHA1", "hash_value": digest.hexdigest(),
                           "download_url": f"http://{request.host}/v3/billdownload/file?token={token}"})

    async def billfile(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        entry = self.bills.get(request.query.get("token", ""))
        if entry is None:
            return _error(400, "INVALID_REQUEST", "token expired or unknown")
        return Reply(200, raw=entry[1], signed=False, content_type="text/plain")

    # ---- our balance here

    def balance(self, currency: str) -> tuple[int, int]:
        """(available, pending) in minor units, from the book: every paid order's amount less its
        fee, less every refund paid out; refunds still PROCESSING are pending. Plus the profile's
        `balance_offset` (a drifted book, for tests)."""
        available = self.profile["balance_offset"]
        pending = 0
        for o in self.orders.values():
            if o.currency == currency and not o.tombstone and o.success_at is not None:
                available += o.amount - o.fee
        for r in self.refunds.values():
            if r.order.currency != currency:
                continue
            if r.status == "SUCCESS":
                available -= r.amount
            elif r.status == "PROCESSING":
                pending += r.amount
        return available, pending

    async def fund_balance(self, request: web.Request, body: bytes, fate: Fate) -> Reply:
        currency = request.query.get("currency", "CNY")
        if request.match_info["account_type"] != "BASIC":
            return _error(400, "PARAM_ERROR", "account_type must be BASIC")
        if currency not in EXPONENTS:
            return _error(400, "PARAM_ERROR", "currency is not one this PSP settles")
        available, pending = self.balance(currency)
        return Reply(200, {"available_amount": available, "pending_amount": pending, "currency": currency,
                           "as_of_unix_s": int(time.time())})

    # ---- callbacks

    def notify(self, event_type: str, original_type: str, summary: str, resource: dict[str, Any],
               instruction_id: str, notify_url: str) -> None:
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        now = time.time()
        envelope = {"id": str(uuid.UUID(int=self.callback_rng.getrandbits(128), version=4)),
                    "create_time": _rfc3339(now), "resource_type": "encrypt-resource", "event_type": event_type,
                    "summary": summary,
                    "resource": {"original_type": original_type, **seal(self.keys.api_v3_key, original_type,
                                                                        plaintext)}}
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        note = Notification(envelope["id"], event_type, instruction_id, body, notify_url, now)
        self.notifications.append(note)
        rate = self.profile["callback_drop_rate"]
        if rate and self.drop_rng.random() < rate:
            note.dropped = True
            log.info("callback %s (%s) dropped (callback_drop_rate)", note.id, event_type)
            return
        self.spawn(self._deliver(note))

    async def _deliver(self, note: Notification) -> None:
        p = self.profile
        if p["callback_reorder_ms"]:
            await asyncio.sleep(self.callback_rng.random() * p["callback_reorder_ms"] / 1000)
        rounds = 2 if self.callback_rng.random() < p["duplicate_callback_rate"] else 1
        for n in range(rounds):
            if n:
                await asyncio.sleep((20 + self.callback_rng.random() * p["callback_reorder_ms"]) / 1000)
            if not await self._deliver_until_acknowledged(note):
                return

    async def _deliver_until_acknowledged(self, note: Notification) -> bool:
        delay = self.profile["callback_retry_ms"] / 1000
        for _ in range(self.profile["callback_max_attempts"]):
            url = self.profile["callback_url"] or note.notify_url
            if url:
                note.attempts += 1
                bad = self.callback_rng.random() < self.profile["bad_signature_rate"]
                if await self._post(url, note.body, bad):
                    note.acknowledged += 1
                    return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        note.abandoned = True
        log.warning("callback %s (%s) abandoned after %d attempts", note.id, note.event_type, note.attempts)
        return False

    async def _post(self, url: str, body: bytes, bad: bool) -> bool:
        assert self.client is not None
        headers = {"Content-Type": "application/json", **self.signed_headers(body, bad)}
        try:
            async with self.client.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.info("callback POST to %s failed: %s", url, exc.__class__.__name__)
            return False

    # ---- admin

    async def get_profile(self, request: web.Request) -> web.Response:
        return web.json_response(self.profile)

    async def put_profile(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("a JSON object of profile fields")
            unknown = sorted(set(changes) - set(DEFAULT_PROFILE))
            if unknown:
                raise ValueError(f"unknown profile fields: {', '.join(unknown)}")
            coerced = {k: _coerce(k, v) for k, v in changes.items()}
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        was_out = self.profile["outage"]
        self.profile.update(coerced)
        if self.profile["outage"] and not was_out:
            await self._stop_listening()
        elif was_out and not self.profile["outage"]:
            await self._listen()
        return web.json_response(self.profile)

    async def get_book(self, request: web.Request) -> web.Response:
        status = {"SUCCESS": "SUCCEEDED", "REFUND": "SUCCEEDED", "NOTPAY": "PENDING", "USERPAYING": "PENDING",
                  "PAYERROR": "FAILED", "CLOSED": "FAILED"}
        refund_status = {"SUCCESS": "SUCCEEDED", "PROCESSING": "PENDING", "ABNORMAL": "PENDING", "CLOSED": "FAILED"}
        book = [{"instruction_id": o.out_trade_no, "kind": "pay", "amount": o.amount, "currency": o.currency,
                 "status": status.get(o.trade_state, "PENDING"), "reference": o.transaction_id, "fee": o.fee,
                 "trade_state": o.trade_state, "created_at": _rfc3339(o.created_at)}
                for o in self.orders.values() if not o.tombstone]
        book += [{"instruction_id": r.out_refund_no, "kind": "refund", "amount": r.amount, "currency": r.order.currency,
                  "status": refund_status.get(r.status, "PENDING"), "reference": r.refund_id, "fee": 0,
                  "trade_state": r.status, "original_instruction_id": r.order.out_trade_no,
                  "created_at": _rfc3339(r.created_at)} for r in self.refunds.values()]
        return web.json_response(book)

    async def get_statement(self, request: web.Request) -> web.Response:
        date = request.query.get("date") or _now_utc().date().isoformat()
        data, _count = self.bill(date)
        return web.Response(body=data, content_type="text/csv", charset="utf-8")

    async def rotate(self, request: web.Request) -> web.Response:
        new = await asyncio.get_running_loop().run_in_executor(None, self.keys.rotate)
        return web.json_response({"serial_no": new.serial, "serials": [p.serial for p in self.keys.platform],
                                  "certificate": new.cert.public_bytes(Encoding.PEM).decode(),
                                  "certificates_file": str(self.keys.dir / "platform_certificates.pem")})

    async def get_callbacks(self, request: web.Request) -> web.Response:
        return web.json_response([{"id": n.id, "event_type": n.event_type, "instruction_id": n.instruction_id,
                                   "attempts": n.attempts, "acknowledged": n.acknowledged, "abandoned": n.abandoned,
                                   "dropped": n.dropped,
                                   "created_at": _rfc3339(n.created_at)} for n in self.notifications])

    async def get_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"mch_id": self.keys.mch_id, "serial_no": self.keys.merchant_serial,
                                  "platform_serials": [p.serial for p in self.keys.platform],
                                  "keys_dir": str(self.keys.dir)})

    # ---- sockets

    def api_app(self) -> web.Application:
        app = web.Application(middlewares=[self.api_middleware], client_max_size=1 << 20)
        app.router.add_post("/v3/pay/transactions/native", self.pay)
        app.router.add_get("/v3/pay/transactions/out-trade-no/{no}", self.query)
        app.router.add_post("/v3/pay/transactions/out-trade-no/{no}/close", self.close)
        app.router.add_post("/v3/refund/domestic/refunds", self.refund)
        app.router.add_get("/v3/refund/domestic/refunds/{no}", self.refund_query)
        app.router.add_get("/v3/bill/tradebill", self.tradebill)
        app.router.add_get("/v3/billdownload/file", self.billfile)
        app.router.add_get("/v3/merchant/fund/balance/{account_type}", self.fund_balance)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/profile", self.get_profile)
        app.router.add_put("/profile", self.put_profile)
        app.router.add_get("/book", self.get_book)
        app.router.add_get("/statement", self.get_statement)
        app.router.add_post("/rotate", self.rotate)
        app.router.add_get("/callbacks", self.get_callbacks)
        app.router.add_get("/keys", self.get_keys)
        return app

    async def _listen(self) -> None:
        assert self.api_runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.api_site = web.SockSite(self.api_runner, sock)
        await self.api_site.start()

    async def _stop_listening(self) -> None:
        """An outage refuses connections: close the listening socket and idle keep-alive ones."""
        if self.api_site is not None:
            await self.api_site.stop()
            self.api_site = None
        assert self.api_runner is not None and self.api_runner.server is not None
        for conn in self.api_runner.server.connections:
            conn.close()


async def serve(args: argparse.Namespace) -> int:
    keys_dir = Path(args.keys_dir)
    if args.init_keys:
        init_keys(keys_dir, args.mch_id)
    if not KeyStore.complete(keys_dir):
        print(f"mock psp: keys missing in {keys_dir}; run with --init-keys to create them", file=sys.stderr)
        return 2
    keys = KeyStore(keys_dir)
    profile: dict[str, Any] = {}
    if args.profile:
        text = args.profile if args.profile.lstrip().startswith("{") else Path(args.profile).read_text()
        profile = json.loads(text)
        unknown = set(profile) - set(DEFAULT_PROFILE)
        if unknown:
            print(f"mock psp: unknown profile fields {sorted(unknown)}", file=sys.stderr)
            return 2
    if args.callback_url:
        profile["callback_url"] = args.callback_url
    psp = MockPsp(keys, args.seed, profile, args.host)
    psp.port = args.port
    psp.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    psp.api_runner = web.AppRunner(psp.api_app(), handler_cancellation=True, shutdown_timeout=1.0,
                                   access_log=None)
    await psp.api_runner.setup()
    if psp.profile["outage"]:
        with socket.socket() as probe:  # reserve a port to announce; it refuses until the outage ends
            probe.bind((args.host, args.port))
            psp.port = probe.getsockname()[1]
    else:
        await psp._listen()
    admin_runner = web.AppRunner(psp.admin_app(), access_log=None, shutdown_timeout=1.0)
    await admin_runner.setup()
    admin_site = web.TCPSite(admin_runner, args.host, args.admin_port)
    await admin_site.start()
    admin_port = admin_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"mock-bank psp listening port={psp.port} admin=http://{args.host}:{admin_port}", flush=True)
    log.info("mock psp: mch_id=%s merchant serial=%s platform serials=%s seed=%d", keys.mch_id,
             keys.merchant_serial, [p.serial for p in keys.platform], args.seed)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in list(psp.tasks):
        task.cancel()
    await asyncio.gather(*psp.tasks, return_exceptions=True)
    await admin_runner.cleanup()
    await psp.api_runner.cleanup()
    await psp.client.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualflow mock-bank psp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free one)")
    parser.add_argument("--admin-port", type=int, default=0, help="admin port (0: any free one)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault draws, so a run can be reproduced")
    parser.add_argument("--keys-dir", required=True, help="keys directory (see mock_banks/psp/crypto.py)")
    parser.add_argument("--init-keys", action="store_true", help="create whatever keys are missing in --keys-dir")
    parser.add_argument("--mch-id", default="1900000109", help="the merchant id, when --init-keys creates it")
    parser.add_argument("--callback-url", default="", help="where callbacks go (else each order's notify_url)")
    parser.add_argument("--profile", default="", help="behaviour profile: a JSON object, or a file holding one")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
