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
from typing import Any, Union

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


Command = Union[CreateAccounts, CreateTransfers, ExpirePending]


@dataclass(slots=True)
class BatchResult:
    results: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    expired: int = 0


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


Operation = Union[ReserveTimestamps, LoadExpired, LoadTransfers, LoadAccounts, WriteChanges]
Procedure = Generator[Operation, Any, list[BatchResult]]


def item_count(commands: Sequence[Command]) -> int:
    n = 0
    for cmd in commands:
        if isinstance(cmd, CreateTransfers):
            n += len(cmd.transfers)
        elif isinstance(cmd, CreateAccounts):
            n += len(cmd.accounts)
        else:
            n += cmd.limit
    return n


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
    out: list[BatchResult] = []
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
