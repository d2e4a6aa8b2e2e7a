"""What the router knows of a channel's health: its success rate as an estimate with
uncertainty, learned from real outcomes, and its latency.

Success is modelled as a Beta posterior over a sliding window of the channel's
own outcomes (payer declines excluded: they say nothing about the channel).
`sample()` draws from it (Thompson sampling): a channel with few recent outcomes
has a wide posterior and so still gets some traffic, which is how a recovered
channel wins its share back. The random source is injected, so decisions are
deterministic given a seed.

A draw is on the routing hot path (one per eligible channel per decision), and
`random.betavariate` costs two rejection-sampled gamma variates, about 3 us on
our machines. So a draw is Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~
Gamma(b), each gamma by the Wilson-Hilferty cube of a normal (exactly an
exponential when the shape is 1, which the Beta(1, 1) prior makes common), the
normal and exponential variates read from quantile tables indexed by one
24-bit random number. The result is within about 0.006 of the exact Beta in
distribution (Kolmogorov distance; tests/unit/test_routing_health.py checks it)
for shapes of 1 and more, which is far finer than the posterior's own width;
Thompson sampling needs a draw shaped like the posterior, not an exact one.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

# Reasons that are the payer's doing, not the channel's (our reason codes, adapters/contract.py).
PAYER_DECLINES = frozenset({
    "INSUFFICIENT_FUNDS", "CARD_DECLINED", "INVALID_CARD", "INVALID_CARD_NUMBER", "EXPIRED_CARD", "DECLINED",
    "ACCOUNT_CLOSED", "INVALID_ACCOUNT", "ACCOUNT_NAME_MISMATCH", "NO_MANDATE", "LIMIT_EXCEEDED",
})

_HALF_BITS = 12  # each variate is read from a table of 2**12 quantiles (midpoints: tails to +-3.5 sd)
_SIZE = 1 << _HALF_BITS
_MASK = _SIZE - 1
_BITS = 2 * _HALF_BITS  # one random number gives both variates of a draw
_NORMAL = tuple(NormalDist().inv_cdf((i + 0.5) / _SIZE) for i in range(_SIZE))
_EXPONENTIAL = tuple(-math.log1p(-(i + 0.5) / _SIZE) for i in range(_SIZE))


def is_payer_decline(reason: str) -> bool:
    return reason in PAYER_DECLINES


def _gamma_terms(shape: float) -> tuple[float, float]:
    """(1 - 1/(9k), sqrt(1/(9k))): Gamma(k) ~= k (m + s Z)^3 (Wilson-Hilferty); (0, 0) marks k == 1 (exact)."""
    if shape == 1.0:
        return 0.0, 0.0
    c = 1.0 / (9.0 * shape)
    return 1.0 - c, math.sqrt(c)


_TERMS_MAX = 8_192
_TERMS = [(0.0, 0.0)] + [_gamma_terms(float(k)) for k in range(1, _TERMS_MAX)]


@dataclass
class ChannelHealth:
    window: int = 2_000  # outcomes remembered
    max_age_s: float = 1_800.0  # and none older than this: an old outage is forgotten
    prior_successes: float = 1.0  # Beta(1, 1): nothing known yet
    prior_failures: float = 1.0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, the channel did its job)
    _ok: int = 0
    _latencies_ms: deque[float] = field(default_factory=deque)
    # The posterior (a, b) the sampler terms below were computed for: recomputed only when it changes.
    _sampler: tuple[float, float, float, float, float, float] = (-1.0, -1.0, 0.0, 0.0, 0.0, 0.0)

    def record(self, *, succeeded: bool, reason: str = "", latency_ms: float | None = None) -> None:
        """An answer the channel gave. A FAILED answer that is the payer's decline counts as
        the channel working (it answered, correctly); timeouts, UNKNOWN, 5xx count against it."""
        worked = succeeded or is_payer_decline(reason)
        self._outcomes.append((self.clock(), worked))
        self._ok += worked
        while len(self._outcomes) > self.window:
            self._ok -= self._outcomes.popleft()[1]
        if latency_ms is not None:
            self._latencies_ms.append(latency_ms)
            if len(self._latencies_ms) > self.window:
                self._latencies_ms.popleft()

    def _expire(self, now: float | None = None) -> None:
        horizon = (self.clock() if now is None else now) - self.max_age_s
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < horizon:
            self._ok -= outcomes.popleft()[1]

    def forget(self) -> None:
        """Back to the prior (the router calls this when the channel's breaker trips)."""
        self._outcomes.clear()
        self._ok = 0

    @property
    def samples(self) -> int:
        self._expire()
        return len(self._outcomes)

    def posterior(self) -> tuple[float, float]:
        self._expire()
        return self.prior_successes + self._ok, self.prior_failures + len(self._outcomes) - self._ok

    def mean(self) -> float:
        a, b = self.posterior()
        return a / (a + b)

    def sample(self, rng: random.Random) -> float:
        return sample_many((self,), rng, self.clock())[0]

    def draw(self, rng: random.Random, now: float) -> float:
        """A draw from the posterior as of `now`."""
        return sample_many((self,), rng, now)[0]

    def _terms(self, a: float, b: float) -> tuple[float, float, float, float, float, float]:
        # Shapes are whole numbers with the default prior: read their terms from a table (an
        # answer recorded between two decisions changes a posterior, so this runs often).
        ta = _TERMS[int(a)] if a < _TERMS_MAX and a == int(a) else _gamma_terms(a)
        tb = _TERMS[int(b)] if b < _TERMS_MAX and b == int(b) else _gamma_terms(b)
        terms = self._sampler = (a, b, ta[0], ta[1], tb[0], tb[1])
        return terms

    def latency_ms(self, quantile: float) -> float | None:
        if not self._latencies_ms:
            return None
        ordered = sorted(self._latencies_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def sample_many(healths: Sequence[ChannelHealth], rng: random.Random, now: float) -> list[float]:
    """One posterior draw per channel, as of `now`: the router's hot path (one call per decision,
    so the per-channel work below is inlined rather than a method call each)."""
    getrandbits = rng.getrandbits
    out = []
    add = out.append
    for health in healths:
        outcomes = health._outcomes
        if outcomes and outcomes[0][0] < now - health.max_age_s:
            health._expire(now)
        ok = health._ok
        a = health.prior_successes + ok
        b = health.prior_failures + len(outcomes) - ok
        ka, kb, ma, sa, mb, sb = health._sampler
        if ka != a or kb != b:
            if a < 1.0 or b < 1.0:  # only with a prior below 1, which the router never sets
                add(rng.betavariate(a, b))
                continue
            _, _, ma, sa, mb, sb = health._terms(a, b)
        bits = getrandbits(_BITS)
        if sa == 0.0:  # shape 1: exactly an exponential
            x = _EXPONENTIAL[bits >> _HALF_BITS]
        else:
            v = ma + sa * _NORMAL[bits >> _HALF_BITS]
            x = a * v * v * v if v > 0.0 else 0.0
        if sb == 0.0:
            y = _EXPONENTIAL[bits & _MASK]
        else:
            v = mb + sb * _NORMAL[bits & _MASK]
            y = b * v * v * v if v > 0.0 else 0.0
        add(x / (x + y) if x + y > 0.0 else a / (a + b))
    return out
