"""Fuzzing the transfer adapter's parsers with hypothesis: random and mutated callbacks never crash
parse_callback and never yield SUCCEEDED; even genuinely signed bodies of any shape only succeed
when the bank explicitly said SETTLED; statement and transfer parsers fail only with WireError."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from dualflow.adapters.contract import CallbackEvent, CallbackRejected, Outcome
from dualflow.adapters.transfer import KeyRing, TransferAdapter, TransferSettings
from dualflow.adapters.transfer.transformers import WireAccount, WireError, parse_statement, parse_transfer

KEY = bytes.fromhex("5f" * 16 + "a1" * 16)
PATH = "/callbacks/transfer"
RING = KeyRing.of(KEY)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _adapter() -> TransferAdapter:
    # No network: parse_callback never opens a connection.
    return TransferAdapter("fuzz", TransferSettings(
        base_url="http://127.0.0.1:9", pool=WireAccount("POOLBANK", "pool", "6200000000000001"), keys=RING,
        callback_path=PATH))


ADAPTER = _adapter()


def genuine_body(status: str = "SETTLED") -> bytes:
    return json.dumps({"event_id": "evt_0000000001", "type": "transfer.settled", "transfer": {
        "instruction_id": "ins_1", "reference": "TR2025010100000001", "direction": "collect", "amount": 1000,
        "currency": "CNY", "status": status, "code": "", "fee": 3}}).encode()


def parse(headers: dict[str, str], body: bytes) -> CallbackEvent | None:
    try:
        return ADAPTER.parse_callback(headers, body)
    except CallbackRejected:
        return None


header_names = st.sampled_from(["X-Rail-Key-Id", "X-Rail-Timestamp", "X-Rail-Nonce", "X-Rail-Signature",
                                "x-rail-signature", "Content-Type", "X-Other"])
header_values = st.one_of(st.text(max_size=80), st.sampled_from([RING.current, str(int(time.time())), "0" * 64,
                                                                 "a" * 32]))


@FUZZ
@given(headers=st.dictionaries(header_names, header_values, max_size=6), body=st.binary(max_size=400))
def test_random_callbacks_are_refused(headers: dict[str, str], body: bytes) -> None:
    assert parse(headers, body) is None


@FUZZ
@given(data=st.data())
def test_mutated_genuine_callbacks_are_refused(data: st.DataObject) -> None:
    body = genuine_body()
    headers = RING.sign("POST", PATH, body)
    if data.draw(st.booleans(), label="mutate body"):
        mutated = bytearray(body)
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            kind = data.draw(st.sampled_from(["flip", "insert", "delete"]))
            at = data.draw(st.integers(0, max(0, len(mutated) - 1)))
            if kind == "flip" and mutated:
                mutated[at] ^= data.draw(st.integers(1, 255))
            elif kind == "insert":
                mutated.insert(at, data.draw(st.integers(0, 255)))
            elif mutated:
                del mutated[at]
        assume(bytes(mutated) != body)
        body = bytes(mutated)
    else:
        name = data.draw(st.sampled_from(sorted(headers)))
        value = data.draw(st.text(max_size=70))
        assume(value.strip() != headers[name])
        headers = {**headers, name: value}
    assert parse(headers, body) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=6)


@st.composite
def notifications(draw: st.DrawFn) -> Any:
    """A well-formed notification in any state, then zero to two fields replaced by anything or
    dropped: deep enough to reach the state mapping, wild enough to hit every check."""
    transfer: dict[str, Any] = {
        "instruction_id": "ins_1", "reference": "TR1", "direction": draw(st.sampled_from(["collect", "payout",
                                                                                          "return"])),
        "amount": draw(st.integers(1, 2**63 - 1)), "currency": "CNY",
        "status": draw(st.sampled_from(["SETTLED", "ACCEPTED", "REJECTED", "RETURNED", "settled", "PAID", ""])),
        "code": draw(st.sampled_from(["", "ACCOUNT_CLOSED", "INSUFFICIENT_FUNDS", "R99"])),
        "fee": draw(st.integers(0, 100)),
    }
    notification: dict[str, Any] = {"event_id": "evt_1", "type": "transfer.settled", "transfer": transfer}
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from([notification, transfer]))
        name = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[name]
        else:
            target[name] = draw(json_values)
        if not transfer or "transfer" not in notification:
            break
    return notification if draw(st.integers(0, 9)) else draw(json_values)


@FUZZ
@given(payload=notifications())
def test_signed_bodies_of_any_shape_succeed_only_on_an_explicit_settled(payload: Any) -> None:
    body = json.dumps(payload).encode()
    event = parse(RING.sign("POST", PATH, body), body)
    hypothesis_event("refused" if event is None else event.result.outcome.value)
    if event is not None and event.result.outcome is Outcome.SUCCEEDED:
        assert payload["transfer"]["status"] == "SETTLED" and event.result.fee == payload["transfer"].get("fee", 0)
    if event is not None and event.result.outcome is Outcome.FAILED:
        assert payload["transfer"]["status"] in ("REJECTED", "RETURNED")


@FUZZ
@given(body=st.binary(max_size=300))
def test_signed_garbage_is_malformed_not_a_crash(body: bytes) -> None:
    try:
        ADAPTER.parse_callback(RING.sign("POST", PATH, body), body)
    except CallbackRejected as exc:
        assert exc.reason == "MALFORMED"


@FUZZ
@given(obj=st.one_of(json_values, notifications().map(lambda n: n.get("transfer") if isinstance(n, dict) else n)))
def test_parse_transfer_fails_only_with_wire_error(obj: Any) -> None:
    try:
        parse_transfer(obj)
    except WireError:
        pass


HEADER = "business_date,instruction_id,reference,direction,original_id,amount,currency,status,code,fee,final_at\n"
statement_rows = st.lists(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(
    ["2025-01-01", "ins_1", "TR1", "collect", "1000", "CNY", "SETTLED", "REJECTED", "ACCEPTED", "0"])),
    min_size=10, max_size=12), max_size=3)


@settings(FUZZ, max_examples=100)
@given(rows=statement_rows, raw=st.text(max_size=200), with_header=st.booleans())
@example(rows=[], raw="\r0", with_header=True)  # a bare CR once escaped as csv.Error
def test_parse_statement_fails_only_with_wire_error(rows: list[list[str]], raw: str, with_header: bool) -> None:
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    text = (HEADER if with_header else "") + out.getvalue() + raw
    try:
        lines = list(parse_statement(text, "2025-01-01"))
    except WireError:
        return
    for line in lines:
        assert line.status in (Outcome.SUCCEEDED, Outcome.FAILED) and line.amount > 0
