"""A wallet's way in and out through the transfer rail, against the mock rail as its own process:
a top-up by bank transfer through a channel whose money lands straight in a reserve-fund pool,
then a payout of part of it to the user's account in the channel's `accounts` directory. Both
settle by the rail's callback (or polling); the pool account holds what stayed, the channel owes
nothing, and the rail's statement reconciles with the payout's line matched as a payout. The pool
mapping comes from the config, as in production: the channel's own account is the pool's rail account."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dualflow.core.payments.accounts import Party, holding_account, pool_account, receivable_account, transfer_id
from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.sandbox import NAMES, Sandbox
from dualflow.gateway.server import Platform, ServerConfig
from payments_fixtures import vault_toml

RAIL = NAMES["transfer"]
POOL = "dfpool"
DAVE = BankAccount("ICBC", "6789", "Dave")
DAVE_NUMBER = "6222020000006789"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("payout-sandbox"), seed=5).start(kinds=("transfer",),
                                                                           fee_bps={"transfer": 0})
    yield box
    box.stop()


def write_config(folder: Path, sandbox: Sandbox) -> Path:
    (folder / "routing.toml").write_text("exploration = 0\n")
    # The beneficiary's full number, which a payout needs and our payment model never holds.
    channels = sandbox.channels_toml().replace(
        "[channels.keys]", f'accounts = {{ "{DAVE.bank_code}:{DAVE.account_last4}" = "{DAVE_NUMBER}" }}\n'
                           "[channels.keys]")
    path = folder / "dualflow.toml"
    path.write_text(f"""
[routing]
file = "{folder / 'routing.toml'}"
seed = 1

{vault_toml()}

# One pool, whose account at the bank is the rail channel's own: the channel collects into it.
[clearing]
pools = ["{POOL}"]
currencies = ["CNY"]
[clearing.rail_accounts]
{POOL} = {{ bank_code = "DFPOOL", number = "6222000000000001", name = "dualflow reserve" }}

[[merchants]]
id = "wallet"
name = "Wallet"
currencies = ["CNY"]
fee_bps = 0

{channels}
""")
    return path


async def until(platform: Platform, payment_id: str, *statuses: PaymentStatus, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if (await platform.payments.get_payment(payment_id)).status in statuses:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{payment_id}: {(await platform.payments.get_payment(payment_id)).status}, not {statuses}")


async def test_top_up_then_pay_out_through_a_pooled_rail(tmp_path: Path, sandbox: Sandbox) -> None:
    bank = sandbox.banks[RAIL]
    bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=1.0,
                     settle_after_ms=100, fee_bps=0)
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"),
                                     config_path=str(write_config(tmp_path, sandbox)), expiry_interval_s=0,
                                     callback_port=sandbox.callback_port))
    assert platform.payments.channel_pools == {RAIL: POOL}  # from [clearing] rail_accounts
    platform.payments.polls = PollTiming(first_ns=200_000_000, window_ns=3600 * 10**9)
    platform.payments.poll_tick_s = 0.05
    await platform.start()
    try:
        topup = await platform.payments.create_payment(PaymentRequest(
            request_id="top-1", merchant_id="wallet", payer="user:dave", payee="user:dave", amount=50_000,
            currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=DAVE))
        assert topup.channel == RAIL
        await until(platform, topup.payment_id, PaymentStatus.SUCCEEDED)

        payout = await platform.payments.create_payout(PaymentRequest(
            request_id="out-1", merchant_id="wallet", payer="user:dave", payee="user:dave", amount=18_000,
            currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=DAVE, description="to my bank"))
        assert (payout.kind, payout.channel, payout.fee) == ("payout", RAIL, 0)
        too_much = await platform.payments.create_payout(PaymentRequest(
            request_id="out-2", merchant_id="wallet", payer="user:dave", payee="user:dave", amount=32_001,
            currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=DAVE))
        assert too_much.failure_reason == "INSUFFICIENT_FUNDS"
        await until(platform, payout.payment_id, PaymentStatus.SUCCEEDED)

        # The rail booked one collection and one payout to Dave's full number.
        book = {line["instruction_id"]: line for line in await asyncio.to_thread(bank.book)}
        assert (book[topup.instruction_id]["kind"], book[topup.instruction_id]["status"]) == ("pay", "SUCCEEDED")
        assert (book[payout.instruction_id]["kind"], book[payout.instruction_id]["status"],
                book[payout.instruction_id]["amount"]) == ("payout", "SUCCEEDED", 18_000)

        balance = await platform.payments.get_balance("dave", Asset.WALLET, "CNY")
        assert (balance.available, balance.pending_in, balance.pending_out) == (32_000, 0, 0)
        wallet, pool, receivable = await platform.ledger.lookup_accounts([
            holding_account(Party("user", "dave"), Asset.WALLET, "CNY").id, pool_account(POOL, "CNY").id,
            receivable_account(RAIL, "CNY").id])
        assert (wallet.credits_posted, wallet.debits_posted) == (50_000, 18_000)
        assert pool.debits_posted - pool.credits_posted == 50_000 - 18_000
        assert (receivable.debits_posted - receivable.credits_posted, receivable.debits_pending,
                receivable.credits_pending) == (0, 0, 0)

        # The day's statement: both lines matched, the payout as a payout.
        today = datetime.now(timezone.utc).date().isoformat()
        report = await platform.reconciliation.run(RAIL, today)
        assert report.run.state == "completed", report.run
        assert set(report.counts) == {"MATCHED"}, report.counts
        assert report.counts["MATCHED"]["lines"] == 2
        rows, _, _ = await platform.reconciliation.list_results(report.run.run_id)
        # The payout refused for want of money never reached the rail: agreed by its absence.
        assert sorted((r.kind, r.object_id, r.cls, r.has_theirs) for r in rows) == sorted([
            ("pay", topup.payment_id, "MATCHED", True), ("payout", payout.payment_id, "MATCHED", True),
            ("payout", too_much.payment_id, "MATCHED", False)])
        # Every settled payment has exactly its postings (the sweeps have a code of their own), the
        # books balance, and the pooled channel is left out of the receivable's drift check.
        check = await platform.reconciliation.internal_check()
        assert check.findings == [], check.findings
        # ... and a pooled payment without its sweep is found (a row removed around the writer).
        await platform.ledger.write([("DELETE FROM transfers WHERE id = ?", (transfer_id(payout.payment_id, "sweep.1"),))])
        broken = await platform.reconciliation.internal_check()
        assert [(f.kind, f.subject, f.detail.split(" (")[0]) for f in broken.findings] == [
            ("PAYMENT_POSTINGS", payout.payment_id, "missing transfer sweep.1")], broken.findings
    finally:
        await platform.stop()
