"""One TCP link to the card bank: many requests in flight, matched by STAN; sign-on, periodic
echo, reconnect with backoff.

What a caller learns from `Link.request` is exactly what it may conclude:
- a verified reply (`Message`): the bank answered this request;
- `NotSent(reason)`: the request provably never left this process (no link, or the link was
  already known lost before writing, or it could not be encoded) - safe to try elsewhere;
- `NoAnswer(reason)`: it was written (or may have been) and no trustworthy reply came:
  TIMEOUT, CONNECTION_LOST, BAD_MAC, MISMATCHED_REPLY - the bank may have acted on it.

STANs run 000001..999999 and wrap, skipping any still in flight on the link. A reply whose STAN
no request is waiting for (a late reply after a timeout) is counted and dropped, never handed
to another request. A reply with a bad MAC is routed by its (untrusted) STAN only to fail that
request as BAD_MAC, never to succeed it.

Reconnecting: a background task keeps one link open, retrying with exponential backoff and
jitter (tenacity) after it is lost; a request that finds no link wakes the task for an early
attempt (at most one per `_KICK_GAP_S`) and waits `connect_wait_s` for it before answering
NotSent. The echo (0800/301) every `echo_interval_s` notices a link that is silently dead (no
reply within `echo_timeout_s`): the link is cut, its requests become CONNECTION_LOST, and the
task reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from . import codec
from .metrics import BAD_MACS, CONNECTED, IN_FLIGHT, LATENCY, RECONNECTS, REQUESTS, UNMATCHED
from .spec import ECHO, NETWORK, RESPONSE_MTI, SIGN_ON

log = logging.getLogger("dualflow.adapters.iso8583_bank")

_KICK_GAP_S = 0.05
_STAN_MAX = 999_999


class NotSent(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoAnswer(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _LinkDown(Exception):
    """A connection attempt that did not end signed on (retried with backoff)."""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[str, tuple[str, asyncio.Future[codec.Message]]] = field(default_factory=dict)
    lost: bool = False
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reader_task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    connect_timeout_s: float = 3.0
    connect_wait_s: float = 2.0
    reply_timeout_s: float = 10.0
    echo_interval_s: float = 30.0
    echo_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 5.0


def transmission_time(now: float | None = None) -> str:
    """DE 7: MMDDhhmmss in UTC."""
    return datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%m%d%H%M%S")


class Link:
    def __init__(self, channel: str, settings: LinkSettings, key: bytes) -> None:
        self.channel = channel
        self.settings = settings
        self._key = key
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._echo_task: asyncio.Task[None] | None = None
        self._stan = 0
        self._closing = False
        self._last_error = "NOT_CONNECTED"
        self.connections = 0  # successful sign-ons over the link's life (tests and operators)
        self.echoes = 0  # echoes answered

    def __repr__(self) -> str:
        return f"Link(channel={self.channel!r}, {self.settings.host}:{self.settings.port}, up={self.up})"

    @property
    def up(self) -> bool:
        return self._conn is not None and not self._conn.lost

    # ---- life cycle
    async def start(self) -> None:
        """Start keeping a link open; wait up to connect_wait_s for the first one. Never raises
        for an unreachable bank: requests then answer NotSent until it is reachable."""
        self._closing = False
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._maintain(), name=f"iso8583-link-{self.channel}")
        try:
            async with asyncio.timeout(self.settings.connect_wait_s):
                await self._connected.wait()
        except TimeoutError:
            log.warning("channel %s: no link to %s:%s yet (%s)", self.channel, self.settings.host,
                        self.settings.port, self._last_error)

    async def close(self) -> None:
        self._closing = True
        for task in (self._task, self._echo_task):
            if task is not None:
                task.cancel()
        for task in (self._task, self._echo_task):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing: nothing left to report to
                    pass
        self._task = self._echo_task = None
        if self._conn is not None:
            self._drop(self._conn, abort=False)
        self._conn = None

    def cut(self) -> None:
        """Drop the current connection (as if the network failed); the link reconnects."""
        if self._conn is not None:
            self._drop(self._conn, abort=True)

    # ---- requests
    async def request(self, mti: str, fields: dict[str, str], *, timeout_s: float | None = None,
                      conn: _Connection | None = None,
                      on_sent: Callable[[str, str], None] | None = None) -> codec.Message:
        if conn is None:
            conn = await self._ready()
        stan = self._next_stan(conn)
        sent_at = transmission_time()
        try:
            body = codec.encode(mti, {**fields, "7": sent_at, "11": stan}, self._key)
        except codec.MessageError as exc:
            log.error("channel %s: cannot encode %s: %s", self.channel, mti, exc)
            raise NotSent("INVALID_MESSAGE") from None
        if conn.lost or conn.writer.is_closing():
            raise NotSent("CONNECTION_LOST")
        future: asyncio.Future[codec.Message] = asyncio.get_running_loop().create_future()
        conn.pending[stan] = (RESPONSE_MTI[mti], future)
        IN_FLIGHT.labels(self.channel).inc()
        try:
            conn.writer.write(codec.frame(body))  # from here on the bank may act on it
            if on_sent is not None:
                on_sent(stan, sent_at)
            async with asyncio.timeout(self.settings.reply_timeout_s if timeout_s is None else timeout_s):
                await conn.writer.drain()
                return await future
        except TimeoutError:
            raise NoAnswer("TIMEOUT") from None
        except (ConnectionError, OSError):
            raise NoAnswer("CONNECTION_LOST") from None
        finally:
            IN_FLIGHT.labels(self.channel).dec()
            conn.pending.pop(stan, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: an answer nobody waits for any more is not an error

    def _next_stan(self, conn: _Connection) -> str:
        for _ in range(_STAN_MAX):
            self._stan = self._stan % _STAN_MAX + 1
            stan = f"{self._stan:06d}"
            if stan not in conn.pending:
                return stan
        raise NotSent("STAN_EXHAUSTED")

    async def _ready(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._maintain(), name=f"iso8583-link-{self.channel}")
        self._kick.set()
        try:
            async with asyncio.timeout(self.settings.connect_wait_s):
                while True:
                    conn = self._conn
                    if conn is not None and not conn.lost:
                        return conn
                    self._connected.clear()
                    await self._connected.wait()
        except TimeoutError:
            raise NotSent(self._last_error) from None

    # ---- reading
    async def _read(self, conn: _Connection) -> None:
        frames = codec.FrameDecoder()
        try:
            while True:
                data = await conn.reader.read(65_536)
                if not data:
                    break
                for body in frames.feed(data):
                    self._dispatch(conn, body)
        except codec.FrameError as exc:
            UNMATCHED.labels(self.channel, "unreadable").inc()
            log.warning("channel %s: framing broken (%s): dropping the link", self.channel, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self._drop(conn, abort=True)

    def _dispatch(self, conn: _Connection, body: bytes) -> None:
        error: NoAnswer | None = None
        try:
            message = codec.parse(body, self._key)
        except codec.MacError as exc:
            BAD_MACS.labels(self.channel).inc()
            log.warning("channel %s: %s", self.channel, exc)
            message, error = exc.message, NoAnswer("BAD_MAC")
        except codec.MessageError as exc:
            UNMATCHED.labels(self.channel, "unreadable").inc()
            log.warning("channel %s: unreadable reply dropped: %s", self.channel, exc)
            return
        waiting = conn.pending.get(message.stan)
        if waiting is None:
            UNMATCHED.labels(self.channel, "late" if error is None else "bad_mac").inc()
            log.info("channel %s: reply %s STAN %s matches no request in flight (late?)", self.channel,
                     message.mti, message.stan)
            return
        expected_mti, future = waiting
        if future.done():
            return
        if error is None and message.mti != expected_mti:
            error = NoAnswer("MISMATCHED_REPLY")
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(message)

    def _drop(self, conn: _Connection, *, abort: bool) -> None:
        if conn.lost:
            return
        conn.lost = True
        for _mti, future in conn.pending.values():
            if not future.done():
                future.set_exception(NoAnswer("CONNECTION_LOST"))
        if abort:
            conn.writer.transport.abort()
        else:
            conn.writer.close()
        if conn.reader_task is not None and conn.reader_task is not asyncio.current_task():
            conn.reader_task.cancel()
        if self._conn is conn:
            self._conn = None
            self._connected.clear()
            CONNECTED.labels(self.channel).set(0)
        conn.closed.set()

    # ---- keeping a link open
    async def _maintain(self) -> None:
        while not self._closing:
            retrying = AsyncRetrying(
                wait=wait_exponential(multiplier=self.settings.reconnect_initial_s, max=self.settings.reconnect_max_s)
                + wait_random(0, self.settings.reconnect_initial_s),
                retry=retry_if_exception_type(_LinkDown), sleep=self._backoff_sleep,
                before_sleep=self._log_attempt, reraise=True)
            async for attempt in retrying:
                with attempt:
                    conn = await self._open()
            self._conn = conn
            self._connected.set()
            CONNECTED.labels(self.channel).set(1)
            self.connections += 1
            if self.connections > 1:
                RECONNECTS.labels(self.channel).inc()
            log.info("channel %s: signed on to %s:%s", self.channel, self.settings.host, self.settings.port)
            self._echo_task = asyncio.create_task(self._echo(conn), name=f"iso8583-echo-{self.channel}")
            try:
                await conn.closed.wait()
            finally:
                self._echo_task.cancel()
            log.warning("channel %s: link lost; reconnecting", self.channel)

    def _log_attempt(self, state: RetryCallState) -> None:
        log.info("channel %s: connect attempt %d failed (%s)", self.channel, state.attempt_number, self._last_error)

    async def _backoff_sleep(self, seconds: float) -> None:
        self._kick.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._kick.wait()
        except TimeoutError:
            return
        await asyncio.sleep(_KICK_GAP_S)  # woken by a request: try now, but never in a tight loop

    async def _open(self) -> _Connection:
        s = self.settings
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                reader, writer = await asyncio.open_connection(s.host, s.port)
        except ConnectionRefusedError:
            self._last_error = "CONNECTION_REFUSED"
            raise _LinkDown(self._last_error) from None
        except (TimeoutError, OSError) as exc:
            self._last_error = "CONNECT_TIMEOUT" if isinstance(exc, TimeoutError) else "CONNECT_FAILED"
            raise _LinkDown(self._last_error) from None
        conn = _Connection(reader, writer)
        conn.reader_task = asyncio.create_task(self._read(conn), name=f"iso8583-read-{self.channel}")
        started = time.perf_counter()
        try:
            reply = await self.request(NETWORK, {"70": SIGN_ON}, conn=conn)
            code = reply.get("39")
        except (NotSent, NoAnswer) as exc:
            code = exc.reason
        except BaseException:  # cancelled (closing) mid sign-on: do not leave the socket behind
            self._drop(conn, abort=True)
            raise
        self._record("sign_on", "SUCCEEDED" if code == "00" else "FAILED", started)
        if code != "00":
            self._drop(conn, abort=True)
            self._last_error = "SIGN_ON_REFUSED"
            log.warning("channel %s: sign-on failed (%s)", self.channel, code)
            raise _LinkDown(self._last_error)
        return conn

    async def _echo(self, conn: _Connection) -> None:
        while not conn.lost:
            await asyncio.sleep(self.settings.echo_interval_s)
            started = time.perf_counter()
            try:
                reply = await self.request(NETWORK, {"70": ECHO}, conn=conn, timeout_s=self.settings.echo_timeout_s)
            except NotSent:
                return
            except NoAnswer as exc:
                self._record("echo", "UNKNOWN", started)
                log.warning("channel %s: echo unanswered (%s): link presumed dead", self.channel, exc.reason)
                self._drop(conn, abort=True)
                return
            self.echoes += 1
            self._record("echo", "SUCCEEDED" if reply.get("39") == "00" else "FAILED", started)

    def _record(self, flow: str, outcome: str, started: float) -> None:
        REQUESTS.labels(self.channel, flow, outcome).inc()
        LATENCY.labels(self.channel, flow).observe(time.perf_counter() - started)
