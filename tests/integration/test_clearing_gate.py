"""Net debit caps refuse the movement itself, before it happens (clearing/gate.py), on SQLite and
PostgreSQL: payments, the clearing service and its outbox feed on one ledger, with the gate as the
payments' admission. Bank A may owe at most CAP net; alice is homed at A (the default pool), bob
at B, so alice paying bob makes A owe B. Also over real gRPC: CreatePayment answers
FAILED_PRECONDITION / NET_DEBIT_CAP_EXCEEDED with the figures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from dualflow.adapters.scripted import PENDING, SUCCEEDED, Plan, ScriptedChannel, failed
from dualflow.clearing import CapPolicy, NetDebitCaps
from dualflow.clearing.attribution import Attribution
from dualflow.clearing.caps import Admission
from dualflow.clearing.errors import NetDebitCapExceeded
from dualflow.clearing.feed import ObligationFeed
from dualflow.clearing.gate import CapGate
from dualflow.clearing.service import ClearingService
from dualflow.clearing.settings import ClearingSettings
from dualflow.core.payments.model import Asset, BankAccount, PaymentStatus
from dualflow.gateway.config import hash_api_key
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

from payments_fixtures import fund, pay, payment_service

CAP = 1_000
POOLS = ("bank-a", "bank-b", "bank-c")
ATTRIBUTION = Attribution("bank-a", channel_pools={"rail-b": "bank-b"}, merchant_pools={"shop": "bank-c"},
                          currencies=frozenset({"CNY"}))


def settings(policy: CapPolicy = CapPolicy.REFUSE, **caps: int) -> ClearingSettings:
    return ClearingSettings(pools=POOLS, currencies=("CNY",), settle_interval_s=0, invariant_interval_s=0,
                            cap_policy=policy,
                            caps=NetDebitCaps({(pool.replace("_", "-"), "CNY"): cap for pool, cap in caps.items()}))


def _script(i: Any) -> Plan:  # payouts: an amount ending in 13 fails at the channel, the rest settle later
    if i.amount % 100 == 13:
        return Plan(on_submit=failed("ACCOUNT_CLOSED"))
    return Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.05)


@asynccontextmanager
async def platform(db_url: str, clearing_settings: ClearingSettings) -> AsyncIterator[tuple[Any, Any, Any, CapGate]]:
    """Payments gated by the caps; the feed is started but reads only when a test calls catch_up
    (its background reader waits a long time), so a test sees the gap between commit and record."""
    channel = ScriptedChannel(_script, names=("rail-b",))
    async with payment_service(db_url, channel) as payments:
        clearing = ClearingService(payments.ledger, clearing_settings)
        await clearing.start()
        feed = ObligationFeed(payments.ledger, payments.feed, clearing, ATTRIBUTION, wait_s=0.05)
        gate = CapGate.attach(clearing, feed)
        payments.admission = gate
        await feed.start()
        await feed.stop()  # no background reader: catch_up() records when the test says so
        await feed.homes.home("user:bob", "bank-b")
        await feed.homes.home("user:alice", "bank-a")
        await fund(payments, "alice", Asset.WALLET, 100_000)
        try:
            yield payments, clearing, feed, gate
        finally:
            await clearing.stop()


def to_bob(request_id: str, amount: int) -> Any:
    return pay(request_id, amount, payer="user:alice", payee="user:bob")


def net(clearing: ClearingService, pool: str = "bank-a") -> int:
    return clearing.center.current.book.position(pool, "CNY").net_minor


def refusals(pool: str = "bank-a") -> float:
    return REGISTRY.get_sample_value("dualflow_clearing_caps_hit_total",
                                     {"pool": pool, "currency": "CNY", "action": "refused"}) or 0.0


async def payment_rows(payments: Any) -> int:
    return int((await payments.ledger.query("SELECT COUNT(*) FROM payments"))[0][0])


async def test_a_movement_beyond_the_cap_is_refused_and_changes_nothing(db_url: str) -> None:
    async with platform(db_url, settings(bank_a=CAP)) as (payments, clearing, feed, gate):
        first = await payments.create_payment(to_bob("p1", 600))
        assert first.status is PaymentStatus.SUCCEEDED
        assert gate.reserved("bank-a", "CNY") == 600  # committed, not recorded yet: the feed lags
        rows, alice = await payment_rows(payments), await payments.get_balance("alice", Asset.WALLET, "CNY")
        hits = refusals()
        with pytest.raises(NetDebitCapExceeded) as refused:
            await payments.create_payment(to_bob("p2", 500))
        assert (refused.value.reason, refused.value.metadata["pool"], refused.value.metadata["currency"],
                refused.value.metadata["cap_minor"], refused.value.metadata["net_debit_after_minor"]) == \
            ("NET_DEBIT_CAP_EXCEEDED", "bank-a", "CNY", "1000", "1100")
        assert refusals() == hits + 1
        assert await payment_rows(payments) == rows, "no payment row"
        assert (await payments.get_balance("alice", Asset.WALLET, "CNY")).available == alice.available
        assert (await payments.get_balance("bob", Asset.WALLET, "CNY")).available == 600
        assert gate.reserved("bank-a", "CNY") == 600, "a refusal reserves nothing"
        # What fits passes: exactly up to the cap.
        assert (await payments.create_payment(to_bob("p3", 400))).status is PaymentStatus.SUCCEEDED
        with pytest.raises(NetDebitCapExceeded):
            await payments.create_payment(to_bob("p4", 1))
        await feed.catch_up()
        assert (net(clearing), gate.reserved("bank-a", "CNY")) == (-1_000, 0)


async def test_the_reservation_is_released_as_the_feed_records(db_url: str) -> None:
    async with platform(db_url, settings(bank_a=CAP)) as (payments, clearing, feed, gate):
        await payments.create_payment(to_bob("p1", 700))
        assert (net(clearing), gate.reserved("bank-a", "CNY")) == (0, 700)
        await feed.catch_up()
        assert (net(clearing), gate.reserved("bank-a", "CNY")) == (-700, 0), "counted once: in the position"
        assert (await payments.create_payment(to_bob("p2", 300))).status is PaymentStatus.SUCCEEDED
        with pytest.raises(NetDebitCapExceeded) as refused:
            await payments.create_payment(to_bob("p3", 1))
        assert refused.value.net_debit_after_minor == 1_001
        # What bank A is owed makes room: bob pays alice back (B owes A).
        await fund(payments, "bob", Asset.WALLET, 500)
        await payments.create_payment(pay("back", 500, payer="user:bob", payee="user:alice"))
        await feed.catch_up()
        assert net(clearing) == -500
        assert (await payments.create_payment(to_bob("p4", 500))).status is PaymentStatus.SUCCEEDED
        # A wallet payment that fails (too little money) keeps nothing reserved.
        await feed.catch_up()
        broke = await payments.create_payment(pay("broke", 10_000, payer="user:bob", payee="user:alice"))
        assert broke.status is PaymentStatus.FAILED
        assert gate.reserved("bank-b", "CNY") == 0


async def test_two_concurrent_payments_only_one_fits(db_url: str) -> None:
    async with platform(db_url, settings(bank_a=CAP)) as (payments, clearing, feed, gate):
        for round_ in range(3):
            answers = await asyncio.gather(*(payments.create_payment(to_bob(f"c{round_}-{i}", 600)) for i in range(2)),
                                           return_exceptions=True)
            passed = [a for a in answers if not isinstance(a, BaseException)]
            refused = [a for a in answers if isinstance(a, NetDebitCapExceeded)]
            assert (len(passed), len(refused)) == (1, 1), answers
            await feed.catch_up()
            assert net(clearing) == -600
            # Make room again: bob sends it back (B owes A), so A's net is 0 for the next round.
            await payments.create_payment(pay(f"back{round_}", 600, payer="user:bob", payee="user:alice"))
            await feed.catch_up()
            assert (net(clearing), gate.reserved("bank-a", "CNY")) == (0, 0)


async def test_a_replay_answers_the_original_even_when_the_cap_is_full(db_url: str) -> None:
    async with platform(db_url, settings(bank_a=CAP)) as (payments, clearing, feed, gate):
        original = await payments.create_payment(to_bob("full", CAP))
        with pytest.raises(NetDebitCapExceeded):
            await payments.create_payment(to_bob("more", 1))
        again = await payments.create_payment(to_bob("full", CAP))  # before the feed recorded it
        assert (again.payment_id, again.status) == (original.payment_id, PaymentStatus.SUCCEEDED)
        assert gate.reserved("bank-a", "CNY") == CAP, "the replay reserved nothing more"
        await feed.catch_up()
        assert (await payments.create_payment(to_bob("full", CAP))).payment_id == original.payment_id  # and after
        assert (net(clearing), gate.reserved("bank-a", "CNY")) == (-CAP, 0)
        assert len(clearing.center.current.obligations) == 1


async def test_within_one_pool_and_collections_are_never_refused(db_url: str) -> None:
    capped = settings(bank_a=0, bank_b=0)
    async with platform(db_url, capped) as (payments, clearing, feed, gate):
        await feed.homes.home("user:dan", "bank-a")
        assert (await payments.create_payment(pay("d", 5_000, payer="user:alice", payee="user:dan"))).status \
            is PaymentStatus.SUCCEEDED
        # carol has no home: paid by alice she would be homed with her, so nothing moves between pools
        assert (await payments.create_payment(pay("c", 5_000, payer="user:alice", payee="user:carol"))).status \
            is PaymentStatus.SUCCEEDED
        assert await feed.homes.lookup("user:carol") is None, "asking assigned no home"
        # A top-up landing in bank B's pool for alice (homed at A): B owes A, and B's cap is 0.
        topup = await payments.create_payment(pay("t", 700, Asset.BANK_TRANSFER, payer="user:alice",
                                                  payee="user:alice", bank_account=BankAccount("B", "1234", "A")))
        assert topup.status is not PaymentStatus.FAILED
        with pytest.raises(NetDebitCapExceeded):
            await payments.create_payment(to_bob("b", 1))
        for _ in range(200):
            await feed.catch_up()
            if net(clearing, "bank-b") == -700:
                break
            await asyncio.sleep(0.01)
        assert net(clearing, "bank-b") == -700, "recorded as a fact beyond B's cap"
        assert gate.reserved("bank-a", "CNY") == gate.reserved("bank-b", "CNY") == 0


async def test_a_payout_from_another_pool_is_gated_and_released_when_it_ends(db_url: str) -> None:
    async with platform(db_url, settings(bank_a=CAP)) as (payments, clearing, feed, gate):
        account = BankAccount("B", "4321", "Alice")

        def payout(request_id: str, amount: int) -> Any:
            return pay(request_id, amount, Asset.BANK_TRANSFER, payer="user:alice", payee="user:alice",
                       bank_account=account)

        # Out of bank B's pool for alice (homed at A): A owes B, held while the payout is open.
        ok = await payments.create_payout(payout("o1", 600))
        assert ok.status is not PaymentStatus.FAILED and gate.reserved("bank-a", "CNY") == 600
        with pytest.raises(NetDebitCapExceeded):
            await payments.create_payout(payout("o2", 500))
        bad = await payments.create_payout(payout("o3", 313))  # the channel will fail it
        assert gate.reserved("bank-a", "CNY") == 913
        for _ in range(300):
            await feed.catch_up()
            if gate.reserved("bank-a", "CNY") == 0:
                break
            await asyncio.sleep(0.01)
        assert (await payments.get_payment(ok.payment_id)).status is PaymentStatus.SUCCEEDED
        assert (await payments.get_payment(bad.payment_id)).status is PaymentStatus.FAILED
        assert (net(clearing), net(clearing, "bank-b"), gate.reserved("bank-a", "CNY")) == (-600, 600, 0)


async def test_under_queue_nothing_is_refused_and_the_obligation_queues(db_url: str) -> None:
    async with platform(db_url, settings(CapPolicy.QUEUE, bank_a=CAP)) as (payments, clearing, feed, gate):
        hits = refusals()
        big = await payments.create_payment(to_bob("q1", CAP + 500))
        assert big.status is PaymentStatus.SUCCEEDED
        assert gate.reserved("bank-a", "CNY") == 0
        await feed.catch_up()
        located = clearing.center.locate(f"pay:{big.payment_id}")
        assert located is not None and located[2] is Admission.QUEUED
        assert (net(clearing), refusals()) == (0, hits)


# ---------------------------------------------------------------------- over gRPC

SHOP_KEY = "dfk_gate-shop-key-0123456789abcdef0123"


def config() -> str:
    return f"""
[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 0

[[callers]]
name = "shop-backend"
api_key_sha256 = "{hash_api_key(SHOP_KEY)}"
merchants = ["shop"]
permissions = ["payments.write", "payments.read"]

[clearing]
pools = ["bank-a", "bank-b", "bank-c"]
currencies = ["CNY"]
cap_policy = "refuse"
invariant_interval_s = 0

[clearing.caps.bank-a]
CNY = {CAP}
"""


async def test_create_payment_answers_failed_precondition_with_the_figures(db_url: str, tmp_path: Path) -> None:
    config_file = tmp_path / "dualflow.toml"
    config_file.write_text(config())
    served = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, config_path=str(config_file),
                                   expiry_interval_s=0))
    await served.start()
    channel = grpc.aio.insecure_channel(served.address)
    try:
        assert served.obligation_feed is not None and served.payments.admission is served.cap_gate
        await served.obligation_feed.homes.home("user:bob", "bank-b")
        await fund(served.payments, "alice", Asset.WALLET, 10_000)
        stub = payments_pb2_grpc.PaymentGatewayStub(channel)
        md = (("authorization", f"Bearer {SHOP_KEY}"),)

        def create(request_id: str, amount: int) -> Any:
            return stub.CreatePayment(pb.CreatePaymentRequest(
                request_id=request_id, merchant_id="shop", payer="user:alice", payee="user:bob", amount=amount,
                currency="CNY", asset=pb.ASSET_WALLET), metadata=md, timeout=10)

        paid = await create("g1", 800)
        assert paid.status == pb.PAYMENT_STATUS_SUCCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create("g2", 300)
        assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(caught.value)
        assert status is not None
        infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        assert len(infos) == 1
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        meta = dict(info.metadata)
        assert info.reason == "NET_DEBIT_CAP_EXCEEDED"
        assert meta["obligation_id"].startswith("pay:pay_")
        del meta["obligation_id"]  # the id the payment would have had
        assert meta == {"pool": "bank-a", "currency": "CNY", "cap_minor": str(CAP), "net_debit_after_minor": "1100"}
        assert (await create("g1", 800)).payment_id == paid.payment_id, "a replay is answered as before"
        assert (await served.payments.get_balance("bob", Asset.WALLET, "CNY")).available == 800
    finally:
        await channel.close()
        await served.stop()
