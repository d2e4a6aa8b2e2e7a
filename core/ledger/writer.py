"""Group commit: one writer coalesces concurrent requests into one durable transaction.

Callers `submit` a command and wait. The writer takes everything queued (up to
`max_items`), applies it in one transaction through the store, and answers every
caller only after COMMIT returned, so nothing is acknowledged before it is
durable. While one commit is on disk the next group is already queueing, which
is what turns many small requests into few large commits.

A full queue answers at once with Overloaded (RESOURCE_EXHAUSTED) instead of
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dualflow.core.errors import Overloaded, Unavailable

from . import metrics
from .batch import BatchResult, Command, CreateAccounts, CreateTransfers, ExpirePending
from .store import LedgerStore

log = logging.getLogger(__name__)


def _items(command: Command) -> int:
    if isinstance(command, CreateTransfers):
        return len(command.transfers)
    if isinstance(command, CreateAccounts):
        return len(command.accounts)
    if isinstance(command, ExpirePending):
        return 1
    return command.max_items


@dataclass(slots=True)
class _Entry:
    command: Command
    items: int
    future: asyncio.Future[BatchResult]


class GroupCommitWriter:
    def __init__(
        self,
        store: LedgerStore,
        *,
        max_items: int = 16384,
        queue_items_max: int = 262144,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.max_items = max_items
        self.queue_items_max = queue_items_max
        self.clock_ns = clock_ns
        self._queue: asyncio.Queue[_Entry | None] = asyncio.Queue()
        self._queued_items = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        assert self._task is None, "writer already started"
        self._task = asyncio.create_task(self._run(), name="ledger-group-commit")

    async def stop(self) -> None:
        """Refuse new work, commit everything already queued, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    def admit(self, items: int) -> None:
        """Raise at once if `items` more would not be accepted now (cheap: call it before decoding work)."""
        if self._closing or self._task is None:
            raise Unavailable("the ledger is shutting down", reason="SHUTTING_DOWN")
        if self._queued_items + items > self.queue_items_max and self._queued_items > 0:
            metrics.REJECTED_OVERLOAD.inc()
            raise Overloaded(
                f"ledger writer queue is full ({self._queued_items} items waiting)",
                reason="WRITER_QUEUE_FULL",
                retry_after_ms=20,
            )

    async def submit(self, command: Command) -> BatchResult:
        n = _items(command)
        self.admit(n)
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queued_items += n
        metrics.WRITER_QUEUE_ITEMS.set(self._queued_items)
        self._queue.put_nowait(_Entry(command, n, future))
        # A caller that gives up cancels only its own future: the writer holds the
        # command, not the future, so the shared commit goes on (its transfer may
        # still commit, and a retry then answers EXISTS); _settle skips done futures.
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            group = [first]
            items = first.items
            while items < self.max_items:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
                items += nxt.items
            self._queued_items -= items
            metrics.WRITER_QUEUE_ITEMS.set(self._queued_items)
            await self._commit(group, items)

    async def _commit(self, group: list[_Entry], items: int) -> None:
        backend = self.store.backend
        started = time.perf_counter()
        try:
            results = await self.store.commit([e.command for e in group], self.clock_ns())
        except Exception as exc:  # noqa: BLE001 - isolate the request that caused it
            metrics.COMMIT_FAILURES.labels(backend).inc()
            if len(group) > 1:
                log.warning("group commit of %d requests failed (%s); retrying one by one", len(group), exc)
                for entry in group:
                    await self._commit([entry], entry.items)
                return
            log.exception("ledger commit failed")
            _settle(group[0].future, exc=Unavailable(f"ledger commit failed: {type(exc).__name__}",
                                                    reason="COMMIT_FAILED"))
            return
        metrics.COMMIT_SECONDS.labels(backend).observe(time.perf_counter() - started)
        metrics.BATCH_ITEMS.labels(backend).observe(items)
        metrics.REQUESTS_PER_COMMIT.labels(backend).observe(len(group))
        for entry, result in zip(group, results, strict=True):
            if result.expired:
                metrics.PENDING_EXPIRED.inc(result.expired)
            _settle(entry.future, result=result)


def _settle(future: asyncio.Future[BatchResult], *, result: BatchResult | None = None,
            exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)
