"""Payments end to end through the financial gateway, the real adapters and the mock banks
running as their own processes: card bank (ISO 8583 over TCP), PSP (signed HTTP JSON with
encrypted callbacks) and the transfer rail; lost replies resolved by polling or callback,
a refused connection routed to the next channel, a restart in the middle of polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dualflow.core.payments.accounts import Party, holding_account, receivable_account
from dualflow.core.payments.dispatch import RouteQuery
from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus, RefundStatus
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.sandbox import NAMES, Sandbox
from dualflow.gateway.server import Platform, ServerConfig
from payments_fixtures import vault_toml

VISA = "4111111111111111"
CARD, PSP, RAIL = NAMES["iso8583"], NAMES["psp"], NAMES["transfer"]



@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    yield box
    box.stop()


def write_config(folder: Path, sandbox: Sandbox) -> Path:
    path = folder / "dualflow.toml"
    # Greedy routing (no exploration): with equal health the cheaper channel carries the payment,
    # so each test knows where its payments go. Exploration is tested in test_routing_e2e.py.
    (folder / "routing.toml").write_text("exploration = 0\n")
    path.write_text(f"""
[routing]
file = "{folder / 'routing.toml'}"
seed = 1

{vault_toml()}

[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 100

{sandbox.channels_toml()}
""")
    return path


async def start_platform(db: str, config: Path, sandbox: Sandbox) -> Platform:
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=db, config_path=str(config), expiry_interval_s=0,
                                     callback_port=sandbox.callback_port))
    platform.payments.polls = PollTiming(first_ns=50_000_000, window_ns=3600 * 10**9)
    platform.payments.poll_tick_s = 0.02
    await platform.start()
    return platform


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0)
    p = await start_platform(str(tmp_path / "ledger.db"), write_config(tmp_path, sandbox), sandbox)
    try:
        yield p
    finally:
        await p.stop()


async def until(platform: Platform, payment_id: str, *statuses: PaymentStatus, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if (await platform.payments.get_payment(payment_id)).status in statuses:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{payment_id}: {(await platform.payments.get_payment(payment_id)).status}, not {statuses}")


def card_payment(request_id: str, token: str, amount: int = 10_000) -> PaymentRequest:
    return PaymentRequest(request_id=request_id, merchant_id="shop", payer="user:carol", payee="merchant:shop",
                          amount=amount, currency="CNY", asset=Asset.BANK_CARD, card_token=token)


async def test_every_built_in_channel_is_configured_and_described(platform: Platform) -> None:
    assert platform.gateway is not None
    assert set(platform.gateway.adapters) == {CARD, PSP, RAIL}
    # Equal health, no exploration: the card bank (55 bps) before the PSP (60 bps) for cards.
    card = platform.gateway.route(RouteQuery(Asset.BANK_CARD, "CNY", 10_000, "shop", card_bin="411111"))
    assert (card.chosen, card.fallbacks, card.reason) == (CARD, (PSP,), "SCORE")
    assert [(c.channel, c.fee) for c in card.candidates] == [(CARD, 55), (PSP, 60)]
    assert card.excluded == ((RAIL, "ASSET"),) and card.config_version == 1
    transfer = platform.gateway.route(RouteQuery(Asset.BANK_TRANSFER, "CNY", 10_000, "shop"))
    assert (transfer.chosen, transfer.fallbacks) == (RAIL, ())


async def test_card_payment_through_the_card_bank_then_a_lost_reply_resolved_by_polling(
        platform: Platform, sandbox: Sandbox) -> None:
    assert platform.vault is not None
    card = await platform.vault.tokenize(VISA, 12, 2031)
    paid = await platform.payments.create_payment(card_payment("c1", card.token))
    await until(platform, paid.payment_id, PaymentStatus.SUCCEEDED)
    assert (await platform.payments.get_payment(paid.payment_id)).channel == CARD

    sandbox.banks[CARD].set_profile(lost_reply_rate=1.0)
    lost = await platform.payments.create_payment(card_payment("c2", card.token, 12_300))
    await until(platform, lost.payment_id, PaymentStatus.UNKNOWN, PaymentStatus.SUCCEEDED)
    sandbox.banks[CARD].set_profile(lost_reply_rate=0.0)
    await until(platform, lost.payment_id, PaymentStatus.SUCCEEDED)
    booked = [b for b in sandbox.banks[CARD].book() if b["instruction_id"].startswith(lost.payment_id)]
    assert len([b for b in booked if b["kind"] == "pay"]) == 1, "polled, never sent twice"

    refund = await platform.payments.refund_payment("r1", paid.payment_id, 4_000)
    assert refund.status is RefundStatus.PROCESSING
    for _ in range(500):
        [current] = await platform.payments.refunds_of(paid.payment_id)
        if current.status is RefundStatus.SUCCEEDED:
            break
        await asyncio.sleep(0.02)
    assert current.status is RefundStatus.SUCCEEDED
    [merchant] = await platform.ledger.lookup_accounts([holding_account(Party("merchant", "shop"), Asset.BANK_CARD,
                                                                        "CNY").id])
    assert merchant.credits_posted - merchant.debits_posted == 10_000 - 100 + 12_300 - 123 - 4_000
    assert VISA not in str(await platform.payments.get_payment(paid.payment_id))


async def test_refused_connection_moves_to_the_psp_which_calls_back(platform: Platform, sandbox: Sandbox) -> None:
    assert platform.vault is not None
    card = await platform.vault.tokenize(VISA, 12, 2031)
    sandbox.banks[CARD].set_profile(outage=True)
    sandbox.banks[PSP].set_profile(pending_rate=1.0, settle_after_ms=200)
    try:
        p = await platform.payments.create_payment(card_payment("p1", card.token, 8_800))
        await until(platform, p.payment_id, PaymentStatus.SUCCEEDED)
    finally:
        sandbox.banks[CARD].set_profile(outage=False)
        sandbox.banks[PSP].set_profile(pending_rate=0.0)
    done = await platform.payments.get_payment(p.payment_id)
    assert (done.channel, done.attempt) == (PSP, 2)
    [card_rx, psp_rx] = await platform.ledger.lookup_accounts([receivable_account(CARD, "CNY").id,
                                                               receivable_account(PSP, "CNY").id])
    assert card_rx.debits_pending == 0 and psp_rx.debits_posted >= 8_800


async def test_bank_transfer_settles_by_callback_and_a_restart_mid_polling_loses_nothing(
        tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_config(tmp_path, sandbox)
    db = str(tmp_path / "ledger.db")
    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False)
    sandbox.banks[RAIL].set_profile(pending_rate=1.0, settle_after_ms=300)
    platform = await start_platform(db, config, sandbox)
    request = PaymentRequest(request_id="t1", merchant_id="shop", payer="user:dave", payee="user:dave",
                             amount=50_000, currency="CNY", asset=Asset.BANK_TRANSFER,
                             bank_account=BankAccount("ICBC", "6789", "Dave"))
    try:
        p = await platform.payments.create_payment(request)
        await until(platform, p.payment_id, PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED)
    finally:
        await platform.stop()  # the settlement callback arrives while nobody listens
    await asyncio.sleep(0.5)
    platform = await start_platform(db, config, sandbox)
    try:
        await until(platform, p.payment_id, PaymentStatus.SUCCEEDED)
        balance = await platform.payments.get_balance("dave", Asset.WALLET, "CNY")
        assert balance.available == 50_000
    finally:
        await platform.stop()
        sandbox.banks[RAIL].set_profile(pending_rate=0.0)


async def test_the_card_number_reaches_only_the_card_bank(platform: Platform) -> None:
    assert platform.gateway is not None
    seen: dict[str, object] = {}
    for name, adapter in platform.gateway.adapters.items():
        original = adapter.submit

        async def spy(instruction, _original=original, _name=name):  # noqa: ANN001, ANN202
            seen[_name] = instruction.card
            return await _original(instruction)

        adapter.submit = spy  # type: ignore[method-assign]
    from dualflow.core.payments.dispatch import Instruction

    assert platform.vault is not None
    card = await platform.vault.tokenize(VISA, 12, 2031)
    for channel in (CARD, PSP):
        await platform.gateway.submit(Instruction(
            instruction_id=f"pay_{channel[:4]}x-1", object_id=f"pay_{channel[:4]}x", kind="pay", merchant_id="shop",
            asset=Asset.BANK_CARD, amount=1_000, currency="CNY", channel=channel, card_token=card.token))
    assert seen[CARD] is not None and seen[CARD].pan == VISA  # type: ignore[attr-defined]
    assert seen[PSP] is None


async def test_an_unknown_card_authorization_is_reversed_after_its_window(
        tmp_path: Path, sandbox: Sandbox) -> None:
    """The reply is lost and the bank stays silent to queries about it; after the polling
    window the gateway reverses it (0400) and the payment fails with the hold released."""
    from dualflow.core.ledger.model import PendingStatus
    from dualflow.core.payments.accounts import transfer_id

    for bank in sandbox.banks.values():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0)
    platform = await start_platform(str(tmp_path / "ledger.db"), write_config(tmp_path, sandbox), sandbox)
    platform.payments.polls = PollTiming(first_ns=50_000_000, window_ns=400_000_000)
    try:
        assert platform.vault is not None
        card = await platform.vault.tokenize(VISA, 12, 2031)
        sandbox.banks[CARD].set_profile(timeout_rate=1.0)  # nothing processed, nothing answered
        p = await platform.payments.create_payment(card_payment("rv1", card.token, 7_700))
        await until(platform, p.payment_id, PaymentStatus.UNKNOWN, PaymentStatus.FAILED)
        sandbox.banks[CARD].set_profile(timeout_rate=0.0)
        await until(platform, p.payment_id, PaymentStatus.FAILED)
        done = await platform.payments.get_payment(p.payment_id)
        assert done.failure_reason == "REVERSED_AFTER_UNKNOWN"
        [hold] = await platform.ledger.lookup_transfers([transfer_id(p.payment_id, "hold")])
        assert hold.pending_status == PendingStatus.VOIDED
        lines = {b["kind"]: b for b in sandbox.banks[CARD].book() if b["instruction_id"] == p.instruction_id}
        assert "reverse" in lines, "the bank booked the reversal"
        assert lines.get("pay", {}).get("status") != "SUCCEEDED", lines  # the money never moved
    finally:
        await platform.stop()
