"""One group commit as a storage-neutral procedure.

`group_commit` is a generator: it yields the storage operations it needs
(reserve timestamps, load rows, write changes) and receives their answers, so
the same procedure drives the SQLite backend synchronously in its writer thread
and the PostgreSQL backend with async psycopg. The whole procedure runs inside
one database transaction that the backend opens before and commits after.

Reserving timestamps comes first on purpose: in PostgreSQL it locks the one
meta row, which serialises writers across processes, so every row read after it
is the latest committed version.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from .model import ID_MAX, U64_MAX, Account, Transfer
from .state_machine import (
    A_EXISTS,
    A_OK,
    T_EXISTS,
    T_OK,
    Snapshot,
    create_accounts,
    create_transfers,
    expire_pending,
)


# ---- commands: what callers ask the writer for
@dataclass(slots=True)
class CreateAccounts:
    accounts: Sequence[Account]


@dataclass(slots=True)
class CreateTransfers:
    transfers: Sequence[Transfer]


@dataclass(slots=True)
class ExpirePending:
    limit: int = 8190


@runtime_checkable
class Extension(Protocol):
    """A command that runs its own code inside the group commit.

    Payments, the outbox and webhooks keep tables beside the ledger's; an
    Extension lets them read those tables, create ledger accounts and transfers
    and write their own rows in the same transaction, so a payment's state, its
    postings and its event commit together or not at all. `run` is a generator
    driven like the procedure itself: it uses `yield from ctx.<op>(...)`.
    `max_items` bounds the ledger items plus timestamps it may use.

    For speed an Extension may also carry (all optional, found with getattr):
    - `accounts_hint` / `transfers_hint`: ids it will touch, loaded with the
      batch's own rows in one query instead of one per Extension;
    - `prefetch`: reads, as (sql, params) pairs, run for the whole batch in one
      round trip before any command applies; `ctx.prefetched` holds its rows.
      They show the state before the batch, so an Extension must also consult
      `ctx.memo` (shared by every command of the batch) for what earlier
      commands of the same batch did.
    """

    max_items: int

    def run(self, ctx: Context) -> Generator[Operation, Any, Any]: ...


Command = Union[CreateAccounts, CreateTransfers, ExpirePending, Extension]


@dataclass(slots=True)
class BatchResult:
    results: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    expired: int = 0
    value: Any = None  # what an Extension's run returned


# ---- operations: what the procedure asks the storage backend for
@dataclass(slots=True, frozen=True)
class ReserveTimestamps:
    """Advance the ledger clock by `count` (at least to `now_ns`); answers the new last timestamp."""

    count: int
    now_ns: int


@dataclass(slots=True, frozen=True)
class LoadExpired:
    """Pending transfers whose expires_at <= now_ns, oldest first; answers list[Transfer]."""

    now_ns: int
    limit: int


@dataclass(slots=True, frozen=True)
class LoadTransfers:
    """Answers dict[id, Transfer] for the ids that exist."""

    ids: frozenset[int]


@dataclass(slots=True, frozen=True)
class LoadAccounts:
    """Answers dict[id, Account] for the ids that exist."""

    ids: frozenset[int]


@dataclass(slots=True, frozen=True)
class WriteChanges:
    """Insert the snapshot's new rows and update its changed ones; answers None."""

    snapshot: Snapshot


@dataclass(slots=True, frozen=True)
class Query:
    """Run a read inside the transaction (sees this transaction's writes); answers list[tuple].

    SQL is portable between SQLite and PostgreSQL, with `?` placeholders."""

    sql: str
    params: tuple[Any, ...]


@dataclass(slots=True, frozen=True)
class Execute:
    """Run a write inside the transaction; answers None."""

    sql: str
    params: tuple[Any, ...]


@dataclass(slots=True, frozen=True)
class QueryMany:
    """Run several reads inside the transaction in one round trip; answers one row list per query."""

    queries: tuple[tuple[str, tuple[Any, ...]], ...]


Operation = Union[ReserveTimestamps, LoadExpired, LoadTransfers, LoadAccounts, WriteChanges, Query, Execute,
                  QueryMany]
Procedure = Generator[Operation, Any, list[BatchResult]]


def item_count(commands: Sequence[Command]) -> int:
    n = 0
    for cmd in commands:
        if isinstance(cmd, CreateTransfers):
            n += len(cmd.transfers)
        elif isinstance(cmd, CreateAccounts):
            n += len(cmd.accounts)
        elif isinstance(cmd, ExpirePending):
            n += cmd.limit
        else:
            n += cmd.max_items
    return n


class Context:
    """What an Extension may do inside a group commit.

    Rows it names that the batch has not loaded yet are loaded on demand (a
    row already in the snapshot is never reloaded: an earlier command of the
    same batch may have changed it). Timestamps come from the Extension's own
    reserved block, so everything stays strictly ordered.
    """

    __slots__ = ("snap", "now_ns", "_first", "_next", "_end", "_net_before", "_looked_up", "memo", "prefetched")

    def __init__(self, snap: Snapshot, now_ns: int, first_timestamp: int, budget: int,
                 net_before: dict[str, int], looked_up: tuple[set[int], set[int]] | None = None,
                 memo: dict[Any, Any] | None = None, prefetched: list[list[tuple[Any, ...]]] | None = None) -> None:
        self.snap = snap
        self.now_ns = now_ns
        # Ids this batch already asked storage for (transfers, accounts): absent ones are
        # not asked for again.
        self._looked_up = looked_up if looked_up is not None else (set(), set())
        self.memo: dict[Any, Any] = memo if memo is not None else {}
        self.prefetched: list[list[tuple[Any, ...]]] = prefetched or []
        self._first = first_timestamp
        self._next = first_timestamp
        self._end = first_timestamp + budget
        self._net_before = net_before

    @property
    def last_timestamp(self) -> int:
        """The newest timestamp this Extension has used so far (0: none)."""
        return self._next - 1 if self._next > self._first else 0

    def timestamp(self) -> int:
        """A fresh ledger timestamp: unique and increasing across all commits (outbox sequence numbers use it)."""
        return self._take(1)

    def _take(self, n: int) -> int:
        first = self._next
        assert first + n <= self._end, "extension used more items than its max_items"
        self._next += n
        return first

    def query(self, sql: str, params: Sequence[Any] = ()) -> Generator[Operation, Any, list[tuple[Any, ...]]]:
        rows: list[tuple[Any, ...]] = yield Query(sql, tuple(params))
        return rows

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Generator[Operation, Any, None]:
        yield Execute(sql, tuple(params))

    def _load(self, transfer_ids: set[int], account_ids: set[int]) -> Generator[Operation, Any, None]:
        snap = self.snap
        seen_t, seen_a = self._looked_up
        missing_t = {i for i in transfer_ids if 0 < i <= U64_MAX and i not in snap.transfers and i not in seen_t}
        if missing_t:
            seen_t.update(missing_t)
            loaded: dict[int, Transfer] = yield LoadTransfers(frozenset(missing_t))
            for t in loaded.values():
                snap.transfers.setdefault(t.id, t)
                account_ids.add(t.debit_account_id)
                account_ids.add(t.credit_account_id)
        missing_a = {i for i in account_ids if 0 < i <= ID_MAX and i not in snap.accounts and i not in seen_a}
        if missing_a:
            seen_a.update(missing_a)
            found: dict[int, Account] = yield LoadAccounts(frozenset(missing_a))
            for a in found.values():
                snap.accounts[a.id] = a
                for c, v in _net_by_currency((a,)).items():
                    self._net_before[c] = self._net_before.get(c, 0) + v

    def create_accounts(self, accounts: Sequence[Account]) -> Generator[Operation, Any, list[int]]:
        yield from self._load(set(), {a.id for a in accounts})
        return create_accounts(self.snap, accounts, self._take(len(accounts)))

    def create_transfers(self, transfers: Sequence[Transfer]) -> Generator[Operation, Any, list[int]]:
        ids = {t.id for t in transfers} | {t.pending_id for t in transfers if t.pending_id}
        accounts = {t.debit_account_id for t in transfers} | {t.credit_account_id for t in transfers}
        yield from self._load(ids, accounts)
        return create_transfers(self.snap, transfers, self._take(len(transfers)))

    def transfer(self, transfer_id: int) -> Generator[Operation, Any, Transfer | None]:
        yield from self._load({transfer_id}, set())
        return self.snap.transfers.get(transfer_id)

    def accounts(self, ids: Sequence[int]) -> Generator[Operation, Any, dict[int, Account]]:
        yield from self._load(set(), set(ids))
        return {i: self.snap.accounts[i] for i in ids if i in self.snap.accounts}


def group_commit(commands: Sequence[Command], now_ns: int) -> Procedure:
    """Apply `commands` in order as one transaction; one BatchResult per command."""
    total = item_count(commands)
    last_timestamp: int = yield ReserveTimestamps(total, now_ns)
    next_timestamp = last_timestamp - total + 1

    expiring: list[Transfer] = []
    expire_limit = sum(c.limit for c in commands if isinstance(c, ExpirePending))
    if expire_limit:
        expiring = yield LoadExpired(now_ns, expire_limit)

    transfer_ids: set[int] = set()
    account_ids: set[int] = set()
    for cmd in commands:
        if isinstance(cmd, CreateTransfers):
            for t in cmd.transfers:
                if 0 < t.id <= U64_MAX:  # out-of-range ids get ID_INVALID, not a storage error
                    transfer_ids.add(t.id)
                if 0 < t.pending_id <= ID_MAX:
                    transfer_ids.add(t.pending_id)
                account_ids.add(t.debit_account_id)
                account_ids.add(t.credit_account_id)
        elif isinstance(cmd, CreateAccounts):
            for a in cmd.accounts:
                account_ids.add(a.id)
        elif not isinstance(cmd, ExpirePending):
            transfer_ids.update(getattr(cmd, "transfers_hint", ()))
            account_ids.update(getattr(cmd, "accounts_hint", ()))
    transfer_ids.discard(0)
    transfers: dict[int, Transfer] = (yield LoadTransfers(frozenset(transfer_ids))) if transfer_ids else {}
    # One object per row: an expiring pending also named by a post must be the same object.
    expiring = [transfers.setdefault(p.id, p) for p in expiring]
    for t in transfers.values():
        account_ids.add(t.debit_account_id)
        account_ids.add(t.credit_account_id)
    account_ids = {i for i in account_ids if 0 < i <= ID_MAX}
    accounts: dict[int, Account] = (yield LoadAccounts(frozenset(account_ids))) if account_ids else {}

    net_before = _net_by_currency(accounts.values())
    snap = Snapshot(accounts, transfers, now_ns)
    looked_up = ({i for i in transfer_ids if 0 < i <= U64_MAX}, set(account_ids))
    memo: dict[Any, Any] = {}
    prefetch_plan = [getattr(cmd, "prefetch", ()) if not isinstance(
        cmd, (CreateTransfers, CreateAccounts, ExpirePending)) else () for cmd in commands]
    flat = tuple((sql, tuple(params)) for queries in prefetch_plan for sql, params in queries)
    prefetched_rows: list[list[tuple[Any, ...]]] = (yield QueryMany(flat)) if flat else []
    out: list[BatchResult] = []
    taken = 0
    for cmd in commands:
        if isinstance(cmd, CreateTransfers):
            results = create_transfers(snap, cmd.transfers, next_timestamp)
            stamps = _timestamps(results, cmd.transfers, snap.transfers, next_timestamp, T_OK, T_EXISTS)
            next_timestamp += len(cmd.transfers)
            out.append(BatchResult(results, stamps))
        elif isinstance(cmd, CreateAccounts):
            results = create_accounts(snap, cmd.accounts, next_timestamp)
            stamps = _timestamps(results, cmd.accounts, snap.accounts, next_timestamp, A_OK, A_EXISTS)
            next_timestamp += len(cmd.accounts)
            out.append(BatchResult(results, stamps))
        elif not isinstance(cmd, ExpirePending):
            wanted = len(prefetch_plan[len(out)])
            ctx = Context(snap, now_ns, next_timestamp, cmd.max_items, net_before, looked_up, memo,
                          prefetched_rows[taken:taken + wanted])
            taken += wanted
            value = yield from cmd.run(ctx)
            next_timestamp += cmd.max_items
            out.append(BatchResult(value=value))
        else:
            batch = expiring[: cmd.limit]
            expiring = expiring[cmd.limit:]
            out.append(BatchResult(expired=expire_pending(snap, batch, next_timestamp)))
            next_timestamp += cmd.limit
    # Double entry, asserted before anything is written: every change moved
    # debits and credits of one currency by the same amount.
    net_after = _net_by_currency(snap.accounts.values())
    assert all(net_after.get(c, 0) == v for c, v in net_before.items()) and all(
        v == 0 for c, v in net_after.items() if c not in net_before
    ), f"ledger out of balance: before={net_before} after={net_after}"
    if snap.new_accounts or snap.new_transfers or snap.changed_account_ids or snap.changed_pending_ids:
        yield WriteChanges(snap)
    return out


def _timestamps(
    results: list[int], items: Sequence[Any], rows: dict[int, Any], first: int, ok: int, exists: int
) -> list[int]:
    stamps = [0] * len(results)
    for i, r in enumerate(results):
        if r == ok:
            stamps[i] = first + i
        elif r == exists:
            stamps[i] = rows[items[i].id].timestamp
    return stamps


def _net_by_currency(accounts: Any) -> dict[str, int]:
    net: dict[str, int] = {}
    for a in accounts:
        net[a.currency] = net.get(a.currency, 0) + (
            a.debits_pending + a.debits_posted - a.credits_pending - a.credits_posted
        )
    return net


def run_sync(procedure: Procedure, execute: Any) -> list[BatchResult]:
    """Drive `procedure`, answering each operation with `execute(op)`."""
    try:
        op = next(procedure)
        while True:
            op = procedure.send(execute(op))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(procedure: Procedure, execute: Any) -> list[BatchResult]:
    """Drive `procedure`, answering each operation with `await execute(op)`."""
    try:
        op = next(procedure)
        while True:
            op = procedure.send(await execute(op))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
