"""Webhook delivery: merchants' endpoints, and the worker that posts outbox events to them.

The payment path never waits on a merchant: it commits an event to the transactional outbox
(owned elsewhere) and moves on. `WebhookDispatcher` reads that outbox after its stored cursor, fans
each event out to the merchant's enabled endpoints that want its type, and records one PENDING
`webhook_deliveries` row per endpoint together with the advanced cursor in ONE durable write before
it posts anything. So a crash loses nothing: on restart the cursor says where reading resumes and
the PENDING rows say what is still owed (at-least-once; receivers deduplicate on the event id).

Each delivery is its own task. Attempts are bounded by a global semaphore and a per-endpoint one,
so a slow or dead endpoint holds at most `per_endpoint_concurrency` of the `concurrency` slots and
the others keep flowing. Retries (tenacity, exponential backoff with jitter) cover connection
errors, timeouts, 5xx and 429; a 2xx is DELIVERED; any other 4xx is the receiver refusing the
request, which a retry cannot fix, so it is DEAD at once. After `max_attempts` a delivery is DEAD
too; DEAD rows are the dead-letter list, which `WebhookRegistry.redeliver` sends again. Every
attempt's outcome is written to the row.

Secrets stay out of logs, errors, reprs and metric labels: endpoints are named by id, URLs are
shown without credentials, path or query, and metrics are labelled by outcome only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Gauge, Histogram
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from dualflow.core.database import Database, Statement
from dualflow.core.errors import FieldViolation, InvalidRequest, NotFound, PreconditionFailed

from .signature import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "Dualflow-Event-Id"
SECRET_PREFIX = "whsec_"
_URL_LEN_MAX = 2048
_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_ERROR_TEXT_MAX = 200
_CURSOR_ROW_ID = 1

WEBHOOK_SCHEMA: list[str] = [
    # Times are unix milliseconds; `enabled` is 0/1 (core/database.py: BIGINT and TEXT only).
    # The secret is kept as issued: the worker needs it to sign (HMAC is symmetric).
    """CREATE TABLE IF NOT EXISTS webhook_endpoints (
        id TEXT PRIMARY KEY,
        merchant_id TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT NOT NULL,
        event_types TEXT NOT NULL,
        enabled BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_endpoints_merchant ON webhook_endpoints (merchant_id, enabled)",
    # id = endpoint_id || ':' || event_id, so fan-out is idempotent. The body is stored, not
    # rebuilt: a retry or a redelivery days later sends the same bytes, whatever the outbox has
    # pruned since. status: PENDING | DELIVERED | DEAD.
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id TEXT PRIMARY KEY,
        endpoint_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        last_error TEXT,
        last_status BIGINT,
        next_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_at)",
    "CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status, updated_at)",
    # One row (id = 1): the highest outbox seq whose deliveries are recorded.
    """CREATE TABLE IF NOT EXISTS webhook_cursor (
        id BIGINT PRIMARY KEY,
        last_seq BIGINT NOT NULL
    )""",
]

# -- metrics (module level: registered once per process; labelled by outcome only) -------------

DELIVERY_ATTEMPTS = Counter(
    "dualflow_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), retried (will be tried again), "
    "dead (attempts exhausted), rejected_4xx (refused by the receiver, not retried).",
    ["outcome"],
)
for _outcome in ("delivered", "retried", "dead", "rejected_4xx"):
    DELIVERY_ATTEMPTS.labels(_outcome)
DELIVERY_SECONDS = Histogram(
    "dualflow_webhook_delivery_seconds",
    "Time for one webhook POST, from connect to response status (or failure).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEAD_LETTERS = Counter(
    "dualflow_webhook_dead_letters",
    "Deliveries that became DEAD (refused, attempts exhausted, endpoint disabled).",
)
PENDING_DELIVERIES = Gauge(
    "dualflow_webhook_pending_deliveries",
    "Deliveries in PENDING state: counted at each scan, kept current by the dispatcher in between.",
)
IN_FLIGHT_DELIVERIES = Gauge(
    "dualflow_webhook_in_flight_deliveries",
    "Delivery tasks running in this process (attempting or waiting to retry).",
)
CURSOR_SEQ = Gauge(
    "dualflow_webhook_cursor_seq",
    "Highest outbox seq whose deliveries are recorded (compare with the outbox head for lag).",
)


# -- the outbox, as this worker sees it ---------------------------------------------------------

@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event_id: str
    type: str
    merchant_id: str
    created_at_ns: int
    payload_json: str = field(repr=False)  # customer data: not for logs


class EventSource(Protocol):
    async def read_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        """Up to `limit` events with seq > `seq`, in seq order."""
        ...

    async def wait_for_new(self, seq: int, timeout_s: float) -> None:
        """Return when an event with seq > `seq` may exist, or after `timeout_s`."""
        ...


def event_body(event: OutboxEvent) -> bytes:
    """The POST body: `{"id", "type", "created_at_ns", "data"}` with `data` the payload's JSON as
    the outbox holds it (spliced, not re-encoded, so numbers and key order arrive unchanged).
    Raises ValueError when the payload is not strict JSON."""
    json.loads(event.payload_json, parse_constant=_reject_constant)  # NaN/Infinity are not JSON
    return (
        '{"id":' + json.dumps(event.event_id) + ',"type":' + json.dumps(event.type)
        + ',"created_at_ns":' + str(int(event.created_at_ns)) + ',"data":' + event.payload_json.strip() + "}"
    ).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- endpoints and deliveries -------------------------------------------------------------------

class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"


def redact_url(url: str) -> str:
    """`https://user:pw@host:8443/p/a?token=x` -> `https://host:8443/...`: fit for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}/..."


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    merchant_id: str
    url: str
    event_types: tuple[str, ...]  # ("*",) for every type
    enabled: bool
    created_at_ms: int

    def wants(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types

    def __repr__(self) -> str:
        # The URL may carry credentials or a token in its path or query.
        return (f"WebhookEndpoint(id={self.id!r}, merchant_id={self.merchant_id!r}, "
                f"url={redact_url(self.url)!r}, event_types={self.event_types!r}, enabled={self.enabled})")


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    last_status: int | None
    next_at_ms: int
    updated_at_ms: int


_ENDPOINT_COLUMNS = "id, merchant_id, url, event_types, enabled, created_at"
_DELIVERY_COLUMNS = "id, endpoint_id, event_id, event_type, status, attempts, last_error, last_status, next_at, updated_at"


def _endpoint(row: Sequence[Any]) -> WebhookEndpoint:
    return WebhookEndpoint(row[0], row[1], row[2], tuple(row[3].split(",")), bool(row[4]), int(row[5]))


def _delivery(row: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(row[0], row[1], row[2], row[3], DeliveryStatus(row[4]), int(row[5]), row[6],
                           None if row[7] is None else int(row[7]), int(row[8]), int(row[9]))


def _validate_url(url: object) -> str:
    violation = FieldViolation("url", "must be an absolute http:// or https:// URL with a host, at most "
                                      f"{_URL_LEN_MAX} characters, without spaces")
    if not isinstance(url, str) or not url or len(url) > _URL_LEN_MAX or any(c.isspace() or ord(c) < 32 for c in url):
        ok = False
    else:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
    if not ok:
        # The URL is not echoed: it may hold a credential.
        raise InvalidRequest("webhook URL is invalid", reason="WEBHOOK_URL_INVALID", violations=(violation,))
    return url  # type: ignore[return-value]


def _validate_event_types(event_types: Sequence[str] | str) -> tuple[str, ...]:
    types = (event_types,) if isinstance(event_types, str) else tuple(event_types)
    if not types or not all(isinstance(t, str) and (t == "*" or _EVENT_TYPE_RE.fullmatch(t)) for t in types):
        raise InvalidRequest(
            "webhook event types are invalid", reason="WEBHOOK_EVENT_TYPES_INVALID",
            violations=(FieldViolation("event_types", "must be '*' or a non-empty list of names of [A-Za-z0-9_.-]"),),
        )
    return ("*",) if "*" in types else tuple(dict.fromkeys(types))


class WebhookRegistry:
    """Merchants' endpoints and the dead-letter list (the tables are `WEBHOOK_SCHEMA`)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def __repr__(self) -> str:
        return "WebhookRegistry()"

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def add_endpoint(self, merchant_id: str, url: str,
                           event_types: Sequence[str] | str = "*") -> tuple[WebhookEndpoint, str]:
        """Register an endpoint; answers it and its signing secret (`whsec_...`), which the
        merchant must keep: it is shown here once."""
        if not isinstance(merchant_id, str) or not merchant_id.strip():
            raise InvalidRequest("merchant id is required",
                                 violations=(FieldViolation("merchant_id", "must be a non-empty string"),))
        url = _validate_url(url)
        types = _validate_event_types(event_types)
        # Ids never contain ':' (token_urlsafe's alphabet), which delivery ids rely on.
        endpoint = WebhookEndpoint("we_" + secrets.token_urlsafe(12), merchant_id, url, types, True, self._now_ms())
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        await self._db.write([(
            f"INSERT INTO webhook_endpoints ({_ENDPOINT_COLUMNS}, secret) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (endpoint.id, merchant_id, url, ",".join(types), 1, endpoint.created_at_ms, secret),
        )])
        return endpoint, secret

    async def endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        rows = await self._db.query(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        if not rows:
            raise NotFound("no such webhook endpoint", reason="WEBHOOK_ENDPOINT_UNKNOWN",
                           metadata={"endpoint_id": str(endpoint_id)})
        return _endpoint(rows[0])

    async def list_endpoints(self, merchant_id: str) -> list[WebhookEndpoint]:
        rows = await self._db.query(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE merchant_id = ? ORDER BY created_at, id",
            (merchant_id,))
        return [_endpoint(r) for r in rows]

    async def disable_endpoint(self, endpoint_id: str) -> None:
        """Stop sending to the endpoint: no new deliveries; its pending ones become DEAD at their
        next attempt (where they can be seen, and redelivered if it is enabled again)."""
        await self.endpoint(endpoint_id)
        await self._db.write([("UPDATE webhook_endpoints SET enabled = 0 WHERE id = ?", (endpoint_id,))])

    async def delivery(self, delivery_id: str) -> WebhookDelivery:
        rows = await self._db.query(f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,))
        if not rows:
            raise NotFound("no such webhook delivery", reason="WEBHOOK_DELIVERY_UNKNOWN",
                           metadata={"delivery_id": str(delivery_id)})
        return _delivery(rows[0])

    async def list_deliveries(self, event_id: str) -> list[WebhookDelivery]:
        """Every endpoint's delivery of one event."""
        rows = await self._db.query(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE event_id = ? ORDER BY id", (event_id,))
        return [_delivery(r) for r in rows]

    async def list_dead_letters(self, merchant_id: str, limit: int = 100) -> list[WebhookDelivery]:
        """The merchant's DEAD deliveries, latest first."""
        cols = ", ".join("d." + c.strip() for c in _DELIVERY_COLUMNS.split(","))
        rows = await self._db.query(
            f"SELECT {cols} FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
            "WHERE e.merchant_id = ? AND d.status = 'DEAD' ORDER BY d.updated_at DESC, d.id LIMIT ?",
            (merchant_id, limit))
        return [_delivery(r) for r in rows]

    async def redeliver(self, delivery_id: str) -> None:
        """Send a DEAD delivery again, from attempt one (the dispatcher picks it up at its next scan)."""
        delivery = await self.delivery(delivery_id)
        if delivery.status is not DeliveryStatus.DEAD:
            raise PreconditionFailed("only a DEAD delivery can be redelivered", reason="DELIVERY_NOT_DEAD",
                                     metadata={"delivery_id": delivery_id, "status": delivery.status.value})
        now_ms = self._now_ms()
        # `AND status = 'DEAD'` keeps two concurrent redeliveries from resetting each other's attempts.
        await self._db.write([(
            "UPDATE webhook_deliveries SET status = 'PENDING', attempts = 0, next_at = ?, updated_at = ? "
            "WHERE id = ? AND status = 'DEAD'",
            (now_ms, now_ms, delivery_id),
        )])


# -- the worker ---------------------------------------------------------------------------------

class _Retryable(Exception):
    """This attempt failed in a way another attempt may not (connection, timeout, 5xx, 429)."""

    def __init__(self, retry_after_s: float | None = None) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s


class _Rejected(Exception):
    """The receiver answered 4xx (other than 429): the same request will be refused again."""


class _EndpointGone(Exception):
    """The endpoint was disabled (or removed) while the delivery was owed."""


@dataclass
class _Progress:
    """One delivery's attempt count and last outcome, carried between tenacity's callbacks."""

    attempts: int
    last_status: int | None = None
    last_error: str | None = None


def _retry_after_s(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP-date falls back to our own backoff.
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class WebhookDispatcher:
    """Background task: outbox -> PENDING rows (durable) -> signed POSTs with retries.

    Run one per database: two would both deliver (harmless, at-least-once, but twice the load).
    """

    def __init__(
        self,
        db: Database,
        source: EventSource,
        *,
        max_attempts: int = 8,
        base_delay_s: float = 0.5,
        max_delay_s: float = 60.0,
        timeout_s: float = 5.0,
        concurrency: int = 16,
        per_endpoint_concurrency: int = 4,
        max_in_flight: int = 10_000,
        batch_size: int = 100,
        rescan_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert max_attempts >= 1 and concurrency >= 1 and per_endpoint_concurrency >= 1
        assert 0 < base_delay_s <= max_delay_s and timeout_s > 0 and batch_size >= 1 and max_in_flight >= 1
        self._db = db
        self._source = source
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._per_endpoint_concurrency = per_endpoint_concurrency
        self._max_in_flight = max_in_flight
        self._batch_size = batch_size
        self._rescan_interval_s = rescan_interval_s
        self._clock = clock  # unix seconds: row times and signature timestamps
        self._rng = random.Random()
        self._slots = asyncio.Semaphore(concurrency)
        # Per-endpoint limits live only while some task holds one: no table of every endpoint ever.
        self._endpoint_slots: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        self._cursor = 0
        self._main_loads_cursor = True

    def __repr__(self) -> str:
        return (f"WebhookDispatcher(running={self.running}, cursor={self._cursor}, "
                f"in_flight={len(self._tasks)})")

    @property
    def running(self) -> bool:
        return self._main is not None and not self._main.done()

    @property
    def cursor(self) -> int:
        return self._cursor

    async def start(self) -> None:
        assert self._main is None, "a dispatcher starts once; make a new one to restart"
        self._stopping = False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            trust_env=False,  # no proxy from the environment between us and merchants
            headers={"User-Agent": "dualflow-webhooks/1"},
        )
        self._main = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop reading and abandon attempts in flight; their rows stay PENDING and the next
        dispatcher resumes them (a receiver may see a request again: at-least-once)."""
        self._stopping = True
        tasks = [t for t in (self._main, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        IN_FLIGHT_DELIVERIES.set(0)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- reading the outbox ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        next_scan = 0.0
        # A flag as well as cancellation: Python 3.11 can swallow a cancellation inside a
        # library's wait_for, and the reader must still end when stop() asks.
        while not self._stopping:
            try:
                if failures or self._main_loads_cursor:
                    # At start, and after a failure: the stored cursor is the truth.
                    self._cursor = await self._load_cursor()
                    self._main_loads_cursor = False
                    CURSOR_SEQ.set(self._cursor)
                events = await self._source.read_after(self._cursor, self._batch_size)
                if events:
                    await self._record(events)
                if loop.time() >= next_scan:
                    # Resumes PENDING rows left by a restart, a full in-flight table or a redeliver.
                    await self._scan()
                    next_scan = loop.time() + self._rescan_interval_s
                failures = 0
                if len(events) < self._batch_size:
                    await self._source.wait_for_new(self._cursor, max(0.0, next_scan - loop.time()))
            except asyncio.CancelledError:
                raise
            except Exception:
                # Storage or outbox trouble: nothing was half-done (each write is one transaction),
                # so back off and go again from the stored cursor.
                failures += 1
                log.warning("webhook dispatcher: reading or recording failed (%d in a row)", failures, exc_info=True)
                await asyncio.sleep(min(self._max_delay_s, self._base_delay_s * 2 ** min(failures, 16)))

    async def _load_cursor(self) -> int:
        rows = await self._db.query("SELECT last_seq FROM webhook_cursor WHERE id = ?", (_CURSOR_ROW_ID,))
        return int(rows[0][0]) if rows else 0

    async def _record(self, events: list[OutboxEvent]) -> None:
        """Fan the batch out into PENDING rows and advance the cursor, in one transaction; then
        start the deliveries."""
        events = [e for e in events if e.seq > self._cursor]
        if not events:
            return
        merchants = sorted({e.merchant_id for e in events})
        rows = await self._db.query(
            f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE enabled = 1 AND merchant_id IN "
            f"({', '.join('?' * len(merchants))})", merchants)
        endpoints: dict[str, list[WebhookEndpoint]] = {}
        for row in rows:
            endpoints.setdefault(row[1], []).append(_endpoint(row))
        now_ms = int(self._clock() * 1000)
        statements: list[Statement] = []
        fresh: list[str] = []
        dead = 0
        for event in events:
            targets = [ep for ep in endpoints.get(event.merchant_id, ()) if ep.wants(event.type)]
            if not targets:
                continue
            try:
                body, status, error = event_body(event).decode("utf-8"), DeliveryStatus.PENDING, None
            except ValueError:
                # A producer bug; kept visible in the dead letters rather than dropped or retried.
                body, status, error = "", DeliveryStatus.DEAD, "event payload is not valid JSON"
                log.error("webhook dispatcher: event %s has a payload that is not JSON", event.event_id)
            for ep in targets:
                delivery_id = f"{ep.id}:{event.event_id}"
                statements.append((
                    f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (delivery_id, ep.id, event.event_id, event.type, status.value, 0, error, None, now_ms, now_ms, body),
                ))
                if status is DeliveryStatus.PENDING:
                    fresh.append(delivery_id)
                else:
                    dead += 1
        last_seq = max(e.seq for e in events)
        # The WHERE keeps a stale dispatcher from moving the cursor back.
        statements.append((
            "INSERT INTO webhook_cursor (id, last_seq) VALUES (?, ?) ON CONFLICT (id) DO UPDATE "
            "SET last_seq = excluded.last_seq WHERE webhook_cursor.last_seq < excluded.last_seq",
            (_CURSOR_ROW_ID, last_seq),
        ))
        await self._db.write(statements)
        self._cursor = last_seq
        CURSOR_SEQ.set(last_seq)
        DEAD_LETTERS.inc(dead)
        PENDING_DELIVERIES.inc(len(fresh))
        for delivery_id in fresh:
            self._spawn(delivery_id)

    async def _scan(self) -> None:
        now_ms = int(self._clock() * 1000)
        room = self._max_in_flight - len(self._tasks)
        if room > 0:
            rows = await self._db.query(
                "SELECT id FROM webhook_deliveries WHERE status = 'PENDING' AND next_at <= ? "
                "ORDER BY next_at, id LIMIT ?", (now_ms, room + len(self._tasks)))
            for (delivery_id,) in rows:
                self._spawn(delivery_id)
        (count,), = await self._db.query("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'PENDING'")
        PENDING_DELIVERIES.set(count)

    def _spawn(self, delivery_id: str) -> None:
        # Over the in-flight cap a row simply waits in the table for a later scan.
        if delivery_id in self._tasks or len(self._tasks) >= self._max_in_flight:
            return
        task = asyncio.create_task(self._deliver(delivery_id), name=f"webhook-delivery {delivery_id}")
        self._tasks[delivery_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._tasks.get(delivery_id) is task:
                del self._tasks[delivery_id]
            IN_FLIGHT_DELIVERIES.set(len(self._tasks))

        task.add_done_callback(done)
        IN_FLIGHT_DELIVERIES.set(len(self._tasks))

    # -- one delivery ---------------------------------------------------------------------------

    async def _deliver(self, delivery_id: str) -> None:
        try:
            await self._deliver_inner(delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Most likely storage failing while recording an outcome: the row is still PENDING
            # and a later scan tries again.
            log.warning("webhook delivery %s: failed, left PENDING for a later scan", delivery_id, exc_info=True)

    async def _deliver_inner(self, delivery_id: str) -> None:
        rows = await self._db.query(
            "SELECT endpoint_id, event_id, status, attempts, body FROM webhook_deliveries WHERE id = ?",
            (delivery_id,))
        # Re-read, not trusted from the caller: the row may have been delivered meanwhile (a scan
        # that raced a finishing task, a second dispatcher).
        if not rows or rows[0][2] != DeliveryStatus.PENDING:
            return
        endpoint_id, event_id, _, attempts, body_text = rows[0]
        progress = _Progress(attempts=int(attempts))
        if not body_text:
            await self._finish(delivery_id, DeliveryStatus.DEAD, progress, "no body to send")
            return
        body = body_text.encode("utf-8")
        remaining = self._max_attempts - progress.attempts
        if remaining <= 0:
            await self._finish(delivery_id, DeliveryStatus.DEAD, progress, "attempts exhausted")
            return

        async def record_then_sleep(seconds: float) -> None:
            # tenacity calls this between attempts: the failed attempt is written, with when the
            # next one is due (so a restart during the wait resumes on time, not early).
            DELIVERY_ATTEMPTS.labels("retried").inc()
            now_ms = int(self._clock() * 1000)
            await self._write_progress(delivery_id, DeliveryStatus.PENDING, progress,
                                       next_at_ms=now_ms + int(seconds * 1000))
            await asyncio.sleep(seconds)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(remaining),
            wait=lambda state: self._backoff_s(progress.attempts, state),
            retry=retry_if_exception_type(_Retryable),
            sleep=record_then_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._attempt(endpoint_id, event_id, body, progress)
        except _Retryable:
            DELIVERY_ATTEMPTS.labels("dead").inc()
            await self._finish(delivery_id, DeliveryStatus.DEAD, progress, None)
        except _Rejected:
            DELIVERY_ATTEMPTS.labels("rejected_4xx").inc()
            await self._finish(delivery_id, DeliveryStatus.DEAD, progress, None)
        except _EndpointGone:
            await self._finish(delivery_id, DeliveryStatus.DEAD, progress, "endpoint disabled")
        else:
            DELIVERY_ATTEMPTS.labels("delivered").inc()
            await self._finish(delivery_id, DeliveryStatus.DELIVERED, progress, None)

    def _backoff_s(self, attempts: int, state: RetryCallState) -> float:
        # "Equal jitter": half the exponential step fixed, half random. The fixed half keeps
        # retries from bunching at zero; the random half spreads a crowd of deliveries that all
        # failed together when their endpoint went down. `attempts` counts across restarts.
        step = min(self._max_delay_s, self._base_delay_s * 2 ** max(0, attempts - 1))
        delay = step / 2 + self._rng.uniform(0, step / 2)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
            delay = max(delay, min(exc.retry_after_s, self._max_delay_s))  # honour 429's Retry-After
        return delay

    async def _attempt(self, endpoint_id: str, event_id: str, body: bytes, progress: _Progress) -> None:
        rows = await self._db.query("SELECT url, secret, enabled FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
        if not rows or not rows[0][2]:
            raise _EndpointGone()
        url, secret, _ = rows[0]
        assert self._session is not None, "dispatcher not started"
        slots = self._endpoint_slots.get(endpoint_id)
        if slots is None:
            slots = self._endpoint_slots[endpoint_id] = asyncio.Semaphore(self._per_endpoint_concurrency)
        # The endpoint's own slot first: a task stuck behind a slow endpoint must not sit on a
        # global slot while it waits.
        async with slots, self._slots:
            headers = {
                "Content-Type": "application/json",
                # Signed at each attempt, so a retry an hour later is within the receiver's tolerance.
                SIGNATURE_HEADER: sign(secret, body, int(self._clock())),
                EVENT_ID_HEADER: event_id,
            }
            started = time.perf_counter()
            try:
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                ) as response:
                    status = response.status
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The class name only: aiohttp's messages can quote the URL.
                progress.attempts += 1
                progress.last_status = None
                progress.last_error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                raise _Retryable() from None
            finally:
                DELIVERY_SECONDS.observe(time.perf_counter() - started)
        progress.attempts += 1
        progress.last_status = status
        progress.last_error = None if 200 <= status < 300 else f"HTTP {status}"
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status != 429:
            raise _Rejected()
        # 5xx, 429, and the odd 1xx/3xx (redirects are not followed: a webhook URL is exact).
        raise _Retryable(retry_after)

    async def _finish(self, delivery_id: str, status: DeliveryStatus, progress: _Progress, error: str | None) -> None:
        if error is not None:
            progress.last_error = error
        await self._write_progress(delivery_id, status, progress, next_at_ms=int(self._clock() * 1000))
        PENDING_DELIVERIES.dec()
        if status is DeliveryStatus.DEAD:
            DEAD_LETTERS.inc()
            log.warning("webhook delivery %s: DEAD after %d attempts (%s)", delivery_id, progress.attempts,
                        progress.last_error)

    async def _write_progress(self, delivery_id: str, status: DeliveryStatus, progress: _Progress, *,
                              next_at_ms: int) -> None:
        # `AND status = 'PENDING'`: an outcome never overwrites a row someone else finished.
        await self._db.write([(
            "UPDATE webhook_deliveries SET status = ?, attempts = ?, last_error = ?, last_status = ?, "
            "next_at = ?, updated_at = ? WHERE id = ? AND status = 'PENDING'",
            (status.value, progress.attempts, (progress.last_error or "")[:_ERROR_TEXT_MAX] or None,
             progress.last_status, next_at_ms, int(self._clock() * 1000), delivery_id),
        )])
