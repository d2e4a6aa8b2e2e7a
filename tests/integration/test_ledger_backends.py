"""The ledger service on real storage, run once per backend (SQLite, PostgreSQL) through `db_url`.

No gRPC here: `LedgerService(store_from_url(db_url))` with an injected clock, so
expiry is decided by the test, not by waiting. Every test asserts the same
semantics on both backends; a difference between them is a bug in one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from dualflow.core.errors import InvalidRequest
from dualflow.core.ledger.model import (
    EXPIRY_ID_BASE,
    ID_MAX,
    NS_PER_S,
    U64_MAX,
    Account,
    AccountCode,
    AccountFilter,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService

A = CreateAccountResult
R = CreateTransferResult
TF = TransferFlags
AF = AccountFlags
CNY, USD = "CNY", "USD"
T0 = 1_700_000_000 * NS_PER_S


class FakeClock:
    """Wall clock for the ledger under test: it only moves when the test says so."""

    def __init__(self, now_ns: int = T0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_s(self, seconds: float) -> None:
        self.now_ns += int(seconds * NS_PER_S)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def ledger(db_url: str, clock: FakeClock) -> AsyncIterator[LedgerService]:
    svc = LedgerService(store_from_url(db_url), clock_ns=clock, expiry_interval_s=0)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def acct(id_: int, currency: str = CNY, flags: int = 0, code: int = AccountCode.OPERATING,
         user_data: int = 0) -> Account:
    return Account(id_, currency, int(code), int(flags), user_data)


def xfer(id_: int, dr: int, cr: int, amount: int, flags: int = 0, currency: str = CNY, code: int = 1,
         **kw: int) -> Transfer:
    return Transfer(id_, dr, cr, amount, currency=currency, code=code, flags=int(flags), **kw)


async def open_accounts(ledger: LedgerService, *accounts: Account) -> None:
    res = await ledger.create_accounts(accounts)
    assert res.results == [A.OK] * len(accounts)


async def balances(ledger: LedgerService, *ids: int) -> dict[int, tuple[int, int, int, int]]:
    """id -> (debits_pending, debits_posted, credits_pending, credits_posted)."""
    return {
        a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        for a in await ledger.lookup_accounts(ids)
    }


async def assert_balanced(ledger: LedgerService) -> None:
    for t in await ledger.currency_totals():
        assert t.balanced, f"{t.currency} out of balance: {t}"


async def statement(ledger: LedgerService, account_id: int, **kw: object) -> list[Transfer]:
    rows, _ = await ledger.account_transfers(AccountFilter(account_id, limit=8190, **kw), "")  # type: ignore[arg-type]
    return rows


# ------------------------------------------------------------------ accounts

async def test_accounts_create_replay_conflict_and_invalid(ledger: LedgerService) -> None:
    res = await ledger.create_accounts([
        acct(1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS, code=AccountCode.WALLET, user_data=7),
        acct(2, USD, code=AccountCode.POOL),
        acct(3, flags=AF.HISTORY),
    ])
    assert res.results == [A.OK, A.OK, A.OK]
    assert res.timestamps[0] > 0 and res.timestamps == sorted(set(res.timestamps))

    found = await ledger.lookup_accounts([1, 2, 3])
    assert [(a.id, a.currency, a.code, a.flags, a.user_data, a.timestamp) for a in found] == [
        (1, CNY, AccountCode.WALLET, AF.DEBITS_MUST_NOT_EXCEED_CREDITS, 7, res.timestamps[0]),
        (2, USD, AccountCode.POOL, 0, 0, res.timestamps[1]),
        (3, CNY, AccountCode.OPERATING, AF.HISTORY, 0, res.timestamps[2]),
    ]

    replay = await ledger.create_accounts([
        acct(1, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS, code=AccountCode.WALLET, user_data=7),
    ])
    assert replay.results == [A.EXISTS]
    assert replay.timestamps == [res.timestamps[0]], "EXISTS answers the original timestamp"

    bad = await ledger.create_accounts([
        acct(1, code=AccountCode.WALLET, user_data=7),  # same id, other flags
        acct(0),
        acct(ID_MAX + 1),
        acct(10, currency="ZZZ"),
        acct(11, code=0),
        acct(12, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
        acct(13, flags=1 << 5),
        Account(14, CNY, AccountCode.OPERATING, credits_posted=5),
        Account(15, CNY, AccountCode.OPERATING, timestamp=1),
    ])
    assert bad.results == [
        A.EXISTS_WITH_DIFFERENT_FIELDS, A.ID_INVALID, A.ID_INVALID, A.CURRENCY_INVALID, A.CODE_INVALID,
        A.FLAGS_INVALID, A.FLAGS_INVALID, A.BALANCES_MUST_BE_ZERO, A.TIMESTAMP_MUST_BE_ZERO,
    ]
    assert bad.timestamps == [0] * 9
    assert await ledger.lookup_accounts([10, 11, 12, 13, 14, 15]) == []


# ----------------------------------------------------------------- transfers

async def test_transfers_move_balances_and_are_idempotent(ledger: LedgerService) -> None:
    await open_accounts(
        ledger, acct(1, code=AccountCode.EQUITY),
        acct(2, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS, code=AccountCode.WALLET),
        acct(3, flags=AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
        acct(4, USD),
    )
    res = await ledger.create_transfers([
        xfer(100, 1, 2, 1_000),  # top up the wallet
        xfer(101, 2, 1, 400),
        xfer(102, 2, 1, 601),  # 601 > 600 left: overdraft
        xfer(103, 1, 3, 1),  # 3 may not be credited beyond its debits
        xfer(104, 1, 4, 5),  # CNY transfer to a USD account
        xfer(105, 1, 99, 5),  # no such account
        xfer(106, 1, 1, 5),
        xfer(107, 1, 2, 0),
        xfer(108, 1, 2, 5, currency="ZZZ"),
        xfer(109, 1, 2, 5, code=0),
        xfer(110, 1, 2, ID_MAX + 1),
    ])
    assert res.results == [
        R.OK, R.OK, R.EXCEEDS_CREDITS, R.EXCEEDS_DEBITS, R.CURRENCY_MISMATCH, R.ACCOUNT_NOT_FOUND,
        R.SAME_ACCOUNT, R.AMOUNT_INVALID, R.CURRENCY_INVALID, R.CODE_INVALID, R.AMOUNT_INVALID,
    ]
    assert res.timestamps[0] < res.timestamps[1] and res.timestamps[2:] == [0] * 9
    assert await balances(ledger, 1, 2, 3, 4) == {
        1: (0, 1_000, 0, 400), 2: (0, 400, 0, 1_000), 3: (0, 0, 0, 0), 4: (0, 0, 0, 0),
    }
    assert [t.id for t in await ledger.lookup_transfers(range(100, 111))] == [100, 101]

    again = await ledger.create_transfers([xfer(100, 1, 2, 1_000), xfer(101, 2, 1, 401)])
    assert again.results == [R.EXISTS, R.EXISTS_WITH_DIFFERENT_FIELDS]
    assert again.timestamps == [res.timestamps[0], 0]
    assert (await balances(ledger, 1, 2))[2] == (0, 400, 0, 1_000), "a replay moves nothing"

    # The overflow guard: a balance may reach 2^63-1 and not one unit more.
    await open_accounts(ledger, acct(5), acct(6))
    big = await ledger.create_transfers([xfer(120, 5, 6, ID_MAX), xfer(121, 5, 6, 1)])
    assert big.results == [R.OK, R.OVERFLOW]
    assert await balances(ledger, 5, 6) == {5: (0, ID_MAX, 0, 0), 6: (0, 0, 0, ID_MAX)}
    await assert_balanced(ledger)


async def test_linked_chains_commit_all_or_nothing(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(1), acct(2, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS), acct(3))
    ok = await ledger.create_transfers([
        xfer(10, 1, 2, 100, TF.LINKED), xfer(11, 2, 3, 60, TF.LINKED), xfer(12, 2, 3, 40),
    ])
    assert ok.results == [R.OK] * 3
    before = await balances(ledger, 1, 2, 3)
    assert before == {1: (0, 100, 0, 0), 2: (0, 100, 0, 100), 3: (0, 0, 0, 100)}

    failed = await ledger.create_transfers([
        xfer(20, 1, 2, 5),  # unlinked, before the chain: commits
        xfer(21, 1, 2, 50, TF.LINKED),
        xfer(22, 2, 3, 10, TF.LINKED),
        xfer(23, 2, 3, 1_000, TF.LINKED),  # overdraft breaks the chain
        xfer(24, 1, 3, 1),  # the chain's last item
        xfer(25, 1, 3, 2),  # after the chain: commits
        xfer(26, 1, 3, 3, TF.LINKED),  # a chain left open at the end of the batch
    ])
    assert failed.results == [
        R.OK, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS, R.LINKED_EVENT_FAILED,
        R.OK, R.LINKED_EVENT_CHAIN_OPEN,
    ]
    assert [t.id for t in await ledger.lookup_transfers(range(20, 27))] == [20, 25]
    assert await balances(ledger, 1, 2, 3) == {1: (0, 107, 0, 0), 2: (0, 100, 0, 105), 3: (0, 0, 0, 102)}

    replay = await ledger.create_transfers([
        xfer(10, 1, 2, 100, TF.LINKED), xfer(11, 2, 3, 60, TF.LINKED), xfer(12, 2, 3, 40),
    ])
    assert replay.results == [R.EXISTS] * 3
    assert replay.timestamps == ok.timestamps
    await assert_balanced(ledger)


# ------------------------------------------------------------------- pending

async def test_pending_post_void_and_expiry(ledger: LedgerService, clock: FakeClock) -> None:
    await open_accounts(ledger, acct(1), acct(2, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.HISTORY), acct(3))
    assert (await ledger.create_transfers([xfer(1, 1, 2, 1_000)])).results == [R.OK]

    held = await ledger.create_transfers([
        xfer(10, 2, 3, 300, TF.PENDING, timeout_s=60),
        xfer(11, 2, 3, 200, TF.PENDING),  # never expires
        xfer(12, 2, 3, 100, TF.PENDING, timeout_s=5),
        xfer(13, 2, 3, 401, TF.PENDING),  # 300+200+100+401 > 1000
    ])
    assert held.results == [R.OK, R.OK, R.OK, R.EXCEEDS_CREDITS]
    assert (await balances(ledger, 2))[2] == (600, 0, 0, 1_000)

    done = await ledger.create_transfers([
        Transfer(20, pending_id=10, amount=250, flags=TF.POST_PENDING),  # post less: the rest is released
        Transfer(21, pending_id=11, flags=TF.VOID_PENDING),
        Transfer(22, pending_id=10, flags=TF.POST_PENDING),
        Transfer(23, pending_id=11, flags=TF.POST_PENDING),
        Transfer(24, pending_id=12, amount=101, flags=TF.POST_PENDING),
        Transfer(25, pending_id=12, amount=50, flags=TF.VOID_PENDING),  # a void is all or nothing
        Transfer(26, pending_id=1, flags=TF.POST_PENDING),
        Transfer(27, pending_id=999, flags=TF.POST_PENDING),
        Transfer(28, pending_id=12, debit_account_id=1, flags=TF.POST_PENDING),
    ])
    assert done.results == [
        R.OK, R.OK, R.PENDING_ALREADY_POSTED, R.PENDING_ALREADY_VOIDED, R.EXCEEDS_PENDING_AMOUNT,
        R.PENDING_FIELDS_DIFFER, R.PENDING_NOT_PENDING, R.PENDING_NOT_FOUND, R.PENDING_FIELDS_DIFFER,
    ]
    assert await balances(ledger, 2, 3) == {2: (100, 250, 0, 1_000), 3: (0, 0, 100, 250)}
    post, void = await ledger.lookup_transfers([20, 21])
    assert (post.debit_account_id, post.credit_account_id, post.amount, post.currency, post.code) == (2, 3, 250, CNY, 1)
    assert (void.amount, void.pending_id) == (200, 11)
    statuses = {t.id: t.pending_status for t in await ledger.lookup_transfers([10, 11, 12])}
    assert statuses == {10: PendingStatus.POSTED, 11: PendingStatus.VOIDED, 12: PendingStatus.PENDING}

    # Expiry: nothing is due until the clock passes the timeout.
    assert await ledger.expire_due() == 0
    clock.advance_s(4)
    assert await ledger.expire_due() == 0
    assert (await balances(ledger, 2))[2] == (100, 250, 0, 1_000)
    clock.advance_s(2)
    late_post = await ledger.create_transfers([Transfer(30, pending_id=12, flags=TF.POST_PENDING)])
    assert late_post.results == [R.PENDING_EXPIRED], "a due pending cannot be posted even before the sweep"
    assert await ledger.expire_due() == 1
    assert await ledger.expire_due() == 0
    assert await balances(ledger, 2, 3) == {2: (0, 250, 0, 1_000), 3: (0, 0, 0, 250)}

    (expired,) = await ledger.lookup_transfers([12])
    assert expired.pending_status == PendingStatus.EXPIRED
    (expiry_void,) = await ledger.lookup_transfers([EXPIRY_ID_BASE + 12])
    assert expiry_void.flags == TF.VOID_PENDING | TF.EXPIRY
    assert (expiry_void.pending_id, expiry_void.amount, expiry_void.debit_account_id) == (12, 100, 2)
    assert expiry_void.timestamp > expired.timestamp
    again = await ledger.create_transfers([Transfer(31, pending_id=12, flags=TF.VOID_PENDING)])
    assert again.results == [R.PENDING_EXPIRED]
    # The ledger's own void shows in the statement and in the balance history.
    assert EXPIRY_ID_BASE + 12 in [t.id for t in await statement(ledger, 2)]
    history, _ = await ledger.account_balances(AccountFilter(2, newest_first=True, limit=1), "")
    assert history[0].transfer_id == EXPIRY_ID_BASE + 12 and history[0].debits_pending == 0
    await assert_balanced(ledger)


async def test_closing_pending_closes_and_expiry_reopens(ledger: LedgerService, clock: FakeClock) -> None:
    await open_accounts(ledger, acct(1), acct(2))
    res = await ledger.create_transfers([
        xfer(1, 1, 2, 10, TF.PENDING | TF.CLOSING_DEBIT, timeout_s=1),
        xfer(2, 1, 2, 10),
    ])
    assert res.results == [R.OK, R.ACCOUNT_CLOSED]
    (a1,) = await ledger.lookup_accounts([1])
    assert a1.flags & AF.CLOSED
    clock.advance_s(2)
    assert await ledger.expire_due() == 1
    (a1,) = await ledger.lookup_accounts([1])
    assert not a1.flags & AF.CLOSED
    assert (await ledger.create_transfers([xfer(3, 1, 2, 10)])).results == [R.OK]


# ---------------------------------------------------------------- statements

async def test_statements_paginate_both_directions_and_filter_sides(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(1), acct(2), acct(3))
    # Account 1 is debited by even ids and credited by odd ids, in separate commits.
    ids = list(range(100, 117))
    for i in ids:
        t = xfer(i, 1, 2, i) if i % 2 == 0 else xfer(i, 3, 1, i)
        assert (await ledger.create_transfers([t])).results == [R.OK]
    assert (await ledger.create_transfers([xfer(200, 2, 3, 1)])).results == [R.OK]  # not account 1's

    async def pages(**kw: object) -> tuple[list[int], int]:
        out: list[int] = []
        token, n = "", 0
        while True:
            rows, token = await ledger.account_transfers(AccountFilter(1, limit=4, **kw), token)  # type: ignore[arg-type]
            n += 1
            assert len(rows) <= 4
            out += [t.id for t in rows]
            if not token:
                return out, n
            assert n < 20, "pagination does not terminate"

    oldest, n_pages = await pages()
    assert oldest == ids and n_pages >= 5
    newest, _ = await pages(newest_first=True)
    assert newest == ids[::-1]
    debits, _ = await pages(debits=True, credits=False)
    assert debits == [i for i in ids if i % 2 == 0]
    credits, _ = await pages(debits=False, credits=True, newest_first=True)
    assert credits == [i for i in ids if i % 2 == 1][::-1]

    # A time window, inclusive at both ends.
    all_rows = await statement(ledger, 1)
    ts = {t.id: t.timestamp for t in all_rows}
    window = await statement(ledger, 1, timestamp_min=ts[103], timestamp_max=ts[106])
    assert [t.id for t in window] == [103, 104, 105, 106]
    assert all_rows[0].amount == 100 and all_rows[0].debit_account_id == 1

    # Page tokens carry their direction: one from the other direction is refused.
    _, forward_token = await ledger.account_transfers(AccountFilter(1, limit=4), "")
    _, backward_token = await ledger.account_transfers(AccountFilter(1, limit=4, newest_first=True), "")
    assert forward_token and backward_token
    for flt, token in ((AccountFilter(1, limit=4, newest_first=True), forward_token),
                       (AccountFilter(1, limit=4), backward_token),
                       (AccountFilter(1, limit=4), "not a token")):
        with pytest.raises(InvalidRequest) as err:
            await ledger.account_transfers(flt, token)
        assert err.value.reason == "PAGE_TOKEN_INVALID"
    with pytest.raises(InvalidRequest) as err:
        await ledger.account_balances(AccountFilter(1, newest_first=True), forward_token)
    assert err.value.reason == "PAGE_TOKEN_INVALID"

    for bad in (AccountFilter(0), AccountFilter(1, limit=0), AccountFilter(1, limit=8191),
                AccountFilter(1, debits=False, credits=False), AccountFilter(1, timestamp_min=5, timestamp_max=4)):
        with pytest.raises(InvalidRequest) as err:
            await ledger.account_transfers(bad, "")
        assert err.value.reason == "FILTER_INVALID" and err.value.violations
    assert await statement(ledger, 99) == []


async def test_balance_history_follows_every_transfer(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(1), acct(2, flags=AF.HISTORY), acct(3))
    steps = [
        xfer(10, 1, 2, 500),
        xfer(11, 2, 3, 120),
        xfer(12, 2, 3, 80, TF.PENDING),
        Transfer(13, pending_id=12, amount=30, flags=TF.POST_PENDING),
        xfer(14, 1, 3, 7),  # does not touch account 2
    ]
    for t in steps:
        assert (await ledger.create_transfers([t])).results == [R.OK]
    expected = [
        (10, 0, 0, 0, 500), (11, 0, 120, 0, 500), (12, 80, 120, 0, 500), (13, 0, 150, 0, 500),
    ]
    rows, token = await ledger.account_balances(AccountFilter(2), "")
    assert token == ""
    assert [(b.transfer_id, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)
            for b in rows] == expected
    transfers = {t.id: t.timestamp for t in await ledger.lookup_transfers([10, 11, 12, 13])}
    assert [b.timestamp for b in rows] == [transfers[b.transfer_id] for b in rows]

    page1, token = await ledger.account_balances(AccountFilter(2, limit=3, newest_first=True), "")
    page2, token2 = await ledger.account_balances(AccountFilter(2, limit=3, newest_first=True), token)
    assert [b.transfer_id for b in page1 + page2] == [13, 12, 11, 10] and token2 == ""
    # No HISTORY flag, no history.
    assert (await ledger.account_balances(AccountFilter(1), ""))[0] == []


# ------------------------------------------------------------------- lookups

async def test_lookups_keep_request_order_and_skip_missing(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(5), acct(3), acct(9))
    assert (await ledger.create_transfers([xfer(50, 5, 3, 1), xfer(30, 3, 9, 1), xfer(90, 9, 5, 1)])).results \
        == [R.OK] * 3
    assert [a.id for a in await ledger.lookup_accounts([9, 404, 5, 0, 3, ID_MAX, 2**63, U64_MAX])] == [9, 5, 3]
    assert [t.id for t in await ledger.lookup_transfers([90, 1, 30, 0, 50, 2**63, U64_MAX])] == [90, 30, 50]
    assert await ledger.lookup_accounts([]) == []
    with pytest.raises(InvalidRequest) as err:
        await ledger.lookup_transfers(list(range(1, 8192)))
    assert err.value.reason == "BATCH_TOO_LARGE"


async def test_ids_from_2_63_and_user_data_to_2_64(ledger: LedgerService, clock: FakeClock) -> None:
    await open_accounts(ledger, acct(1, user_data=U64_MAX), acct(ID_MAX, user_data=2**63), acct(2, user_data=2**63 - 1))
    assert {a.id: a.user_data for a in await ledger.lookup_accounts([1, ID_MAX, 2])} == {
        1: U64_MAX, ID_MAX: 2**63, 2: 2**63 - 1,
    }
    res = await ledger.create_transfers([
        xfer(ID_MAX, 1, ID_MAX, 10, TF.PENDING, timeout_s=1, user_data=U64_MAX),  # its expiry void: id 2^64-1
        xfer(7, ID_MAX, 1, 3, TF.PENDING, timeout_s=1, user_data=2**63),
        xfer(8, 1, 2, 1, user_data=0),
        xfer(2**63, 1, 2, 1),  # the ledger's own id range
        xfer(U64_MAX, 1, 2, 1),
        xfer(9, 1, 2, 1, flags=TF.EXPIRY),  # only the ledger sets EXPIRY
        Transfer(10, pending_id=2**63 + 7, flags=TF.VOID_PENDING),
    ])
    assert res.results == [
        R.OK, R.OK, R.OK, R.ID_INVALID, R.ID_INVALID, R.FLAGS_INVALID, R.PENDING_ID_INVALID,
    ]
    assert {t.id: t.user_data for t in await ledger.lookup_transfers([ID_MAX, 7, 8])} == {
        ID_MAX: U64_MAX, 7: 2**63, 8: 0,
    }
    clock.advance_s(2)
    assert await ledger.expire_due() == 2
    voids = await ledger.lookup_transfers([U64_MAX, EXPIRY_ID_BASE + 7, EXPIRY_ID_BASE])
    assert [(t.id, t.pending_id, t.user_data, t.flags) for t in voids] == [
        (U64_MAX, ID_MAX, U64_MAX, TF.VOID_PENDING | TF.EXPIRY),
        (EXPIRY_ID_BASE + 7, 7, 2**63, TF.VOID_PENDING | TF.EXPIRY),
    ]
    stmt = await statement(ledger, ID_MAX)
    # Statements order by timestamp whatever the id (ids past 2^63 are stored negative).
    assert [t.id for t in stmt] == [ID_MAX, 7, U64_MAX, EXPIRY_ID_BASE + 7]
    assert await balances(ledger, 1, ID_MAX) == {1: (0, 1, 0, 0), ID_MAX: (0, 0, 0, 0)}


async def test_currency_totals_per_currency(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(1), acct(2), acct(3, USD), acct(4, USD), acct(5, "JPY"))
    res = await ledger.create_transfers([
        xfer(1, 1, 2, 1_000), xfer(2, 2, 1, 250), xfer(3, 3, 4, 77, currency=USD),
        xfer(4, 4, 3, 5, TF.PENDING, currency=USD),
    ])
    assert res.results == [R.OK] * 4
    totals = {t.currency: t for t in await ledger.currency_totals()}
    assert set(totals) == {CNY, USD, "JPY"}
    cny, usd, jpy = totals[CNY], totals[USD], totals["JPY"]
    assert (cny.debits_pending, cny.debits_posted, cny.credits_pending, cny.credits_posted) == (0, 1_250, 0, 1_250)
    assert (usd.debits_pending, usd.debits_posted, usd.credits_pending, usd.credits_posted) == (5, 77, 5, 77)
    assert (jpy.debits_posted, jpy.credits_posted) == (0, 0)
    assert all(t.balanced for t in totals.values())


async def test_currency_totals_do_not_overflow(ledger: LedgerService) -> None:
    # Two balances near 2^63 sum past int64: the totals must still be exact.
    await open_accounts(ledger, acct(1), acct(2), acct(3), acct(4))
    res = await ledger.create_transfers([xfer(1, 1, 2, ID_MAX), xfer(2, 3, 4, ID_MAX)])
    assert res.results == [R.OK, R.OK]
    (cny,) = await ledger.currency_totals()
    assert cny.debits_posted == cny.credits_posted == 2 * ID_MAX


# --------------------------------------------------------------- concurrency

async def test_concurrent_calls_coalesce_into_few_commits(ledger: LedgerService) -> None:
    await open_accounts(ledger, acct(1), acct(2, flags=AF.DEBITS_MUST_NOT_EXCEED_CREDITS), acct(3))
    assert (await ledger.create_transfers([xfer(1, 1, 2, 30_000)])).results == [R.OK]

    commits: list[int] = []
    real_commit = ledger.store.commit

    async def counting_commit(commands, now_ns):  # type: ignore[no-untyped-def]
        commits.append(len(commands))
        return await real_commit(commands, now_ns)

    ledger.store.commit = counting_commit  # type: ignore[method-assign]
    n = 200
    calls = [ledger.create_transfers([xfer(1_000 + i, 2, 3, i + 1)]) for i in range(n)]
    results = await asyncio.gather(*calls)
    tally = Counter(r for res in results for r in res.results)
    assert tally == {R.OK: n}
    assert sum(commits) == n, "every request committed exactly once"
    assert len(commits) <= 10, f"{n} concurrent calls took {len(commits)} commits: {commits}"
    stamps = [res.timestamps[0] for res in results]
    assert len(set(stamps)) == n, "every transfer has its own timestamp"

    moved = sum(range(1, n + 1))
    assert await balances(ledger, 2, 3) == {2: (0, moved, 0, 30_000), 3: (0, 0, 0, moved)}
    assert len(await ledger.lookup_transfers([1_000 + i for i in range(n)])) == n

    # Replayed concurrently, all answer EXISTS and nothing moves.
    commits.clear()
    replays = await asyncio.gather(*[ledger.create_transfers([xfer(1_000 + i, 2, 3, i + 1)]) for i in range(n)])
    assert Counter(r for res in replays for r in res.results) == {R.EXISTS: n}
    assert [res.timestamps[0] for res in replays] == stamps
    assert await balances(ledger, 2, 3) == {2: (0, moved, 0, 30_000), 3: (0, 0, 0, moved)}
    await assert_balanced(ledger)


# ------------------------------------------------------------------- restart

async def test_restart_keeps_everything_and_time_moves_forward(db_url: str) -> None:
    clock = FakeClock()
    first = LedgerService(store_from_url(db_url), clock_ns=clock, expiry_interval_s=0)
    await first.start()
    try:
        await open_accounts(first, acct(1), acct(2, flags=AF.HISTORY), acct(3, USD, user_data=U64_MAX))
        res = await first.create_transfers([
            xfer(10, 1, 2, 100), xfer(11, 1, 2, 50, TF.PENDING, timeout_s=30), xfer(12, 2, 1, 1, TF.PENDING),
        ])
        assert res.results == [R.OK] * 3
        accounts_before = await first.lookup_accounts([1, 2, 3])
        transfers_before = await first.lookup_transfers([10, 11, 12])
        history_before = (await first.account_balances(AccountFilter(2), ""))[0]
        last_before = max(res.timestamps)
    finally:
        await first.stop()

    # The new process's wall clock is an hour behind: the ledger's clock must not go back.
    second = LedgerService(store_from_url(db_url), clock_ns=FakeClock(T0 - 3_600 * NS_PER_S), expiry_interval_s=0)
    await second.start()
    try:
        assert await second.lookup_accounts([1, 2, 3]) == accounts_before
        assert await second.lookup_transfers([10, 11, 12]) == transfers_before
        assert (await second.account_balances(AccountFilter(2), ""))[0] == history_before
        assert await second.store.next_expiry() == transfers_before[1].expires_at > 0

        res = await second.create_transfers([
            xfer(13, 1, 2, 1), Transfer(14, pending_id=11, flags=TF.POST_PENDING), xfer(10, 1, 2, 100),
        ])
        assert res.results == [R.OK, R.OK, R.EXISTS]
        assert last_before < res.timestamps[0] < res.timestamps[1]
        assert res.timestamps[2] == transfers_before[0].timestamp
        acc = await second.create_accounts([acct(4)])
        assert acc.timestamps[0] > res.timestamps[1]
        assert await balances(second, 1, 2) == {1: (0, 151, 1, 0), 2: (1, 0, 0, 151)}
        await assert_balanced(second)
    finally:
        await second.stop()
