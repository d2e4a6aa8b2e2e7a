"""Load shedding per caller: a token bucket in front of every authenticated call.

Each configured caller with `rate_per_s > 0` gets one `RateLimiter`: a bucket of
`burst` tokens refilled continuously at `rate_per_s`. A call takes one token; an
empty bucket raises `Overloaded` (reason RATE_LIMITED) with the time until the
next token, which the gateway sends as RESOURCE_EXHAUSTED with a RetryInfo. The
bucket is refilled lazily on each call from an injectable monotonic clock, so a
call costs a clock read and a few float operations, and since the asyncio loop
runs one call's admission at a time (there is no await inside) it needs no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import Counter

from dualflow.core.errors import Overloaded

RATE_LIMITED = Counter(
    "dualflow_rate_limited_total",
    "Calls refused because the caller's token bucket was empty, by caller name.",
    ["caller"],
)

# Float arithmetic on clock readings lands a hair above or below a whole token;
# a millionth of a token either way keeps the promise that a caller who waits
# the advertised `retry_after_ms` gets its token, and the delay from rounding up
# float noise (50.0000000004 ms -> 51).
_EPSILON = 1e-6


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s` per second, starting full."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_updated_s", "_clock")

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        assert rate_per_s > 0 and math.isfinite(rate_per_s), rate_per_s
        assert burst >= 1, burst
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated_s = clock()

    def try_take(self) -> int:
        """Take one token: 0 when taken, else the milliseconds until one is available (>= 1)."""
        now_s = self._clock()
        tokens = self._tokens + (now_s - self._updated_s) * self.rate_per_s
        if tokens > self.burst:
            tokens = self.burst
        self._updated_s = now_s
        if tokens >= 1.0 - _EPSILON:
            self._tokens = tokens - 1.0
            return 0
        self._tokens = tokens
        return max(1, math.ceil((1.0 - _EPSILON - tokens) * 1000.0 / self.rate_per_s))

    @property
    def tokens(self) -> float:
        """Tokens available now (for tests and diagnostics; does not take one)."""
        elapsed_s = self._clock() - self._updated_s
        return min(float(self.burst), self._tokens + elapsed_s * self.rate_per_s)


class RateLimiter:
    """One caller's bucket, raising `Overloaded` and counting refusals under the caller's name."""

    __slots__ = ("caller", "bucket", "_refused")

    def __init__(self, caller: str, rate_per_s: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.caller = caller
        self.bucket = TokenBucket(rate_per_s, burst, clock=clock)
        self._refused = RATE_LIMITED.labels(caller)

    def acquire(self) -> None:
        retry_after_ms = self.bucket.try_take()
        if retry_after_ms:
            self._refused.inc()
            raise Overloaded(
                f"caller {self.caller!r} is over its rate limit of {self.bucket.rate_per_s:g}/s "
                f"(burst {self.bucket.burst}); retry in {retry_after_ms} ms",
                reason="RATE_LIMITED",
                retry_after_ms=retry_after_ms,
                metadata={"caller": self.caller},
            )
