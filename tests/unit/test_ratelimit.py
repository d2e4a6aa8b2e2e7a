"""Token buckets (gateway/ratelimit.py) on a fake clock: burst, refill, the advertised retry delay."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from dualflow.core.errors import Overloaded
from dualflow.gateway.ratelimit import RateLimiter, TokenBucket


class Clock:
    def __init__(self, now_s: float = 1_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def test_burst_then_refusal() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 5, clock=clock)
    assert [bucket.try_take() for _ in range(5)] == [0] * 5  # starts full
    assert bucket.try_take() == 100  # one token at 10/s is 100 ms away
    assert bucket.try_take() == 100  # a refusal takes nothing


# (rate/s, burst, seconds idle after emptying the bucket, takes that succeed, retry_after_ms of the next)
REFILL_CASES = [
    (10, 5, 0.0, 0, 100),
    (10, 5, 0.05, 0, 50),
    (10, 5, 0.1, 1, 100),
    (10, 5, 0.35, 3, 50),
    (10, 5, 60.0, 5, 100),  # never more than the burst
    (1, 1, 0.0, 0, 1000),
    (3, 2, 0.0, 0, 334),  # ceil(333.3...)
    (0.5, 1, 1.0, 0, 1000),
    (1000, 10, 0.0, 0, 1),  # 1 ms
    (100_000, 10, 0.0, 0, 1),  # 0.01 ms, but never less than 1
]


@pytest.mark.parametrize(("rate", "burst", "idle_s", "takes", "retry_ms"), REFILL_CASES)
def test_refill(rate: float, burst: int, idle_s: float, takes: int, retry_ms: int) -> None:
    clock = Clock()
    bucket = TokenBucket(rate, burst, clock=clock)
    while bucket.try_take() == 0:
        pass
    clock.advance(idle_s)
    got = 0
    while (retry := bucket.try_take()) == 0:
        got += 1
    assert (got, retry) == (takes, retry_ms)


@pytest.mark.parametrize("rate", [0.3, 1, 3, 7, 10, 333, 1000, 12_345.6])
def test_waiting_the_advertised_delay_always_gets_a_token(rate: float) -> None:
    clock = Clock(12_345.678)
    bucket = TokenBucket(rate, 3, clock=clock)
    for _ in range(50):
        retry_ms = bucket.try_take()
        if retry_ms:
            clock.advance(retry_ms / 1000)
            assert bucket.try_take() == 0, f"waited {retry_ms} ms at {rate}/s and still no token"
        else:
            clock.advance(0.0007)


def test_long_run_rate_is_the_refill_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(50, 10, clock=clock)
    admitted = 0
    for _ in range(100_000):  # one attempt per 0.1 ms for 10 s
        clock.advance(0.0001)
        admitted += bucket.try_take() == 0
    assert admitted == pytest.approx(10 + 50 * 10, abs=1)


def test_limiter_raises_overloaded_and_counts_by_caller_name() -> None:
    clock = Clock()
    limiter = RateLimiter("unit-test-caller", 4, 2, clock=clock)

    def refused() -> float:
        return REGISTRY.get_sample_value("dualflow_rate_limited_total", {"caller": "unit-test-caller"}) or 0.0

    before = refused()
    limiter.acquire()
    limiter.acquire()
    with pytest.raises(Overloaded) as caught:
        limiter.acquire()
    err = caught.value
    assert (err.reason, err.retry_after_ms, err.metadata) == ("RATE_LIMITED", 250, {"caller": "unit-test-caller"})
    assert refused() == before + 1
    clock.advance(0.25)
    limiter.acquire()
    assert refused() == before + 1
