"""The PSP adapter against its mock over real sockets: the shared contract, callbacks
(pending settled by callback, duplicates and reordering, forged / replayed / stale / tampered
ones rejected), badly signed replies, certificate rotation without restart, the bill,
refused connections and the PSP refusing our signature."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import REGISTRY

from dualflow.adapters.contract import (
    CallbackEvent,
    CallbackRejected,
    ChannelConfig,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    QueryRequest,
    RefundInstruction,
)
from dualflow.adapters.psp import PspAdapter, create
from dualflow.core.payments.model import Asset
from dualflow.mock_banks.launcher import MockBankProcess
from harness import CLEAN, new_id, run_contract, settle

CHANNEL = "psp-test"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("psp-keys")


@pytest.fixture(scope="module")
def mock(keys_dir: Path) -> Iterator[MockBankProcess]:
    with MockBankProcess("psp", "--keys-dir", str(keys_dir), "--init-keys", "--seed", "7") as process:
        yield process


@pytest.fixture(autouse=True)
def clean_profile(mock: MockBankProcess) -> None:
    mock.set_profile(**{**CLEAN, "settle_after_ms": 200}, callback_url="", callback_reorder_ms=0,
                     callback_retry_ms=100, fee_fixed=0, fee_bps=0)


def make_config(mock: MockBankProcess, keys_dir: Path, certificates: Path | None = None,
                private_key: Path | None = None, **settings: Any) -> ChannelConfig:
    merchant = json.loads((keys_dir / "merchant.json").read_text())
    base = {"base_url": f"http://127.0.0.1:{mock.port}", "mch_id": merchant["mch_id"],
            "serial_no": merchant["serial_no"], "currencies": ["CNY", "JPY"], "timeout_ms": 700,
            "fee": {"fixed": 0, "bps": 60}, "certificates_check_ms": 0}  # rotation is seen at once
    base.update(settings)
    return ChannelConfig(
        name=CHANNEL, kind="psp", settings=base,
        key_files={"merchant_private_key": private_key or keys_dir / "merchant_private_key.pem",
                   "platform_certificates": certificates or keys_dir / "platform_certificates.pem",
                   "api_v3_key": keys_dir / "api_v3_key"})


@pytest.fixture
async def adapter(mock: MockBankProcess, keys_dir: Path) -> AsyncIterator[PspAdapter]:
    psp = create(make_config(mock, keys_dir))
    await psp.start()
    try:
        yield psp
    finally:
        await psp.close()


def make_pay(instruction_id: str, amount: int, currency: str = "CNY") -> PayInstruction:
    return PayInstruction(instruction_id=instruction_id, payment_id="pay_" + instruction_id[-8:],
                          merchant_id="shop-1", asset=Asset.BANK_CARD, amount=amount, currency=currency,
                          description="top-up")


class Listener:
    """Our side of callbacks: a small HTTP server that asks the adapter and answers as it says."""

    def __init__(self, adapter: PspAdapter) -> None:
        self.adapter = adapter
        self.events: list[CallbackEvent] = []
        self.rejected: list[str] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append((dict(request.headers), body))
        try:
            self.events.append(self.adapter.parse_callback(request.headers, body))
            accepted = True
        except CallbackRejected as exc:
            self.rejected.append(exc.reason)
            accepted = False
        status, out, headers = self.adapter.callback_response(accepted)
        return web.Response(status=status, body=out, headers=dict(headers))

    async def start(self) -> Listener:
        app = web.Application()
        app.router.add_post("/psp/notify", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/psp/notify"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def for_id(self, instruction_id: str) -> list[CallbackEvent]:
        return [e for e in self.events if e.instruction_id == instruction_id]

    async def wait_for(self, instruction_id: str, count: int = 1, timeout_s: float = 8.0) -> list[CallbackEvent]:
        deadline = time.monotonic() + timeout_s
        while len(self.for_id(instruction_id)) < count:
            assert time.monotonic() < deadline, f"no callback for {instruction_id}: rejected {self.rejected}"
            await asyncio.sleep(0.02)
        return self.for_id(instruction_id)


@pytest.fixture
async def listener(adapter: PspAdapter, mock: MockBankProcess) -> AsyncIterator[Listener]:
    lst = await Listener(adapter).start()
    mock.set_profile(callback_url=lst.url)
    try:
        yield lst
    finally:
        mock.set_profile(callback_url="")
        await lst.stop()


# ---- building callbacks by hand, as the platform (or a forger) would


def platform_key(keys_dir: Path, serial: str | None = None) -> tuple[str, rsa.RSAPrivateKey]:
    serial = serial or (keys_dir / "platform_serials").read_text().split()[-1]
    key = serialization.load_pem_private_key((keys_dir / f"platform_{serial}_key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return serial, key


def signed(body: bytes, serial: str, key: rsa.RSAPrivateKey, timestamp: int | None = None,
           nonce: str | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or os.urandom(16).hex()
    signature = base64.b64encode(key.sign(f"{ts}\n{nonce}\n".encode() + body + b"\n", padding.PKCS1v15(),
                                          hashes.SHA256())).decode()
    return {"Wechatpay-Serial": serial, "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}


def notification(keys_dir: Path, resource: dict[str, Any], notification_id: str = "EV-2024-1",
                 event_type: str = "TRANSACTION.SUCCESS", original_type: str = "transaction") -> bytes:
    api_key = (keys_dir / "api_v3_key").read_bytes().strip()
    nonce = "n0nce" + os.urandom(4).hex()[:7]
    ciphertext = AESGCM(api_key).encrypt(nonce.encode(), json.dumps(resource).encode(), original_type.encode())
    return json.dumps({"id": notification_id, "create_time": datetime.now(timezone.utc).isoformat(),
                       "resource_type": "encrypt-resource", "event_type": event_type, "summary": "支付成功",
                       "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                                    "ciphertext": base64.b64encode(ciphertext).decode(),
                                    "associated_data": original_type, "nonce": nonce}}).encode()


def success_resource(keys_dir: Path, out_trade_no: str) -> dict[str, Any]:
    mch_id = json.loads((keys_dir / "merchant.json").read_text())["mch_id"]
    return {"mchid": mch_id, "out_trade_no": out_trade_no, "transaction_id": "4200000000000000000000000001",
            "trade_state": "SUCCESS", "amount": {"total": 100, "currency": "CNY"}}


def rejected_reason(adapter: PspAdapter, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(CallbackRejected) as info:
        adapter.parse_callback(headers, body)
    return info.value.reason


# ---- the tests


async def test_shared_contract(adapter: PspAdapter, mock: MockBankProcess) -> None:
    await run_contract(adapter, mock, make_pay)


async def test_pending_payment_settles_by_callback(adapter: PspAdapter, mock: MockBankProcess,
                                                   listener: Listener) -> None:
    mock.set_profile(pending_rate=1.0, settle_after_ms=300)
    ins = make_pay(new_id(), 2_500)
    first = await adapter.submit(ins)
    assert first.outcome is Outcome.PENDING and first.channel_code == "USERPAYING", first
    assert (await adapter.query(QueryRequest(ins.instruction_id))).outcome is Outcome.PENDING
    [event] = await listener.wait_for(ins.instruction_id)
    assert event.kind == "pay" and event.notification_id
    assert event.result.outcome is Outcome.SUCCEEDED and event.result.channel_reference == first.channel_reference
    assert (await adapter.query(QueryRequest(ins.instruction_id))).outcome is Outcome.SUCCEEDED
    # A pending refund settles the same way, with a REFUND.SUCCESS callback.
    refund = RefundInstruction(new_id("rfi"), new_id("rfd"), ins.payment_id, ins.instruction_id,
                               first.channel_reference, 1_000, "CNY")
    pending = await adapter.refund(refund)
    assert pending.outcome is Outcome.PENDING and pending.channel_code == "PROCESSING", pending
    [refunded] = await listener.wait_for(refund.instruction_id)
    assert refunded.kind == "refund" and refunded.result.outcome is Outcome.SUCCEEDED
    # The pay with a refund reads REFUND: the payment still happened.
    after = await adapter.query(QueryRequest(ins.instruction_id))
    assert after.outcome is Outcome.SUCCEEDED and after.channel_code == "REFUND"


async def test_duplicate_and_reordered_callbacks_parse_identically(adapter: PspAdapter, mock: MockBankProcess,
                                                                   listener: Listener) -> None:
    mock.set_profile(duplicate_callback_rate=1.0, callback_reorder_ms=250)
    pays = [make_pay(new_id(), 100 * (n + 1)) for n in range(4)]
    for ins in pays:
        assert (await adapter.submit(ins)).outcome is Outcome.SUCCEEDED
    refund = RefundInstruction(new_id("rfi"), new_id("rfd"), pays[0].payment_id, pays[0].instruction_id, "", 50,
                               "CNY")
    assert (await adapter.refund(refund)).outcome is Outcome.SUCCEEDED
    for ins in pays:
        first, second = await listener.wait_for(ins.instruction_id, count=2)
        assert first == second and first.result.outcome is Outcome.SUCCEEDED and first.kind == "pay"
    first, second = await listener.wait_for(refund.instruction_id, count=2)
    assert first == second and first.kind == "refund" and first.result.outcome is Outcome.SUCCEEDED
    ours = {ins.instruction_id for ins in pays} | {refund.instruction_id}
    ids = {e.notification_id for e in listener.events if e.instruction_id in ours}
    assert len(ids) == 5 and not listener.rejected  # five notifications, each delivered twice
    notes = {n["instruction_id"]: n for n in mock._call("GET", "/callbacks")}
    assert all(notes[i.instruction_id]["acknowledged"] == 2 for i in pays)


async def test_untrusted_callbacks_are_rejected_with_the_reason(adapter: PspAdapter, mock: MockBankProcess,
                                                                keys_dir: Path, listener: Listener) -> None:
    serial, key = platform_key(keys_dir)
    body = notification(keys_dir, success_resource(keys_dir, new_id()))
    good = signed(body, serial, key)
    assert adapter.parse_callback(good, body).result.outcome is Outcome.SUCCEEDED
    # Replayed: the very same message again.
    assert rejected_reason(adapter, good, body) == "REPLAYED"
    # Forged: signed by a key the platform does not hold, under its serial.
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert rejected_reason(adapter, signed(body, serial, forger), body) == "BAD_SIGNATURE"
    assert rejected_reason(adapter, signed(body, "0123ABCD", key), body) == "UNKNOWN_KEY"
    # Stale: properly signed ten minutes ago.
    assert rejected_reason(adapter, signed(body, serial, key, timestamp=int(time.time()) - 600), body) == "STALE"
    # Tampered: a ciphertext bit flipped. As sent (old signature) the signature fails; even
    # re-signed by the platform key, the AES-GCM tag fails.
    envelope = json.loads(body)
    raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    raw[3] ^= 0x01
    envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    tampered = json.dumps(envelope).encode()
    assert rejected_reason(adapter, good, tampered) == "BAD_SIGNATURE"
    assert rejected_reason(adapter, signed(tampered, serial, key), tampered) == "UNDECRYPTABLE"
    # Signed and decryptable, but not a notification we know.
    junk = b'{"id": "EV-9", "resource": 7}'
    assert rejected_reason(adapter, signed(junk, serial, key), junk) == "MALFORMED"
    other = notification(keys_dir, {"mchid": "1234567", "out_trade_no": new_id(), "trade_state": "SUCCESS"})
    assert rejected_reason(adapter, signed(other, serial, key), other) == "MALFORMED"
    # A real delivery from the mock, replayed to our listener byte for byte, is refused.
    ins = make_pay(new_id(), 300)
    assert (await adapter.submit(ins)).outcome is Outcome.SUCCEEDED
    await listener.wait_for(ins.instruction_id)
    headers, delivered = listener.raw[-1]
    assert rejected_reason(adapter, headers, delivered) == "REPLAYED"
    status, out, _ = adapter.callback_response(False)
    assert status == 401 and json.loads(out)["code"] == "FAIL"
    assert adapter.callback_response(True) == (200, b"", {})


async def test_badly_signed_replies_are_unknown_and_callbacks_retried(adapter: PspAdapter, mock: MockBankProcess,
                                                                      listener: Listener) -> None:
    mock.set_profile(bad_signature_rate=1.0)
    ins = make_pay(new_id(), 700)
    result = await adapter.submit(ins)
    assert result.outcome is Outcome.UNKNOWN and result.reason == "BAD_SIGNATURE", result
    queried = await adapter.query(QueryRequest(ins.instruction_id))
    assert queried.outcome is Outcome.UNKNOWN and queried.reason == "BAD_SIGNATURE"
    await asyncio.sleep(0.4)  # the mock's callbacks, badly signed too, are refused and retried
    assert "BAD_SIGNATURE" in listener.rejected and not listener.for_id(ins.instruction_id)
    mock.set_profile(bad_signature_rate=0.0)
    [event] = await listener.wait_for(ins.instruction_id)
    assert event.result.outcome is Outcome.SUCCEEDED
    assert (await adapter.query(QueryRequest(ins.instruction_id))).outcome is Outcome.SUCCEEDED


async def test_certificate_rotation_without_restart(mock: MockBankProcess, keys_dir: Path, tmp_path: Path) -> None:
    ours = tmp_path / "platform_certificates.pem"
    shutil.copy(keys_dir / "platform_certificates.pem", ours)
    psp = create(make_config(mock, keys_dir, certificates=ours))
    try:
        old_serial, old_key = platform_key(keys_dir)
        assert (await psp.submit(make_pay(new_id(), 100))).outcome is Outcome.SUCCEEDED
        rotated = mock._call("POST", "/rotate")
        assert rotated["serial_no"] != old_serial and old_serial in rotated["serials"]
        # Signed by a serial we do not hold yet: not trusted.
        ins = make_pay(new_id(), 100)
        result = await psp.submit(ins)
        assert result.outcome is Outcome.UNKNOWN and result.reason == "UNKNOWN_KEY", result
        # The operator installs the new certificates file (write aside, rename): no restart.
        staged = tmp_path / "staged.pem"
        shutil.copy(keys_dir / "platform_certificates.pem", staged)
        os.replace(staged, ours)
        assert (await psp.query(QueryRequest(ins.instruction_id))).outcome is Outcome.SUCCEEDED
        assert {old_serial, rotated["serial_no"]} <= psp.platform_keys.serials
        # The old serial stays valid: a callback it signed (sent before the rotation) passes.
        body = notification(keys_dir, success_resource(keys_dir, new_id()))
        assert psp.parse_callback(signed(body, old_serial, old_key), body).result.outcome is Outcome.SUCCEEDED
        # A half-written file keeps the keys we had.
        ours.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
        assert (await psp.query(QueryRequest(ins.instruction_id))).outcome is Outcome.SUCCEEDED
    finally:
        await psp.close()


async def test_bill_download_parsed(adapter: PspAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(fee_fixed=1, fee_bps=60)
    today = datetime.now(timezone.utc).date().isoformat()
    paid = [make_pay(new_id(), 1_999), make_pay(new_id(), 12_345), make_pay(new_id(), 500, currency="JPY")]
    for ins in paid:
        assert (await adapter.submit(ins)).outcome is Outcome.SUCCEEDED
    refund = RefundInstruction(new_id("rfi"), new_id("rfd"), paid[1].payment_id, paid[1].instruction_id, "", 345,
                               "CNY")
    assert (await adapter.refund(refund)).outcome is Outcome.SUCCEEDED
    lines = {(line.instruction_id, line.kind): line async for line in adapter.fetch_statement(today)}
    for ins in paid:
        line = lines[(ins.instruction_id, "pay")]
        assert (line.amount, line.currency, line.status) == (ins.amount, ins.currency, Outcome.SUCCEEDED)
        assert line.fee == 1 + (ins.amount * 60 + 5_000) // 10_000 and line.business_date == today
        assert line.channel_reference.startswith("42")
    line = lines[(refund.instruction_id, "refund")]
    assert (line.amount, line.currency, line.status, line.fee) == (345, "CNY", Outcome.SUCCEEDED, 0)
    # The admin endpoint serves the same CSV; the book agrees with the lines.
    csv_text = mock.statement(today)
    assert csv_text.startswith("交易时间,") and "总交易单数" in csv_text
    book = {(b["instruction_id"], b["kind"]): b for b in mock.book()}
    for key, line in lines.items():
        assert book[key]["amount"] == line.amount and book[key]["status"] == "SUCCEEDED"
    # A day without business: the PSP says NO_STATEMENT_EXIST, which is an empty statement.
    assert [line async for line in adapter.fetch_statement("2001-01-01")] == []


async def test_refused_connection_is_not_submitted(adapter: PspAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(outage=True)
    try:
        await asyncio.sleep(0.05)
        ins = make_pay(new_id(), 100)
        result = await adapter.submit(ins)
        assert result.outcome is Outcome.NOT_SUBMITTED and result.reason == "CONNECTION_REFUSED", result
        refund = await adapter.refund(RefundInstruction(new_id("rfi"), new_id("rfd"), "p", ins.instruction_id, "",
                                                        1, "CNY"))
        assert refund.outcome is Outcome.NOT_SUBMITTED
        # A query that cannot connect says nothing about the payment: UNKNOWN, never NOT_SUBMITTED.
        assert (await adapter.query(QueryRequest(ins.instruction_id))).outcome is Outcome.UNKNOWN
    finally:
        mock.set_profile(outage=False)
    assert (await adapter.submit(make_pay(new_id(), 100))).outcome is Outcome.SUCCEEDED


async def test_psp_refuses_a_wrong_merchant_signature(mock: MockBankProcess, keys_dir: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong_key.pem"
    wrong.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    psp = create(make_config(mock, keys_dir, private_key=wrong))
    try:
        ins = make_pay(new_id(), 100)
        result = await psp.submit(ins)
        assert result.outcome is Outcome.FAILED and result.reason == "SIGNATURE_REJECTED", result
        assert result.channel_code == "SIGN_ERROR"
        assert not [b for b in mock.book() if b["instruction_id"] == ins.instruction_id]
    finally:
        await psp.close()


async def test_unknown_order_is_closed_for_good(adapter: PspAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(timeout_rate=1.0)
    ins = make_pay(new_id(), 100)
    assert (await adapter.submit(ins)).outcome is Outcome.UNKNOWN
    mock.set_profile(timeout_rate=0.0)
    found = await adapter.query(QueryRequest(ins.instruction_id))
    assert found.outcome is Outcome.UNKNOWN and found.reason == "NOT_FOUND", found
    closed = await adapter.close_order(ins.instruction_id)
    assert closed.outcome is Outcome.FAILED and closed.reason == "CLOSED", closed
    # Should the original arrive now, it cannot be paid: the order stays closed.
    again = await adapter.submit(ins)
    assert again.outcome is Outcome.FAILED and again.channel_code == "CLOSED", again
    # A paid order cannot be closed: the payment stands.
    paid = make_pay(new_id(), 100)
    assert (await adapter.submit(paid)).outcome is Outcome.SUCCEEDED
    assert (await adapter.close_order(paid.instruction_id)).outcome is Outcome.SUCCEEDED


async def test_declines_map_to_reasons_and_local_checks(adapter: PspAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(insufficient_funds_rate=1.0)
    poor = await adapter.submit(make_pay(new_id(), 100))
    assert (poor.outcome, poor.reason, poor.channel_code) == (Outcome.FAILED, "INSUFFICIENT_FUNDS", "PAYERROR")
    mock.set_profile(insufficient_funds_rate=0.0)
    # Refunds above the captured amount: the PSP's explicit INVALID_REQUEST.
    ins = make_pay(new_id(), 100)
    assert (await adapter.submit(ins)).outcome is Outcome.SUCCEEDED
    over = await adapter.refund(RefundInstruction(new_id("rfi"), new_id("rfd"), ins.payment_id, ins.instruction_id,
                                                  "", 101, "CNY"))
    assert (over.outcome, over.reason, over.channel_code) == (Outcome.FAILED, "INVALID_REQUEST", "INVALID_REQUEST")
    # What provably never left.
    assert (await adapter.submit(make_pay("bad id!", 100))).outcome is Outcome.NOT_SUBMITTED
    assert (await adapter.submit(make_pay(new_id(), 100, currency="EUR"))).outcome is Outcome.NOT_SUBMITTED
    with pytest.raises(FlowNotSupported):
        await adapter.reverse(QueryRequest(ins.instruction_id), 100, "CNY")
    assert Flow.REVERSE not in adapter.describe().flows


async def test_metrics_in_flight_and_statement(adapter: PspAdapter, mock: MockBankProcess) -> None:
    # Requests by outcome, latency, polls and callbacks are the financial gateway's to count
    # (once, around every adapter call); the adapter adds calls in flight and the statement flow.
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"channel": CHANNEL, **labels}) or 0.0

    mock.set_profile(latency_ms=200)
    call = asyncio.ensure_future(adapter.submit(make_pay(new_id(), 100)))
    await asyncio.sleep(0.1)
    assert value("dualflow_channel_in_flight") == 1
    assert (await call).outcome is Outcome.SUCCEEDED
    assert value("dualflow_channel_in_flight") == 0
    mock.set_profile(latency_ms=0)
    before = value("dualflow_channel_requests_total", flow="statement", outcome="SUCCEEDED")
    pays_before = value("dualflow_channel_requests_total", flow="pay", outcome="SUCCEEDED")
    [line async for line in adapter.fetch_statement(datetime.now(timezone.utc).date().isoformat())]
    assert value("dualflow_channel_requests_total", flow="statement", outcome="SUCCEEDED") == before + 1
    assert value("dualflow_channel_request_seconds_count", flow="statement") >= 1
    assert value("dualflow_channel_requests_total", flow="pay", outcome="SUCCEEDED") == pays_before


async def test_settle_helper_and_timeouts(adapter: PspAdapter, mock: MockBankProcess) -> None:
    # late_reply_ms past our timeout: processed, answer too late -> UNKNOWN, then the truth.
    mock.set_profile(late_reply_ms=1_000)
    ins = make_pay(new_id(), 100)
    result = await adapter.submit(ins)
    assert result.outcome is Outcome.UNKNOWN and result.reason == "TIMEOUT", result
    mock.set_profile(late_reply_ms=0)
    assert (await settle(adapter, QueryRequest(ins.instruction_id))).outcome is Outcome.SUCCEEDED


async def test_reused_instruction_id_with_another_amount(adapter: PspAdapter, mock: MockBankProcess) -> None:
    ins = make_pay(new_id(), 100)
    assert (await adapter.submit(ins)).outcome is Outcome.SUCCEEDED
    # The PSP refuses the reuse (OUT_TRADE_NO_USED); the original's amount is not ours: no success claimed.
    other = await adapter.submit(make_pay(ins.instruction_id, 200))
    assert (other.outcome, other.reason) == (Outcome.UNKNOWN, "AMOUNT_MISMATCH"), other
    assert [b["amount"] for b in mock.book() if b["instruction_id"] == ins.instruction_id] == [100]


async def test_same_seed_same_faults(keys_dir: Path, mock: MockBankProcess) -> None:
    profile = json.dumps({"decline_rate": 0.3, "insufficient_funds_rate": 0.2, "pending_rate": 0.2,
                          "settle_after_ms": 60_000})
    runs = []
    for _ in range(2):
        with MockBankProcess("psp", "--keys-dir", str(keys_dir), "--seed", "11", "--profile", profile) as other:
            psp = create(make_config(other, keys_dir))
            try:
                runs.append([(await psp.submit(make_pay(new_id(), 100))).channel_code for _ in range(12)])
            finally:
                await psp.close()
    assert runs[0] == runs[1] and len(set(runs[0])) > 1, runs
