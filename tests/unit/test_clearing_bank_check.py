"""The pool bank check's band and its reads, with a ledger and a bank as plain functions: what in
flight explains (one line per case, the expected unexplained part last), which of the two reads
around the bank's answer is compared, what is UNAVAILABLE, and the gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from dualflow.clearing.bank_check import AccountBalance, PoolBankCheck, Side
from dualflow.clearing.pools import pool_account
from dualflow.clearing.settings import ClearingSettings, RailAccount
from dualflow.core.ledger.model import Account

# posted  pending_in  pending_out  theirs  ->  unexplained
BAND = """
  1000        0           0         1000        0     books agree
  1000        0           0         1500      500     the bank has more
  1000        0           0          700     -300     the bank has less
  1000      200           0         1200        0     a deposit we hold, credited at the bank already
  1000      200           0         1300      100     more than the deposit explains
  1000      200           0          900     -100     a deposit held explains no shortfall
  1000        0         300          700        0     a payout we hold, debited at the bank already
  1000        0         300          600     -100     more than the payout explains
  1000        0         300         1100      100     a payout held explains no surplus
  1000      200         300         1200        0     both ways: top of the band
  1000      200         300          700        0     both ways: bottom of the band
  1000      200         300         1250       50     above it
  1000      200         300          650      -50     below it
     0        0           0            0        0     an unused pool at an empty account
  -100        0           0            0      100     a pool overdrawn in the ledger
"""


@pytest.mark.parametrize("line", [ln for ln in BAND.strip().splitlines()], ids=lambda ln: ln.split(None, 5)[5])
def test_what_in_flight_explains(line: str) -> None:
    posted, pending_in, pending_out, theirs, expected = (int(v) for v in line.split()[:5])
    assert Side(posted, pending_in, pending_out).beyond(theirs) == expected


ACCOUNTS = {"bank-a": RailAccount("BANKA", "6222000000000101", "reserve A"),
            "bank-b": RailAccount("BANKB", "6222000000000202", "reserve B")}
SETTINGS = ClearingSettings(pools=("bank-a", "bank-b", "bank-x"), currencies=("CNY",), rail_accounts=ACCOUNTS)


class Ledger:
    """Pool accounts by (pool, currency): (debits_pending, debits_posted, credits_pending, credits_posted)."""

    def __init__(self, **balances: tuple[int, int, int, int]) -> None:
        self.accounts: dict[int, Account] = {}
        for pool, columns in balances.items():
            self.set(pool, *columns)
        self.reads = 0

    def set(self, pool: str, dp: int, dpo: int, cp: int, cpo: int, currency: str = "CNY") -> None:
        a = pool_account(pool, currency)
        self.accounts[a.id] = Account(a.id, currency, a.code, debits_pending=dp, debits_posted=dpo,
                                      credits_pending=cp, credits_posted=cpo)

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        self.reads += 1
        return [self.accounts[i] for i in ids if i in self.accounts]


class Bank:
    def __init__(self, **balances: int) -> None:
        self.balances = balances
        self.asked: list[tuple[str, str, str]] = []
        self.during: dict[str, object] = {}  # pool -> a callable run while answering, or an exception

    async def __call__(self, pool: str, account: RailAccount, currency: str) -> AccountBalance:
        self.asked.append((pool, account.bank_code, currency))
        what = self.during.get(pool)
        if isinstance(what, BaseException):
            raise what
        if callable(what):
            await what()
        return AccountBalance(self.balances[pool], 0, 1_700_000_000)


class Unavailable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(f"no balance: {reason}")
        self.reason = reason


def gauge(name: str, pool: str, currency: str = "CNY") -> float | None:
    return REGISTRY.get_sample_value(f"dualflow_clearing_pool_bank_{name}_minor", {"pool": pool, "currency": currency})


async def test_each_pool_with_a_bank_account_is_compared_and_its_gauges_set() -> None:
    ledger = Ledger(**{"bank-a": (0, 5_000, 0, 1_000), "bank-b": (0, 3_000, 0, 0)})
    bank = Bank(**{"bank-a": 4_000, "bank-b": 3_250})
    results = await PoolBankCheck(ledger, SETTINGS, bank).check()
    assert bank.asked == [("bank-a", "BANKA", "CNY"), ("bank-b", "BANKB", "CNY")], "bank-x has no account"
    assert [(r.pool, r.status, r.ours, r.theirs, r.difference, r.unexplained) for r in results] == [
        ("bank-a", "MATCH", 4_000, 4_000, 0, 0), ("bank-b", "UNEXPLAINED", 3_000, 3_250, 250, 250)]
    assert (gauge("difference", "bank-a"), gauge("unexplained", "bank-a")) == (0, 0)
    assert (gauge("difference", "bank-b"), gauge("unexplained", "bank-b")) == (250, 250)
    assert ledger.reads == 4, "ours is read before and after each answer"


async def test_the_read_that_explains_the_banks_answer_is_compared() -> None:
    # A payout we held settles on both sides while the bank answers: before it, our posted balance
    # is the old one with the payout pending; after it, the new one. Either read explains the bank.
    ledger = Ledger(**{"bank-a": (0, 5_000, 300, 0), "bank-b": (0, 1_000, 0, 0)})
    bank = Bank(**{"bank-a": 4_700, "bank-b": 1_000})

    async def post_it() -> None:
        ledger.set("bank-a", 0, 5_000, 0, 300)

    bank.during["bank-a"] = post_it
    (a, _) = await PoolBankCheck(ledger, SETTINGS, bank).check()
    assert (a.status, a.ours, a.pending_out, a.unexplained) == ("MATCH", 4_700, 0, 0), "the first read that explains"
    # Without a pending stage (posted in one step), only the read after the answer explains it.
    ledger.set("bank-a", 0, 5_000, 0, 0)
    bank.during["bank-a"] = post_it
    (a, _) = await PoolBankCheck(ledger, SETTINGS, bank).check()
    assert (a.status, a.ours, a.difference, a.unexplained) == ("MATCH", 4_700, 0, 0)


async def test_settlement_transfers_in_flight_widen_the_band() -> None:
    ledger = Ledger(**{"bank-a": (0, 5_000, 0, 0), "bank-b": (0, 1_000, 0, 0)})
    bank = Bank(**{"bank-a": 4_000, "bank-b": 2_000})  # the bank settled 1_000 a -> b; we did not record it
    plain = await PoolBankCheck(ledger, SETTINGS, bank).check()
    assert [(r.status, r.unexplained) for r in plain] == [("UNEXPLAINED", -1_000), ("UNEXPLAINED", 1_000)]

    async def in_flight(pool: str, currency: str) -> tuple[int, int]:
        return {"bank-a": (0, 1_000), "bank-b": (1_000, 0)}[pool]

    told = await PoolBankCheck(ledger, SETTINGS, bank, in_flight=in_flight).check()
    assert [(r.status, r.difference, r.unexplained, r.pending_in, r.pending_out) for r in told] == [
        ("IN_FLIGHT", -1_000, 0, 0, 1_000), ("IN_FLIGHT", 1_000, 0, 1_000, 0)]


async def test_no_balance_to_trust_is_unavailable_never_a_number_and_leaves_the_gauges() -> None:
    ledger = Ledger(**{"bank-a": (0, 700, 0, 0), "bank-b": (0, 900, 0, 0)})
    bank = Bank(**{"bank-a": 777, "bank-b": 900})
    check = PoolBankCheck(ledger, SETTINGS, bank, timeout_s=0.05)
    await check.check()
    assert gauge("unexplained", "bank-a") == 77

    async def hang() -> None:
        await asyncio.sleep(1)

    # exception or behaviour   ->  reason
    for during, reason in ((Unavailable("UNTRUSTED"), "UNTRUSTED"),
                           (Unavailable("not a reason"), "FETCH_ERROR"),
                           (RuntimeError("a bug in the fetch"), "FETCH_ERROR"),
                           (hang, "TIMEOUT")):
        bank.during["bank-a"] = during
        a, b = await check.check()
        assert (a.status, a.error, a.theirs, a.ours, a.difference, a.unexplained) == ("UNAVAILABLE", reason, 0, 0,
                                                                                      0, 0), during
        assert "UNAVAILABLE" not in b.status, "one pool's bank failing is that pool's only"
        assert gauge("unexplained", "bank-a") == 77, "the last compared value stays"
        assert reason in a.detail() and "6222000000000101" not in a.detail()


async def test_only_the_currency_given_is_compared() -> None:
    two = ClearingSettings(pools=("bank-a",), currencies=("CNY", "USD"), rail_accounts=ACCOUNTS)
    ledger = Ledger()
    ledger.set("bank-a", 0, 10, 0, 0, currency="USD")
    bank = Bank(**{"bank-a": 10})
    (usd,) = await PoolBankCheck(ledger, two, bank, currency="USD").check()
    assert (usd.currency, usd.status) == ("USD", "MATCH")
    assert [r.currency for r in await PoolBankCheck(ledger, two, bank).check()] == ["CNY", "USD"]
    with pytest.raises(ValueError):
        PoolBankCheck(ledger, two, bank, currency="EUR")
