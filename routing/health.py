"""What the router knows of a channel's health: its success rate as an estimate with
uncertainty, learned from real outcomes, and its latency.

Success is modelled as a Beta posterior over a sliding window of the channel's
own outcomes (payer declines excluded: they say nothing about the channel).
`sample()` draws from it (Thompson sampling): a channel with few recent outcomes
has a wide posterior and so still gets some traffic, which is how a recovered
channel wins its share back. The random source is injected, so decisions are
deterministic given a seed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Reasons that are the payer's doing, not the channel's (our reason codes, adapters/contract.py).
PAYER_DECLINES = frozenset({
    "INSUFFICIENT_FUNDS", "CARD_DECLINED", "INVALID_CARD", "INVALID_CARD_NUMBER", "EXPIRED_CARD", "DECLINED",
    "ACCOUNT_CLOSED", "INVALID_ACCOUNT", "ACCOUNT_NAME_MISMATCH", "NO_MANDATE", "LIMIT_EXCEEDED",
})


def is_payer_decline(reason: str) -> bool:
    return reason in PAYER_DECLINES


@dataclass
class ChannelHealth:
    window: int = 200  # outcomes remembered
    max_age_s: float = 600.0  # and none older than this: an old outage is forgotten
    prior_successes: float = 1.0  # Beta(1, 1): nothing known yet
    prior_failures: float = 1.0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, the channel did its job)
    _ok: int = 0
    _latencies_ms: deque[float] = field(default_factory=deque)

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

    def _expire(self) -> None:
        horizon = self.clock() - self.max_age_s
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < horizon:
            self._ok -= outcomes.popleft()[1]

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
        a, b = self.posterior()
        return rng.betavariate(a, b)

    def latency_ms(self, quantile: float) -> float | None:
        if not self._latencies_ms:
            return None
        ordered = sorted(self._latencies_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]
