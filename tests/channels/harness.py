"""The shared contract every channel adapter must pass against its own mock bank.

Each channel's tests build its adapter (pointed at a running mock) and call
`run_contract(adapter, mock, make_pay)`. The harness drives the mock's faults
through its admin endpoint (mock_banks/launcher.py documents the profile
fields) and checks what the contract promises: outcomes as data, UNKNOWN (never
FAILED, never SUCCEEDED) when a reply is lost, the channel deduplicating a
resubmitted instruction, queries resolving unknowns, refunds, statements that
tell the truth, and untrusted callbacks rejected.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import date, datetime, timezone

from dualflow.adapters.contract import (
    CallbackRejected,
    Capabilities,
    ChannelAdapter,
    ChannelResult,
    Flow,
    FlowNotSupported,
    Outcome,
    PayInstruction,
    QueryRequest,
    RefundInstruction,
)
from dualflow.mock_banks.launcher import MockBankProcess

MakePay = Callable[[str, int], PayInstruction]  # (instruction id, amount) -> a valid instruction

CLEAN = dict(latency_ms=0, jitter_ms=0, decline_rate=0.0, insufficient_funds_rate=0.0, timeout_rate=0.0,
             lost_reply_rate=0.0, late_reply_ms=0, pending_rate=0.0, settle_after_ms=0,
             duplicate_callback_rate=0.0, bad_signature_rate=0.0, outage=False)


def new_id(prefix: str = "ins") -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


async def settle(adapter: ChannelAdapter, request: QueryRequest, timeout_s: float = 10.0) -> ChannelResult:
    """Query until the channel gives a final answer."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = await adapter.query(request)
        if result.outcome.final or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.05)


def booked(mock: MockBankProcess, instruction_id: str) -> list[dict[str, object]]:
    return [line for line in mock.book() if line["instruction_id"] == instruction_id]


async def run_contract(adapter: ChannelAdapter, mock: MockBankProcess, make_pay: MakePay) -> None:
    caps = adapter.describe()
    assert isinstance(caps, Capabilities) and caps.channel == adapter.name
    assert caps.assets and caps.currencies and Flow.PAY in caps.flows and Flow.QUERY in caps.flows
    mock.set_profile(**CLEAN)

    # A clean payment: SUCCEEDED with the channel's reference, booked once.
    ok = make_pay(new_id(), 1_000)
    result = await adapter.submit(ok)
    if result.outcome is Outcome.PENDING:
        result = await settle(adapter, QueryRequest(ok.instruction_id, result.channel_reference))
    assert result.outcome is Outcome.SUCCEEDED, result
    assert result.channel_reference
    # The same instruction again: the channel deduplicates, never a second booking.
    again = await adapter.submit(ok)
    assert again.outcome in (Outcome.SUCCEEDED, Outcome.PENDING), again
    assert len([b for b in booked(mock, ok.instruction_id) if b["kind"] == "pay"]) == 1
    queried = await adapter.query(QueryRequest(ok.instruction_id, result.channel_reference))
    assert queried.outcome is Outcome.SUCCEEDED and queried.channel_reference == result.channel_reference

    # An explicit decline is FAILED with our reason, and is not booked as money moved.
    mock.set_profile(decline_rate=1.0)
    declined = make_pay(new_id(), 1_000)
    result = await adapter.submit(declined)
    if result.outcome is Outcome.PENDING:
        result = await settle(adapter, QueryRequest(declined.instruction_id, result.channel_reference))
    assert result.outcome is Outcome.FAILED and result.reason, result
    mock.set_profile(decline_rate=0.0)

    # Processed but the reply lost: UNKNOWN (never a guess), and a query finds the truth.
    mock.set_profile(lost_reply_rate=1.0)
    lost = make_pay(new_id(), 1_000)
    result = await adapter.submit(lost)
    assert result.outcome is Outcome.UNKNOWN, result
    mock.set_profile(lost_reply_rate=0.0)
    found = await settle(adapter, QueryRequest(lost.instruction_id))
    assert found.outcome is Outcome.SUCCEEDED, found
    assert len([b for b in booked(mock, lost.instruction_id) if b["kind"] == "pay"]) == 1

    # No reply at all (not processed): UNKNOWN too; the query then says it never happened.
    mock.set_profile(timeout_rate=1.0)
    dropped = make_pay(new_id(), 1_000)
    result = await adapter.submit(dropped)
    assert result.outcome is Outcome.UNKNOWN, result
    mock.set_profile(timeout_rate=0.0)
    never = await adapter.query(QueryRequest(dropped.instruction_id))
    assert never.outcome in (Outcome.FAILED, Outcome.PENDING, Outcome.UNKNOWN), never
    assert never.outcome is not Outcome.SUCCEEDED
    assert not [b for b in booked(mock, dropped.instruction_id) if b.get("status") == "SUCCEEDED"]

    # Refunds, where the channel has them.
    if Flow.REFUND in caps.flows:
        refund = RefundInstruction(instruction_id=new_id("rfi"), refund_id=new_id("rfd"), payment_id=ok.payment_id,
                                   original_instruction_id=ok.instruction_id,
                                   original_reference=queried.channel_reference, amount=400,
                                   currency=ok.currency)
        result = await adapter.refund(refund)
        if result.outcome is Outcome.PENDING:
            result = await settle(adapter, QueryRequest(refund.instruction_id, result.channel_reference,
                                                        kind="refund"))
        assert result.outcome is Outcome.SUCCEEDED, result
    else:
        try:
            await adapter.refund(RefundInstruction(new_id(), new_id(), ok.payment_id, ok.instruction_id, "", 1,
                                                   ok.currency))
        except FlowNotSupported:
            pass
        else:
            raise AssertionError("a channel without refunds must raise FlowNotSupported")

    # Callbacks: garbage and unsigned payloads are rejected, never mapped.
    if Flow.CALLBACK in caps.flows:
        for headers, body in (({}, b""), ({}, b"{}"), ({"content-type": "application/json"}, b"\x00\xff garbage")):
            try:
                event = adapter.parse_callback(headers, body)
            except CallbackRejected:
                continue
            raise AssertionError(f"an unverified callback was accepted: {event}")
        status, _body, _headers = adapter.callback_response(False)
        assert status >= 400, "a rejected callback must not be acknowledged"

    # Statements tell the truth, including the payment whose reply was lost.
    if Flow.STATEMENT in caps.flows:
        today = datetime.now(timezone.utc).date().isoformat()
        lines = [line async for line in adapter.fetch_statement(today)]
        by_id = {(line.instruction_id, line.kind): line for line in lines}
        for ins in (ok, lost):
            line = by_id.get((ins.instruction_id, "pay"))
            assert line is not None, f"{ins.instruction_id} missing from the statement"
            assert line.status is Outcome.SUCCEEDED and line.amount == ins.amount and line.currency == ins.currency
        assert (dropped.instruction_id, "pay") not in by_id or by_id[(dropped.instruction_id, "pay")].status \
            is not Outcome.SUCCEEDED
        assert all(isinstance(line.business_date, str) and date.fromisoformat(line.business_date) for line in lines)
