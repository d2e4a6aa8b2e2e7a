"""Payment states, fees and account naming: the rules everything else relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualflow.core.payments import records
from dualflow.core.payments.accounts import Party, account_id, fee_for, holding_account, parse_party, transfer_id
from dualflow.core.payments.model import FINAL, TRANSITIONS, Asset, PaymentStatus, may_move
from dualflow.core.payments.service import OPEN_STATUSES


def test_final_states_never_move_and_unknown_only_resolves() -> None:
    for status in FINAL:
        assert TRANSITIONS[status] == frozenset()
        assert all(not may_move(status, other) for other in PaymentStatus)
    assert TRANSITIONS[PaymentStatus.UNKNOWN] == {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}
    assert not may_move(PaymentStatus.PROCESSING, PaymentStatus.CANCELED), "a sent payment cannot be canceled"
    assert not may_move(PaymentStatus.UNKNOWN, PaymentStatus.PROCESSING)
    assert set(TRANSITIONS) == set(PaymentStatus)


def test_open_statuses_match_the_partial_index() -> None:
    [index] = [sql for sql in records.PAYMENT_SCHEMA if "payments_open" in sql]
    literal = ", ".join(str(int(s)) for s in OPEN_STATUSES)
    assert f"WHERE status IN ({literal})" in index
    assert set(OPEN_STATUSES) == set(PaymentStatus) - FINAL


@pytest.mark.parametrize(("amount", "bps", "fee"), [
    (10_000, 60, 60), (1, 60, 0), (84, 60, 1), (83, 60, 0), (25_000, 100, 250), (5_000, 1, 1), (4_999, 1, 0),
])
def test_fee_rounds_half_up_in_integers(amount: int, bps: int, fee: int) -> None:
    assert fee_for(amount, bps) == fee


@given(st.integers(0, 2**62), st.integers(0, 10_000))
def test_fee_is_never_more_than_the_amount(amount: int, bps: int) -> None:
    fee = fee_for(amount, bps)
    assert 0 <= fee <= amount and abs(fee * 10_000 - amount * bps) <= 5_000


def test_parties_and_account_names() -> None:
    assert parse_party("user:alice") == Party("user", "alice")
    assert parse_party("merchant:shop-1") == Party("merchant", "shop-1")
    for bad in ("alice", "admin:x", "user:", ":x", "user:a\nb", "user:" + "x" * 200):
        assert parse_party(bad) is None, bad
    wallet = holding_account(Party("user", "a"), Asset.WALLET, "CNY")
    points = holding_account(Party("user", "a"), Asset.POINTS, "CNY")
    assert wallet.id != points.id and wallet.flags and points.flags
    assert holding_account(Party("user", "a"), Asset.WALLET, "USD").id != wallet.id
    # A merchant's money settles in one account whatever the asset; its points are separate.
    merchant = Party("merchant", "m")
    assert holding_account(merchant, Asset.WALLET, "CNY").id == holding_account(merchant, Asset.BANK_CARD, "CNY").id
    assert holding_account(merchant, Asset.POINTS, "CNY").id != holding_account(merchant, Asset.WALLET, "CNY").id
    assert 0 < account_id("x") < 2**63 and account_id("x") == account_id("x")
    assert transfer_id("pay_1", "pay") != transfer_id("pay_1", "fee") != transfer_id("pay_2", "pay")
