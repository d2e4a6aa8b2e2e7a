"""The smart router in the running platform, against the mock banks as real processes:
traffic leaves a channel in an outage within a bounded number of payments and comes back
after recovery; every decision is explained on the payment (GetPayment); RoutingAdmin
changes the configuration by RPC and the watched file, validated and versioned, with
statuses and details for what it refuses; metrics show decisions and breakers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from dualflow.core.payments.model import Asset, PaymentRequest, PaymentStatus
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.auth import hash_api_key
from dualflow.gateway.sandbox import NAMES, Sandbox
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import payments_pb2, payments_pb2_grpc, routing_pb2, routing_pb2_grpc
from payments_fixtures import vault_toml

VISA = "4111111111111111"
CARD, PSP, RAIL = NAMES["iso8583"], NAMES["psp"], NAMES["transfer"]
OPS_KEY = "dfk_" + "o" * 24
VIEWER_KEY = "dfk_" + "v" * 24

# Fast learning for a test: the breaker opens when half of its last 6 outcomes (at least 3)
# are channel faults, half-opens after 1 s, closes after 2 good probes; outcomes older than
# 4 s are forgotten by the success estimate.
ROUTING_TOML = """
fee_weight = 1.0
health_max_age_s = 4.0
[breaker]
window = 6
min_samples = 3
open_at = 0.5
cool_down_s = 1.0
probes = 2
probes_to_close = 2
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    yield box
    box.stop()


def write_config(folder: Path, sandbox: Sandbox) -> Path:
    (folder / "routing.toml").write_text(ROUTING_TOML)
    path = folder / "dualflow.toml"
    path.write_text(f"""
[routing]
file = "{folder / 'routing.toml'}"
seed = 7

{vault_toml()}

[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 100

[[callers]]
name = "ops"
api_key_sha256 = "{hash_api_key(OPS_KEY)}"
merchants = ["*"]
permissions = ["admin"]

[[callers]]
name = "viewer"
api_key_sha256 = "{hash_api_key(VIEWER_KEY)}"
merchants = ["*"]
permissions = ["routing.read"]

{sandbox.channels_toml()}
""")
    return path


async def start_platform(folder: Path, sandbox: Sandbox) -> Platform:
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(folder / "ledger.db"),
                                     config_path=str(write_config(folder, sandbox)), expiry_interval_s=0,
                                     callback_port=sandbox.callback_port))
    platform.payments.polls = PollTiming(first_ns=50_000_000, window_ns=3600 * 10**9)
    platform.payments.poll_tick_s = 0.02
    await platform.start()
    assert platform.routing is not None
    platform.routing.watch_interval_s = 0.1
    return platform


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0)
    p = await start_platform(tmp_path, sandbox)
    try:
        yield p
    finally:
        await p.stop()


def card_payment(request_id: str, token: str, amount: int = 10_000) -> PaymentRequest:
    return PaymentRequest(request_id=request_id, merchant_id="shop", payer="user:carol", payee="merchant:shop",
                          amount=amount, currency="CNY", asset=Asset.BANK_CARD, card_token=token)


async def pay_and_settle(platform: Platform, request_id: str, token: str) -> tuple[str, str]:
    """One card payment to its final state; (channel that carried it, its routing reason)."""
    payment = await platform.payments.create_payment(card_payment(request_id, token))
    for _ in range(1000):
        payment = await platform.payments.get_payment(payment.payment_id)
        if payment.status.final:
            break
        await asyncio.sleep(0.01)
    assert payment.status is PaymentStatus.SUCCEEDED, (request_id, payment.status, payment.failure_reason)
    assert payment.routing is not None
    return payment.channel, payment.routing.reason


async def test_an_outage_moves_traffic_away_within_a_bound_and_recovery_brings_it_back(
        platform: Platform, sandbox: Sandbox) -> None:
    assert platform.vault is not None and platform.gateway is not None
    card = await platform.vault.tokenize(VISA, 12, 2031)
    router = platform.gateway.router

    healthy = [ch for ch, _ in [await pay_and_settle(platform, f"h{i}", card.token) for i in range(16)]]
    assert set(healthy) == {CARD, PSP}, "both healthy card channels carry traffic (exploration)"

    sandbox.banks[CARD].set_profile(outage=True)
    for i in range(30):
        await pay_and_settle(platform, f"o{i:02d}", card.token)
    # Every payment still succeeded: a refused connection is NOT_SUBMITTED, so the decision's
    # fallback (the PSP) carried it.
    listed = (await platform.payments.list_payments("shop", page_size=100))[0]
    outage = sorted((p for p in listed if p.request_id.startswith("o")), key=lambda p: p.request_id)
    assert len(outage) == 30 and all(p.routing is not None for p in outage)
    # Payments first sent to the card bank came back NOT_SUBMITTED and were carried by their
    # fallback: all succeeded, all on the PSP. The router learns from each fault: the card bank
    # is tried a bounded number of times, then traffic goes straight to the PSP (by its
    # estimate falling, or by the breaker opening, whichever comes first).
    assert all(p.channel == PSP for p in outage)
    first_sent_to_card = [i for i, p in enumerate(outage) if p.routing.rerouted_from]  # type: ignore[union-attr]
    assert all(outage[i].routing.rerouted_from == (CARD,) and outage[i].attempt == 2  # type: ignore[union-attr]
               for i in first_sent_to_card)
    assert len(first_sent_to_card) <= 8, f"the card bank was tried {len(first_sent_to_card)} times in the outage"
    assert not [i for i in first_sent_to_card if i >= 20], "after 20 payments none is tried on the dead bank"
    assert router.view(CARD).estimated_success < router.view(PSP).estimated_success

    sandbox.banks[CARD].set_profile(outage=False)
    await asyncio.sleep(4.2)  # the breaker half-opens (1 s) and the outage's faults age out (4 s)
    after = [ch for ch, _ in [await pay_and_settle(platform, f"r{i}", card.token) for i in range(24)]]
    assert after.count(CARD) >= 4, f"the recovered, cheaper card bank wins traffic back: {after}"
    assert router.breakers[CARD].state.value == "closed"

    decisions = REGISTRY.get_sample_value("dualflow_routing_decisions_total", {"channel": PSP, "reason": "FALLBACK"})
    assert decisions is not None and decisions >= 1
    assert REGISTRY.get_sample_value("dualflow_routing_breaker_state", {"channel": CARD}) == 0
    refused = REGISTRY.get_sample_value("dualflow_routing_outcomes_total",
                                        {"channel": CARD, "kind": "channel_fault", "fault": "not_submitted"})
    assert refused is not None and refused >= 1, "the refused connections were learned as channel faults"
    assert 0 < REGISTRY.get_sample_value("dualflow_routing_estimated_success_ratio", {"channel": PSP}) <= 1


def _metadata(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    info, fields = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return info, fields


async def test_routing_admin_changes_are_validated_versioned_explained_and_survive_a_restart(
        tmp_path: Path, sandbox: Sandbox) -> None:
    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0)
    platform = await start_platform(tmp_path, sandbox)
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            admin = routing_pb2_grpc.RoutingAdminStub(channel)
            payments = payments_pb2_grpc.PaymentGatewayStub(channel)
            ops, viewer = _metadata(OPS_KEY), _metadata(VIEWER_KEY)

            current = await admin.GetRoutingConfig(routing_pb2.GetRoutingConfigRequest(), metadata=viewer)
            assert current.version == 1 and current.source.startswith("file:")
            assert current.config.breaker.cool_down_s == 1.0

            # Invalid: refused with every problem named, nothing changes.
            bad = routing_pb2.RoutingConfig(fee_weight=-3)
            bad.channels["nosuch"].enabled = True
            bad.merchants["shop"].pinned = PSP
            bad.merchants["shop"].deny.append(PSP)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin.ReplaceRoutingConfig(routing_pb2.ReplaceRoutingConfigRequest(config=bad), metadata=ops)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            info, fields = _details(refused.value)
            assert info.reason == "ROUTING_CONFIG_INVALID"
            assert set(fields) == {"config.fee_weight", "config.channels.nosuch", "config.merchants.shop.pinned"}
            assert (await admin.GetRoutingConfig(routing_pb2.GetRoutingConfigRequest(), metadata=ops)).version == 1

            # A reader may not change anything.
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await admin.SetChannelEnabled(routing_pb2.SetChannelEnabledRequest(channel=CARD, enabled=False),
                                              metadata=viewer)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED

            # Stale expected_version: ABORTED, nothing changes.
            good = current.config
            good.fee_weight = 2.0
            with pytest.raises(grpc.aio.AioRpcError) as stale:
                await admin.ReplaceRoutingConfig(routing_pb2.ReplaceRoutingConfigRequest(
                    config=good, expected_version=0), metadata=ops)
            assert stale.value.code() is grpc.StatusCode.ABORTED
            assert _details(stale.value)[0].reason == "CONFIG_VERSION_CONFLICT"
            replaced = await admin.ReplaceRoutingConfig(routing_pb2.ReplaceRoutingConfigRequest(
                config=good, expected_version=1), metadata=ops)
            assert replaced.version == 2 and replaced.config.fee_weight == 2.0 and replaced.source == "rpc:ops"

            disabled = await admin.SetChannelEnabled(routing_pb2.SetChannelEnabledRequest(
                channel=CARD, enabled=False, reason="bank maintenance"), metadata=ops)
            assert disabled.version == 3 and not disabled.config.channels[CARD].enabled
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await admin.ForceBreaker(routing_pb2.ForceBreakerRequest(channel="nosuch", open=True), metadata=ops)
            assert missing.value.code() is grpc.StatusCode.NOT_FOUND

            token = (await payments.TokenizeCard(payments_pb2.TokenizeCardRequest(
                card_number=VISA, exp_month=12, exp_year=2031), metadata=ops)).token
            created = await payments.CreatePayment(payments_pb2.CreatePaymentRequest(
                request_id="adm-1", merchant_id="shop", payer="user:carol", payee="merchant:shop", amount=5_000,
                currency="CNY", asset=payments_pb2.ASSET_BANK_CARD,
                method=payments_pb2.PaymentMethod(card_token=token)), metadata=ops)
            got = await payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=created.payment_id),
                                            metadata=ops)
            assert got.channel == PSP and got.routing.chosen == PSP and got.routing.config_version == 3
            assert got.routing.reason == "ONLY_CANDIDATE"
            assert {(e.channel, e.reason) for e in got.routing.excluded} == {(CARD, "DISABLED"), (RAIL, "ASSET")}
            assert [c.channel for c in got.routing.candidates] == [PSP] and got.routing.candidates[0].fee == 30
            # The same explanation travels with the payment's events.
            stream = payments.SubscribeEvents(payments_pb2.SubscribeEventsRequest(
                merchant_id="shop", types=["payment.created"]), metadata=ops)
            async for event in stream:
                if event.payment.payment_id == created.payment_id:
                    assert event.payment.routing == got.routing
                    break
            stream.cancel()

            forced = await admin.ForceBreaker(routing_pb2.ForceBreakerRequest(channel=PSP, open=True), metadata=ops)
            assert forced.version == 4
            health = await admin.ListChannelHealth(routing_pb2.ListChannelHealthRequest(), metadata=viewer)
            by_name = {h.channel: h for h in health.channels}
            assert by_name[PSP].breaker == routing_pb2.BREAKER_OPEN and by_name[PSP].breaker_forced_open
            assert not by_name[CARD].enabled and health.config_version == 4
            with pytest.raises(grpc.aio.AioRpcError) as none_left:
                await payments.CreatePayment(payments_pb2.CreatePaymentRequest(
                    request_id="adm-2", merchant_id="shop", payer="user:carol", payee="merchant:shop",
                    amount=5_000, currency="CNY", asset=payments_pb2.ASSET_BANK_CARD,
                method=payments_pb2.PaymentMethod(card_token=token)), metadata=ops)
            assert none_left.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            info, _ = _details(none_left.value)
            assert info.reason == "NO_CHANNEL"
            assert info.metadata[f"excluded.{CARD}"] == "DISABLED"
            assert info.metadata[f"excluded.{PSP}"] == "BREAKER_OPEN"

        # The watched file: an invalid edit is refused and changes nothing; a valid one applies.
        routing_file = tmp_path / "routing.toml"
        routing_file.write_text("fee_weight = 'lots'\n")
        await asyncio.sleep(0.5)
        assert platform.routing is not None and platform.routing.current.config.version == 4
        routing_file.write_text("exploration = 0.5\n" + ROUTING_TOML)
        deadline = time.monotonic() + 5
        while platform.routing.current.config.version == 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert platform.routing.current.config.version == 5
        assert platform.routing.current.config.exploration == 0.5
        assert platform.routing.current.source.startswith("file:")
    finally:
        await platform.stop()

    # A restart resumes the newest version, and does not re-apply the unchanged file over it.
    again = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"),
                                  config_path=str(tmp_path / "dualflow.toml"), expiry_interval_s=0,
                                  callback_port=sandbox.callback_port))
    await again.start()
    try:
        assert again.routing is not None and again.routing.current.config.version == 5
    finally:
        await again.stop()


async def test_a_daily_cap_holds_across_a_restart(tmp_path: Path, sandbox: Sandbox) -> None:
    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0)
    platform = await start_platform(tmp_path, sandbox)
    # Greedy (the cheaper card bank while healthy), and at most 150.00 CNY a day through it.
    (tmp_path / "routing.toml").write_text(
        f"exploration = 0\n[channels.{CARD}]\ndaily_caps = {{ CNY = 15_000 }}\n")
    try:
        assert platform.routing is not None
        while platform.routing.current.config.version < 2:
            await asyncio.sleep(0.05)
        assert platform.vault is not None
        card = await platform.vault.tokenize(VISA, 12, 2031)
        assert await pay_and_settle(platform, "cap-1", card.token) == (CARD, "SCORE")
    finally:
        await platform.stop()
    again = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"),
                                  config_path=str(tmp_path / "dualflow.toml"), expiry_interval_s=0,
                                  callback_port=sandbox.callback_port))
    await again.start()
    try:
        # Today's 100.00 CNY through the card bank was read back: another 100.00 would pass the cap.
        paid = await again.payments.create_payment(card_payment("cap-2", card.token))
        assert paid.channel == PSP
        assert paid.routing is not None and (CARD, "DAILY_CAP") in paid.routing.excluded
    finally:
        await again.stop()
