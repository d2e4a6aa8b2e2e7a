"""Obligations recorded as money moves: the clearing center's reader of the payment outbox.

Every SUCCEEDED payment and refund is an outbox event written in the same commit as its
postings (core/payments/procedures.py). `ObligationFeed` reads them in sequence order, asks
`Attribution` (attribution.py) which inter-pool obligation each created, and records it with the
clearing service as a fact (`ClearingService.record(..., fact=True)`).

Exactly once, without a distributed transaction: the feed's position (the last outbox sequence
it finished) is stored after the obligations of everything before it are recorded; after a crash
it reads again from the stored position, and recording the same obligation id again is a replay
(its id derives from the payment or refund, its pools from homes stored before the first
attempt, so the fields are the same). A home is stored before any obligation that depends on it.

A payment's movement is *done* for clearing once its obligation is recorded (it succeeded) or once
it can no longer create one (it failed or was canceled): the feed then calls each of `done`
(clearing/gate.py releases what it reserved for the payment there). With a listener it also reads
the `payment.failed` and `payment.canceled` events for that; they record nothing.

Metrics: `dualflow_clearing_feed_events_total{result}` (recorded, none: moved within one pool or
not between pools), `dualflow_clearing_feed_position` (the outbox sequence read up to) and the
platform's `dualflow_outbox_lag_seconds{consumer="clearing"}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import Counter, Gauge

from dualflow.core.payments import records
from dualflow.core.payments.outbox import OutboxEvent, OutboxFeed

from .attribution import Attribution, Owed

log = logging.getLogger(__name__)

FEED_EVENTS = Counter(
    "dualflow_clearing_feed_events_total",
    "Succeeded payments and refunds the clearing feed read, by result: recorded (an inter-pool obligation), "
    "none (the money stayed in one pool, or never was in one)",
    ["result"])
FEED_POSITION = Gauge("dualflow_clearing_feed_position",
                      "The outbox sequence the clearing feed has recorded obligations up to")

FEED_SCHEMA: Final[list[str]] = [
    """CREATE TABLE IF NOT EXISTS clearing_homes (
        party TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        assigned_at_ns BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS clearing_feed (
        id BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
    "INSERT INTO clearing_feed (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
]
EVENT_TYPES: Final = ("payment.succeeded", "refund.succeeded")
ENDED_TYPES: Final = ("payment.failed", "payment.canceled")  # read for the `done` listeners only
CONSUMER: Final = "clearing"


class StoredHomes:
    """Home pools in the database (`clearing_homes`), cached: a home never changes once stored."""

    def __init__(self, db: Any, clock_ns: Any = time.time_ns) -> None:
        self.db = db
        self.clock_ns = clock_ns
        self._known: dict[str, str] = {}

    async def home(self, party: str, fallback: str) -> str:
        known = self._known.get(party)
        if known is not None:
            return known
        rows = await self.db.query("SELECT pool FROM clearing_homes WHERE party = ?", (party,))
        if not rows:
            await self.db.write([("INSERT INTO clearing_homes (party, pool, assigned_at_ns) VALUES (?, ?, ?) "
                                  "ON CONFLICT (party) DO NOTHING", (party, fallback, self.clock_ns()))])
            rows = await self.db.query("SELECT pool FROM clearing_homes WHERE party = ?", (party,))
        return self._remember(party, str(rows[0][0]))

    async def lookup(self, party: str) -> str | None:
        """`party`'s stored home, or None; stores nothing (clearing/gate.py asks before a movement)."""
        known = self._known.get(party)
        if known is not None:
            return known
        rows = await self.db.query("SELECT pool FROM clearing_homes WHERE party = ?", (party,))
        return self._remember(party, str(rows[0][0])) if rows else None

    def _remember(self, party: str, pool: str) -> str:
        if len(self._known) > 100_000:  # bounded: a long day sees many users once
            self._known.clear()
        self._known[party] = pool
        return pool

    async def all(self) -> dict[str, str]:
        return {str(p): str(pool) for p, pool in await self.db.query("SELECT party, pool FROM clearing_homes")}


class ObligationFeed:
    """Reads the outbox from its stored position and records each movement's obligation."""

    def __init__(self, db: Any, outbox: OutboxFeed, clearing: Any, attribution: Attribution, *,
                 batch: int = 256, wait_s: float = 1.0) -> None:
        self.db = db
        self.outbox = outbox
        self.clearing = clearing  # ClearingService (record)
        self.attribution = attribution
        self.homes = StoredHomes(db)
        self.batch = batch
        self.wait_s = wait_s
        self.position = 0
        self._task: asyncio.Task[None] | None = None
        self._stepping = asyncio.Lock()  # the background reader and catch_up() take turns
        # Called with a payment id once its obligation is recorded, or once it failed or was
        # canceled (see the module docstring); a listener must not raise.
        self.done: list[Callable[[str], None]] = []

    async def start(self) -> None:
        await self.db.ensure_schema(FEED_SCHEMA)
        rows = await self.db.query("SELECT seq FROM clearing_feed WHERE id = 1")
        self.position = int(rows[0][0])
        FEED_POSITION.set(self.position)
        self._task = asyncio.create_task(self._run(), name="clearing-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def catch_up(self) -> int:
        """Record everything the outbox holds now; returns the position reached (tests, cut-off)."""
        await self.outbox.refresh_head()
        while True:
            if not await self._step():
                return self.position

    async def _run(self) -> None:
        while True:
            try:
                if not await self._step():
                    await self.outbox.wait_for_new(self.position, self.wait_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the position was not stored: the same events come again
                log.exception("clearing feed failed at position %d; retrying", self.position)
                await asyncio.sleep(self.wait_s)

    async def _step(self) -> bool:
        """One batch; False when there was nothing to read."""
        async with self._stepping:
            return await self._step_locked()

    async def _step_locked(self) -> bool:
        types = (*EVENT_TYPES, *ENDED_TYPES) if self.done else EVENT_TYPES
        events = await self.outbox.read_after(self.position, self.batch, types=types)
        self.outbox.record_lag(CONSUMER, events[0].created_at_ns if events else None)
        if not events:
            return False
        for event in events:
            if event.type not in ENDED_TYPES:
                for owed in await self._owed(event):
                    await self.clearing.record(owed.obligation_id, owed.debtor_pool, owed.creditor_pool,
                                               owed.amount_minor, owed.currency, fact=True)
            if event.type != "refund.succeeded":
                for listener in self.done:
                    listener(event.subject_id)
        last = events[-1].seq
        await self.db.write([("UPDATE clearing_feed SET seq = ? WHERE id = 1 AND seq < ?", (last, last))])
        self.position = last
        FEED_POSITION.set(last)
        return True

    async def _owed(self, event: OutboxEvent) -> list[Owed]:
        data = json.loads(event.payload_json)
        if event.type == "payment.succeeded":
            owed = await self.attribution.of_payment(records.payment_from_dict(data), self.homes)
        else:
            refund = records.refund_from_dict(data)
            rows = await self.db.query(records.SELECT_PAYMENT, (refund.payment_id,))
            owed = await self.attribution.of_refund(refund, records.payment_from_body(rows[0][0]), self.homes) \
                if rows else []
        FEED_EVENTS.labels("recorded" if owed else "none").inc(1)
        return owed
