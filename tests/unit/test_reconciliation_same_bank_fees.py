"""The fee check prices a payment at the channel's home bank with the channel's same-bank schedule,
as the router did (routing/policy.py `Router.fee(..., bank_code)`): the payment's bank code rides
after the Instruction's fields in our side's rows (reconciliation/ours.py), the engine hands it to
the fee model, and the text decoder of a payment body cuts it out as json.loads reads it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow, Outcome, StatementLine
from dualflow.core.payments.model import Asset, BankAccount, Payment, PaymentStatus
from dualflow.core.payments.records import payment_body
from dualflow.reconciliation.engine import Tally, reconcile
from dualflow.reconciliation.model import Class, Instruction, Policy
from dualflow.reconciliation.ours import _payment_fields, _payment_row_fields, _payment_row_fields_full, fee_model, \
    router_fee_model
from dualflow.routing.config import ChannelRule, RoutingConfig
from dualflow.routing.policy import Router

RAIL, HOME, OTHER = "bank-rail", "BANKA", "BANKB"
GENERAL, SAME_BANK = FeeSchedule(fixed=200), FeeSchedule(fixed=50)
CAPS = Capabilities(channel=RAIL, assets=frozenset({Asset.BANK_TRANSFER}), currencies=frozenset({"CNY", "USD"}),
                    flows=frozenset({Flow.PAY}), fees={"CNY": GENERAL}, home_bank=HOME,
                    same_bank_fees={"CNY": SAME_BANK, "USD": FeeSchedule(fixed=7)})
T0 = 1_700_000_000 * 10**9


def test_the_fee_models_price_a_home_bank_payment_with_the_same_bank_schedule() -> None:
    router = Router([CAPS], RoutingConfig(channels={RAIL: ChannelRule(fees={"CNY": FeeSchedule(fixed=300)})}))
    by_router, by_adapter = router_fee_model(router, RAIL), fee_model(CAPS.fees, CAPS.same_bank_fees, CAPS.home_bank)
    # kind, currency, amount, bank code  -> router's (its override is the general one), adapter's
    cases = """
        pay     CNY  10000  BANKA  50   50
        pay     CNY  10000  BANKB  300  200
        pay     CNY  10000  -      300  200
        pay     USD  10000  BANKA  7    7
        pay     USD  10000  BANKB  None None
        pay     EUR  10000  BANKA  None None
        payout  CNY  10000  BANKA  None None
    """
    for case in cases.strip().splitlines():
        kind, currency, amount, bank, router_fee, adapter_fee = case.split()
        args = (kind, currency, int(amount)) + (() if bank == "-" else (bank,))
        expected = [None if x == "None" else int(x) for x in (router_fee, adapter_fee)]
        assert [by_router(*args), by_adapter(*args)] == expected, case
        if bank != "-" and router_fee != "None":  # what the router prices the payment at when routing it
            assert by_router(*args) == router.fee(RAIL, currency, int(amount), bank), case


def row(n: int, bank_code: str | None, status: str = "SUCCEEDED") -> tuple[object, ...]:
    ins = (f"pay_{n}-1", "pay", f"pay_{n}", RAIL, f"R{n}", 10_000, "CNY", status, T0, 0)
    return ins if bank_code is None else (*ins, bank_code)


def line(n: int, fee: int) -> StatementLine:
    return StatementLine("2023-11-14", f"pay_{n}-1", f"R{n}", "pay", 10_000, "CNY", Outcome.SUCCEEDED, fee)


class Rows:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    async def pages(self):  # type: ignore[no-untyped-def]
        yield self.rows


@pytest.mark.parametrize("emit_matched", [False, True])  # the engine's fast path, and classify's
async def test_a_same_bank_payments_fee_is_matched_against_the_same_bank_schedule(emit_matched: bool) -> None:
    policy = Policy(cutoff_ns=T0 + 10**12, now_ns=T0 + 10**12,
                    fee_for=fee_model(CAPS.fees, CAPS.same_bank_fees, CAPS.home_bank))
    ours = [row(1, HOME), row(2, HOME), row(3, OTHER), row(4, ""), row(5, None), row(6, OTHER)]
    theirs = [line(1, 50), line(2, 200), line(3, 200), line(4, 200), line(5, 200), line(6, 50)]

    async def lookup(ids: object) -> dict[str, object]:  # a line of another day: found with its bank code
        return {"pay_8-1": row(8, HOME)}
    tally = Tally()
    results = [r async for r in reconcile([*theirs, line(8, 50)], Rows(ours), policy, lookup=lookup,
                                          tally=tally, emit_matched=emit_matched)]
    got = {r.instruction.instruction_id: r.cls for r in results if r.instruction is not None}
    assert got.get("pay_2-1") is Class.FEE_MISMATCH and got.get("pay_6-1") is Class.FEE_MISMATCH
    assert tally.instructions == {Class.MATCHED: 5, Class.FEE_MISMATCH: 2}, tally
    assert all(isinstance(r.instruction, Instruction) and len(r.instruction) == 10 for r in results if r.instruction)
    detail = {r.instruction.instruction_id: r.detail for r in results if r.instruction is not None}
    assert detail["pay_2-1"] == "fee: expected 50, channel 200" and detail["pay_6-1"] == "fee: expected 200, channel 50"


def payment(bank: BankAccount | None, **kw: object) -> Payment:
    fields: dict[str, object] = dict(
        payment_id="pay_1", request_id="r", merchant_id="shop", payer="user:a", payee="merchant:shop", amount=10_000,
        currency="CNY", asset=Asset.BANK_TRANSFER, status=PaymentStatus.SUCCEEDED, fee=0, created_at_ns=T0,
        updated_at_ns=T0, channel=RAIL, channel_reference="R1", attempt=1, bank_account=bank)
    fields.update(kw)
    return Payment(**fields)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(bank_code=st.text(max_size=8), last4=st.text(max_size=5), holder=st.text(max_size=12),
       text=st.text(max_size=12), has_account=st.booleans())
def test_the_bank_code_cut_from_a_body_agrees_with_json(bank_code: str, last4: str, holder: str, text: str,
                                                        has_account: bool) -> None:
    account = BankAccount(bank_code, last4, holder) if has_account else None
    body = payment_body(payment(account, description=text, metadata={"bank_code": text, '"bank_account":': text}))
    fast = _payment_row_fields(body)
    full = _payment_row_fields_full(body)
    assert full[2] == ((json.loads(body).get("bank_account") or {}).get("bank_code") or "")
    assert fast is None or fast == full, (fast, body)
    assert _payment_fields(body) in (None, (full[0], full[1], full[3], full[4], full[5]))
    if '"' not in bank_code + last4 and "\\" not in body[:body.find('"channel":"')]:
        assert fast is not None, body
