"""Webhook delivery against a real HTTP server on 127.0.0.1 (aiohttp.web, port 0).

The receiver checks every request's signature with the merchant-side verifier and answers from a
per-endpoint script (statuses, or "hang" to never answer). The outbox is a small in-memory
EventSource; storage is the SQLite test Database (and PostgreSQL where noted), so the portable SQL
is exercised for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from helpers_db import PostgresTestDatabase, SqliteTestDatabase, apply_schema
from prometheus_client import REGISTRY

from dualflow.core.errors import InvalidRequest, NotFound, PreconditionFailed
from dualflow.core.webhooks.delivery import (
    WEBHOOK_SCHEMA,
    DeliveryStatus,
    OutboxEvent,
    WebhookDelivery,
    WebhookDispatcher,
    WebhookRegistry,
)
from dualflow.core.webhooks.signature import SIGNATURE_HEADER, SignatureError, verify

pytestmark = pytest.mark.timeout(30)


# -- the outbox and the merchant's server -----------------------------------------------------

class MemorySource:
    """An outbox in memory: publish() appends with the next seq and wakes waiting readers."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []
        self._new = asyncio.Event()

    def publish(self, merchant_id: str, type: str = "payment.succeeded", data: Any = None,
                payload_json: str | None = None) -> OutboxEvent:
        seq = len(self.events) + 1
        event = OutboxEvent(seq, f"evt_{seq}", type, merchant_id, time.time_ns(),
                            payload_json if payload_json is not None else json.dumps(data or {"n": seq}))
        self.events.append(event)
        self._new.set()
        self._new = asyncio.Event()
        return event

    async def read_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        return [e for e in self.events if e.seq > seq][:limit]

    async def wait_for_new(self, seq: int, timeout_s: float) -> None:
        if self.events and self.events[-1].seq > seq:
            return
        try:
            await asyncio.wait_for(self._new.wait(), timeout_s)
        except TimeoutError:
            pass


@dataclass
class Call:
    path: str
    event_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    answered: int | None = None


@dataclass
class Receiver:
    """The merchant's server. script[name]: statuses answered in turn, the last one repeating;
    "hang" never answers (until the test ends)."""

    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    script: dict[str, list[int | str]] = field(default_factory=dict)
    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        raw = await request.read()
        try:
            verify(self.secrets[name], raw, request.headers.get(SIGNATURE_HEADER, ""), now=int(time.time()))
        except SignatureError:
            self.bad_signatures += 1
            return web.Response(status=401)
        call = Call(name, request.headers.get("Dualflow-Event-Id", ""), json.loads(raw), dict(request.headers))
        self.calls[name].append(call)
        steps = self.script.get(name, [200])
        action = steps[0] if len(steps) == 1 else steps.pop(0)
        if action == "hang":
            await self.release.wait()
            return web.Response(status=200)
        call.answered = int(action)
        return web.Response(status=int(action), headers={"Retry-After": "0"} if action == 429 else {})

    def accepted(self, name: str) -> list[str]:
        return [c.event_id for c in self.calls[name] if c.answered is not None and 200 <= c.answered < 300]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{name}", rec.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    yield rec
    rec.release.set()
    await runner.cleanup()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db(request: pytest.FixtureRequest) -> AsyncIterator[SqliteTestDatabase | PostgresTestDatabase]:
    if request.param == "sqlite":
        db: SqliteTestDatabase | PostgresTestDatabase = SqliteTestDatabase()
    else:
        db = await PostgresTestDatabase.connect(request.getfixturevalue("pg_dsn"))
    await apply_schema(db, WEBHOOK_SCHEMA, WEBHOOK_SCHEMA)  # twice: IF NOT EXISTS really holds
    yield db
    await db.close()


@pytest.fixture
async def db() -> AsyncIterator[SqliteTestDatabase]:
    database = SqliteTestDatabase()
    await apply_schema(database, WEBHOOK_SCHEMA)
    yield database
    await database.close()


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


Dispatchers = Callable[..., Awaitable[WebhookDispatcher]]


@pytest.fixture
async def dispatchers(source: MemorySource) -> AsyncIterator[Dispatchers]:
    """Start dispatchers with test-sized delays; every one is stopped at the end."""
    started: list[WebhookDispatcher] = []

    async def start(db: Any, **overrides: Any) -> WebhookDispatcher:
        options: dict[str, Any] = dict(max_attempts=5, base_delay_s=0.01, max_delay_s=0.05, timeout_s=0.5,
                                       rescan_interval_s=0.05)
        options.update(overrides)
        dispatcher = WebhookDispatcher(db, source, **options)
        await dispatcher.start()
        started.append(dispatcher)
        return dispatcher

    yield start
    for dispatcher in started:
        await dispatcher.stop()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)


async def deliveries(db: Any, event_id: str | None = None) -> list[WebhookDelivery]:
    registry = WebhookRegistry(db)
    if event_id is not None:
        return await registry.list_deliveries(event_id)
    rows = await db.query("SELECT DISTINCT event_id FROM webhook_deliveries ORDER BY event_id")
    return [d for (e,) in rows for d in await registry.list_deliveries(e)]


async def settled(db: Any, *delivery_ids: str, status: DeliveryStatus) -> bool:
    registry = WebhookRegistry(db)
    for delivery_id in delivery_ids:
        try:
            if (await registry.delivery(delivery_id)).status is not status:
                return False
        except NotFound:  # not recorded yet
            return False
    return True


def metric(outcome: str) -> float:
    return REGISTRY.get_sample_value("dualflow_webhook_deliveries_total", {"outcome": outcome}) or 0.0


async def endpoint(db: Any, receiver: Receiver, name: str, merchant_id: str = "m1",
                   event_types: Any = "*") -> str:
    ep, secret = await WebhookRegistry(db).add_endpoint(merchant_id, receiver.url(name), event_types)
    receiver.secrets[name] = secret
    return ep.id


# -- delivery outcomes ------------------------------------------------------------------------

async def test_5xx_is_retried_until_delivered(any_db: Any, receiver: Receiver, source: MemorySource,
                                              dispatchers: Dispatchers) -> None:
    ep = await endpoint(any_db, receiver, "flaky")
    receiver.script["flaky"] = [500, 503, 200]
    retried, delivered = metric("retried"), metric("delivered")
    await dispatchers(any_db)
    event = source.publish("m1", "payment.succeeded", {"payment_id": "p_1", "amount_minor": 12345})
    delivery_id = f"{ep}:{event.event_id}"
    await wait_for(lambda: settled(any_db, delivery_id, status=DeliveryStatus.DELIVERED))

    d = await WebhookRegistry(any_db).delivery(delivery_id)
    assert (d.attempts, d.last_status, d.last_error) == (3, 200, None)
    calls = receiver.calls["flaky"]
    assert [c.answered for c in calls] == [500, 503, 200] and receiver.bad_signatures == 0
    assert {c.event_id for c in calls} == {"evt_1"}
    assert calls[0].body == {"id": "evt_1", "type": "payment.succeeded", "created_at_ns": event.created_at_ns,
                             "data": {"payment_id": "p_1", "amount_minor": 12345}}
    assert calls[0].headers["Content-Type"] == "application/json"
    assert (metric("retried") - retried, metric("delivered") - delivered) == (2, 1)
    # The cursor is durable and at the event.
    assert await any_db.query("SELECT last_seq FROM webhook_cursor") == [(1,)]


async def test_4xx_is_dead_at_once_and_redelivered_after_the_fix(
        any_db: Any, receiver: Receiver, source: MemorySource, dispatchers: Dispatchers) -> None:
    ep = await endpoint(any_db, receiver, "strict")
    receiver.script["strict"] = [400]
    rejected = metric("rejected_4xx")
    await dispatchers(any_db)
    source.publish("m1")
    delivery_id = f"{ep}:evt_1"
    await wait_for(lambda: settled(any_db, delivery_id, status=DeliveryStatus.DEAD))
    await asyncio.sleep(0.15)  # several backoff steps and scans: no retry may follow
    assert len(receiver.calls["strict"]) == 1
    assert metric("rejected_4xx") - rejected == 1

    registry = WebhookRegistry(any_db)
    dead = await registry.list_dead_letters("m1", 10)
    assert [(d.id, d.attempts, d.last_status, d.last_error) for d in dead] == [(delivery_id, 1, 400, "HTTP 400")]
    assert await registry.list_dead_letters("m2", 10) == []

    receiver.script["strict"] = [200]  # the merchant fixes the bug
    await registry.redeliver(delivery_id)
    await wait_for(lambda: settled(any_db, delivery_id, status=DeliveryStatus.DELIVERED))
    d = await registry.delivery(delivery_id)
    assert (d.attempts, d.last_status) == (1, 200)  # attempts start again from zero
    assert receiver.accepted("strict") == ["evt_1"]
    assert await registry.list_dead_letters("m1", 10) == []

    with pytest.raises(PreconditionFailed) as not_dead:
        await registry.redeliver(delivery_id)
    assert not_dead.value.reason == "DELIVERY_NOT_DEAD"
    with pytest.raises(NotFound):
        await registry.redeliver("we_nope:evt_1")


async def test_attempts_exhausted_is_dead(db: SqliteTestDatabase, receiver: Receiver, source: MemorySource,
                                          dispatchers: Dispatchers) -> None:
    ep = await endpoint(db, receiver, "down")
    receiver.script["down"] = [429, 502, 503]
    dead = metric("dead")
    await dispatchers(db, max_attempts=3)
    source.publish("m1")
    await wait_for(lambda: settled(db, f"{ep}:evt_1", status=DeliveryStatus.DEAD))
    d = await WebhookRegistry(db).delivery(f"{ep}:evt_1")
    assert (d.attempts, d.last_status, d.last_error) == (3, 503, "HTTP 503")
    assert [c.answered for c in receiver.calls["down"]] == [429, 502, 503]
    assert metric("dead") - dead == 1


async def test_connection_refused_is_retried_and_never_quotes_the_url(
        db: SqliteTestDatabase, source: MemorySource, dispatchers: Dispatchers) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep, _ = await WebhookRegistry(db).add_endpoint("m1", f"http://user:pw@127.0.0.1:{port}/hook?token=sekrit")
    await dispatchers(db, max_attempts=2)
    source.publish("m1")
    await wait_for(lambda: settled(db, f"{ep.id}:evt_1", status=DeliveryStatus.DEAD))
    d = await WebhookRegistry(db).delivery(f"{ep.id}:evt_1")
    assert d.attempts == 2 and d.last_status is None
    assert d.last_error and "Connect" in d.last_error and "sekrit" not in d.last_error and str(port) not in d.last_error
    assert "sekrit" not in repr(ep) and "pw" not in repr(ep)


async def test_slow_endpoint_does_not_hold_up_another(db: SqliteTestDatabase, receiver: Receiver,
                                                      source: MemorySource, dispatchers: Dispatchers) -> None:
    slow = await endpoint(db, receiver, "slow")
    fast = await endpoint(db, receiver, "fast")
    receiver.script["slow"] = ["hang"]
    # 6 events x 2 endpoints against 4 global slots: without the per-endpoint limit the slow
    # endpoint would take every slot until its timeouts (0.5 s) and the fast one would wait.
    await dispatchers(db, concurrency=4, per_endpoint_concurrency=2, timeout_s=0.5)
    started = time.monotonic()
    events = [source.publish("m1") for _ in range(6)]
    fast_ids = [f"{fast}:{e.event_id}" for e in events]
    await wait_for(lambda: settled(db, *fast_ids, status=DeliveryStatus.DELIVERED))
    assert time.monotonic() - started < 0.5
    assert sorted(receiver.accepted("fast")) == sorted(e.event_id for e in events)
    slow_rows = [await WebhookRegistry(db).delivery(f"{slow}:{e.event_id}") for e in events]
    assert all(d.status is DeliveryStatus.PENDING and d.attempts == 0 for d in slow_rows)
    assert len(receiver.calls["slow"]) <= 2  # its own limit, not the global one

    async def slow_timed_out_and_retried() -> bool:
        d = await WebhookRegistry(db).delivery(f"{slow}:{events[0].event_id}")
        return d.attempts >= 1 and d.status is DeliveryStatus.PENDING and d.last_error == "timeout"

    await wait_for(slow_timed_out_and_retried, timeout_s=3)


async def test_restart_resumes_pending_and_skips_no_event(
        any_db: Any, receiver: Receiver, source: MemorySource, dispatchers: Dispatchers) -> None:
    ep = await endpoint(any_db, receiver, "r")
    first = await dispatchers(any_db)
    for _ in range(3):
        source.publish("m1")
    await wait_for(lambda: settled(any_db, *(f"{ep}:evt_{i}" for i in (1, 2, 3)), status=DeliveryStatus.DELIVERED))

    receiver.script["r"] = ["hang"]  # the next requests get no answer
    for _ in range(3):
        source.publish("m1")
    await wait_for(lambda: asyncio.sleep(0, len(receiver.calls["r"]) >= 4))
    await first.stop()  # mid-way: deliveries 4..6 recorded PENDING, at least one in flight
    assert [d.status for d in await deliveries(any_db)] == [DeliveryStatus.DELIVERED] * 3 + [DeliveryStatus.PENDING] * 3
    assert await any_db.query("SELECT last_seq FROM webhook_cursor") == [(6,)]
    for _ in range(2):  # the outbox moves on while no dispatcher runs
        source.publish("m1")

    receiver.script["r"] = [200]
    await dispatchers(any_db)
    all_ids = [f"{ep}:evt_{i}" for i in range(1, 9)]
    await wait_for(lambda: settled(any_db, *all_ids, status=DeliveryStatus.DELIVERED))
    accepted = receiver.accepted("r")
    assert sorted(set(accepted)) == sorted(f"evt_{i}" for i in range(1, 9))  # none skipped
    assert all(accepted.count(f"evt_{i}") == 1 for i in (1, 2, 3))  # delivered ones not resent
    assert receiver.bad_signatures == 0
    assert await any_db.query("SELECT last_seq FROM webhook_cursor") == [(8,)]


async def test_storage_outage_loses_no_event(db: SqliteTestDatabase, receiver: Receiver,
                                             source: MemorySource, dispatchers: Dispatchers) -> None:
    ep = await endpoint(db, receiver, "x")
    db.fail_writes = True
    await dispatchers(db)
    source.publish("m1")
    await asyncio.sleep(0.1)
    assert receiver.calls["x"] == []  # nothing is posted before it is recorded
    db.fail_writes = False
    await wait_for(lambda: settled(db, f"{ep}:evt_1", status=DeliveryStatus.DELIVERED))
    assert receiver.accepted("x") == ["evt_1"]


# -- fan-out and the registry -----------------------------------------------------------------

async def test_fan_out_by_merchant_type_and_enabled(db: SqliteTestDatabase, receiver: Receiver,
                                                    source: MemorySource, dispatchers: Dispatchers) -> None:
    registry = WebhookRegistry(db)
    every = await endpoint(db, receiver, "every")
    refunds = await endpoint(db, receiver, "refunds", event_types=["refund.succeeded"])
    other_merchant = await endpoint(db, receiver, "other", merchant_id="m2")
    off = await endpoint(db, receiver, "off")
    await registry.disable_endpoint(off)
    await dispatchers(db)
    source.publish("m1", "payment.succeeded")
    source.publish("m1", "refund.succeeded")
    source.publish("m2", "refund.succeeded")
    source.publish("m3", "payment.succeeded")  # a merchant with no endpoint: skipped, cursor moves
    await wait_for(lambda: asyncio.sleep(0, len(receiver.accepted("every")) + len(receiver.accepted("refunds"))
                                         + len(receiver.accepted("other")) == 4))
    assert sorted((d.endpoint_id, d.event_id) for d in await deliveries(db)) == sorted([
        (every, "evt_1"), (every, "evt_2"), (refunds, "evt_2"), (other_merchant, "evt_3")])
    assert receiver.calls["off"] == []
    await wait_for(lambda: asyncio.sleep(0, REGISTRY.get_sample_value("dualflow_webhook_cursor_seq") == 4))
    assert {e.id: e.enabled for e in await registry.list_endpoints("m1")} == {every: True, refunds: True, off: False}


async def test_disabling_an_endpoint_kills_its_pending_deliveries(
        db: SqliteTestDatabase, receiver: Receiver, source: MemorySource, dispatchers: Dispatchers) -> None:
    registry = WebhookRegistry(db)
    ep = await endpoint(db, receiver, "gone")
    receiver.script["gone"] = [500]
    await dispatchers(db, base_delay_s=0.05, max_delay_s=0.05)
    source.publish("m1")
    await wait_for(lambda: asyncio.sleep(0, len(receiver.calls["gone"]) >= 1))
    await registry.disable_endpoint(ep)
    await wait_for(lambda: settled(db, f"{ep}:evt_1", status=DeliveryStatus.DEAD))
    d = await registry.delivery(f"{ep}:evt_1")
    assert d.last_error == "endpoint disabled"
    assert len(receiver.calls["gone"]) == 1
    with pytest.raises(NotFound):
        await registry.disable_endpoint("we_unknown")


async def test_payload_that_is_not_json_is_a_dead_letter(db: SqliteTestDatabase, receiver: Receiver,
                                                         source: MemorySource, dispatchers: Dispatchers) -> None:
    ep = await endpoint(db, receiver, "j")
    await dispatchers(db)
    source.publish("m1", payload_json="{not json")
    source.publish("m1", payload_json='{"x": NaN}')
    source.publish("m1", payload_json='  {"big": 12345678901234567890, "f": 1.10}  ')
    await wait_for(lambda: settled(db, f"{ep}:evt_3", status=DeliveryStatus.DELIVERED))
    dead = await WebhookRegistry(db).list_dead_letters("m1")
    assert sorted((d.event_id, d.attempts, d.last_error) for d in dead) == [
        ("evt_1", 0, "event payload is not valid JSON"), ("evt_2", 0, "event payload is not valid JSON")]
    (call,) = receiver.calls["j"]
    assert call.body["data"] == {"big": 12345678901234567890, "f": 1.1}


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "example.com/hook", "http://", "https:///path", "http://exa mple.com/",
    "javascript:alert(1)", "http://example.com:99999/", "https://example.com/" + "a" * 2100, "", None,
])
async def test_add_endpoint_refuses_bad_urls_without_echoing_them(db: SqliteTestDatabase, url: Any) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await WebhookRegistry(db).add_endpoint("m1", url)
    assert exc.value.reason == "WEBHOOK_URL_INVALID"
    assert [v.field for v in exc.value.violations] == ["url"]
    if url and url != "http://":  # (that one is in the rule's own wording)
        assert url not in exc.value.message + repr(exc.value.violations)
    assert await db.query("SELECT COUNT(*) FROM webhook_endpoints") == [(0,)]


async def test_add_endpoint_answers_a_secret_once_and_validates_types(db: SqliteTestDatabase) -> None:
    registry = WebhookRegistry(db)
    ep, secret = await registry.add_endpoint("m1", "https://merchant.example/hooks", ["payment.succeeded"])
    ep2, secret2 = await registry.add_endpoint("m1", "http://127.0.0.1:8080/h", "*")
    assert secret.startswith("whsec_") and len(secret) > 40 and secret != secret2
    assert ep.event_types == ("payment.succeeded",) and ep2.event_types == ("*",)
    assert ":" not in ep.id and ep.id != ep2.id
    listed = await registry.list_endpoints("m1")
    assert sorted(e.id for e in listed) == sorted([ep.id, ep2.id])
    assert all(secret not in repr(e) and secret not in str(e) for e in listed)
    assert await registry.list_endpoints("m2") == []
    for bad in ([], ["a,b"], [""], ["ok", 5]):
        with pytest.raises(InvalidRequest) as exc:
            await registry.add_endpoint("m1", "https://merchant.example/hooks", bad)
        assert exc.value.reason == "WEBHOOK_EVENT_TYPES_INVALID"
    with pytest.raises(InvalidRequest):
        await registry.add_endpoint("", "https://merchant.example/hooks")


def test_metric_labels_carry_no_merchant_data() -> None:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("dualflow_webhook_"):
            names.add(family.name)
            for sample in family.samples:
                assert set(sample.labels) <= {"outcome", "le"}, sample
    assert {"dualflow_webhook_deliveries", "dualflow_webhook_delivery_seconds", "dualflow_webhook_dead_letters",
            "dualflow_webhook_pending_deliveries"} <= names
