"""Several pooled transfer channels on one rail network, reconciled: the demo's three channels
(rail-a/b/c, each with its own pool account at BKA/BKB/BKC) talk to one mock rail process, which
carries every transfer of the network. Each channel asks for its own account's statement
(`?account=`), so after a day of top-ups, a payout and a cut-off that settles the net between the
pools over the rail, reconciling each channel gives only MATCHED: its own top-ups and payouts, and
the settlement transfers its pool pays or is paid (they are on both pools' statements); nothing of
the other channels shows up MISSING_INTERNALLY, and each line's fee, a settlement's included, is
posted once overall (a settlement's on the payer pool's channel).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from reserve_day_fixtures import final, interbank, open_banks, reserve_platform  # noqa: F401 (interbank: a fixture)

from dualflow.adapters.transfer.settlement import SettlementInstructions, rail_id
from dualflow.clearing.window import InstructionState, WindowState
from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus
from dualflow.core.payments.resolution import CODE_CHANNEL_FEE
from dualflow.gateway import demo_clearing as day
from dualflow.gateway.server import Platform

CNY = "CNY"
FLOAT = 1_000_000
TOP_UP = 80_000
PAYOUT = 30_000
SEED = 3


@pytest.fixture
async def platform(tmp_path: Path, interbank: Any) -> AsyncIterator[Platform]:
    async with reserve_platform(tmp_path, interbank) as p:
        yield p


def classes(report: Any) -> dict[str, tuple[int, int]]:
    return {cls: (n["lines"], n["instructions"]) for cls, n in report.counts.items()}


async def test_each_pooled_rail_reconciles_only_its_own_account(platform: Platform, interbank: Any) -> None:
    _, bank, _ = interbank
    # The rail charges its same-bank rate on everything: the top-ups' fees are what we expect.
    await asyncio.to_thread(bank.set_profile, latency_ms=2, jitter_ms=0, pending_rate=1.0, settle_after_ms=50,
                            fee_bps=day.SAME_BANK_FEE_BPS, fee_fixed=0)
    await open_banks(platform, bank, float_minor=FLOAT, user_minor=500_000)
    sources = platform.reconciliation.reconciler.sources
    assert {c: (type(s), s.pool) for c, s in sources.items()} == {  # type: ignore[attr-defined]
        p.channel: (SettlementInstructions, p.pool) for p in day.POOLS}

    # Top-ups into each user's own bank's pool, wallet transfers between the users, one payout.
    top_ups = [await platform.payments.create_payment(PaymentRequest(
        request_id=f"top-{u.name}", merchant_id=day.MERCHANT, payer=u.party, payee=u.party, amount=TOP_UP,
        currency=CNY, asset=Asset.BANK_TRANSFER, bank_account=BankAccount(u.bank_code, u.number[-4:], u.holder)))
        for u in day.USERS]
    top_ups = [await final(platform, t) for t in top_ups]
    channel_of_bank = {p.bank_code: p.channel for p in day.POOLS}
    assert [(t.status, t.channel) for t in top_ups] == [
        (PaymentStatus.SUCCEEDED, channel_of_bank[u.bank_code]) for u in day.USERS]
    rng = random.Random(SEED)
    for i in range(12):
        payer, payee = rng.sample([u.party for u in day.USERS], 2)
        paid = await platform.payments.create_payment(PaymentRequest(
            request_id=f"p2p-{i}", merchant_id=day.MERCHANT, payer=payer, payee=payee,
            amount=rng.randrange(10, 60) * 100, currency=CNY, asset=Asset.WALLET))
        assert paid.status is PaymentStatus.SUCCEEDED, paid
    payout = await final(platform, await platform.payments.create_payout(PaymentRequest(
        request_id="payout-1", merchant_id=day.MERCHANT, payer="user:ann", payee="user:ann", amount=PAYOUT,
        currency=CNY, asset=Asset.BANK_TRANSFER, bank_account=BankAccount(
            day.PAYOUT_TO.bank_code, day.PAYOUT_TO.number[-4:], day.PAYOUT_TO.holder))))
    assert (payout.status, payout.channel) == (PaymentStatus.SUCCEEDED, "rail-b"), payout

    # Cut-off: the window nets and settles over the rail (sent over rail-a, the settlement channel).
    await platform.obligation_feed.catch_up()
    window = await platform.clearing.close_window()
    for _ in range(200):
        window = await platform.clearing.window(window.window_id)
        if window.state.final:
            break
        await asyncio.sleep(0.05)
    assert window.state is WindowState.SETTLED, window
    assert window.instructions and all(i.state is InstructionState.SUCCEEDED for i in window.instructions)
    book = {t["instruction_id"]: t for t in await asyncio.to_thread(bank.book)}
    assert all(t["status"] in ("SUCCEEDED", "FAILED") for t in book.values())  # all final: on today's statement

    # Each pooled rail: its own top-ups and payouts, and the settlements touching its pool; all MATCHED.
    today = datetime.now(timezone.utc).date().isoformat()
    pool_of = {p.channel: p.pool for p in day.POOLS}
    reports = {p.channel: await platform.reconciliation.run(p.channel, today) for p in day.POOLS}
    for channel, report in reports.items():
        own = [t for t in (*top_ups, payout) if t.channel == channel]
        settlements = [i for i in window.instructions if pool_of[channel] in (i.payer_pool, i.payee_pool)]
        n = len(own) + len(settlements)
        assert report.run.state == "completed", report.run
        assert classes(report) == {"MATCHED": (n, n)}, (channel, classes(report))
        assert (report.applied, report.refused) == (0, 0)
    assert sum(len([i for i in window.instructions if pool_of[c] in (i.payer_pool, i.payee_pool)])
               for c in reports) == 2 * len(window.instructions)  # each settlement on two statements

    # Every fee once overall: one ledger posting per transfer of the day, the rail's fee, whichever
    # statements show it; a settlement's on its payer pool's channel.
    charged = {i: t["fee"] for i, t in book.items() if t["fee"] > 0}
    assert {rail_id(i.instruction_id) for i in window.instructions} <= set(charged)
    fee_rows = await platform.ledger.query("SELECT COUNT(*), SUM(amount) FROM transfers WHERE code = ?",
                                           (CODE_CHANNEL_FEE,))
    assert tuple(fee_rows[0]) == (len(charged), sum(charged.values()))
    assert sum(n for r in reports.values() for _l, _f, n in r.fees.values()) == len(charged)
    payer_channel = {p.pool: p.channel for p in day.POOLS}
    for channel, report in reports.items():
        paid = [i for i in window.instructions if payer_channel[i.payer_pool] == channel]
        own = [t for t in (*top_ups, payout) if t.channel == channel]
        assert sum(n for _l, _f, n in report.fees.values()) == len(own) + len(paid), channel
    check = await platform.reconciliation.internal_check()
    assert check.findings == [], check.findings
