"""A reserve-fund day end to end (issue 7): wallets over pools at three banks, every movement a
real payment, two cut-offs, the net settled over the mock interbank rail (its own process, real
sockets) with the first settlement reply lost, then the pools against the banks.

Six users bank at BKA, BKB and BKC, where we keep a pool each; three transfer channels collect into
and pay out of one pool each with a cheaper same-bank fee, so each top-up lands in the pool at the
user's own bank (which homes the user there). Then wallet transfers between them, purchases at a
shop whose money is configured at BKC's pool, a refund, and a payout to an account at another
bank. The obligations the clearing feed records are checked against the test's own reckoning of
who owes whom; each window settles only its net, once, whatever the lost reply; and at the end
every pool's ledger balance equals the bank's own balance of the pool account, the banks' pools
moved by exactly the top-ups less the payout (nothing created or lost), the reserve-fund invariant
and the trial balance hold, and the internal check finds nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from reserve_day_fixtures import final, interbank, open_banks, reserve_platform  # noqa: F401 (interbank: a fixture)

from dualflow.adapters.transfer.settlement import rail_id
from dualflow.clearing.window import InstructionState, WindowState
from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus
from dualflow.gateway import demo_clearing as day
from dualflow.gateway.server import Platform
from dualflow.mock_banks.launcher import MockBankProcess

CNY = "CNY"
FLOAT = 1_000_000
TOP_UP = 80_000
SHOP_POOL = "pool-c"
SEED = 7


@pytest.fixture
async def platform(tmp_path: Path, interbank: Any) -> AsyncIterator[Platform]:
    async with reserve_platform(tmp_path, interbank, f'[clearing.merchant_pools]\nshop = "{SHOP_POOL}"\n'
                                '[[merchants]]\nid = "shop"\nname = "Shop"\ncurrencies = ["CNY"]\nfee_bps = 0\n') as p:
        yield p


def accounts(bank: MockBankProcess) -> dict[tuple[str, str], int]:
    return {(a["bank_code"], a["number"]): a["balance"] for a in bank._call("GET", "/accounts")}


async def settle(platform: Platform, bank: MockBankProcess, *, lose_first_reply: bool) -> Any:
    """Cut-off: everything the payments did is recorded, the window closes and settles."""
    await platform.obligation_feed.catch_up()
    if lose_first_reply:
        await asyncio.to_thread(bank.set_profile, lost_reply_rate=1.0)
    window = await platform.clearing.close_window()
    lifted = not lose_first_reply
    for _ in range(400):
        if not lifted and any(str(t["instruction_id"]).startswith("stl.") for t in await asyncio.to_thread(bank.book)):
            await asyncio.to_thread(bank.set_profile, lost_reply_rate=0.0)
            lifted = True
        window = await platform.clearing.window(window.window_id)
        if window.state.final:
            return window
        await asyncio.sleep(0.05)
    raise AssertionError(f"window {window.window_id} is still {window.state.name}")


async def test_a_reserve_fund_day_settles_net_and_the_pools_match_the_banks(platform: Platform,
                                                                               interbank: Any) -> None:
    _, bank, _ = interbank
    await asyncio.to_thread(bank.set_profile, latency_ms=5, jitter_ms=0, pending_rate=1.0, settle_after_ms=100,
                            fee_bps=0, fee_fixed=0)
    await open_banks(platform, bank, float_minor=FLOAT, user_minor=500_000)
    pool_of_bank = {p.bank_code: p.pool for p in day.POOLS}
    home = {u.party: pool_of_bank[u.bank_code] for u in day.USERS} | {"merchant:shop": SHOP_POOL}
    owed: list[defaultdict[tuple[str, str], int]] = [defaultdict(int), defaultdict(int)]  # by window

    def expect(window: int, debtor: str, creditor: str, amount: int) -> None:
        if debtor != creditor:
            owed[window][(debtor, creditor)] += amount

    # Morning: top-ups, each into the pool at the user's own bank (which homes the user there).
    top_ups = [await platform.payments.create_payment(PaymentRequest(
        request_id=f"top-{u.name}", merchant_id=day.MERCHANT, payer=u.party, payee=u.party, amount=TOP_UP,
        currency=CNY, asset=Asset.BANK_TRANSFER, bank_account=BankAccount(u.bank_code, u.number[-4:], u.holder)))
        for u in day.USERS]
    for u, t in zip(day.USERS, top_ups):
        settled = await final(platform, t)
        assert (settled.status, settled.channel) == (PaymentStatus.SUCCEEDED, next(
            p.channel for p in day.POOLS if p.bank_code == u.bank_code)), settled

    rng = random.Random(SEED)
    wallets = Counter({u.party: TOP_UP for u in day.USERS})

    async def transfers(window: int, n: int, tag: str) -> None:
        for i in range(n):
            payer, payee = rng.sample([u.party for u in day.USERS], 2)
            amount = rng.randrange(1, 60) * 100
            paid = await platform.payments.create_payment(PaymentRequest(
                request_id=f"p2p-{tag}-{i}", merchant_id=day.MERCHANT, payer=payer, payee=payee, amount=amount,
                currency=CNY, asset=Asset.WALLET))
            assert paid.status is PaymentStatus.SUCCEEDED, paid
            wallets[payer] -= amount
            wallets[payee] += amount
            expect(window, home[payer], home[payee], amount)

    await transfers(0, 25, "am")
    purchase = await platform.payments.create_payment(PaymentRequest(
        request_id="buy-1", merchant_id="shop", payer="user:ann", payee="merchant:shop", amount=7_000, currency=CNY,
        asset=Asset.WALLET))
    assert purchase.status is PaymentStatus.SUCCEEDED
    expect(0, home["user:ann"], SHOP_POOL, 7_000)
    refund = await platform.payments.refund_payment("refund-1", purchase.payment_id, 2_000)
    expect(0, SHOP_POOL, home["user:ann"], 2_000)
    assert refund.status.name == "SUCCEEDED"
    wallets["user:ann"] -= 5_000

    first = await settle(platform, bank, lose_first_reply=True)

    # Afternoon: more transfers, and Ann pays out to her account at BKB (from the pool there).
    await transfers(1, 25, "pm")
    payout = await platform.payments.create_payout(PaymentRequest(
        request_id="payout-1", merchant_id=day.MERCHANT, payer="user:ann", payee="user:ann", amount=30_000,
        currency=CNY, asset=Asset.BANK_TRANSFER, bank_account=BankAccount(
            day.PAYOUT_TO.bank_code, day.PAYOUT_TO.number[-4:], day.PAYOUT_TO.holder)))
    payout = await final(platform, payout)
    assert (payout.status, payout.channel) == (PaymentStatus.SUCCEEDED, "rail-b"), payout
    expect(1, home["user:ann"], "pool-b", 30_000)
    second = await settle(platform, bank, lose_first_reply=False)

    # Each window: SETTLED, the obligations recorded are exactly the test's reckoning, and its
    # transfers moved exactly the net positions, each once at the rail.
    book = {t["instruction_id"]: t for t in await asyncio.to_thread(bank.book)}
    net_moved: Counter[str] = Counter()
    for n, window in enumerate((first, second)):
        assert window.state is WindowState.SETTLED, window
        recorded: defaultdict[tuple[str, str], int] = defaultdict(int)
        for o in window.obligations:
            recorded[(o.debtor_pool, o.creditor_pool)] += o.amount_minor
        assert dict(recorded) == dict(owed[n]), (n, dict(recorded), dict(owed[n]))
        expected_net: Counter[str] = Counter()
        for (debtor, creditor), amount in owed[n].items():
            expected_net[debtor] -= amount
            expected_net[creditor] += amount
        moved: Counter[str] = Counter()
        for inst in window.instructions:
            assert inst.state is InstructionState.SUCCEEDED, inst
            line = book[rail_id(inst.instruction_id)]
            assert (line["status"], line["amount"]) == ("SUCCEEDED", inst.amount_minor), line
            moved[inst.payer_pool] -= inst.amount_minor
            moved[inst.payee_pool] += inst.amount_minor
        assert +moved == +expected_net and -moved == -expected_net, (n, moved, expected_net)
        assert len(window.instructions) <= len([p for p in expected_net.values() if p]) - 1
        net_moved.update(moved)
    settlement_lines = [t for t in book.values() if str(t["instruction_id"]).startswith("stl.")]
    assert len(settlement_lines) == len(first.instructions) + len(second.instructions)  # none paid twice
    assert any(i.attempts > 1 for i in first.instructions)  # the lost reply was asked about, not re-paid

    # The pools against the banks: each pool account as the bank keeps it equals the pool's ledger
    # balance, and both moved by the collections, the payout and the settled net, nothing else.
    at_bank = await asyncio.to_thread(accounts, bank)
    checked = await platform.pool_bank_check.check()
    assert [(r.pool, r.status) for r in checked] == [(p.pool, "MATCH") for p in day.POOLS], checked
    landed = Counter({pool_of_bank[u.bank_code]: 0 for u in day.USERS})
    for u in day.USERS:
        landed[pool_of_bank[u.bank_code]] += TOP_UP
    for p in day.POOLS:
        expected = FLOAT + landed[p.pool] - (30_000 if p.pool == "pool-b" else 0) + net_moved[p.pool]
        assert at_bank[(p.bank_code, p.number)] == expected, (p.pool, at_bank[(p.bank_code, p.number)], expected)
    assert sum(at_bank[(p.bank_code, p.number)] for p in day.POOLS) == 3 * FLOAT + 6 * TOP_UP - 30_000
    for u in day.USERS:
        assert at_bank[(u.bank_code, u.number)] == 500_000 - TOP_UP
    assert at_bank[(day.PAYOUT_TO.bank_code, day.PAYOUT_TO.number)] == 30_000

    # Our books: wallets as the test reckons them, the invariant, the trial balance, no finding.
    for u in day.USERS:
        balance = await platform.payments.get_balance(u.name, Asset.WALLET, CNY)
        assert balance.available == wallets[u.party] - (30_000 if u.name == "ann" else 0), u
    report = await platform.clearing.pool_report(CNY)
    assert [i.difference_minor for i in report.invariant] == [0], report.invariant
    check = await platform.reconciliation.internal_check()
    assert check.findings == [], check.findings
