"""The ISO 8583 card-bank adapter against the mock bank as a real process over real sockets:
the shared contract, then what a card link must survive: 50 payments in flight on one
connection, bad MACs both ways, outages, a connection dropped mid-flight, late replies,
reversals of unknown authorizations, echo, duplicates, pending answers, fees, metrics."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from dualflow.adapters.contract import (
    CardData,
    ChannelConfig,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    QueryRequest,
    RefundInstruction,
)
from dualflow.adapters.iso8583_bank import Iso8583BankAdapter, codec, create
from dualflow.core.payments.model import Asset
from dualflow.mock_banks.iso8583 import wire
from dualflow.mock_banks.launcher import MockBankProcess
from harness import CLEAN, booked, new_id, run_contract, settle

PAN = "4761739001010119"
CLEAN_ALL = dict(CLEAN, fee_fixed=0, fee_bps=0, late_reply_ms=0, settle_after_ms=1_000)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iso8583") / "mac_key.hex"
    path.write_text(secrets.token_hex(16) + "\n")
    return path


@pytest.fixture(scope="module")
def mock(key_file: Path) -> Iterator[MockBankProcess]:
    with MockBankProcess("iso8583", "--mac-key-file", str(key_file), "--seed", "7") as process:
        yield process


def config(mock: MockBankProcess, key_file: Path, **settings: Any) -> ChannelConfig:
    base = dict(host="127.0.0.1", port=mock.port, terminal_id="TERM0001", merchant_id="DUALFLOW0000001",
                currencies=["CNY", "USD"], fee_fixed=0, fee_bps=0, statement_url=mock.admin_url,
                reply_timeout_s=0.5, connect_wait_s=0.5, reconnect_initial_s=0.02, reconnect_max_s=0.2)
    return ChannelConfig(name=settings.pop("name", "card-test"), kind="iso8583", settings={**base, **settings},
                         key_files={"mac_key": key_file})


@pytest.fixture
async def adapter(mock: MockBankProcess, key_file: Path) -> AsyncIterator[Iso8583BankAdapter]:
    mock.set_profile(**CLEAN_ALL)
    adapter = create(config(mock, key_file))
    await adapter.start()
    assert adapter.link.up
    yield adapter
    await adapter.close()
    mock.set_profile(**CLEAN_ALL)


def make_pay(instruction_id: str, amount: int, currency: str = "CNY") -> PayInstruction:
    return PayInstruction(instruction_id=instruction_id, payment_id=f"pay_{instruction_id[-8:]}", merchant_id="shop-1",
                          asset=Asset.BANK_CARD, amount=amount, currency=currency, card=CardData(PAN, 12, 2029))


def stats(mock: MockBankProcess) -> dict[str, int]:
    return mock._call("GET", "/stats")  # type: ignore[no-any-return]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def book_entry(mock: MockBankProcess, instruction_id: str, kind: str) -> dict[str, Any]:
    [entry] = [e for e in booked(mock, instruction_id) if e["kind"] == kind]
    return entry


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


async def wait_for(condition: Any, timeout_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_shared_contract(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    await run_contract(adapter, mock, make_pay)
    caps = adapter.describe()
    assert caps.flows == {Flow.PAY, Flow.QUERY, Flow.REFUND, Flow.REVERSE, Flow.STATEMENT}
    assert caps.currencies == {"CNY", "USD"} and caps.assets == {Asset.BANK_CARD}


async def test_fifty_payments_in_flight_on_one_connection(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(latency_ms=5, jitter_ms=150)  # replies come back out of order
    before, connections = stats(mock), adapter.link.connections
    payments = [make_pay(new_id(), 100 + i) for i in range(50)]
    results = await asyncio.gather(*(adapter.submit(p) for p in payments))
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 50
    book = {e["instruction_id"]: e for e in mock.book() if e["kind"] == "pay"}
    for payment, result in zip(payments, results, strict=True):
        assert book[payment.instruction_id]["reference"] == result.channel_reference  # each got its own answer
        assert book[payment.instruction_id]["amount"] == payment.amount
    assert len({r.channel_reference for r in results}) == 50
    after = stats(mock)
    assert after["connections"] == before["connections"] and adapter.link.connections == connections
    assert after["requests"] - before["requests"] == 50


async def test_a_reply_with_a_bad_mac_is_unknown_and_the_query_finds_the_truth(
        adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    bad_before = metric("dualflow_channel_bad_macs_total", channel="card-test")
    mock.set_profile(bad_signature_rate=1.0)
    payment = make_pay(new_id(), 700)
    result = await adapter.submit(payment)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "BAD_MAC")
    assert book_entry(mock, payment.instruction_id, "pay")["status"] == "SUCCEEDED"  # the bank did it
    assert metric("dualflow_channel_bad_macs_total", channel="card-test") == bad_before + 1
    mock.set_profile(bad_signature_rate=0.0)
    found = await adapter.query(QueryRequest(payment.instruction_id))
    assert found.outcome is Outcome.SUCCEEDED
    assert found.channel_reference == book_entry(mock, payment.instruction_id, "pay")["reference"]


async def test_the_bank_rejects_a_request_with_a_bad_mac(mock: MockBankProcess, key_file: Path) -> None:
    key = bytes.fromhex(key_file.read_text().strip())
    instruction_id = new_id()
    fields = {"2": PAN, "3": "000000", "4": "000000000500", "7": "0102030405", "11": "000009", "14": "2912",
              "41": "TERM0001", "42": "DUALFLOW0000001", "48": codec.tlv_build({"II": instruction_id}), "49": "156"}
    before = stats(mock)["bad_macs"]
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    try:
        writer.write(codec.frame(codec.encode("0200", fields, bytes(16))))  # signed with the wrong key
        length = int.from_bytes(await reader.readexactly(2), "big")
        reply = codec.parse(await reader.readexactly(length), key)  # the bank's answer verifies
    finally:
        writer.close()
    assert reply.mti == "0210" and reply.get("39") == "63" and reply.stan == "000009"
    assert not booked(mock, instruction_id) and stats(mock)["bad_macs"] == before + 1


async def test_outage_refused_before_sending_is_not_submitted_then_reconnects(
        adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    reconnects = metric("dualflow_channel_reconnects_total", channel="card-test")
    mock.set_profile(outage=True)
    await wait_for(lambda: not adapter.link.up)
    payment = make_pay(new_id(), 300)
    result = await adapter.submit(payment)
    assert (result.outcome, result.reason) == (Outcome.NOT_SUBMITTED, "CONNECTION_REFUSED")
    mock.set_profile(outage=False)
    after = await adapter.submit(payment)  # the same instruction may go now: it never left
    assert after.outcome is Outcome.SUCCEEDED
    assert len(booked(mock, payment.instruction_id)) == 1
    assert metric("dualflow_channel_reconnects_total", channel="card-test") == reconnects + 1


async def test_connection_dropped_mid_flight_is_unknown_then_the_query_resolves_it(
        adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(latency_ms=300)
    payment = make_pay(new_id(), 900)
    submitted = asyncio.create_task(adapter.submit(payment))
    await wait_for(lambda: metric("dualflow_channel_in_flight", channel="card-test") >= 1)
    mock.set_profile(outage=True)  # the bank's front end goes away with our request inside
    result = await submitted
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "CONNECTION_LOST")
    mock.set_profile(outage=False, latency_ms=0)
    found = await settle(adapter, QueryRequest(payment.instruction_id), timeout_s=5)
    assert found.outcome is Outcome.SUCCEEDED  # the bank finished it after the link went
    assert adapter.link.up


async def test_a_late_reply_is_unknown_and_never_answers_another_request(
        adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    late_before = metric("dualflow_channel_unmatched_replies_total", channel="card-test", why="late")
    mock.set_profile(late_reply_ms=700)  # past the adapter's 0.5 s reply timeout
    slow = make_pay(new_id(), 111)
    result = await adapter.submit(slow)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, "TIMEOUT")
    mock.set_profile(late_reply_ms=0)
    fast = make_pay(new_id(), 222)
    answered = await adapter.submit(fast)  # the late 0210 for `slow` arrives while this one waits
    assert answered.outcome is Outcome.SUCCEEDED
    assert answered.channel_reference == book_entry(mock, fast.instruction_id, "pay")["reference"]
    await wait_for(lambda: metric("dualflow_channel_unmatched_replies_total", channel="card-test", why="late")
                   == late_before + 1)


async def test_reversal_of_an_unknown_authorization(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(lost_reply_rate=1.0)
    payment = make_pay(new_id(), 1_500)
    assert (await adapter.submit(payment)).outcome is Outcome.UNKNOWN
    mock.set_profile(lost_reply_rate=0.0)
    reversed_ = await adapter.reverse(QueryRequest(payment.instruction_id), payment.amount, payment.currency)
    assert reversed_.outcome is Outcome.SUCCEEDED, reversed_
    pay = book_entry(mock, payment.instruction_id, "pay")
    reverse = book_entry(mock, payment.instruction_id, "reverse")
    assert pay["status"] == "REVERSED" and reverse["effect"] == "reversed" and reverse["amount"] == 1_500
    # Reversing again changes nothing; the payment's query says it no longer stands.
    assert (await adapter.reverse(QueryRequest(payment.instruction_id), 1_500, "CNY")).outcome is Outcome.SUCCEEDED
    assert len([e for e in booked(mock, payment.instruction_id) if e["kind"] == "reverse"]) == 1
    queried = await adapter.query(QueryRequest(payment.instruction_id))
    assert (queried.outcome, queried.reason) == (Outcome.FAILED, "REVERSED")
    assert (await adapter.query(QueryRequest(payment.instruction_id, kind="reverse"))).outcome is Outcome.SUCCEEDED
    # Asked by the reversal's own id, the bank finds it by the original's RRN (OR); without
    # either it has no record, and that is UNKNOWN, never a guess.
    assert (await adapter.query(QueryRequest(payment.instruction_id + "-rev", pay["reference"], kind="reverse"))
            ).outcome is Outcome.SUCCEEDED
    assert (await adapter.query(QueryRequest(payment.instruction_id + "-rev", kind="reverse"))).reason == "NOT_FOUND"
    lines = {(line.instruction_id, line.kind): line async for line in adapter.fetch_statement(today())}
    assert lines[(payment.instruction_id, "pay")].status is Outcome.SUCCEEDED
    assert lines[(payment.instruction_id, "reverse")].amount == 1_500  # the two net to zero


async def test_reversal_before_the_authorization_arrived_voids_it(
        adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    mock.set_profile(timeout_rate=1.0)
    payment = make_pay(new_id(), 400)
    assert (await adapter.submit(payment)).outcome is Outcome.UNKNOWN
    mock.set_profile(timeout_rate=0.0)
    assert (await adapter.reverse(QueryRequest(payment.instruction_id), 400, "CNY")).outcome is Outcome.SUCCEEDED
    assert book_entry(mock, payment.instruction_id, "pay")["status"] == "VOID"
    # The authorization turning up late (resent here) is never approved: 94, and the original
    # that stands is the void.
    late = await adapter.submit(payment)
    assert (late.outcome, late.reason) == (Outcome.FAILED, "REVERSED")
    assert book_entry(mock, payment.instruction_id, "pay")["status"] == "VOID"
    lines = {(line.instruction_id, line.kind): line async for line in adapter.fetch_statement(today())}
    assert lines[(payment.instruction_id, "pay")].status is Outcome.FAILED
    assert (payment.instruction_id, "reverse") not in lines  # nothing moved, nothing to undo


async def test_echo_keeps_the_link_alive(mock: MockBankProcess, key_file: Path) -> None:
    mock.set_profile(**CLEAN_ALL)
    echoes_before = stats(mock)["echoes"]
    adapter = create(config(mock, key_file, echo_interval_s=0.05, name="card-echo"))
    await adapter.start()
    try:
        await wait_for(lambda: adapter.link.echoes >= 5)
        assert stats(mock)["echoes"] - echoes_before >= 5
        assert (await adapter.submit(make_pay(new_id(), 50))).outcome is Outcome.SUCCEEDED
        assert adapter.link.connections == 1
        assert metric("dualflow_channel_requests_total", channel="card-echo", flow="echo", outcome="SUCCEEDED") >= 5
    finally:
        await adapter.close()


async def test_echo_detects_a_silent_dead_link(key_file: Path) -> None:
    """A bank that signs on and then never answers (a hung front end, no FIN): the echo notices,
    the link is cut and opened again."""
    key = bytes.fromhex(key_file.read_text().strip())
    connections = active = 0

    async def silent_bank(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, active
        connections += 1
        active += 1
        try:
            while True:
                body = await reader.readexactly(int.from_bytes(await reader.readexactly(2), "big"))
                mti, fields = wire.parse(body)
                if mti == "0800" and fields.get(70) == "001":
                    writer.write(wire.frame(wire.sign("0810", {7: fields[7], 11: fields[11], 39: "00", 70: "001"}, key)))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        finally:
            active -= 1

    server = await asyncio.start_server(silent_bank, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    adapter = create(ChannelConfig("card-silent", "iso8583", {
        "port": port, "echo_interval_s": 0.05, "echo_timeout_s": 0.1, "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.1}, {"mac_key": key_file}))
    try:
        await adapter.start()
        await wait_for(lambda: connections >= 3)
        assert metric("dualflow_channel_requests_total", channel="card-silent", flow="echo", outcome="UNKNOWN") >= 2
    finally:
        await adapter.close()
        server.close()
        await wait_for(lambda: active == 0)  # closing leaves no socket behind, even one mid sign-on


async def test_answers_the_bank_gives(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    # Insufficient funds: FAILED with our reason, booked as failed.
    mock.set_profile(insufficient_funds_rate=1.0)
    poor = make_pay(new_id(), 10_000)
    result = await adapter.submit(poor)
    assert (result.outcome, result.reason, result.channel_code) == (Outcome.FAILED, "INSUFFICIENT_FUNDS", "51")
    mock.set_profile(insufficient_funds_rate=0.0)
    # Request in progress (09): PENDING, then final by query.
    mock.set_profile(pending_rate=1.0, settle_after_ms=300)
    slow = make_pay(new_id(), 2_000)
    result = await adapter.submit(slow)
    assert (result.outcome, result.channel_code) == (Outcome.PENDING, "09")
    assert (await adapter.submit(slow)).outcome is Outcome.PENDING  # a duplicate while in progress
    mock.set_profile(pending_rate=0.0)
    assert (await settle(adapter, QueryRequest(slow.instruction_id))).outcome is Outcome.SUCCEEDED
    # Fees: fixed + basis points, rounded half up, reported with the answer and on the statement.
    mock.set_profile(fee_fixed=10, fee_bps=125)
    priced = make_pay(new_id(), 1_000)
    result = await adapter.submit(priced)
    assert (result.outcome, result.fee) == (Outcome.SUCCEEDED, 10 + 13)
    lines = {(line.instruction_id, line.kind): line async for line in adapter.fetch_statement(today())}
    assert lines[(priced.instruction_id, "pay")].fee == 23
    assert lines[(poor.instruction_id, "pay")].status is Outcome.FAILED


async def test_duplicates_never_book_twice(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    payment = make_pay(new_id(), 600)
    first = await adapter.submit(payment)
    again = await adapter.submit(payment)
    assert first.outcome is again.outcome is Outcome.SUCCEEDED
    assert first.channel_reference == again.channel_reference
    # The same instruction id with another amount: 94, the original stands, and it is not this
    # instruction's answer.
    other = await adapter.submit(make_pay(payment.instruction_id, 601))
    assert (other.outcome, other.reason) == (Outcome.UNKNOWN, "AMOUNT_MISMATCH")
    assert [e["amount"] for e in booked(mock, payment.instruction_id)] == [600]


async def test_refunds(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    payment = make_pay(new_id(), 1_000)
    paid = await adapter.submit(payment)

    def refund(amount: int, reference: str = paid.channel_reference) -> RefundInstruction:
        return RefundInstruction(new_id("rfi"), new_id("rfd"), payment.payment_id, payment.instruction_id, reference,
                                 amount, "CNY")

    first = await adapter.refund(refund(600))
    assert first.outcome is Outcome.SUCCEEDED and first.channel_reference != paid.channel_reference
    too_much = await adapter.refund(refund(401))
    assert (too_much.outcome, too_much.reason) == (Outcome.FAILED, "INVALID_AMOUNT")
    rest = refund(400)
    assert (await adapter.refund(rest)).outcome is Outcome.SUCCEEDED
    assert (await adapter.refund(rest)).outcome is Outcome.SUCCEEDED  # a duplicate: the original answer
    assert (await adapter.query(QueryRequest(rest.instruction_id, kind="refund"))).outcome is Outcome.SUCCEEDED
    refunds = [e for e in mock.book() if e["kind"] == "refund" and e["original_reference"] == paid.channel_reference]
    assert sorted((e["amount"], e["status"]) for e in refunds) == [(400, "SUCCEEDED"), (401, "FAILED"),
                                                                   (600, "SUCCEEDED")]
    unknown_original = await adapter.refund(RefundInstruction(new_id("rfi"), new_id("rfd"), "p", new_id(), "", 1, "CNY"))
    assert (unknown_original.outcome, unknown_original.reason) == (Outcome.FAILED, "INVALID_TRANSACTION")


async def test_what_never_leaves(adapter: Iso8583BankAdapter, mock: MockBankProcess) -> None:
    before = stats(mock)["requests"]
    for instruction, reason in [
        (make_pay(new_id(), 100, currency="EUR"), "UNSUPPORTED_CURRENCY"),
        (PayInstruction(new_id(), "p", "m", Asset.BANK_CARD, 100, "CNY"), "CARD_REQUIRED"),
        (PayInstruction(new_id(), "p", "m", Asset.WALLET, 100, "CNY"), "UNSUPPORTED_ASSET"),
    ]:
        result = await adapter.submit(instruction)
        assert (result.outcome, result.reason) == (Outcome.NOT_SUBMITTED, reason)
    assert (await adapter.query(QueryRequest(new_id(), kind="capture"))).outcome is Outcome.NOT_SUBMITTED
    assert stats(mock)["requests"] == before
    with pytest.raises(FlowNotSupported):
        adapter.parse_callback({}, b"{}")
    assert adapter.callback_response(True) == (404, b"", {})


async def test_metrics_and_logs_carry_no_card_data(adapter: Iso8583BankAdapter, mock: MockBankProcess,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    statements = metric("dualflow_channel_requests_total", channel="card-test", flow="statement", outcome="SUCCEEDED")
    assert (await adapter.submit(make_pay(new_id(), 100))).outcome is Outcome.SUCCEEDED
    mock.set_profile(bad_signature_rate=1.0)
    assert (await adapter.submit(make_pay(new_id(), 100))).outcome is Outcome.UNKNOWN
    mock.set_profile(bad_signature_rate=0.0)
    assert [line async for line in adapter.fetch_statement(today())]
    assert metric("dualflow_channel_requests_total", channel="card-test", flow="statement",
                  outcome="SUCCEEDED") == statements + 1
    assert metric("dualflow_channel_request_seconds_count", channel="card-test", flow="sign_on") >= 1
    assert metric("dualflow_channel_in_flight", channel="card-test") == 0
    assert metric("dualflow_channel_connected", channel="card-test") == 1
    exposition = generate_latest(REGISTRY).decode()
    assert PAN not in exposition and PAN[:6] not in exposition
    assert "bad MAC" in caplog.text  # the bad reply was logged, and without the card number
    assert PAN not in caplog.text and PAN not in repr(adapter) and PAN not in mock.stderr_tail(1000)


def test_the_mock_is_reproducible(key_file: Path) -> None:
    """Two banks with one seed answer the same sequence of payments the same way."""
    async def codes(process: MockBankProcess) -> list[str]:
        process.set_profile(decline_rate=0.3, insufficient_funds_rate=0.2)
        adapter = create(config(process, key_file, name="card-seeded"))
        await adapter.start()
        try:
            return [(await adapter.submit(make_pay(f"seeded_{i}", 100))).channel_code for i in range(30)]
        finally:
            await adapter.close()

    runs = []
    for _ in range(2):
        with MockBankProcess("iso8583", "--mac-key-file", str(key_file), "--seed", "11") as process:
            runs.append(asyncio.run(codes(process)))
    assert runs[0] == runs[1] and {"00", "05", "51"} <= set(runs[0])
