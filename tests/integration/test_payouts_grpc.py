"""CreatePayout over real gRPC (SQLite, a scripted channel): the payout as a Payment of kind
"payout", its permission and merchant scope, its field violations, and no refund of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dualflow.adapters.scripted import PENDING, SUCCEEDED, Plan, ScriptedChannel
from dualflow.core.payments.model import Asset
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.config import hash_api_key
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc
from payments_fixtures import fund

SHOP_KEY = "dfk_shop-payouts-key-0123456789abcdef"
READER_KEY = "dfk_reader-payouts-key-0123456789abcd"
CONFIG = f"""
[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 100

[[merchants]]
id = "other"
name = "Other"
currencies = ["CNY"]
fee_bps = 0

[[callers]]
name = "shop-backend"
api_key_sha256 = "{hash_api_key(SHOP_KEY)}"
merchants = ["shop"]
permissions = ["payments.write", "payments.read"]

[[callers]]
name = "reader"
api_key_sha256 = "{hash_api_key(READER_KEY)}"
merchants = ["*"]
permissions = ["payments.read"]
"""
BANK = pb.BankAccountRef(bank_code="ICBC", account_last4="6789", holder_name="Alice")


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    (tmp_path / "dualflow.toml").write_text(CONFIG)
    channel = ScriptedChannel(lambda i: Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.05))
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"),
                                     config_path=str(tmp_path / "dualflow.toml"), expiry_interval_s=0),
                        dispatcher=channel)
    platform.payments.polls = PollTiming(first_ns=10_000_000, window_ns=3600 * 10**9)
    platform.payments.poll_tick_s = 0.01
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop()


def md(key: str = SHOP_KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def payout(request_id: str, amount: int, **kw: object) -> pb.CreatePayoutRequest:
    return pb.CreatePayoutRequest(request_id=request_id, merchant_id=kw.pop("merchant_id", "shop"),  # type: ignore[arg-type]
                                  payer=kw.pop("payer", "user:alice"), amount=amount, currency="CNY",  # type: ignore[arg-type]
                                  **kw)  # type: ignore[arg-type]


async def refused(call: object) -> tuple[grpc.StatusCode, str, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    status = rpc_status.from_call(caught.value)
    assert status is not None
    reason, fields = "", set()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = {v.field for v in bad.field_violations}
    return caught.value.code(), reason, fields


async def test_create_payout_over_grpc(platform: Platform) -> None:
    await fund(platform.payments, "alice", Asset.WALLET, 10_000)
    async with grpc.aio.insecure_channel(platform.address) as channel:
        stub = payments_pb2_grpc.PaymentGatewayStub(channel)
        created = await stub.CreatePayout(payout("o1", 4_000, bank_account=BANK, description="rent"), metadata=md())
        assert (created.kind, created.asset, created.payer, created.payee, created.fee) == (
            "payout", pb.ASSET_BANK_TRANSFER, "user:alice", "user:alice", 0)
        assert created.bank_account == BANK
        again = await stub.CreatePayout(payout("o1", 4_000, bank_account=BANK, description="rent"), metadata=md())
        assert again.payment_id == created.payment_id  # a replay
        for _ in range(500):
            done = await stub.GetPayment(pb.GetPaymentRequest(payment_id=created.payment_id), metadata=md())
            if done.status == pb.PAYMENT_STATUS_SUCCEEDED:
                break
            await asyncio.sleep(0.01)
        assert (done.status, done.kind) == (pb.PAYMENT_STATUS_SUCCEEDED, "payout")
        balance = await stub.GetBalance(pb.GetBalanceRequest(user_id="alice", asset=pb.ASSET_WALLET, currency="CNY"),
                                        metadata=md())
        assert balance.available == 6_000

        assert await refused(stub.RefundPayment(pb.RefundPaymentRequest(
            request_id="r1", payment_id=created.payment_id), metadata=md())) == (
            grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_REFUNDABLE", set())
        assert (await refused(stub.CreatePayout(payout("o2", 1, bank_account=BANK), metadata=md(READER_KEY))))[0] \
            == grpc.StatusCode.PERMISSION_DENIED
        assert (await refused(stub.CreatePayout(payout("o3", 1, bank_account=BANK, merchant_id="other"),
                                                metadata=md())))[0] == grpc.StatusCode.PERMISSION_DENIED
        assert await refused(stub.CreatePayout(payout("o4", 1), metadata=md())) == (
            grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_INVALID", {"bank_account"})
        assert await refused(stub.CreatePayout(payout("o5", 1, bank_account=BANK, payer="merchant:shop"),
                                               metadata=md())) == (
            grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_INVALID", {"payer"})
        broke = await stub.CreatePayout(payout("o6", 6_001, bank_account=BANK), metadata=md())
        assert (broke.status, broke.failure_reason) == (pb.PAYMENT_STATUS_FAILED, "INSUFFICIENT_FUNDS")
        # An ordinary payment says what it is too.
        paid = await stub.CreatePayment(pb.CreatePaymentRequest(
            request_id="p1", merchant_id="shop", payer="user:alice", amount=100, currency="CNY",
            asset=pb.ASSET_WALLET), metadata=md())
        assert (paid.kind, paid.status) == ("pay", pb.PAYMENT_STATUS_SUCCEEDED)
