"""Reading the transactional outbox: resumable by sequence, woken by local commits.

Events are written by the payment procedures in the same transaction as the
change they report, with the ledger clock as sequence, so sequences increase in
commit order across processes. A reader resumes after the last sequence it saw.
Local commits wake waiting readers at once; commits by other processes (a
PostgreSQL deployment) are seen by polling the head every `poll_interval_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dualflow.core.database import Database

from . import metrics


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    seq: int
    event_id: str
    type: str
    merchant_id: str
    created_at_ns: int
    payload_json: str
    subject_id: str = ""


_COLUMNS = "seq, event_id, type, merchant_id, created_at_ns, payload, subject_id"


class OutboxFeed:
    def __init__(self, db: Database, *, poll_interval_s: float = 0.2) -> None:
        self.db = db
        self.poll_interval_s = poll_interval_s
        self._head = 0
        self._changed = asyncio.Event()

    @property
    def head(self) -> int:
        return self._head

    def published(self, seq: int) -> None:
        """A local commit wrote events up to `seq`: wake the readers."""
        if seq > self._head:
            self._head = seq
            metrics.OUTBOX_HEAD.set(seq)
            self._changed.set()
            self._changed = asyncio.Event()

    async def refresh_head(self) -> int:
        rows = await self.db.query("SELECT MAX(seq) FROM outbox")
        if rows and rows[0][0] is not None:
            self.published(int(rows[0][0]))
        return self._head

    async def read_after(self, seq: int, limit: int, *, types: Sequence[str] = (), merchant_id: str = "",
                         subject_id: str = "") -> list[OutboxEvent]:
        where, params = ["seq > ?"], [seq]
        if merchant_id:
            where.append("merchant_id = ?")
            params.append(merchant_id)
        if subject_id:
            where.append("subject_id = ?")
            params.append(subject_id)
        if types:
            where.append(f"type IN ({','.join('?' * len(types))})")
            params += list(types)
        rows = await self.db.query(
            f"SELECT {_COLUMNS} FROM outbox WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", (*params, limit))
        return [OutboxEvent(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6]) for r in rows]

    async def wait_for_new(self, seq: int, timeout_s: float) -> None:
        """Return once an event after `seq` may exist, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._head <= seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            changed = self._changed
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                async with asyncio.timeout(min(left, self.poll_interval_s)):
                    await changed.wait()
            except TimeoutError:
                await self.refresh_head()

    def record_lag(self, consumer: str, oldest_unread_ns: int | None) -> None:
        lag = 0.0 if oldest_unread_ns is None else max(0.0, (time.time_ns() - oldest_unread_ns) / 1e9)
        metrics.OUTBOX_LAG_SECONDS.labels(consumer).set(lag)
