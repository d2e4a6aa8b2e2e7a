"""A circuit breaker per channel: closed, open, half-open with a bounded number of probes.

Closed: traffic flows; when the channel-fault rate over the last `window` outcomes
reaches `open_at` (with at least `min_samples` outcomes), the breaker opens.
Open: no traffic for `cool_down_s`; then half-open.
Half-open: at most `probes` payments are let through at once; `probes_to_close`
successes in a row close it, any channel fault opens it again (and the cool-down
starts over).

Only channel faults count (timeouts, UNKNOWN, 5xx, bad signatures, issuer down);
a payer's decline (insufficient funds, invalid card) says nothing about the
channel. The clock is injected, so tests and the routing simulation are
deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    window: int = 50  # outcomes remembered while closed
    min_samples: int = 10  # fewer than this never opens the breaker
    open_at: float = 0.5  # channel-fault share that opens it
    cool_down_s: float = 30.0
    probes: int = 3  # payments let through at once while half-open
    probes_to_close: int = 3  # successes in a row that close it again


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings = BreakerSettings(), *,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._faults: deque[bool] = deque(maxlen=settings.window)  # True: a channel fault
        self._opened_at = 0.0
        # When each probe in flight was let through. A probe whose answer never comes back to
        # the router (the payment was a replay, its answer went to a callback after a crash)
        # is given up after a cool-down, so a half-open breaker cannot stall with no slots.
        self._probes: deque[float] = deque()
        self._probe_successes = 0
        self.forced_open = False  # an operator's switch: open until released

    def reconfigure(self, settings: BreakerSettings) -> None:
        """New settings from a routing configuration; the state and recent faults are kept."""
        if settings.window != self.settings.window:
            self._faults = deque(self._faults, maxlen=settings.window)
        self.settings = settings

    @property
    def state(self) -> BreakerState:
        if self.forced_open:
            return BreakerState.OPEN
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.settings.cool_down_s:
            self._state = BreakerState.HALF_OPEN
            self._probes.clear()
            self._probe_successes = 0
        return self._state

    @property
    def probes_out(self) -> int:
        probes, horizon = self._probes, self._clock() - self.settings.cool_down_s
        while probes and probes[0] < horizon:
            probes.popleft()
        return len(probes)

    def allows(self) -> bool:
        """Whether a payment may be sent now (without taking a probe slot)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self.probes_out < self.settings.probes)

    def acquire(self) -> bool:
        """Take the right to send one payment; in half-open state this uses a probe slot."""
        if not self.allows():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._probes.append(self._clock())
        return True

    def record(self, *, channel_fault: bool, payer_decline: bool = False) -> None:
        """The outcome of a payment this breaker let through."""
        if payer_decline:
            # Not the channel's doing: neither a fault nor proof of health. A probe slot is freed.
            if self._state is BreakerState.HALF_OPEN and self._probes:
                self._probes.popleft()
            return
        state = self.state
        if state is BreakerState.HALF_OPEN:
            if self._probes:
                self._probes.popleft()
            if channel_fault:
                self._trip()
                return
            self._probe_successes += 1
            if self._probe_successes >= self.settings.probes_to_close:
                self._state = BreakerState.CLOSED
                self._faults.clear()
            return
        if state is BreakerState.OPEN:
            return  # a late answer from before it opened
        self._faults.append(channel_fault)
        if len(self._faults) >= self.settings.min_samples and \
                sum(self._faults) >= self.settings.open_at * len(self._faults):
            self._trip()

    def _trip(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._faults.clear()
        self._probes.clear()
        self._probe_successes = 0
