"""A closed-loop concurrent load generator for gRPC unary calls, measuring per-call latency.

`concurrency` workers share one channel; each sends its next request as soon as
its previous call answered, until the requests run out or the duration is up,
so the offered load is exactly `concurrency` calls in flight. Requests are
prepared before the clock starts (serialized bytes, sent through a raw method
with no client-side serializer), so the client spends its time on the wire, not
on building messages.

A RESOURCE_EXHAUSTED answer is the server's backpressure: the worker backs off
(exponentially with full jitter, 20 ms doubling up to 1 s) and resends the same
request, and the call's latency runs from its first attempt to its success. A
request still being refused when the duration is up is abandoned (counted, not
completed). Any other error fails the run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 1.0


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def raw_method(ch: grpc.aio.Channel, path: str, response_from_bytes: Callable[[bytes], Any]) -> Any:
    """A unary method that sends pre-serialized request bytes as they are."""
    return ch.unary_unary(path, request_serializer=None, response_deserializer=response_from_bytes)


@dataclass
class LoadResult:
    items: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    rejected: int = 0  # RESOURCE_EXHAUSTED answers that were backed off and resent
    abandoned: int = 0  # requests still refused when the duration was up

    @property
    def rate_per_s(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def closed_loop(
    call: Callable[[Any], Awaitable[Any]],
    requests: Iterable[tuple[Any, int]],
    *,
    concurrency: int,
    duration_s: float,
    check: Callable[[Any, int], None] = lambda response, items: None,
    on_progress: Callable[[float], None] | None = None,
) -> LoadResult:
    """Run `(request, items)` pairs through `call` with `concurrency` calls in flight.

    `check(response, items)` raises when a response is not the success the
    bench expects. Returns the items completed, the wall time from the first
    send to the last answer, and every call's latency.
    """
    source = iter(requests)
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + duration_s
    finished = started

    async def worker() -> None:
        nonlocal finished
        while time.perf_counter() < deadline:
            nxt = next(source, None)
            if nxt is None:
                return
            request, items = nxt
            sent = time.perf_counter()
            backoff_s = BACKOFF_FIRST_S
            response = None
            while True:
                try:
                    response = await call(request)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    result.rejected += 1
                    await asyncio.sleep(random.uniform(0, backoff_s))
                    backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                    if time.perf_counter() >= deadline:
                        break
            if response is None:
                result.abandoned += 1
                return
            done = time.perf_counter()
            check(response, items)
            result.latencies_s.append(done - sent)
            result.items += items
            finished = max(finished, done)
            if on_progress is not None:
                on_progress(min(1.0, (done - started) / duration_s))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result.elapsed_s = finished - started
    return result
