"""The cap gate (clearing/gate.py) over an in-memory center and homes: which movements it refuses,
what it reserves and releases; and `Attribution.of_request` agreeing with `of_payment`, read-only."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from dualflow.clearing.attribution import Attribution, MemoryHomes, PeekHomes
from dualflow.clearing.caps import CapPolicy, NetDebitCaps
from dualflow.clearing.center import ClearingCenter
from dualflow.clearing.errors import NetDebitCapExceeded
from dualflow.clearing.gate import CapGate
from dualflow.clearing.netting import Obligation
from dualflow.core.payments.model import Asset, BankAccount, Payment, PaymentRequest, PaymentStatus

ATTRIBUTION = Attribution("A", channel_pools={"rail-b": "B"}, merchant_pools={"shop": "C"},
                          currencies=frozenset({"CNY"}))
HOMES = {"user:alice": "A", "user:bob": "B"}
CAPS = NetDebitCaps({("A", "CNY"): 1_000})


def request(payer: str, payee: str, amount: int, asset: Asset = Asset.WALLET, kind: str = "pay",
            currency: str = "CNY") -> PaymentRequest:
    return PaymentRequest(request_id="r", merchant_id="shop", payer=payer, payee=payee, amount=amount,
                          currency=currency, asset=asset, kind=kind,
                          bank_account=None if asset is not Asset.BANK_TRANSFER else BankAccount("B", "1", "X"))


def gate(policy: CapPolicy = CapPolicy.REFUSE) -> tuple[CapGate, ClearingCenter]:
    center = ClearingCenter(CAPS, policy)
    return CapGate(SimpleNamespace(center=center), ATTRIBUTION, MemoryHomes(HOMES)), center


# One line per movement offered in turn to one gate (alice at A, bob at B, A's cap 1000): what it
# is, over which channel, and the answer: the pool refused, or what A then has reserved.
CASES = [
    # payer         payee            amount  asset               kind      channel   answer
    ("user:alice", "user:bob", 600, Asset.WALLET, "pay", "", 600),  # A owes B
    ("user:alice", "user:bob", 500, Asset.WALLET, "pay", "", "A"),  # 1100 > 1000
    ("user:alice", "user:carol", 5_000, Asset.WALLET, "pay", "", 600),  # carol would be homed at A
    ("user:alice", "merchant:shop", 500, Asset.WALLET, "pay", "", "A"),  # the shop's pool is C
    ("user:alice", "user:bob", 5_000, Asset.POINTS, "pay", "", 600),  # points are not money
    ("user:alice", "user:bob", 5_000, Asset.WALLET, "pay", "", "A"),
    ("user:alice", "user:alice", 300, Asset.BANK_TRANSFER, "payout", "rail-b", 900),  # out of B's pool
    ("user:alice", "user:alice", 101, Asset.BANK_TRANSFER, "payout", "rail-b", "A"),
    ("user:alice", "user:alice", 9_000, Asset.BANK_TRANSFER, "payout", "rail-x", 900),  # not a pool's channel
    ("user:alice", "user:alice", 9_000, Asset.BANK_TRANSFER, "pay", "rail-b", 900),  # a top-up: never refused
    ("user:bob", "user:alice", 9_000, Asset.WALLET, "pay", "", 900),  # B owes A: B has no cap
    ("user:alice", "user:bob", 100, Asset.WALLET, "pay", "", 1_000),  # exactly the cap
]


async def test_the_gate_refuses_what_does_not_fit_and_reserves_what_does() -> None:
    g, _ = gate()
    for n, (payer, payee, amount, asset, kind, channel, answer) in enumerate(CASES):
        offered = g.admit(request(payer, payee, amount, asset, kind), f"pay_{n}", channel)
        if isinstance(answer, str):
            with pytest.raises(NetDebitCapExceeded) as refused:
                await offered
            assert refused.value.pool == answer, n
        else:
            await offered
            assert g.reserved("A", "CNY") == answer, n


async def test_positions_and_reservations_count_together_and_release_frees_room() -> None:
    g, center = gate()
    center.record(Obligation("pay:before", "A", "B", 700, "CNY"))  # recorded by the feed already
    await g.admit(request("user:alice", "user:bob", 300), "pay_1")
    with pytest.raises(NetDebitCapExceeded) as refused:
        await g.admit(request("user:alice", "user:bob", 1), "pay_2")
    assert (refused.value.cap_minor, refused.value.net_debit_after_minor) == (1_000, 1_001)
    g.release("pay_1")  # it failed, or its obligation is recorded
    g.release("pay_1")  # twice: nothing more
    assert g.reserved("A", "CNY") == 0
    await g.admit(request("user:alice", "user:bob", 300), "pay_3")
    center.record(Obligation("pay:owed", "B", "A", 500, "CNY"))  # what A is owed makes room
    await g.admit(request("user:alice", "user:bob", 500), "pay_4")
    assert g.reserved("A", "CNY") == 800


async def test_concurrent_admissions_never_both_take_the_last_room() -> None:
    g, _ = gate()
    answers = await asyncio.gather(*(g.admit(request("user:alice", "user:bob", 600), f"pay_{i}") for i in range(5)),
                                   return_exceptions=True)
    assert sum(a is None for a in answers) == 1 and g.reserved("A", "CNY") == 600


async def test_under_queue_or_without_caps_everything_passes_and_nothing_is_reserved() -> None:
    g, _ = gate(CapPolicy.QUEUE)
    await g.admit(request("user:alice", "user:bob", 50_000), "pay_1")
    assert g.reserved("A", "CNY") == 0
    uncapped = CapGate(SimpleNamespace(center=ClearingCenter()), ATTRIBUTION, MemoryHomes(HOMES))
    await uncapped.admit(request("user:alice", "user:bob", 50_000), "pay_1")
    assert uncapped.reserved("A", "CNY") == 0


async def test_a_request_is_attributed_like_the_payment_it_becomes_and_assigns_no_home() -> None:
    homes = MemoryHomes(HOMES)
    for payer, payee, amount, asset, kind, channel, _ in CASES:
        r = request(payer, payee, amount, asset, kind)
        asked = await ATTRIBUTION.of_request(r, "pay_x", channel, PeekHomes(homes))
        assert homes.assigned == HOMES, "asking assigned nothing"
        payment = Payment(payment_id="pay_x", request_id="r", merchant_id="shop", payer=payer, payee=payee,
                          amount=amount, currency="CNY", asset=asset, status=PaymentStatus.SUCCEEDED, fee=0,
                          created_at_ns=0, updated_at_ns=0, channel=channel, kind=kind)
        assert await ATTRIBUTION.of_payment(payment, MemoryHomes(HOMES)) == asked, (payer, payee, asset, kind)
    assert await ATTRIBUTION.of_request(replace(request("user:alice", "user:bob", 5), currency="USD"), "p", "",
                                        PeekHomes(homes)) == []


async def test_an_obligation_the_center_holds_before_its_release_counts_once() -> None:
    g, center = gate()
    await g.admit(request("user:alice", "user:bob", 600), "pay_1")
    center.record(Obligation("pay:pay_1", "A", "B", 600, "CNY"))  # the feed is storing it: not released yet
    await g.admit(request("user:alice", "user:bob", 400), "pay_2")  # 600 + 400, not 600 + 600 + 400
    assert g.reserved("A", "CNY") == 400
    with pytest.raises(NetDebitCapExceeded) as refused:
        await g.admit(request("user:alice", "user:bob", 1), "pay_3")
    assert refused.value.net_debit_after_minor == 1_001
    g.release("pay_1")  # the feed's release comes after: nothing left to release
    assert g.reserved("A", "CNY") == 400
