"""The transfer adapter against its mock bank, a real process on loopback: the shared contract,
asynchronous settlement (callbacks and queries), callbacks that must be refused, replies that
must not be believed, outages, payouts, return payments, statements against the bank's book,
key rotation, and the mock's own refusals of requests that are not authentic."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import CLEAN, new_id, run_contract, settle
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
from dualflow.adapters.transfer import KeyRing, PayoutInstruction, TransferAdapter, create
from dualflow.core.payments.model import Asset, BankAccount
from dualflow.mock_banks.launcher import MockBankProcess

KEY = bytes.fromhex("5f" * 16 + "a1" * 16)
OLD_KEY = bytes.fromhex("0c" * 32)
POOL = {"bank_code": "POOLBANK", "number": "6200000000000001", "name": "dualflow pool"}
PAYER = BankAccount("PAYERBANK", "1234", "Alice Li")
BENEFICIARY = BankAccount("BENEBANK", "7788", "Bob Wang")
BENEFICIARY_NUMBER = "6222000011117788"
QUIET = dict(CLEAN, fee_fixed=0, fee_bps=0, return_rate=0.0, max_amount=0, callback_retry_ms=50)
TODAY = lambda: datetime.now(timezone.utc).date().isoformat()  # noqa: E731


def make_pay(instruction_id: str, amount: int, account: BankAccount = PAYER) -> PayInstruction:
    return PayInstruction(instruction_id=instruction_id, payment_id=f"pay_{instruction_id}", merchant_id="shop-1",
                          asset=Asset.BANK_TRANSFER, amount=amount, currency="CNY", bank_account=account)


def make_refund(original: PayInstruction, amount: int, reference: str = "") -> RefundInstruction:
    return RefundInstruction(instruction_id=new_id("rfi"), refund_id=new_id("rfd"), payment_id=original.payment_id,
                             original_instruction_id=original.instruction_id, original_reference=reference,
                             amount=amount, currency=original.currency)


def make_payout(amount: int, number: str = BENEFICIARY_NUMBER,
                beneficiary: BankAccount = BENEFICIARY) -> PayoutInstruction:
    return PayoutInstruction(instruction_id=new_id("po"), payout_id=new_id("pyo"), merchant_id="shop-1",
                             amount=amount, currency="CNY", beneficiary=beneficiary, beneficiary_number=number)


@dataclass
class Keys:
    current: Path
    old: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("transfer-keys")
    (folder / "current.hex").write_text(KEY.hex() + "\n")
    (folder / "old.hex").write_text(OLD_KEY.hex())
    return Keys(folder / "current.hex", folder / "old.hex")


@pytest.fixture(scope="module")
def mock(keys: Keys) -> Iterator[MockBankProcess]:
    with MockBankProcess("transfer", "--hmac-key-file", str(keys.current), "--seed", "7") as bank:
        yield bank
    assert "Traceback" not in bank.stderr_tail(200), bank.stderr_tail(200)


def channel(port: int, key_files: dict[str, Path], **settings: Any) -> ChannelConfig:
    base = {"base_url": f"http://127.0.0.1:{port}", "pool_account": POOL, "currencies": ["CNY", "USD"],
            "timeout_ms": 400, "fees": {"CNY": {"fixed": 0, "bps": 0}}}
    return ChannelConfig(name="bank-xfer", kind="transfer", settings={**base, **settings}, key_files=key_files)


@pytest.fixture
async def adapter(mock: MockBankProcess, keys: Keys) -> AsyncIterator[TransferAdapter]:
    mock.set_profile(**QUIET)
    a = create(channel(mock.port, {"hmac_key": keys.current}))
    yield a
    await a.close()
    mock.set_profile(**QUIET)


def admin(mock: MockBankProcess, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(mock.admin_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def until(check: Callable[[], Any], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


@dataclass
class Receiver:
    """Our callback listener: verifies with the adapter and answers what it says."""

    adapter: TransferAdapter
    refuse_first: int = 0  # answer 503 to the first N deliveries, as a listener that is down would
    events: list[CallbackEvent] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(({k: v for k, v in request.headers.items()}, body))
        if self.refuse_first > 0:
            self.refuse_first -= 1
            return web.Response(status=503)
        try:
            event = self.adapter.parse_callback(request.headers, body)
        except CallbackRejected as exc:
            self.rejected.append(exc.reason)
            status, payload, headers = self.adapter.callback_response(False)
        else:
            self.events.append(event)
            status, payload, headers = self.adapter.callback_response(True)
        return web.Response(status=status, body=payload, headers=headers)

    def for_id(self, instruction_id: str) -> list[CallbackEvent]:
        return [e for e in self.events if e.instruction_id == instruction_id]


@pytest.fixture
async def callbacks(mock: MockBankProcess, keys: Keys) -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []
    adapters: list[TransferAdapter] = []

    async def start(key_files: dict[str, Path] | None = None, **settings: Any) -> Receiver:
        app = web.Application()
        box: list[Receiver] = []

        async def handle(request: web.Request) -> web.Response:
            return await box[0].handle(request)

        app.router.add_post("/callbacks/transfer", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/callbacks/transfer"
        a = create(channel(mock.port, key_files or {"hmac_key": keys.current}, callback_url=url, **settings))
        adapters.append(a)
        box.append(Receiver(a, url=url))
        return box[0]

    mock.set_profile(**QUIET)
    yield start
    mock.set_profile(**QUIET)
    for a in adapters:
        await a.close()
    for runner in runners:
        await runner.cleanup()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- the shared contract


async def test_contract(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    await run_contract(adapter, mock, make_pay)


def test_capabilities_and_unsupported_flows(adapter: TransferAdapter) -> None:
    caps = adapter.describe()
    assert caps.assets == frozenset({Asset.BANK_TRANSFER}) and caps.currencies == frozenset({"CNY", "USD"})
    assert Flow.REVERSE not in caps.flows and {Flow.PAY, Flow.REFUND, Flow.CALLBACK, Flow.STATEMENT} <= caps.flows
    assert isinstance(adapter, TransferAdapter) and "6200000000000001" not in repr(adapter.settings)


async def test_reverse_is_not_a_flow_of_this_rail(adapter: TransferAdapter) -> None:
    with pytest.raises(FlowNotSupported):
        await adapter.reverse(QueryRequest("x"), 1, "CNY")
    with pytest.raises(FlowNotSupported):
        await adapter.query(QueryRequest("x", kind="reverse"))


# ---- local validation: provably never left


@pytest.mark.parametrize("instruction,reason", [
    (PayInstruction("ins_cur", "pay_1", "m", Asset.BANK_TRANSFER, 100, "JPY", bank_account=PAYER),
     "UNSUPPORTED_CURRENCY"),
    (PayInstruction("ins_zero", "pay_1", "m", Asset.BANK_TRANSFER, 0, "CNY", bank_account=PAYER),
     "AMOUNT_OUT_OF_RANGE"),
    (PayInstruction("ins_noacct", "pay_1", "m", Asset.BANK_TRANSFER, 100, "CNY"), "MISSING_BANK_ACCOUNT"),
    (PayInstruction("ins_bad", "pay_1", "m", Asset.BANK_TRANSFER, 100, "CNY",
                    bank_account=BankAccount("PAYERBANK", "12x4", "Alice")), "INVALID_ACCOUNT"),
    (PayInstruction("../etc", "pay_1", "m", Asset.BANK_TRANSFER, 100, "CNY", bank_account=PAYER), "INVALID_REQUEST"),
])
async def test_local_validation_is_not_submitted(adapter: TransferAdapter, mock: MockBankProcess,
                                                 instruction: PayInstruction, reason: str) -> None:
    result = await adapter.submit(instruction)
    assert (result.outcome, result.reason) == (Outcome.NOT_SUBMITTED, reason)
    assert not [b for b in mock.book() if b["instruction_id"] == instruction.instruction_id]


# ---- asynchronous settlement


async def test_settlement_by_callback_with_duplicates(callbacks: Callable[..., Awaitable[Receiver]],
                                                      mock: MockBankProcess) -> None:
    receiver = await callbacks()
    mock.set_profile(pending_rate=1.0, settle_after_ms=150, duplicate_callback_rate=1.0, fee_fixed=30, fee_bps=10)
    pay = make_pay(new_id(), 10_000)
    submitted = await receiver.adapter.submit(pay)
    assert submitted.outcome is Outcome.PENDING and submitted.channel_reference
    assert await until(lambda: len(receiver.for_id(pay.instruction_id)) >= 2)
    first, second = receiver.for_id(pay.instruction_id)[:2]
    assert first.result.outcome is Outcome.SUCCEEDED and first.kind == "pay"
    assert first.result.channel_reference == submitted.channel_reference
    assert first.result.fee == 30 + 10 == second.result.fee  # 10 bps of 100.00, half up
    assert first.notification_id == second.notification_id  # a duplicate, not a second event
    assert not receiver.rejected


async def test_rejection_by_callback(callbacks: Callable[..., Awaitable[Receiver]], mock: MockBankProcess) -> None:
    receiver = await callbacks()
    mock.set_profile(pending_rate=1.0, settle_after_ms=100, insufficient_funds_rate=1.0)
    pay = make_pay(new_id(), 5_000)
    assert (await receiver.adapter.submit(pay)).outcome is Outcome.PENDING
    events = await until(lambda: receiver.for_id(pay.instruction_id))
    assert events[0].result.outcome is Outcome.FAILED and events[0].result.reason == "INSUFFICIENT_FUNDS"
    assert events[0].result.channel_code == "REJECTED:INSUFFICIENT_FUNDS"


async def test_settlement_by_query(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(pending_rate=1.0, settle_after_ms=200)
    pay = make_pay(new_id(), 2_500)
    submitted = await adapter.submit(pay)
    assert submitted.outcome is Outcome.PENDING
    assert (await adapter.query(QueryRequest(pay.instruction_id))).outcome is Outcome.PENDING
    settled = await settle(adapter, QueryRequest(pay.instruction_id, submitted.channel_reference))
    assert settled.outcome is Outcome.SUCCEEDED and settled.channel_reference == submitted.channel_reference


async def test_returned_by_the_counterparty_bank_fails(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(return_rate=1.0, settle_after_ms=50)
    pay = make_pay(new_id(), 700)
    assert (await adapter.submit(pay)).outcome is Outcome.PENDING  # a return is never known up front
    result = await settle(adapter, QueryRequest(pay.instruction_id))
    assert (result.outcome, result.reason, result.channel_code) == (Outcome.FAILED, "ACCOUNT_CLOSED",
                                                                    "RETURNED:ACCOUNT_CLOSED")


async def test_callbacks_are_redelivered_until_acknowledged(callbacks: Callable[..., Awaitable[Receiver]],
                                                            mock: MockBankProcess) -> None:
    receiver = await callbacks()
    receiver.refuse_first = 3
    pay = make_pay(new_id(), 1_200)
    assert (await receiver.adapter.submit(pay)).outcome is Outcome.SUCCEEDED
    assert await until(lambda: receiver.for_id(pay.instruction_id))
    assert len(receiver.raw) == 4
    nonces = {headers["X-Rail-Nonce"] for headers, _ in receiver.raw}
    assert len(nonces) == 4  # each delivery signed afresh
    deliveries = admin(mock, "GET", "/callbacks")
    event_id = receiver.for_id(pay.instruction_id)[0].notification_id
    assert [(d["attempts"], d["acknowledged"]) for d in deliveries if d["event_id"] == event_id] == [(4, 1)]


# ---- callbacks that must not be trusted


async def test_forged_replayed_stale_and_tampered_callbacks_are_refused(
        callbacks: Callable[..., Awaitable[Receiver]], mock: MockBankProcess) -> None:
    receiver = await callbacks()
    pay = make_pay(new_id(), 900)
    await receiver.adapter.submit(pay)
    assert await until(lambda: receiver.for_id(pay.instruction_id))
    headers, body = receiver.raw[-1]
    a = receiver.adapter
    path = "/callbacks/transfer"

    def refused(h: dict[str, str], b: bytes) -> str:
        with pytest.raises(CallbackRejected) as err:
            a.parse_callback(h, b)
        return err.value.reason

    assert refused(headers, body) == "REPLAYED"  # the genuine one, delivered again
    tampered = body.replace(b'"SETTLED"', b'"SETTLED" ')
    assert refused(headers, tampered) == "BAD_SIGNATURE"
    forged = KeyRing.of(bytes(32)).sign("POST", path, body)
    assert refused(forged, body) == "UNKNOWN_KEY"
    wrong_key_same_id = {**KeyRing.of(KEY).sign("POST", path, body),
                         "X-Rail-Signature": KeyRing.of(bytes(32)).sign("POST", path, body)["X-Rail-Signature"]}
    assert refused(wrong_key_same_id, body) == "BAD_SIGNATURE"
    stale = KeyRing.of(KEY).sign("POST", path, body, timestamp=int(time.time()) - 301)
    assert refused(stale, body) == "STALE"
    other_path = KeyRing.of(KEY).sign("POST", "/callbacks/other", body)
    assert refused(other_path, body) == "BAD_SIGNATURE"
    assert refused({}, body) == "BAD_SIGNATURE"
    signed_garbage = KeyRing.of(KEY).sign("POST", path, b"{not json")
    assert refused(signed_garbage, b"{not json") == "MALFORMED"
    # A freshly signed copy of a genuine body is accepted: the rail's signature is the trust.
    fresh = KeyRing.of(KEY).sign("POST", path, body)
    assert a.parse_callback(fresh, body).result.outcome is Outcome.SUCCEEDED
    assert refused(fresh, body) == "REPLAYED"


async def test_badly_signed_callbacks_are_refused_and_redelivered(
        callbacks: Callable[..., Awaitable[Receiver]], mock: MockBankProcess) -> None:
    receiver = await callbacks()
    mock.set_profile(bad_signature_rate=1.0)
    pay = make_pay(new_id(), 900)
    await receiver.adapter.submit(pay)  # the reply is badly signed too: UNKNOWN (tested below)
    assert await until(lambda: len(receiver.rejected) >= 2)
    assert set(receiver.rejected) == {"BAD_SIGNATURE"} and not receiver.events
    mock.set_profile(bad_signature_rate=0.0)
    events = await until(lambda: receiver.for_id(pay.instruction_id))
    assert events and events[0].result.outcome is Outcome.SUCCEEDED


# ---- replies that must not be believed, and what never left


async def test_badly_signed_reply_is_unknown(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(bad_signature_rate=1.0)
    pay = make_pay(new_id(), 1_000)
    result = await adapter.submit(pay)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "BAD_SIGNATURE")
    assert (await adapter.query(QueryRequest(pay.instruction_id))).outcome is Outcome.UNKNOWN
    mock.set_profile(bad_signature_rate=0.0)
    assert (await adapter.query(QueryRequest(pay.instruction_id))).outcome is Outcome.SUCCEEDED  # it did happen


async def test_late_reply_is_unknown_then_found(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(late_reply_ms=800)
    pay = make_pay(new_id(), 1_000)
    result = await adapter.submit(pay)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "TIMEOUT")
    mock.set_profile(late_reply_ms=0)
    assert (await adapter.query(QueryRequest(pay.instruction_id))).outcome is Outcome.SUCCEEDED


async def test_query_of_what_never_arrived_is_unknown(adapter: TransferAdapter) -> None:
    result = await adapter.query(QueryRequest(new_id()))
    assert (result.outcome, result.reason, result.channel_code) == (Outcome.UNKNOWN, "NOT_FOUND", "NOT_FOUND")


async def test_outage_is_not_submitted(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    assert (await adapter.submit(make_pay(new_id(), 100))).outcome is Outcome.SUCCEEDED  # a pooled connection
    mock.set_profile(outage=True)
    # The bank dropped our idle pooled connection; let the loop see that. (A request written on a
    # connection the bank closed at that very moment is UNKNOWN, rightly: we cannot tell.)
    await asyncio.sleep(0.1)
    try:
        pay = make_pay(new_id(), 1_000)
        result = await adapter.submit(pay)
        assert (result.outcome, result.reason) == (Outcome.NOT_SUBMITTED, "CONNECTION_REFUSED")
        assert (await adapter.query(QueryRequest(pay.instruction_id))).outcome is Outcome.NOT_SUBMITTED
    finally:
        mock.set_profile(outage=False)
    assert not [b for b in mock.book() if b["instruction_id"] == pay.instruction_id]
    assert (await adapter.submit(pay)).outcome is Outcome.SUCCEEDED  # safe to send again: it never left


async def test_nothing_listening_is_not_submitted(keys: Keys) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = create(channel(port, {"hmac_key": keys.current}))
    try:
        for call in (a.submit(make_pay(new_id(), 100)), a.payout(make_payout(100)),
                     a.refund(make_refund(make_pay(new_id(), 100), 100)), a.query(QueryRequest(new_id()))):
            result = await call
            assert (result.outcome, result.reason) == (Outcome.NOT_SUBMITTED, "CONNECTION_REFUSED")
    finally:
        await a.close()


async def test_resubmission_with_other_fields_is_unknown(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    pay = make_pay(new_id(), 1_000)
    assert (await adapter.submit(pay)).outcome is Outcome.SUCCEEDED
    changed = make_pay(pay.instruction_id, 1_001)
    result = await adapter.submit(changed)
    assert (result.outcome, result.reason, result.channel_code) == (Outcome.UNKNOWN, "INSTRUCTION_CONFLICT",
                                                                    "INSTRUCTION_REUSED")


async def test_account_states_decide_rejections(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    closed = BankAccount("PAYERBANK", "4401", "Carol Closed")
    invalid = BankAccount("PAYERBANK", "4402", "Nobody")
    poor = BankAccount("PAYERBANK", "4403", "Dan Poor")
    admin(mock, "PUT", "/accounts", [
        {"bank_code": "PAYERBANK", "last4": "4401", "name": "Carol Closed", "status": "closed"},
        {"bank_code": "PAYERBANK", "last4": "4402", "name": "Nobody", "status": "invalid"},
        {"bank_code": "PAYERBANK", "last4": "4403", "name": "Dan Poor", "balance": 1_500},
        {"bank_code": "PAYERBANK", "last4": "4404", "name": "Erin Real"},
    ])
    cases = [(closed, 100, "ACCOUNT_CLOSED"), (invalid, 100, "INVALID_ACCOUNT"), (poor, 1_000, None),
             (poor, 1_000, "INSUFFICIENT_FUNDS"), (BankAccount("PAYERBANK", "4404", "Mallory"), 100,
                                                   "ACCOUNT_NAME_MISMATCH")]
    for account, amount, reason in cases:
        result = await adapter.submit(make_pay(new_id(), amount, account))
        expected = (Outcome.SUCCEEDED, "") if reason is None else (Outcome.FAILED, reason)
        assert (result.outcome, result.reason) == expected, (account, result)
    poor_now = [a for a in admin(mock, "GET", "/accounts") if a["last4"] == "4403"]
    assert poor_now[0]["balance"] == 500 and poor_now[0]["held"] == 0


# ---- payouts


async def test_payouts(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    admin(mock, "PUT", "/accounts", [dict(POOL, balance=5_000),
                                     {"bank_code": "BENEBANK", "number": "6222000011110001", "name": "Gone",
                                      "status": "closed"}])
    try:
        first = make_payout(3_000)
        result = await adapter.payout(first)
        assert result.outcome is Outcome.SUCCEEDED and result.channel_reference
        again = await adapter.payout(first)  # deduplicated by instruction id
        assert again.outcome is Outcome.SUCCEEDED and again.channel_reference == result.channel_reference
        assert (await adapter.query(QueryRequest(first.instruction_id, kind="payout"))).outcome is Outcome.SUCCEEDED
        short = await adapter.payout(make_payout(3_000))
        assert (short.outcome, short.reason) == (Outcome.FAILED, "INSUFFICIENT_FUNDS")  # the pool has 2,000 left
        gone = await adapter.payout(make_payout(100, "6222000011110001", BankAccount("BENEBANK", "0001", "Gone")))
        assert (gone.outcome, gone.reason) == (Outcome.FAILED, "ACCOUNT_CLOSED")
        no_number = await adapter.payout(make_payout(100, number=""))
        assert (no_number.outcome, no_number.reason) == (Outcome.NOT_SUBMITTED, "BENEFICIARY_NUMBER_UNKNOWN")
        pool = [a for a in admin(mock, "GET", "/accounts") if a["number"] == POOL["number"]][0]
        assert pool["balance"] == 2_000
        lines = [b for b in mock.book() if b["instruction_id"] == first.instruction_id]
        assert [(b["kind"], b["direction"], b["status"]) for b in lines] == [("payout", "payout", "SUCCEEDED")]
    finally:
        admin(mock, "PUT", "/accounts", [dict(POOL, balance=None)])


async def test_payout_by_the_accounts_directory(mock: MockBankProcess, keys: Keys) -> None:
    mock.set_profile(**QUIET)
    a = create(channel(mock.port, {"hmac_key": keys.current},
                       accounts={"BENEBANK:7788": BENEFICIARY_NUMBER}))
    try:
        result = await a.payout(make_payout(250, number=""))
        assert result.outcome is Outcome.SUCCEEDED
    finally:
        await a.close()


# ---- return payments (refunds)


async def test_returns(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    pay = make_pay(new_id(), 1_000)
    ref = (await adapter.submit(pay)).channel_reference
    first = make_refund(pay, 400, ref)
    result = await adapter.refund(first)
    assert result.outcome is Outcome.SUCCEEDED and result.channel_reference != ref
    assert (await adapter.refund(first)).channel_reference == result.channel_reference  # idempotent
    queried = await adapter.query(QueryRequest(first.instruction_id, result.channel_reference, kind="refund"))
    assert queried.outcome is Outcome.SUCCEEDED
    # Asked as a payment, the return is not believed to be one.
    assert (await adapter.query(QueryRequest(first.instruction_id))).reason == "REPLY_MISMATCH"
    too_much = await adapter.refund(make_refund(pay, 700, ref))
    assert (too_much.outcome, too_much.reason) == (Outcome.FAILED, "REFUND_EXCEEDS_ORIGINAL")
    rest = await adapter.refund(make_refund(pay, 600, ref))
    assert rest.outcome is Outcome.SUCCEEDED
    lines = [b for b in mock.book() if b.get("original_id") == pay.instruction_id]
    assert sorted(b["amount"] for b in lines) == [400, 600] and {b["kind"] for b in lines} == {"refund"}

    mock.set_profile(pending_rate=1.0, settle_after_ms=2_000)
    pending = make_pay(new_id(), 500)
    assert (await adapter.submit(pending)).outcome is Outcome.PENDING
    early = await adapter.refund(make_refund(pending, 100))
    assert (early.outcome, early.reason) == (Outcome.FAILED, "ORIGINAL_NOT_SETTLED")
    unknown = await adapter.refund(make_refund(make_pay(new_id(), 500), 100))
    assert (unknown.outcome, unknown.reason) == (Outcome.FAILED, "ORIGINAL_NOT_FOUND")


async def test_return_with_a_lost_reply_is_unknown_then_found(adapter: TransferAdapter,
                                                              mock: MockBankProcess) -> None:
    pay = make_pay(new_id(), 800)
    await adapter.submit(pay)
    mock.set_profile(lost_reply_rate=1.0)
    refund = make_refund(pay, 800)
    result = await adapter.refund(refund)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "CONNECTION_LOST")
    mock.set_profile(lost_reply_rate=0.0)
    found = await adapter.query(QueryRequest(refund.instruction_id, kind="refund"))
    assert found.outcome is Outcome.SUCCEEDED


# ---- statements


async def test_statement_lines_match_the_book(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(fee_fixed=5, fee_bps=25)
    pays = [make_pay(new_id(), amount) for amount in (1_000, 2_345, 99)]
    for pay in pays:
        await adapter.submit(pay)
    mock.set_profile(decline_rate=1.0)
    await adapter.submit(make_pay(new_id(), 50))
    mock.set_profile(decline_rate=0.0, pending_rate=1.0, settle_after_ms=60_000)
    await adapter.submit(make_pay(new_id(), 51))  # still ACCEPTED: not on a statement yet
    mock.set_profile(pending_rate=0.0)
    await adapter.refund(make_refund(pays[0], 250))
    await adapter.payout(make_payout(70))

    today = TODAY()
    lines = [line async for line in adapter.fetch_statement(today)]
    book = [b for b in mock.book() if b["business_date"] == today  # our pool account's statement
            and POOL["bank_code"] in (b["debtor"]["bank_code"], b["creditor"]["bank_code"])]
    assert len(lines) == len(book) == len({(line.instruction_id, line.kind) for line in lines})
    as_lines = {(line.instruction_id, line.kind, line.amount, line.currency, line.status.value, line.fee,
                 line.channel_reference) for line in lines}
    as_book = {(b["instruction_id"], b["kind"], b["amount"], b["currency"], b["status"], b["fee"], b["reference"])
               for b in book}
    assert as_lines == as_book
    fee_of = {line.instruction_id: line.fee for line in lines}
    assert fee_of[pays[1].instruction_id] == 5 + 6  # 25 bps of 23.45 = 5.8625, half up
    assert all(b["status"] == "PENDING" for b in mock.book() if b["business_date"] is None)
    assert mock.statement(today).splitlines()[0].startswith("business_date,instruction_id,reference")
    assert [line async for line in adapter.fetch_statement("2001-01-01")] == []


async def test_the_mock_gives_one_account_its_own_statement(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    """`?account=<bank_code>:<number>`: only the transfers that account is debtor or creditor of,
    the trailer over them; without it the network's statement; a bad parameter a signed 400."""
    mock.set_profile(fee_fixed=3)
    other_pool = {"bank_code": "OTHERBANK", "number": "6200000000000099", "name": "another pool"}
    ours = make_pay(new_id(), 1_234)
    await adapter.submit(ours)
    payout = make_payout(77)
    await adapter.payout(payout)
    theirs_id = new_id()
    body = json.dumps({"instruction_id": theirs_id, "direction": "collect", "amount": 555, "currency": "CNY",
                       "debtor": {"bank_code": "PAYERBANK", "last4": "1234", "name": "Alice Li"},
                       "creditor": dict(other_pool, last4="0099"), "end_to_end_id": "e2e_other"}).encode()
    ring = KeyRing.of(KEY)
    today = TODAY()
    async with aiohttp.ClientSession() as session:
        async def call(method: str, path: str, data: bytes = b"") -> tuple[int, bytes]:
            headers = ring.sign(method, path, data)
            if data:
                headers["Content-Type"] = "application/json"
            async with session.request(method, f"http://127.0.0.1:{mock.port}{path}", data=data or None,
                                       headers=headers) as r:
                raw = await r.read()
                ring.verify(method, path, dict(r.headers), raw, now=time.time())  # signed over path and query
                return r.status, raw

        assert (await call("POST", "/transfers", body))[0] in (200, 201)
        await until(lambda: all(b["business_date"] for b in mock.book()), 5.0)

        def rows(raw: bytes) -> tuple[set[str], list[str]]:
            lines = raw.decode().splitlines()
            return {line.split(",")[1] for line in lines[1:-1]}, lines[-1].split(",")

        status, raw = await call("GET", f"/statements/{today}?account=POOLBANK:6200000000000001")
        assert status == 200
        ids, trailer = rows(raw)
        assert {ours.instruction_id, payout.instruction_id} <= ids and theirs_id not in ids
        mine = [b for b in mock.book() if b["business_date"] == today and b["instruction_id"] in ids]
        assert trailer == ["TRAILER", str(len(ids)), str(sum(b["amount"] for b in mine)),
                           str(sum(b["fee"] for b in mine))]
        fetched = {line.instruction_id async for line in adapter.fetch_statement(today)}
        assert fetched == ids  # the adapter asks for its own pool account's statement
        status, raw = await call("GET", f"/statements/{today}?account=OTHERBANK:6200000000000099")
        assert status == 200 and rows(raw)[0] == {theirs_id}
        assert rows(raw)[1] == ["TRAILER", "1", "555", "3"]
        status, raw = await call("GET", f"/statements/{today}")
        assert status == 200 and {ours.instruction_id, payout.instruction_id, theirs_id} <= rows(raw)[0]
        for bad in ("POOLBANK", "POOLBANK:12", "P:6200000000000001", "POOLBANK:6200000000000001&account=X:1",
                    ":6200000000000001"):
            status, raw = await call("GET", f"/statements/{today}?account={bad}")
            assert status == 400 and json.loads(raw)["error"]["code"] == "INVALID_ACCOUNT", (bad, raw)
        # The query is signed: a statement asked for one account cannot be taken for another's.
        headers = ring.sign("GET", f"/statements/{today}?account=OTHERBANK:6200000000000099", b"")
        async with session.get(f"http://127.0.0.1:{mock.port}/statements/{today}"
                               f"?account=POOLBANK:6200000000000001", headers=headers) as r:
            assert r.status == 401
    assert "Traceback" not in mock.stderr_tail(200)


# ---- keys


async def test_key_rotation(keys: Keys) -> None:
    """The bank signs with the new key and still accepts the old one; we verify both while rolling."""
    with MockBankProcess("transfer", "--hmac-key-file", str(keys.current), "--hmac-key-file", str(keys.old),
                         "--seed", "11", "--profile", json.dumps({"pending_rate": 0.0})) as bank:
        old_only = create(channel(bank.port, {"hmac_key": keys.old}))
        new_and_old = create(channel(bank.port, {"hmac_key": keys.current, "hmac_key_previous": keys.old}))
        try:
            pay = make_pay(new_id(), 300)
            assert (await old_only.submit(pay)).outcome is Outcome.SUCCEEDED  # replies signed with our key id
            assert (await new_and_old.query(QueryRequest(pay.instruction_id))).outcome is Outcome.SUCCEEDED
            body = json.dumps({"event_id": "evt_1", "type": "transfer.settled", "transfer": {
                "instruction_id": pay.instruction_id, "reference": "TR1", "direction": "collect", "amount": 300,
                "currency": "CNY", "status": "SETTLED"}}).encode()
            # No callback_url configured: callbacks are signed over /callbacks/<channel name>, where
            # the financial gateway's listener serves this channel.
            for signer in (KeyRing.of(KEY), KeyRing.of(OLD_KEY)):
                headers = signer.sign("POST", "/callbacks/bank-xfer", body)
                assert new_and_old.parse_callback(headers, body).result.outcome is Outcome.SUCCEEDED
            with pytest.raises(CallbackRejected) as err:
                old_only.parse_callback(KeyRing.of(KEY).sign("POST", "/callbacks/bank-xfer", body), body)
            assert err.value.reason == "UNKNOWN_KEY"
        finally:
            await old_only.close()
            await new_and_old.close()
    assert bank.proc is not None and bank.proc.returncode == 0  # SIGTERM: a clean exit


async def test_a_key_the_bank_does_not_hold_is_unknown_not_failed(mock: MockBankProcess, keys: Keys) -> None:
    mock.set_profile(**QUIET)
    a = create(channel(mock.port, {"hmac_key": keys.old}))  # this bank only holds the current key
    try:
        result = await a.submit(make_pay(new_id(), 100))
        assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "UNKNOWN_KEY")
    finally:
        await a.close()


# ---- the mock refuses what a real bank would


async def test_the_mock_refuses_unsigned_stale_replayed_and_tampered_requests(mock: MockBankProcess) -> None:
    body = json.dumps({"instruction_id": new_id(), "direction": "collect", "amount": 100, "currency": "CNY",
                       "debtor": {"bank_code": "PAYERBANK", "last4": "1234", "name": "Alice Li"},
                       "creditor": dict(POOL, last4="0001"), "end_to_end_id": "e2e_1"}).encode()
    ring = KeyRing.of(KEY)
    url = f"http://127.0.0.1:{mock.port}/transfers"

    async with aiohttp.ClientSession() as session:
        async def post(headers: dict[str, str], data: bytes = body) -> tuple[int, str]:
            async with session.post(url, data=data, headers={**headers, "Content-Type": "application/json"}) as r:
                payload = await r.json()
                ring.verify("POST", "/transfers", dict(r.headers), await r.read(), now=time.time())  # signed too
                return r.status, payload.get("error", {}).get("code", "")

        assert await post({}) == (401, "MISSING_SIGNATURE")
        assert await post(ring.sign("POST", "/transfers", body, timestamp=int(time.time()) - 400)) == \
            (401, "STALE_TIMESTAMP")
        assert await post(ring.sign("POST", "/transfers", body), body + b" ") == (401, "BAD_SIGNATURE")
        assert await post(KeyRing.of(OLD_KEY).sign("POST", "/transfers", body)) == (401, "UNKNOWN_KEY")
        genuine = ring.sign("POST", "/transfers", body)
        assert (await post(genuine))[0] == 201
        assert await post(genuine) == (401, "REPLAYED_NONCE")
    assert "Traceback" not in mock.stderr_tail(200)


def test_mock_refuses_a_bad_profile(mock: MockBankProcess) -> None:
    for bad in ({"decline_rate": 2}, {"no_such_field": 1}, {"outage": "yes"}, {"latency_ms": -1}):
        with pytest.raises(urllib.error.HTTPError) as err:
            mock.set_profile(**bad)
        assert err.value.code == 400


async def test_metrics_in_flight_statements_and_payouts(adapter: TransferAdapter, mock: MockBankProcess) -> None:
    """Requests by outcome, polls and callbacks are the dispatcher's to count (once); the adapter
    counts what no dispatcher sees: in flight, statements, payouts."""
    labels = dict(channel="bank-xfer")
    before = {key: sample("dualflow_channel_requests_total", **labels, flow=flow, outcome=outcome)
              for key, (flow, outcome) in {"pay": ("pay", "SUCCEEDED"), "statement": ("statement", "SUCCEEDED"),
                                           "payout": ("payout", "SUCCEEDED")}.items()}
    await adapter.submit(make_pay(new_id(), 100))
    await adapter.payout(make_payout(100))
    assert [line async for line in adapter.fetch_statement(TODAY())]
    after = {key: sample("dualflow_channel_requests_total", **labels, flow=flow, outcome=outcome)
             for key, (flow, outcome) in {"pay": ("pay", "SUCCEEDED"), "statement": ("statement", "SUCCEEDED"),
                                          "payout": ("payout", "SUCCEEDED")}.items()}
    assert after == {"pay": before["pay"], "statement": before["statement"] + 1, "payout": before["payout"] + 1}
    assert sample("dualflow_channel_in_flight", **labels) == 0


async def test_the_same_seed_replays_the_same_decisions(keys: Keys) -> None:
    profile = json.dumps({"decline_rate": 0.4, "pending_rate": 0.5, "settle_after_ms": 0, "latency_ms": 0,
                          "jitter_ms": 0})

    async def run(seed: str) -> list[tuple[str, str, str]]:
        with MockBankProcess("transfer", "--hmac-key-file", str(keys.current), "--seed", seed,
                             "--profile", profile) as bank:
            a = create(channel(bank.port, {"hmac_key": keys.current}))
            try:
                results = [await a.submit(make_pay(f"ins_seed_{i}", 100 + i)) for i in range(12)]
            finally:
                await a.close()
            return [(r.outcome.value, r.reason, r.channel_reference) for r in results]

    first, again = await run("3"), await run("3")
    assert first == again
    assert {outcome for outcome, _, _ in first} == {"SUCCEEDED", "FAILED", "PENDING"}  # the draws mattered


async def test_a_base_url_with_a_path_prefix_is_signed_as_the_bank_sees_it(keys: Keys) -> None:
    """The signed PATH is the one the bank receives, prefix included (a bank behind /rail/v1)."""
    from dualflow.mock_banks.transfer import auth as bank_auth

    bank_keys, seen = bank_auth.Keys([KEY]), []

    async def get_transfer(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        error, kid = bank_auth.check(bank_keys, bank_auth.Nonces(300), "GET", request.raw_path, headers,
                                     await request.read(), 300)
        seen.append((request.raw_path, error))
        body = json.dumps({"instruction_id": request.match_info["id"], "reference": "TR1", "direction": "collect",
                           "amount": 5, "currency": "CNY", "status": "SETTLED"}).encode()
        return web.Response(body=body, headers=bank_keys.headers("GET", request.raw_path, body, kid))

    app = web.Application()
    app.router.add_get("/rail/v1/transfers/{id}", get_transfer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    a = create(channel(port, {"hmac_key": keys.current}, base_url=f"http://127.0.0.1:{port}/rail/v1/"))
    try:
        result = await a.query(QueryRequest("ins_prefixed"))
        assert result.outcome is Outcome.SUCCEEDED, result
        assert seen == [("/rail/v1/transfers/ins_prefixed", "")]
    finally:
        await a.close()
        await runner.cleanup()


async def test_callbacks_through_the_financial_gateway_listener(keys: Keys) -> None:
    """The bank's agreed callback URL (--callback-url) points at the financial gateway's listener,
    /callbacks/<channel name>; the adapter verifies over that path by default and the gateway
    applies each verified notification."""
    from dualflow.adapters.dispatcher import FinancialGateway

    answers: list[tuple[str, str, Any]] = []

    async def on_answer(kind: str, object_id: str, answer: Any) -> None:
        answers.append((kind, object_id, answer))

    listener = FinancialGateway([], callback_port=0)
    await listener.start()
    url = f"{listener.callback_url}/bank-xfer"
    try:
        with MockBankProcess("transfer", "--hmac-key-file", str(keys.current), "--seed", "5", "--callback-url", url,
                             "--profile", json.dumps({"pending_rate": 1.0, "settle_after_ms": 50})) as bank:
            a = create(channel(bank.port, {"hmac_key": keys.current}))
            listener.adapters[a.name] = a
            listener.on_answer = on_answer
            pay = make_pay(new_id(), 4_200)
            assert (await a.submit(pay)).outcome is Outcome.PENDING
            assert await until(lambda: answers)
            kind, object_id, answer = answers[0]
            assert (kind, object_id, answer.outcome.name) == ("pay", pay.instruction_id, "SUCCEEDED")
            deliveries = await until(lambda: [d for d in admin(bank, "GET", "/callbacks") if d["acknowledged"]])
            assert deliveries[0]["url"] == url
    finally:
        await listener.close()
