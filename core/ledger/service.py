"""The ledger as one object: validated whole requests in, results out.

It owns the group-commit writer and the expiry sweeper, and checks what a whole
request must satisfy (batch sizes, filters). Per-item rules live in the state
machine. The gRPC servicer in gateway/ is a thin translation over this class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from dualflow.core.errors import FieldViolation, InvalidRequest

from . import metrics
from dualflow.core.database import Statement

from .batch import BatchResult, Context, CreateAccounts, CreateTransfers, ExpirePending, Extension, Operation
from .model import (
    BATCH_MAX,
    Account,
    AccountFilter,
    BalanceSnapshot,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
)
from .store import CurrencyTotals, LedgerStore, decode_page_token, encode_page_token
from .writer import GroupCommitWriter

log = logging.getLogger(__name__)

LOOKUP_MAX = BATCH_MAX
PAGE_DEFAULT = 1000

# Label children resolved once: a labels() lookup per call is measurable on the unary path.
_TRANSFER_RESULT_COUNTERS = {int(r): metrics.TRANSFER_RESULTS.labels(r.name) for r in CreateTransferResult}
_ACCOUNT_RESULT_COUNTERS = {int(r): metrics.ACCOUNT_RESULTS.labels(r.name) for r in CreateAccountResult}


def _check_batch(items: Sequence[object], field: str) -> None:
    _check_batch_size(len(items), field)


def _check_batch_size(size: int, field: str) -> None:
    if not size:
        raise InvalidRequest(
            f"{field} is empty: send at least one item",
            reason="BATCH_EMPTY",
            violations=(FieldViolation(field, "must hold at least one item"),),
        )
    if size > BATCH_MAX:
        raise InvalidRequest(
            f"{field} holds {size} items; at most {BATCH_MAX} per call",
            reason="BATCH_TOO_LARGE",
            violations=(FieldViolation(field, f"must hold at most {BATCH_MAX} items"),),
            metadata={"limit": str(BATCH_MAX), "size": str(size)},
        )


class LedgerService:
    def __init__(
        self,
        store: LedgerStore,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        expiry_interval_s: float = 0.2,
        writer_max_items: int = 16384,
        writer_queue_items_max: int = 262144,
    ) -> None:
        self.store = store
        self.clock_ns = clock_ns
        self.expiry_interval_s = expiry_interval_s
        self.writer = GroupCommitWriter(
            store, max_items=writer_max_items, queue_items_max=writer_queue_items_max, clock_ns=clock_ns,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.store.open()
        self.writer.start()
        if self.expiry_interval_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="ledger-expiry")

    async def stop(self) -> None:
        """Stop the sweeper, flush the writer, close storage."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        await self.writer.stop()
        await self.store.close()

    # ---- writes
    async def create_accounts(self, accounts: Sequence[Account]) -> BatchResult:
        _check_batch(accounts, "accounts")
        result = await self.writer.submit(CreateAccounts(accounts))
        for r in result.results:
            _ACCOUNT_RESULT_COUNTERS[r].inc()
        return result

    async def create_transfers(self, transfers: Sequence[Transfer]) -> BatchResult:
        _check_batch(transfers, "transfers")
        result = await self.writer.submit(CreateTransfers(transfers))
        results = result.results
        if len(results) == 1:
            _TRANSFER_RESULT_COUNTERS[results[0]].inc()
        else:
            for r, n in Counter(results).items():
                _TRANSFER_RESULT_COUNTERS[r].inc(n)
        return result

    async def run(self, extension: Extension) -> Any:
        """Run an Extension inside a group commit; answers what its `run` returned, once durable."""
        result = await self.writer.submit(extension)
        return result.value

    # ---- the Database interface (core/database.py) for tables beside the ledger's
    async def write(self, statements: Sequence[Statement]) -> None:
        await self.writer.submit(_Statements(tuple(statements)))

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self.store.query(sql, params)

    async def ensure_schema(self, statements: Sequence[str]) -> None:
        await self.store.ensure_schema(statements)

    def admit(self, items: int, field: str) -> None:
        """Refuse a request before it is decoded when its size or the writer's backlog rules it out."""
        _check_batch_size(items, field)
        self.writer.admit(items)

    async def expire_due(self) -> int:
        """Void every pending transfer whose timeout has passed; returns how many."""
        total = 0
        while True:
            due = await self.store.next_expiry()
            if due is None or due > self.clock_ns():
                return total
            result = await self.writer.submit(ExpirePending())
            total += result.expired
            if result.expired == 0:
                return total

    async def _sweep_forever(self) -> None:
        # `_stopping` as well as cancellation: 3.11 can swallow a cancellation inside a
        # library's wait_for, and the sweeper must still end.
        while not self._stopping:
            try:
                await self.expire_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the sweeper must outlive a bad moment
                log.exception("pending-transfer expiry sweep failed; retrying")
            await asyncio.sleep(self.expiry_interval_s)

    # ---- reads
    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        _check_lookup(ids)
        return await self.store.lookup_accounts(ids)

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        _check_lookup(ids)
        return await self.store.lookup_transfers(ids)

    async def account_transfers(self, flt: AccountFilter, page_token: str) -> tuple[list[Transfer], str]:
        _check_filter(flt)
        after = decode_page_token(page_token, flt.newest_first)
        rows = await self.store.account_transfers(flt, after)
        return rows, _next_token(rows, flt)

    async def account_balances(self, flt: AccountFilter, page_token: str) -> tuple[list[BalanceSnapshot], str]:
        _check_filter(flt)
        after = decode_page_token(page_token, flt.newest_first)
        rows = await self.store.account_balances(flt, after)
        return rows, _next_token(rows, flt)

    async def currency_totals(self) -> list[CurrencyTotals]:
        return await self.store.currency_totals()


@dataclass(slots=True, frozen=True)
class _Statements:
    """Plain SQL writes riding a group commit (webhook rows, vault rows, cursors)."""

    statements: tuple[Statement, ...]
    max_items: int = 0

    def run(self, ctx: Context) -> Generator[Operation, Any, None]:
        for sql, params in self.statements:
            yield from ctx.execute(sql, params)


def _check_lookup(ids: Sequence[int]) -> None:
    if len(ids) > LOOKUP_MAX:
        raise InvalidRequest(
            f"ids holds {len(ids)} ids; at most {LOOKUP_MAX} per call",
            reason="BATCH_TOO_LARGE",
            violations=(FieldViolation("ids", f"must hold at most {LOOKUP_MAX} ids"),),
        )


def _check_filter(flt: AccountFilter) -> None:
    violations = []
    if not 0 < flt.account_id < 2**63:
        violations.append(FieldViolation("filter.account_id", "must be an account id, 1 .. 2^63-1"))
    if flt.timestamp_max and flt.timestamp_min > flt.timestamp_max:
        violations.append(FieldViolation("filter.timestamp_min", "must not be after timestamp_max"))
    if not 0 < flt.limit <= BATCH_MAX:
        violations.append(FieldViolation("filter.limit", f"must be 1 .. {BATCH_MAX} (0 means {PAGE_DEFAULT})"))
    if not (flt.debits or flt.credits):
        violations.append(FieldViolation("filter.side", "must select debits, credits or both"))
    if violations:
        raise InvalidRequest("the account filter is invalid", reason="FILTER_INVALID", violations=tuple(violations))


def _next_token(rows: Sequence[Transfer | BalanceSnapshot], flt: AccountFilter) -> str:
    if len(rows) < flt.limit:
        return ""
    return encode_page_token(rows[-1].timestamp, flt.newest_first)
