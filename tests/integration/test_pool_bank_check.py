"""The pool bank check against the mock transfer rail, its own process on loopback, and a real
ledger on SQLite.

Three pools hold the same float at their banks and in the ledger: every pool matches. A
settlement transfer from pool A to pool B goes through the rail (RailSettlementExecutor): while
the bank only holds it, nothing differs (A shows it held); once the bank settled it and before the
ledger posts it, A and B differ by its amount, unexplained unless the transfers in flight are
given to the check; once posted, all match again. A balance changed by hand at one bank is
unexplained for that pool only. A reply that does not verify, or an account the bank does not
know, is UNAVAILABLE, never a number. No full account number reaches a result, an error or a log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from dualflow.adapters.contract import BalanceUnavailable, ChannelConfig
from dualflow.adapters.transfer import TransferAdapter, create
from dualflow.adapters.transfer.pool_balance import _get, fetch_pool_balance, pool_balance_fetcher
from dualflow.adapters.transfer.settlement import RailSettlementExecutor
from dualflow.clearing.bank_check import PoolBankBalance, PoolBankCheck
from dualflow.clearing.pools import deposit_own_funds, open_pool_accounts, settlement_transfer
from dualflow.clearing.settings import ClearingSettings, RailAccount
from dualflow.clearing.settlement import SettlementOrder
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.dispatch import ChannelOutcome
from dualflow.mock_banks.launcher import MockBankProcess

KEY = bytes.fromhex("3c" * 32)
POOLS = {
    "bank-a": RailAccount("BANKA", "6222000000000101", "dualflow reserve A"),
    "bank-b": RailAccount("BANKB", "6222000000000202", "dualflow reserve B"),
    "bank-c": RailAccount("BANKC", "6222000000000303", "dualflow reserve C"),
}
STRANGER = RailAccount("BANKD", "6222000000000404", "dualflow reserve D")  # never registered at the bank
FLOAT = 1_000_000
AMOUNT = 250_000
SETTLE_AFTER_MS = 1_000  # long enough to look at a held transfer, short enough for a quick test
SETTINGS = ClearingSettings(pools=tuple(POOLS), currencies=("CNY",), rail_accounts=POOLS, settle_interval_s=0,
                            invariant_interval_s=0)
NUMBERS = [a.number for a in (*POOLS.values(), STRANGER)]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("pool-bank-keys") / "rail.hex"
    key.write_text(KEY.hex())
    return key


@pytest.fixture(scope="module")
def rail(key_file: Path) -> Iterator[MockBankProcess]:
    with MockBankProcess("transfer", "--hmac-key-file", str(key_file), "--seed", "17") as bank:
        yield bank
    assert "Traceback" not in bank.stderr_tail(200), bank.stderr_tail(200)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[LedgerService]:
    service = LedgerService(store_from_url(str(tmp_path / "ledger.db")), expiry_interval_s=0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def adapter(rail: MockBankProcess, key_file: Path) -> AsyncIterator[TransferAdapter]:
    a = create(ChannelConfig(name="rail", kind="transfer", key_files={"hmac_key": key_file},
                             settings={"base_url": f"http://127.0.0.1:{rail.port}", "currencies": ["CNY"],
                                       "pool_account": {"bank_code": "BANKA", "number": POOLS["bank-a"].number,
                                                        "name": POOLS["bank-a"].name},
                                       "timeout_ms": 3_000}))
    yield a
    await a.close()


def gauge(name: str, pool: str) -> float | None:
    return REGISTRY.get_sample_value(f"dualflow_clearing_pool_bank_{name}_minor", {"pool": pool, "currency": "CNY"})


def by_pool(results: list[PoolBankBalance]) -> dict[str, PoolBankBalance]:
    assert [r.currency for r in results] == ["CNY"] * len(results)
    return {r.pool: r for r in results}


def statuses(results: list[PoolBankBalance]) -> dict[str, tuple[str, int, int]]:
    return {r.pool: (r.status, r.difference, r.unexplained) for r in results}


def no_numbers(*texts: str) -> None:
    for text in texts:
        for number in NUMBERS:
            assert number not in text, "a full account number leaked"


async def test_pools_match_their_banks_through_a_settlement_and_a_hand_made_difference_is_found(
        rail: MockBankProcess, ledger: LedgerService, adapter: TransferAdapter,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    rail.set_profile(latency_ms=0, jitter_ms=0, decline_rate=0.0, insufficient_funds_rate=0.0, timeout_rate=0.0,
                     lost_reply_rate=0.0, late_reply_ms=0, pending_rate=1.0, settle_after_ms=SETTLE_AFTER_MS,
                     bad_signature_rate=0.0, outage=False, fee_fixed=0, fee_bps=0, return_rate=0.0)
    rail._call("PUT", "/accounts", [{"bank_code": a.bank_code, "number": a.number, "name": a.name,
                                     "balance": FLOAT} for a in POOLS.values()])
    await open_pool_accounts(ledger, SETTINGS.pools, SETTINGS.currencies)
    for pool in POOLS:
        await deposit_own_funds(ledger, pool, "CNY", FLOAT, key=f"float-{pool}")
    check = PoolBankCheck(ledger, SETTINGS, pool_balance_fetcher(adapter))

    first = by_pool(await check.check())
    assert list(first) == list(POOLS)
    assert {p: (r.status, r.ours, r.theirs, r.held) for p, r in first.items()} == {
        p: ("MATCH", FLOAT, FLOAT, 0) for p in POOLS}
    assert all(r.bank_code == POOLS[p].bank_code and r.as_of_unix_s > 0 for p, r in first.items())

    # A settlement transfer A -> B: accepted, held on A's account until it settles.
    executor = RailSettlementExecutor(adapter, POOLS)
    order = SettlementOrder("W000001/0", "W000001", "bank-a", "bank-b", AMOUNT, "CNY", attempt=1)
    assert (await executor.send(order)).outcome is ChannelOutcome.PENDING
    held = by_pool(await check.check())
    assert {p: (r.status, r.theirs, r.held) for p, r in held.items()} == {
        "bank-a": ("MATCH", FLOAT, AMOUNT), "bank-b": ("MATCH", FLOAT, 0), "bank-c": ("MATCH", FLOAT, 0)}

    # The bank settled it; the clearing service has not recorded it yet (no pending stage in the
    # ledger): both pools differ by its amount, unless the check is told what is in flight.
    deadline = time.monotonic() + 5 * SETTLE_AFTER_MS / 1000
    while (answer := await executor.send(replace(order, attempt=2))).outcome is not ChannelOutcome.SUCCEEDED:
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)
    settled = await check.check()
    assert statuses(settled) == {"bank-a": ("UNEXPLAINED", -AMOUNT, -AMOUNT), "bank-b": ("UNEXPLAINED", AMOUNT, AMOUNT),
                                 "bank-c": ("MATCH", 0, 0)}
    assert (gauge("difference", "bank-a"), gauge("unexplained", "bank-b")) == (-AMOUNT, AMOUNT)

    async def in_flight(pool: str, currency: str) -> tuple[int, int]:
        return {"bank-a": (0, AMOUNT), "bank-b": (AMOUNT, 0)}.get(pool, (0, 0))

    told = await PoolBankCheck(ledger, SETTINGS, pool_balance_fetcher(adapter), currency="CNY",
                               in_flight=in_flight).check()
    assert statuses(told) == {"bank-a": ("IN_FLIGHT", -AMOUNT, 0), "bank-b": ("IN_FLIGHT", AMOUNT, 0),
                              "bank-c": ("MATCH", 0, 0)}

    # The service records it: the ledger catches up with the bank.
    result = await ledger.create_transfers([settlement_transfer(order.instruction_id, "bank-a", "bank-b", AMOUNT,
                                                                "CNY")])
    assert result.results == [1], result.results
    posted = by_pool(await check.check())
    assert {p: (r.status, r.ours, r.theirs, r.held) for p, r in posted.items()} == {
        "bank-a": ("MATCH", FLOAT - AMOUNT, FLOAT - AMOUNT, 0), "bank-b": ("MATCH", FLOAT + AMOUNT, FLOAT + AMOUNT, 0),
        "bank-c": ("MATCH", FLOAT, FLOAT, 0)}
    assert all(gauge("difference", p) == gauge("unexplained", p) == 0 for p in POOLS)

    # A hand-made difference at one bank: that pool only.
    rail._call("PUT", "/accounts", [{"bank_code": "BANKC", "number": POOLS["bank-c"].number,
                                     "name": POOLS["bank-c"].name, "balance": FLOAT + 500}])
    drifted = await check.check()
    assert statuses(drifted) == {"bank-a": ("MATCH", 0, 0), "bank-b": ("MATCH", 0, 0),
                                 "bank-c": ("UNEXPLAINED", 500, 500)}
    assert (gauge("difference", "bank-c"), gauge("unexplained", "bank-c")) == (500, 500)
    assert "beyond in flight" in by_pool(drifted)["bank-c"].detail()

    # Replies that do not verify: no number, and the gauges keep the last compared values.
    rail.set_profile(bad_signature_rate=1.0)
    try:
        untrusted = await check.check()
    finally:
        rail.set_profile(bad_signature_rate=0.0)
    assert {r.pool: (r.status, r.error, r.theirs, r.difference) for r in untrusted} == {
        p: ("UNAVAILABLE", "UNTRUSTED", 0, 0) for p in POOLS}
    assert gauge("unexplained", "bank-c") == 500

    # An account the bank does not know: a signed NOT_FOUND, UNAVAILABLE for that pool only.
    with_stranger = ClearingSettings(pools=(*POOLS, "bank-d"), currencies=("CNY",),
                                     rail_accounts={**POOLS, "bank-d": STRANGER})
    await open_pool_accounts(ledger, ["bank-d"], ["CNY"])
    unknown = by_pool(await PoolBankCheck(ledger, with_stranger, pool_balance_fetcher(adapter)).check())
    assert (unknown["bank-d"].status, unknown["bank-d"].error) == ("UNAVAILABLE", "BANK_ERROR")
    assert unknown["bank-a"].status == "MATCH" and gauge("difference", "bank-d") is None
    with pytest.raises(BalanceUnavailable) as raised:
        await fetch_pool_balance(adapter, STRANGER)
    assert raised.value.reason == "BANK_ERROR" and "NOT_FOUND" in str(raised.value)

    # The reply names the account by its last four digits only; nothing logged or reported names it.
    path = f"/accounts/BANKA/{POOLS['bank-a'].number}/balance"
    status, raw = await _get(adapter, path, "test")
    assert status == 200 and b'"last4":"0101"' in raw
    no_numbers(raw.decode(), str(raised.value), caplog.text,
               *(r.detail() for r in (*first.values(), *settled, *drifted, *untrusted, *unknown.values())))
    assert time.monotonic() - started < 5


async def test_an_unreachable_bank_or_a_currency_the_channel_does_not_move_is_unavailable(
        ledger: LedgerService, adapter: TransferAdapter, key_file: Path) -> None:
    fetch = pool_balance_fetcher(adapter)
    with pytest.raises(BalanceUnavailable) as raised:
        await fetch("bank-a", POOLS["bank-a"], "USD")
    assert raised.value.reason == "UNSUPPORTED_CURRENCY"
    gone = create(ChannelConfig(name="gone", kind="transfer", key_files={"hmac_key": key_file},
                                settings={"base_url": "http://127.0.0.1:9", "currencies": ["CNY"],
                                          "pool_account": {"bank_code": "BANKA", "number": POOLS["bank-a"].number,
                                                           "name": POOLS["bank-a"].name}}))
    try:
        results = await PoolBankCheck(ledger, SETTINGS, pool_balance_fetcher(gone)).check()
    finally:
        await gone.close()
    assert {r.pool: (r.status, r.error) for r in results} == {p: ("UNAVAILABLE", "CONNECTION_FAILED") for p in POOLS}
