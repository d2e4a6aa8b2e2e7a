"""Obligations recorded from the payments themselves (clearing/feed.py, attribution.py), on SQLite
and PostgreSQL: wallet movements between pools, a merchant's configured pool, refunds, collections
landing in a pool, exactly once across restarts and re-reads, and caps that cannot refuse a fact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dualflow.adapters.scripted import ScriptedChannel
from dualflow.clearing import CapPolicy, NetDebitCaps
from dualflow.clearing.attribution import Attribution
from dualflow.clearing.feed import ObligationFeed
from dualflow.clearing.service import ClearingService
from dualflow.clearing.settings import ClearingSettings
from dualflow.core.payments.model import Asset, BankAccount, PaymentStatus

from payments_fixtures import fund, pay, payment_service

SETTINGS = ClearingSettings(pools=("bank-a", "bank-b", "bank-c"), currencies=("CNY",),
                            settle_interval_s=0, invariant_interval_s=0)
ATTRIBUTION = Attribution("bank-a", channel_pools={"rail-b": "bank-b"}, merchant_pools={"shop": "bank-c"},
                          currencies=frozenset({"CNY"}))


@asynccontextmanager
async def platform(db_url: str, settings: ClearingSettings = SETTINGS) -> AsyncIterator[tuple[Any, Any, Any]]:
    channel = ScriptedChannel(names=("rail-b",))
    async with payment_service(db_url, channel) as payments:
        clearing = ClearingService(payments.ledger, settings)
        await clearing.start()
        feed = ObligationFeed(payments.ledger, payments.feed, clearing, ATTRIBUTION, wait_s=0.05)
        await feed.start()
        try:
            yield payments, clearing, feed
        finally:
            await feed.stop()
            await clearing.stop()


def owed(clearing: ClearingService) -> dict[str, tuple[str, str, int]]:
    window = clearing.center.current
    return {o.obligation_id: (o.debtor_pool, o.creditor_pool, o.amount_minor) for o in window.obligations}


async def settled(payments: Any, payment_id: str) -> None:
    for _ in range(200):
        if (await payments.get_payment(payment_id)).status is PaymentStatus.SUCCEEDED:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{payment_id} did not succeed")


async def test_movements_between_pools_become_obligations_once(db_url: str) -> None:
    async with platform(db_url) as (payments, clearing, feed):
        await feed.homes.home("user:bob", "bank-b")  # bob's money is at bank B
        await fund(payments, "alice", Asset.WALLET, 10_000)  # alice has no home yet: the default, bank A
        to_bob = await payments.create_payment(pay("p1", 500, payer="user:alice", payee="user:bob"))
        to_carol = await payments.create_payment(pay("p2", 200, payer="user:bob", payee="user:carol"))
        to_shop = await payments.create_payment(pay("p3", 300, payer="user:alice"))
        refund = await payments.refund_payment("r1", to_shop.payment_id, 100)
        # A collection into bank B's pool for erin (homed at A) and for dave (no home: homed there).
        await feed.homes.home("user:erin", "bank-a")
        top_erin = await payments.create_payment(pay("t1", 700, Asset.BANK_TRANSFER, payer="user:erin",
                                                     payee="user:erin", bank_account=BankAccount("B", "1234", "E")))
        top_dave = await payments.create_payment(pay("t2", 900, Asset.BANK_TRANSFER, payer="user:dave",
                                                     payee="user:dave", bank_account=BankAccount("B", "4321", "D")))
        await settled(payments, top_erin.payment_id)
        await settled(payments, top_dave.payment_id)
        await feed.catch_up()
        assert owed(clearing) == {
            f"pay:{to_bob.payment_id}": ("bank-a", "bank-b", 500),  # alice (A) paid bob (B)
            # bob paid carol, who had no home: she is homed with bob, nothing moves
            f"pay:{to_shop.payment_id}": ("bank-a", "bank-c", 300),  # the shop's configured pool
            f"refund:{refund.refund_id}": ("bank-c", "bank-a", 100),  # the shop gives some back
            f"pay:{top_erin.payment_id}": ("bank-b", "bank-a", 700),  # landed at B, belongs to A
            # dave's top-up homed him at B where it landed: nothing owed
        }
        assert await feed.homes.all() == {"user:alice": "bank-a", "user:bob": "bank-b", "user:carol": "bank-b",
                                          "merchant:shop": "bank-c", "user:erin": "bank-a", "user:dave": "bank-b"}
        _, positions = await clearing.positions("CNY")
        net = {p.position.pool: p.position.net_minor for p in positions}
        assert net == {"bank-a": -500 - 300 + 100 + 700, "bank-b": 500 - 700, "bank-c": 300 - 100}
        position = feed.position

    # Restarted, and then made to read everything again: the same obligations, none twice.
    async with platform(db_url) as (payments, clearing, feed):
        assert feed.position == position
        before = owed(clearing)
        await payments.ledger.write([("UPDATE clearing_feed SET seq = 0 WHERE id = 1", ())])
        feed.position = 0
        await feed.catch_up()
        assert owed(clearing) == before and len(before) == 4


async def test_a_cap_cannot_refuse_what_has_happened(db_url: str) -> None:
    capped = ClearingSettings(pools=SETTINGS.pools, currencies=("CNY",), settle_interval_s=0, invariant_interval_s=0,
                              cap_policy=CapPolicy.REFUSE, caps=NetDebitCaps({("bank-a", "CNY"): 100}))
    async with platform(db_url, capped) as (payments, clearing, feed):
        await feed.homes.home("user:bob", "bank-b")
        await fund(payments, "alice", Asset.WALLET, 1_000)
        p = await payments.create_payment(pay("p1", 500, payer="user:alice", payee="user:bob"))
        await feed.catch_up()
        # Beyond bank A's cap, yet recorded: the money moved already.
        assert owed(clearing) == {f"pay:{p.payment_id}": ("bank-a", "bank-b", 500)}
