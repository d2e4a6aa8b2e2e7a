"""SIGKILL the real server under concurrent load, restart it on the same database, audit the ledger.

Per backend (`db_url`: SQLite and PostgreSQL) one `dualflow serve` child is fed
by 16-32 concurrent gRPC callers sending batches of 1-50 transfers: plain ones,
linked chains (some built to fail on an overdrawn wallet), pending ones (some
expiring after 1-2 s) and posts/voids of earlier pending ones. At a seeded random
moment the process is SIGKILLed; no handler runs, so only what was durable
survives. After each restart the audit proves:

- every transfer whose CreateTransfers call answered OK is stored with exactly
  the fields sent and the timestamp answered; one that answered a failure is absent;
- no linked chain is half-applied, acknowledged or not;
- the database holds nothing but transfers we sent and the ledger's expiry voids,
  and each pending transfer has at most one post/void/expiry;
- every account's balances equal what the stored transfers imply (pending,
  posted, voided and expired counted by their resolutions), a history account's
  last snapshot equals its balances, and no wallet is overdrawn;
- per currency, debits equal credits (pending and posted);
- replaying acknowledged calls answers EXISTS with the original timestamps;
- new transfers are accepted with timestamps above every stored one.

The seed is printed (shown with the failure); rerun one with DUALFLOW_CRASH_SEED=N.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import grpc
import pytest
from serve_process import ServeFactory, ServeProcess, serve_processes  # noqa: F401 - fixture

from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc

pytestmark = pytest.mark.timeout(120)

KILLS_PER_BACKEND = 3
SOAK_KILLS_PER_BACKEND = 12
EXPIRY_ID_BASE = 2**63
LOOKUP_CHUNK = 8000
CALL_TIMEOUT_S = 15.0

OK = pb.CREATE_TRANSFER_RESULT_OK
EXISTS = pb.CREATE_TRANSFER_RESULT_EXISTS
LINKED_FAILED = pb.CREATE_TRANSFER_RESULT_LINKED_EVENT_FAILED
F_LINKED = pb.TRANSFER_FLAG_LINKED
F_PENDING = pb.TRANSFER_FLAG_PENDING
F_POST = pb.TRANSFER_FLAG_POST_PENDING
F_VOID = pb.TRANSFER_FLAG_VOID_PENDING
F_EXPIRY = pb.TRANSFER_FLAG_EXPIRY
WALLET = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS
HISTORY = pb.ACCOUNT_FLAG_HISTORY


@dataclass(frozen=True)
class Acct:
    id: int
    currency: str
    code: int
    flags: int


# Two currencies, so "debits = credits per currency" is not a single global sum.
ACCOUNTS = (
    [Acct(1, "CNY", pb.ACCOUNT_CODE_EQUITY, 0), Acct(2, "USD", pb.ACCOUNT_CODE_EQUITY, 0)]
    + [Acct(10 + i, "CNY", pb.ACCOUNT_CODE_WALLET, WALLET | (HISTORY if i < 2 else 0)) for i in range(8)]
    + [Acct(20 + i, "CNY", pb.ACCOUNT_CODE_MERCHANT, HISTORY if i == 0 else 0) for i in range(4)]
    + [Acct(30 + i, "USD", pb.ACCOUNT_CODE_WALLET, WALLET) for i in range(6)]
    + [Acct(40 + i, "USD", pb.ACCOUNT_CODE_MERCHANT, HISTORY if i == 0 else 0) for i in range(2)]
)
BY_ID = {a.id: a for a in ACCOUNTS}
BY_CURRENCY = {c: [a for a in ACCOUNTS if a.currency == c] for c in ("CNY", "USD")}
EQUITY = {"CNY": 1, "USD": 2}


@dataclass
class Call:
    """One CreateTransfers call: what was sent and, if it answered, what it answered."""

    transfers: list[pb.Transfer]
    chains: list[tuple[int, int]]  # inclusive index ranges of linked chains
    results: list[int] | None = None  # None: no answer (the server died), outcome unknown
    timestamps: list[int] | None = None
    error: grpc.StatusCode | None = None


@dataclass
class Ledger:
    """What the test sent and learned, across every server lifetime of one database."""

    rng: random.Random
    next_id: int = 1_000
    calls: list[Call] = field(default_factory=list)
    max_timestamp: int = 0  # highest timestamp the last audit saw stored

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def sent_ids(self) -> list[int]:
        ids: list[int] = []
        for call in self.calls:
            for t in call.transfers:
                ids.append(t.id)
                if t.flags & F_PENDING and t.timeout_s:
                    ids.append(EXPIRY_ID_BASE + t.id)
        return ids


# ------------------------------------------------------------------ load

@dataclass
class LoadStats:
    answered: int = 0
    in_flight_at_kill: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # unanswered calls by status code


class Caller:
    """One concurrent client: builds random batches, remembers its acknowledged pending transfers."""

    def __init__(self, ledger: Ledger, rng: random.Random) -> None:
        self.ledger = ledger
        self.rng = rng
        self.open_pending: list[pb.Transfer] = []

    def _plain(self, flags: int = 0, amount: int | None = None) -> pb.Transfer:
        rng = self.rng
        currency = rng.choice(("CNY", "USD"))
        r = rng.random()
        if r < 0.15:  # top-ups keep the wallets funded
            dr = EQUITY[currency]
            cr = rng.choice([a.id for a in BY_CURRENCY[currency] if a.code == pb.ACCOUNT_CODE_WALLET])
        else:
            dr, cr = (a.id for a in rng.sample(BY_CURRENCY[currency], 2))
        return pb.Transfer(id=self.ledger.new_id(), debit_account_id=dr, credit_account_id=cr,
                           amount=amount or rng.randint(1, 20_000), currency=currency,
                           code=rng.randint(1, 9), flags=flags, user_data=rng.getrandbits(64))

    def _pending(self, flags: int = 0) -> pb.Transfer:
        t = self._plain(flags | F_PENDING)
        t.timeout_s = self.rng.choice((0, 0, 1, 2, 60))
        return t

    def _resolve(self) -> pb.Transfer | None:
        if not self.open_pending:
            return None
        p = self.open_pending.pop(self.rng.randrange(len(self.open_pending)))
        # Inherited fields sent explicitly (allowed: "0 or the pending's") so the stored row equals what was sent.
        if self.rng.random() < 0.6:
            return pb.Transfer(id=self.ledger.new_id(), debit_account_id=p.debit_account_id,
                               credit_account_id=p.credit_account_id, amount=self.rng.randint(1, p.amount),
                               pending_id=p.id, currency=p.currency, code=p.code, flags=F_POST,
                               user_data=self.rng.getrandbits(64))
        return pb.Transfer(id=self.ledger.new_id(), debit_account_id=p.debit_account_id,
                           credit_account_id=p.credit_account_id, amount=p.amount, pending_id=p.id,
                           currency=p.currency, code=p.code, flags=F_VOID, user_data=self.rng.getrandbits(64))

    def batch(self) -> Call:
        rng = self.rng
        n = rng.randint(1, 50)
        items: list[pb.Transfer] = []
        chains: list[tuple[int, int]] = []
        while len(items) < n:
            r = rng.random()
            if r < 0.45:
                items.append(self._plain())
            elif r < 0.65:
                size = rng.randint(2, 4)
                chain = [self._pending(F_LINKED) if rng.random() < 0.2 else self._plain(F_LINKED)
                         for _ in range(size)]
                if rng.random() < 0.3:  # one leg overdraws a wallet: the whole chain must fail
                    wallet = rng.choice([a for a in ACCOUNTS if a.flags & WALLET])
                    leg = chain[rng.randrange(size)]
                    other = next(a for a in BY_CURRENCY[wallet.currency] if a.id != wallet.id)
                    leg.debit_account_id, leg.credit_account_id = wallet.id, other.id
                    leg.currency, leg.amount = wallet.currency, 2**62
                chain[-1].flags &= ~F_LINKED
                chains.append((len(items), len(items) + size - 1))
                items.extend(chain)
            elif r < 0.82:
                items.append(self._pending())
            else:
                items.append(self._resolve() or self._plain())
        return Call(items, chains)

    def learn(self, call: Call) -> None:
        assert call.results is not None
        for t, r in zip(call.transfers, call.results, strict=True):
            if r == OK and t.flags & F_PENDING:
                self.open_pending.append(t)


async def create_transfers(stub: ledger_pb2_grpc.LedgerStub, transfers: list[pb.Transfer]) -> pb.CreateTransfersResponse:
    return await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=transfers), timeout=CALL_TIMEOUT_S)


async def load_then_kill(server: ServeProcess, ledger: Ledger, callers: list[Caller], kill_after_s: float
                         ) -> LoadStats:
    """Run every caller against `server` until it is SIGKILLed `kill_after_s` into the load."""
    dead = asyncio.Event()
    stats = LoadStats()
    in_flight = 0

    async def caller(c: Caller, stub: ledger_pb2_grpc.LedgerStub) -> None:
        nonlocal in_flight
        while not dead.is_set():
            call = c.batch()
            ledger.calls.append(call)
            in_flight += 1
            try:
                resp = await create_transfers(stub, call.transfers)
            except grpc.aio.AioRpcError as exc:
                call.error = exc.code()
                stats.errors[exc.code().name] += 1
                return  # the server is gone: this caller's work is done for this lifetime
            finally:
                in_flight -= 1
            call.results, call.timestamps = list(resp.results), list(resp.timestamps)
            stats.answered += 1
            c.learn(call)

    async def killer() -> None:
        await asyncio.sleep(kill_after_s)
        stats.in_flight_at_kill = in_flight
        server.signal(signal.SIGKILL)
        rc = await asyncio.get_running_loop().run_in_executor(None, server.wait, 10)
        assert rc == -signal.SIGKILL, f"server ended with {rc}, not by our SIGKILL\n{server.diagnostics()}"
        dead.set()

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        await asyncio.gather(killer(), *(caller(c, stub) for c in callers))
    return stats


# ----------------------------------------------------------------- audit

async def lookup_transfers(stub: ledger_pb2_grpc.LedgerStub, ids: list[int]) -> dict[int, pb.Transfer]:
    found: dict[int, pb.Transfer] = {}
    for i in range(0, len(ids), LOOKUP_CHUNK):
        resp = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=ids[i:i + LOOKUP_CHUNK]), timeout=30)
        found.update((t.id, t) for t in resp.transfers)
    return found


async def statement_ids(stub: ledger_pb2_grpc.LedgerStub, account_id: int) -> list[int]:
    ids: list[int] = []
    token = ""
    while True:
        resp = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
            filter=pb.AccountFilter(account_id=account_id, limit=8190, page_token=token)), timeout=30)
        ids += [t.id for t in resp.transfers]
        token = resp.next_page_token
        if not token:
            return ids


async def lookup_accounts(stub: ledger_pb2_grpc.LedgerStub) -> dict[int, pb.Account]:
    resp = await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[a.id for a in ACCOUNTS]), timeout=30)
    return {a.id: a for a in resp.accounts}


async def last_snapshots(stub: ledger_pb2_grpc.LedgerStub) -> dict[int, pb.AccountBalance]:
    """The newest balance snapshot of every history account that has one."""
    out = {}
    for a in ACCOUNTS:
        if a.flags & HISTORY:
            resp = await stub.GetAccountBalances(pb.GetAccountBalancesRequest(
                filter=pb.AccountFilter(account_id=a.id, limit=1, newest_first=True)), timeout=30)
            if resp.balances:
                out[a.id] = resp.balances[0]
    return out


@dataclass
class Reading:
    accounts: dict[int, pb.Account]
    stored: dict[int, pb.Transfer]
    statements: dict[int, list[int]]
    snapshots: dict[int, pb.AccountBalance]


async def consistent_read(stub: ledger_pb2_grpc.LedgerStub, ledger: Ledger) -> Reading:
    """Accounts, stored transfers, statements and history from one quiet moment.

    The expiry sweeper may write while we read. Every write moves some balance
    (an expiry lowers pending ones), so equal account reads before and after
    mean nothing was committed in between.
    """
    ids = ledger.sent_ids()
    for _ in range(20):
        before = await lookup_accounts(stub)
        stored = await lookup_transfers(stub, ids)
        statements = {a.id: await statement_ids(stub, a.id) for a in ACCOUNTS}
        snapshots = await last_snapshots(stub)
        after = await lookup_accounts(stub)
        if before == after:
            return Reading(after, stored, statements, snapshots)
        await asyncio.sleep(0.2)
    raise AssertionError("the ledger never held still for an audit (20 attempts)")


def same_fields(sent: pb.Transfer, stored: pb.Transfer, timestamp: int | None) -> bool:
    expected = pb.Transfer()
    expected.CopyFrom(sent)
    expected.timestamp = timestamp if timestamp is not None else stored.timestamp
    return expected == stored and stored.timestamp > 0


async def audit(stub: ledger_pb2_grpc.LedgerStub, ledger: Ledger, label: str) -> None:
    reading = await consistent_read(stub, ledger)
    accounts, stored, statements = reading.accounts, reading.stored, reading.statements
    assert set(accounts) == set(BY_ID), f"{label}: accounts lost: {set(BY_ID) - set(accounts)}"
    sent = {t.id: t for call in ledger.calls for t in call.transfers}

    # The database holds what we sent and the ledger's expiry voids, nothing else, and the
    # statements (both sides of every account) list exactly the stored transfers.
    listed = defaultdict(int)
    for account_id, ids in statements.items():
        for i in ids:
            listed[i] += 1
    assert set(listed) == set(stored), (
        f"{label}: statements and lookups disagree: only in statements "
        f"{sorted(set(listed) - set(stored))[:10]}, only looked up {sorted(set(stored) - set(listed))[:10]}")
    assert all(n == 2 for n in listed.values()), f"{label}: a transfer is not on exactly two statements"
    timestamps = [t.timestamp for t in stored.values()] + [a.timestamp for a in accounts.values()]
    assert len(set(timestamps)) == len(timestamps), f"{label}: two rows share a timestamp"

    # Acknowledged calls: OK items stored exactly as sent with the answered timestamp, failed items absent.
    acknowledged = unknown = 0
    for call in ledger.calls:
        if call.results is None:
            unknown += 1
            continue
        acknowledged += 1
        assert call.timestamps is not None
        for t, r, ts in zip(call.transfers, call.results, call.timestamps, strict=True):
            if r == OK:
                assert t.id in stored, f"{label}: acknowledged transfer {t.id} is lost"
                assert same_fields(t, stored[t.id], ts), f"{label}: {t} stored as {stored[t.id]}"
            else:
                assert r != EXISTS, f"{label}: transfer {t.id} was sent once but answered EXISTS"
                assert t.id not in stored, f"{label}: transfer {t.id} answered {r} but is stored"
        for start, end in call.chains:
            chain = call.results[start:end + 1]
            assert all(r == OK for r in chain) or all(r != OK for r in chain), \
                f"{label}: chain answered {chain}"
    # Unanswered calls: whatever is stored is what was sent; chains are all or nothing.
    unknown_committed = 0
    for call in ledger.calls:
        if call.results is not None:
            continue
        present = [t for t in call.transfers if t.id in stored]
        unknown_committed += bool(present)
        for t in present:
            assert same_fields(t, stored[t.id], None), f"{label}: {t} stored as {stored[t.id]}"
    for call in ledger.calls:
        for start, end in call.chains:
            present = [call.transfers[i].id in stored for i in range(start, end + 1)]
            assert all(present) or not any(present), \
                f"{label}: linked chain {[t.id for t in call.transfers[start:end + 1]]} half-applied: {present}"

    # Expiry voids and pending resolutions.
    resolved_by: dict[int, pb.Transfer] = {}
    for t in stored.values():
        if t.id >= EXPIRY_ID_BASE:
            p = sent[t.id - EXPIRY_ID_BASE]
            assert t.flags == F_VOID | F_EXPIRY and t.pending_id == p.id and t.amount == p.amount \
                and (t.debit_account_id, t.credit_account_id, t.currency, t.code, t.user_data) \
                == (p.debit_account_id, p.credit_account_id, p.currency, p.code, p.user_data), \
                f"{label}: expiry void {t} does not match its pending {p}"
        else:
            assert t.id in sent, f"{label}: stored transfer {t.id} was never sent"
        if t.flags & (F_POST | F_VOID):
            assert t.pending_id not in resolved_by, \
                f"{label}: pending {t.pending_id} resolved twice: {resolved_by[t.pending_id].id} and {t.id}"
            resolved_by[t.pending_id] = t
            p = stored.get(t.pending_id)
            assert p is not None and p.flags & F_PENDING, f"{label}: {t.id} resolves a missing pending"
            assert t.timestamp > p.timestamp
            assert t.amount <= p.amount if t.flags & F_POST else t.amount == p.amount

    # Balances follow from the stored transfers.
    expected = {a.id: [0, 0, 0, 0] for a in ACCOUNTS}  # debits pending/posted, credits pending/posted
    for t in stored.values():
        dr, cr = expected[t.debit_account_id], expected[t.credit_account_id]
        if t.flags & F_PENDING:
            if t.id not in resolved_by:
                dr[0] += t.amount
                cr[2] += t.amount
        elif t.flags & F_VOID:
            pass
        else:  # a plain transfer or a post (for the amount posted)
            dr[1] += t.amount
            cr[3] += t.amount
    for a in accounts.values():
        actual = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
        assert actual == expected[a.id], f"{label}: account {a.id} holds {actual}, its transfers say {expected[a.id]}"
        if a.flags & WALLET:
            assert a.debits_pending + a.debits_posted <= a.credits_posted, f"{label}: wallet {a.id} overdrawn"
        if a.flags & HISTORY and actual != [0, 0, 0, 0]:
            last = reading.snapshots.get(a.id)
            assert last is not None, f"{label}: history account {a.id} has balances but no snapshot"
            assert [last.debits_pending, last.debits_posted, last.credits_pending, last.credits_posted] == actual, \
                f"{label}: account {a.id}'s last history snapshot {last} differs from its balances {actual}"
    for currency, members in BY_CURRENCY.items():
        rows = [accounts[a.id] for a in members]
        assert sum(r.debits_pending for r in rows) == sum(r.credits_pending for r in rows), f"{label}: {currency}"
        assert sum(r.debits_posted for r in rows) == sum(r.credits_posted for r in rows), f"{label}: {currency}"

    previous_max = ledger.max_timestamp
    ledger.max_timestamp = max(timestamps)
    assert ledger.max_timestamp >= previous_max, f"{label}: timestamps went backwards"
    print(f"{label}: audit passed: {acknowledged} answered calls, {unknown} unanswered "
          f"({unknown_committed} of them committed), "
          f"{len(stored)} stored transfers, {len(resolved_by)} pending resolved "
          f"({sum(1 for i in stored if i >= EXPIRY_ID_BASE)} by expiry)")


async def replay_and_extend(stub: ledger_pb2_grpc.LedgerStub, ledger: Ledger, label: str) -> None:
    """After a restart: acknowledged calls replay as EXISTS; new transfers get later timestamps."""
    done = [c for c in ledger.calls if c.results is not None and all(r == OK for r in c.results)]
    for call in ledger.rng.sample(done, min(10, len(done))):
        resp = await create_transfers(stub, call.transfers)
        assert list(resp.results) == [EXISTS] * len(call.transfers), f"{label}: replay answered {list(resp.results)}"
        assert list(resp.timestamps) == call.timestamps, f"{label}: replay changed timestamps"
    fresh = Call([pb.Transfer(id=ledger.new_id(), debit_account_id=EQUITY[c], credit_account_id=w,
                              amount=1_000_000, currency=c, code=1)
                  for c in ("CNY", "USD") for w in (a.id for a in BY_CURRENCY[c] if a.flags & WALLET)], [])
    resp = await create_transfers(stub, fresh.transfers)
    fresh.results, fresh.timestamps = list(resp.results), list(resp.timestamps)
    ledger.calls.append(fresh)
    assert fresh.results == [OK] * len(fresh.transfers), f"{label}: after restart: {fresh.results}"
    assert min(fresh.timestamps) > ledger.max_timestamp, \
        f"{label}: new timestamp {min(fresh.timestamps)} not after the stored maximum {ledger.max_timestamp}"


async def open_accounts(stub: ledger_pb2_grpc.LedgerStub) -> None:
    resp = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=a.id, currency=a.currency, code=a.code, flags=a.flags) for a in ACCOUNTS]), timeout=30)
    assert list(resp.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * len(ACCOUNTS)


async def test_sigkill_under_load_loses_no_acknowledged_write(db_url: str, serve_processes: ServeFactory) -> None:
    await crash_rounds(db_url, serve_processes, KILLS_PER_BACKEND)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_sigkill_soak(db_url: str, serve_processes: ServeFactory) -> None:
    """The same audit over many more kills: `pytest -m slow` (a few minutes per backend)."""
    await crash_rounds(db_url, serve_processes, SOAK_KILLS_PER_BACKEND)


async def crash_rounds(db_url: str, serve_processes: ServeFactory, kills: int) -> None:
    seed = int(os.environ.get("DUALFLOW_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash-safety seed {seed} (rerun with DUALFLOW_CRASH_SEED={seed})")
    rng = random.Random(seed)
    ledger = Ledger(rng)
    started = time.monotonic()

    server = serve_processes(db_url, name="crash")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        await open_accounts(stub)
        await replay_and_extend(stub, ledger, "setup")  # funds every wallet

    interrupted = 0
    for kill in range(1, kills + 1):
        callers = [Caller(ledger, random.Random(rng.getrandbits(64))) for _ in range(rng.randint(16, 32))]
        kill_after_s = rng.uniform(0.3, 1.5)
        stats = await load_then_kill(server, ledger, callers, kill_after_s)
        label = f"seed {seed} kill {kill} ({server.backend}, {len(callers)} callers, {kill_after_s:.2f}s)"
        print(f"{label}: {stats}")
        assert stats.answered, f"{label}: no call was answered before the kill"
        # A killed server can only look unavailable; any other code is an answer we did not expect.
        assert set(stats.errors) <= {"UNAVAILABLE"}, f"{label}: calls failed with {stats.errors}"
        interrupted += stats.in_flight_at_kill

        server = serve_processes(db_url, name="crash")
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = ledger_pb2_grpc.LedgerStub(channel)
            await audit(stub, ledger, label)
            await replay_and_extend(stub, ledger, label)
            await audit(stub, ledger, f"{label} after replay")
    # The kills must have landed mid-load, or this proved nothing about in-flight work.
    assert interrupted > 0, f"seed {seed}: no call was in flight at any kill"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.diagnostics()
    print(f"seed {seed}: {kills} kills on {server.backend} in {time.monotonic() - started:.1f}s")
