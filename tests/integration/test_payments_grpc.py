"""The PaymentGateway over real gRPC, on SQLite and PostgreSQL.

A whole Platform (ledger, payments, vault, access control) serves on
127.0.0.1:0 with a TOML config written by the test; clients use the generated
stubs with API keys. Refusals are checked for their status code and ErrorInfo
reason, and for having changed nothing.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dualflow.adapters.scripted import PENDING, SUCCEEDED, Plan, ScriptedChannel, failed
from dualflow.core.payments.model import Asset
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.config import hash_api_key
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

from payments_fixtures import fund

SHOP_KEY = "dfk_shop-backend-key-0123456789abcdef"
OTHER_KEY = "dfk_other-backend-key-0123456789abcde"
READER_KEY = "dfk_reader-key-0123456789abcdef01234"
VISA = "4111111111111111"


def _key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


CONFIG = f"""
[vault]
active = "k1"
fingerprint_key = "{_key(9)}"
[vault.keys]
k1 = "{_key(1)}"

[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY", "USD"]
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
permissions = ["payments.write", "payments.read", "events.read", "cards.tokenize", "webhooks.manage"]

[[callers]]
name = "other-backend"
api_key_sha256 = "{hash_api_key(OTHER_KEY)}"
merchants = ["other"]
permissions = ["payments.write", "payments.read", "events.read"]

[[callers]]
name = "reader"
api_key_sha256 = "{hash_api_key(READER_KEY)}"
merchants = ["*"]
permissions = ["payments.read", "events.read"]
"""


@dataclass
class Running:
    platform: Platform
    channel: ScriptedChannel
    stub: payments_pb2_grpc.PaymentGatewayStub
    channel_grpc: grpc.aio.Channel

    def md(self, key: str = SHOP_KEY) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {key}"),)


def _script(i):  # noqa: ANN001, ANN202 - amounts pick the channel's answer
    if i.amount % 100 == 13:
        return Plan(on_submit=failed("CARD_DECLINED"))
    return Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.05)


@pytest.fixture
async def running(db_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    config_file = tmp_path / "dualflow.toml"
    config_file.write_text(CONFIG)
    channel = ScriptedChannel(_script)
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, config_path=str(config_file),
                                     expiry_interval_s=0), dispatcher=channel)
    platform.payments.polls = PollTiming(first_ns=10_000_000, window_ns=3600 * 10**9)
    platform.payments.poll_tick_s = 0.01
    await platform.start()
    grpc_channel = grpc.aio.insecure_channel(platform.address)
    try:
        yield Running(platform, channel, payments_pb2_grpc.PaymentGatewayStub(grpc_channel), grpc_channel)
    finally:
        await grpc_channel.close()
        await platform.stop()


def create(request_id: str, amount: int, asset: int = pb.ASSET_WALLET, payer: str = "user:alice",
           merchant: str = "shop", **kw: object) -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(request_id=request_id, merchant_id=merchant, payer=payer, amount=amount,
                                   currency=kw.pop("currency", "CNY"), asset=asset, **kw)  # type: ignore[arg-type]


def error_reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == "dualflow.v1.PaymentGateway"
    return info.reason


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), error_reason(caught.value)


async def test_internal_payments_refunds_queries(running: Running) -> None:
    stub, md = running.stub, running.md()
    await fund(running.platform.payments, "alice", Asset.WALLET, 10_000)
    await fund(running.platform.payments, "alice", Asset.POINTS, 300)
    paid = await stub.CreatePayment(create("o-1", 4_000, trade_order_id="T1", metadata={"sku": "42"}), metadata=md)
    assert paid.status == pb.PAYMENT_STATUS_SUCCEEDED and paid.fee == 40 and paid.metadata["sku"] == "42"
    points = await stub.CreatePayment(create("o-2", 300, pb.ASSET_POINTS), metadata=md)
    assert points.status == pb.PAYMENT_STATUS_SUCCEEDED
    broke = await stub.CreatePayment(create("o-3", 1, pb.ASSET_POINTS), metadata=md)
    assert broke.status == pb.PAYMENT_STATUS_FAILED and broke.failure_reason == "INSUFFICIENT_FUNDS"
    assert await stub.CreatePayment(create("o-1", 4_000, trade_order_id="T1", metadata={"sku": "42"}),
                                    metadata=md) == paid
    assert await refused(stub.CreatePayment(create("o-1", 4_001), metadata=md)) == (
        grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    refund = await stub.RefundPayment(pb.RefundPaymentRequest(request_id="rf-1", payment_id=paid.payment_id,
                                                              amount=1_500), metadata=md)
    assert refund.status == pb.REFUND_STATUS_SUCCEEDED
    assert await refused(stub.RefundPayment(pb.RefundPaymentRequest(
        request_id="rf-2", payment_id=paid.payment_id, amount=2_501), metadata=md)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED")
    assert await refused(stub.CancelPayment(pb.CancelPaymentRequest(payment_id=paid.payment_id), metadata=md)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_NOT_CANCELABLE")

    balance = await stub.GetBalance(pb.GetBalanceRequest(user_id="alice", asset=pb.ASSET_WALLET, currency="CNY"),
                                    metadata=md)
    assert balance.available == 10_000 - 4_000 + 1_500
    got = await stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.payment_id), metadata=md)
    assert got.refunded_amount == 1_500

    page1 = await stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop", page_size=2), metadata=md)
    page2 = await stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop", page_size=2,
                                                           page_token=page1.next_page_token), metadata=md)
    ids = [p.payment_id for p in (*page1.payments, *page2.payments)]
    assert sorted(ids) == sorted([paid.payment_id, points.payment_id, broke.payment_id]) and not page2.next_page_token
    failed_only = await stub.ListPayments(pb.ListPaymentsRequest(
        merchant_id="shop", statuses=[pb.PAYMENT_STATUS_FAILED]), metadata=md)
    assert [p.payment_id for p in failed_only.payments] == [broke.payment_id]
    points_only = await stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop", asset=pb.ASSET_POINTS),
                                          metadata=md)
    assert len(points_only.payments) == 2


async def test_card_payment_watch_and_events(running: Running) -> None:
    stub, md = running.stub, running.md()
    card = await stub.TokenizeCard(pb.TokenizeCardRequest(card_number=VISA, exp_month=12, exp_year=2031), metadata=md)
    assert card.token.startswith("tok_") and card.last4 == "1111" and card.bin == "411111"
    created = await stub.CreatePayment(create("c-1", 2_000, pb.ASSET_BANK_CARD, payer="user:carol",
                                              method=pb.PaymentMethod(card_token=card.token)), metadata=md)
    assert created.card.last4 == "1111" and VISA not in str(created)
    seen = [p.status async for p in stub.WatchPayment(pb.WatchPaymentRequest(payment_id=created.payment_id),
                                                      metadata=md)]
    assert seen[-1] == pb.PAYMENT_STATUS_SUCCEEDED and seen[0] in (pb.PAYMENT_STATUS_CREATED,
                                                                   pb.PAYMENT_STATUS_PROCESSING)
    declined = await stub.CreatePayment(create("c-2", 2_013, pb.ASSET_BANK_CARD, payer="user:carol",
                                               method=pb.PaymentMethod(card_token=card.token)), metadata=md)
    last = [p async for p in stub.WatchPayment(pb.WatchPaymentRequest(payment_id=declined.payment_id), metadata=md)]
    assert last[-1].status == pb.PAYMENT_STATUS_FAILED and last[-1].failure_reason == "CARD_DECLINED"

    # Events: resumable from a cursor, at least once, each with a unique id.
    stream = stub.SubscribeEvents(pb.SubscribeEventsRequest(merchant_id="shop"), metadata=md)
    first: list[pb.Event] = []
    async for event in stream:
        first.append(event)
        if len(first) == 3:
            break
    stream.cancel()
    resumed = stub.SubscribeEvents(pb.SubscribeEventsRequest(merchant_id="shop", after_sequence=first[1].sequence),
                                   metadata=md)
    rest: list[pb.Event] = []
    async for event in resumed:
        rest.append(event)
        if event.type == "payment.failed":
            break
    resumed.cancel()
    assert rest[0].event_id == first[2].event_id
    types = [e.type for e in (*first[:2], *rest)]
    assert types.count("payment.succeeded") == 1 and types.count("payment.failed") == 1
    assert len({e.event_id for e in (*first[:2], *rest)}) == len(types)
    assert all(VISA not in e.data_json for e in rest)
    assert [e.sequence for e in rest] == sorted(e.sequence for e in rest)


async def test_access_is_checked_and_refusals_change_nothing(running: Running) -> None:
    stub = running.stub
    await fund(running.platform.payments, "alice", Asset.WALLET, 1_000)
    assert await refused(stub.CreatePayment(create("a-1", 10))) == (grpc.StatusCode.UNAUTHENTICATED,
                                                                    "API_KEY_MISSING")
    assert await refused(stub.CreatePayment(create("a-2", 10), metadata=running.md(OTHER_KEY))) == (
        grpc.StatusCode.PERMISSION_DENIED, "MERCHANT_NOT_ALLOWED")
    assert await refused(stub.CreatePayment(create("a-3", 10), metadata=running.md(READER_KEY))) == (
        grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    assert await refused(stub.TokenizeCard(pb.TokenizeCardRequest(card_number=VISA, exp_month=1, exp_year=2031),
                                           metadata=running.md(OTHER_KEY))) == (
        grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    paid = await stub.CreatePayment(create("a-4", 10), metadata=running.md())
    assert await refused(stub.GetPayment(pb.GetPaymentRequest(payment_id=paid.payment_id),
                                         metadata=running.md(OTHER_KEY))) == (
        grpc.StatusCode.PERMISSION_DENIED, "MERCHANT_NOT_ALLOWED")
    assert await refused(stub.ListPayments(pb.ListPaymentsRequest(), metadata=running.md())) == (
        grpc.StatusCode.INVALID_ARGUMENT, "MERCHANT_REQUIRED")
    everything = await stub.ListPayments(pb.ListPaymentsRequest(), metadata=running.md(READER_KEY))
    assert [p.payment_id for p in everything.payments] == [paid.payment_id]


async def test_bad_input_gets_clear_statuses(running: Running) -> None:
    stub, md = running.stub, running.md()
    await fund(running.platform.payments, "alice", Asset.WALLET, 1_000)
    cases = [
        (create("b-1", -5), grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_INVALID"),
        (create("b-2", 5, currency="EUR"), grpc.StatusCode.INVALID_ARGUMENT, "PAYMENT_INVALID"),
        (create("b-3", 5, asset=0), grpc.StatusCode.INVALID_ARGUMENT, "ASSET_INVALID"),
        (create("", 5), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_INVALID"),
        (create("x" * 65, 5), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_INVALID"),
        (create("b-6", 5, pb.ASSET_BANK_CARD, method=pb.PaymentMethod(card_token="tok_nope")),
         grpc.StatusCode.INVALID_ARGUMENT, "CARD_TOKEN_MALFORMED"),
        (create("b-7", 5, pb.ASSET_BANK_CARD, method=pb.PaymentMethod(card_token="tok_" + "a" * 24)),
         grpc.StatusCode.NOT_FOUND, "CARD_TOKEN_UNKNOWN"),
    ]
    for request, code, reason in cases:
        assert await refused(stub.CreatePayment(request, metadata=md)) == (code, reason), request
    other = create("b-8", 5, merchant="ghost")
    assert (await refused(stub.CreatePayment(other, metadata=running.md(READER_KEY))))[0] == \
        grpc.StatusCode.PERMISSION_DENIED
    assert await refused(stub.GetPayment(pb.GetPaymentRequest(payment_id="pay_missing"), metadata=md)) == (
        grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    assert await refused(stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop", page_token="%%%"),
                                           metadata=md)) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
    assert await refused(stub.TokenizeCard(pb.TokenizeCardRequest(card_number="4111111111111112", exp_month=1,
                                                                  exp_year=2031), metadata=md)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "CARD_INVALID")
    listed = await stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop"), metadata=md)
    assert list(listed.payments) == []
    balance = await stub.GetBalance(pb.GetBalanceRequest(user_id="alice", asset=pb.ASSET_WALLET, currency="CNY"),
                                    metadata=md)
    assert balance.available == 1_000


async def test_a_thousand_concurrent_creates_with_duplicate_keys(running: Running) -> None:
    stub, md = running.stub, running.md()
    users = [f"u{i}" for i in range(20)]
    for user in users:
        await fund(running.platform.payments, user, Asset.WALLET, 100_000)
    keys = [f"k-{i}" for i in range(250)]
    rng = random.Random(7)
    plan = [rng.choice(keys) for _ in range(1_000)]
    # Every key keeps one amount and payer, so every duplicate is a true retry.
    spec = {k: (users[i % len(users)], 100 + i) for i, k in enumerate(keys)}
    answers = await asyncio.gather(*(stub.CreatePayment(create(k, spec[k][1], payer=f"user:{spec[k][0]}"),
                                                        metadata=md) for k in plan))
    by_key: dict[str, set[str]] = {}
    for key, answer in zip(plan, answers):
        by_key.setdefault(key, set()).add(answer.payment_id)
        assert answer.status == pb.PAYMENT_STATUS_SUCCEEDED
    used = set(plan)
    assert all(len(ids) == 1 for ids in by_key.values())
    listed: list[pb.Payment] = []
    token = ""
    while True:
        page = await stub.ListPayments(pb.ListPaymentsRequest(merchant_id="shop", page_size=1000, page_token=token),
                                       metadata=md)
        listed += page.payments
        token = page.next_page_token
        if not token:
            break
    assert len(listed) == len(used)
    for user in users:
        spent = sum(spec[k][1] for k in used if spec[k][0] == user)
        balance = await stub.GetBalance(pb.GetBalanceRequest(user_id=user, asset=pb.ASSET_WALLET, currency="CNY"),
                                        metadata=md)
        assert balance.available == 100_000 - spent, user


async def test_webhooks_signed_dead_lettered_and_redelivered(running: Running) -> None:
    from aiohttp import web

    from dualflow.core.webhooks.signature import SIGNATURE_HEADER, verify

    stub, md = running.stub, running.md()
    await fund(running.platform.payments, "alice", Asset.WALLET, 1_000)
    received: list[tuple[str, bytes, str]] = []
    accept = {"ok": True, "broken": False}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((request.path, body, request.headers[SIGNATURE_HEADER]))
        return web.Response(status=200 if accept[request.path.strip("/")] else 400)

    app = web.Application()
    app.router.add_post("/ok", hook)
    app.router.add_post("/broken", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        good = await stub.RegisterWebhook(pb.RegisterWebhookRequest(
            merchant_id="shop", url=f"http://127.0.0.1:{port}/ok", event_types=["payment.succeeded"]), metadata=md)
        bad = await stub.RegisterWebhook(pb.RegisterWebhookRequest(
            merchant_id="shop", url=f"http://127.0.0.1:{port}/broken"), metadata=md)
        assert good.secret.startswith("whsec_")
        listed = await stub.ListWebhooks(pb.ListWebhooksRequest(merchant_id="shop"), metadata=md)
        assert {e.endpoint_id for e in listed.endpoints} == {good.endpoint_id, bad.endpoint_id}
        assert all(not e.secret for e in listed.endpoints)
        assert await refused(stub.RegisterWebhook(pb.RegisterWebhookRequest(merchant_id="shop", url="ftp://x"),
                                                  metadata=md)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                    "WEBHOOK_URL_INVALID")
        paid = await stub.CreatePayment(create("w-1", 100), metadata=md)
        for _ in range(300):
            dead = await stub.ListDeadLetters(pb.ListDeadLettersRequest(merchant_id="shop"), metadata=md)
            if any(p == "/ok" for p, _, _ in received) and dead.dead_letters:
                break
            await asyncio.sleep(0.02)
        path, body, header = next(r for r in received if r[0] == "/ok")
        verify(good.secret, body, header, now=int(__import__("time").time()))
        assert paid.payment_id.encode() in body
        with pytest.raises(ValueError):
            verify(bad.secret, body, header, now=int(__import__("time").time()))
        assert dead.dead_letters, "a 400 answer parks the delivery at once"
        accept["broken"] = True
        for _ in range(300):  # the broken endpoint gets two events: payment.succeeded, balance.updated
            dead = await stub.ListDeadLetters(pb.ListDeadLettersRequest(merchant_id="shop"), metadata=md)
            if len(dead.dead_letters) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(dead.dead_letters) == 2
        for letter in dead.dead_letters:
            await stub.RedeliverWebhook(pb.RedeliverWebhookRequest(delivery_id=letter.delivery_id), metadata=md)
        for _ in range(300):
            if not (await stub.ListDeadLetters(pb.ListDeadLettersRequest(merchant_id="shop"),
                                               metadata=md)).dead_letters:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the redelivered webhook stayed dead")
        assert await refused(stub.ListWebhooks(pb.ListWebhooksRequest(merchant_id="shop"),
                                               metadata=running.md(OTHER_KEY))) == (
            grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
        off = await stub.DisableWebhook(pb.DisableWebhookRequest(endpoint_id=good.endpoint_id), metadata=md)
        assert not off.enabled
    finally:
        await runner.cleanup()
