"""Channel health for the router: the circuit breaker's states and the success estimate."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dualflow.routing.breaker import BreakerSettings, BreakerState, CircuitBreaker
from dualflow.routing.health import ChannelHealth, is_payer_decline


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = BreakerSettings(window=10, min_samples=5, open_at=0.5, cool_down_s=30, probes=2, probes_to_close=2)


def test_breaker_opens_on_channel_faults_not_on_payer_declines() -> None:
    breaker = CircuitBreaker(SETTINGS, clock=Clock())
    for _ in range(20):
        assert breaker.acquire()
        breaker.record(channel_fault=False, payer_decline=True)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(4):
        breaker.record(channel_fault=True)
    assert breaker.state is BreakerState.CLOSED, "fewer than min_samples never opens it"
    breaker.record(channel_fault=True)
    assert breaker.state is BreakerState.OPEN and not breaker.acquire()


def test_half_open_lets_a_bounded_number_of_probes_through_then_closes_or_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(SETTINGS, clock=clock)
    for _ in range(5):
        breaker.record(channel_fault=True)
    assert breaker.state is BreakerState.OPEN
    clock.now += 29.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() and breaker.acquire() and not breaker.acquire(), "two probes at a time"
    breaker.record(channel_fault=True)
    assert breaker.state is BreakerState.OPEN, "a failed probe opens it again"
    clock.now += 30
    assert breaker.acquire()
    breaker.record(channel_fault=False)
    assert breaker.acquire()
    breaker.record(channel_fault=False)
    assert breaker.state is BreakerState.CLOSED


def test_forced_open_wins_until_released() -> None:
    breaker = CircuitBreaker(SETTINGS, clock=Clock())
    breaker.forced_open = True
    assert breaker.state is BreakerState.OPEN and not breaker.acquire()
    breaker.forced_open = False
    assert breaker.acquire()


@given(st.lists(st.sampled_from(["acquire", "ok", "fault", "tick"]), max_size=300))
def test_half_open_never_has_more_probes_out_than_allowed(ops: list[str]) -> None:
    clock = Clock()
    breaker = CircuitBreaker(SETTINGS, clock=clock)
    for _ in range(SETTINGS.min_samples):
        breaker.record(channel_fault=True)
    in_flight = 0  # payments let through and not answered yet
    for op in ops:
        if op == "tick":
            clock.now += 11
        elif op == "acquire":
            half_open = breaker.state is BreakerState.HALF_OPEN
            if breaker.acquire():
                in_flight += 1
                if half_open:
                    assert in_flight <= SETTINGS.probes
        elif in_flight:
            in_flight -= 1
            breaker.record(channel_fault=op == "fault")
            if breaker.state is not BreakerState.HALF_OPEN:
                in_flight = 0  # answers from before a change of state are history


def test_health_estimate_ignores_payer_declines_and_samples_deterministically() -> None:
    health = ChannelHealth(window=100)
    assert health.mean() == 0.5 and health.samples == 0
    for _ in range(30):
        health.record(succeeded=False, reason="INSUFFICIENT_FUNDS")
    assert health.mean() > 0.9, "the channel answered correctly every time"
    for _ in range(60):
        health.record(succeeded=False, reason="TIMEOUT", latency_ms=2_000)
    assert health.mean() < 0.4
    assert is_payer_decline("CARD_DECLINED") and not is_payer_decline("ISSUER_UNAVAILABLE")
    draws = [health.sample(random.Random(7)) for _ in range(3)]
    assert draws[0] == draws[1] == draws[2]
    assert health.latency_ms(0.99) == 2_000


def test_the_estimate_follows_the_window_through_an_outage_and_a_recovery() -> None:
    bad = ChannelHealth(window=20)
    for _ in range(20):
        bad.record(succeeded=False, reason="TIMEOUT")
    good = ChannelHealth(window=20)
    for _ in range(20):
        good.record(succeeded=True)
    rng = random.Random(1)
    wins = sum(bad.sample(rng) > good.sample(rng) for _ in range(10_000))
    assert wins < 50, "a dead channel almost never wins"
    for _ in range(20):
        bad.record(succeeded=True)  # it recovered: the window forgets the outage
    assert bad.mean() == good.mean()


def _ks_distance(xs: list[float], ys: list[float]) -> float:
    import bisect

    xs, ys = sorted(xs), sorted(ys)
    return max(abs(bisect.bisect_right(xs, v) / len(xs) - bisect.bisect_right(ys, v) / len(ys)) for v in xs + ys)


def test_the_fast_posterior_draw_matches_the_exact_beta() -> None:
    """The draw (Wilson-Hilferty gammas from quantile tables) against random.betavariate: the
    two-sample Kolmogorov distance stays below what two exact samples of this size show at
    the 0.1% level (1.95 x sqrt(2 / n) = 0.028 for n = 10,000)."""
    exact, fast = random.Random(1), random.Random(2)
    for successes, failures in ((0, 0), (1, 0), (0, 1), (9, 0), (199, 0), (189, 10), (99, 99), (4, 2), (0, 29)):
        health = ChannelHealth(window=1_000)
        for _ in range(successes):
            health.record(succeeded=True)
        for _ in range(failures):
            health.record(succeeded=False, reason="TIMEOUT")
        a, b = health.posterior()
        draws = [health.sample(fast) for _ in range(10_000)]
        assert all(0.0 <= d <= 1.0 for d in draws)
        distance = _ks_distance(draws, [exact.betavariate(a, b) for _ in range(10_000)])
        assert distance < 0.028, (a, b, distance)
