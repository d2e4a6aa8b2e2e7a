"""The routing decision: which eligible channel carries a payment, and in what order the
others follow if the chosen one provably never received it.

Eligibility first, as hard filters (an ineligible channel is never chosen, not
even as a fallback): channel enabled, outside its maintenance windows, the
merchant's rules (deny list, allow list, pinned channel), asset, currency,
amount limits, card BIN ranges, the payer's bank, its daily volume cap, and its
breaker letting traffic through. Among the eligible, each gets a score: a
Thompson sample of its success probability (routing/health.py) minus
`fee_weight` times its fee as a fraction of the amount; the highest score is
chosen and the rest, best first, are the fallbacks. Every decision carries its
explanation: the candidates with their scores and why each other channel was
excluded. Deterministic for a seed and a clock.

The adapters say what a channel can do (Capabilities); the operator's
RoutingConfig (routing/config.py) says what it may do, and replaces the
adapter's fees where a different price was negotiated.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dualflow.adapters.contract import Capabilities, FeeSchedule
from dualflow.core.payments.model import Asset

from .breaker import BreakerState, CircuitBreaker
from .config import ChannelRule, MerchantRule, RoutingConfig
from .health import ChannelHealth, is_payer_decline

DAY_S = 86_400
_NO_RULE = MerchantRule()


@dataclass(frozen=True, slots=True)
class RouteRequest:
    asset: Asset
    currency: str
    amount: int
    card_bin: str = ""
    bank_code: str = ""  # the payer's bank, for bank transfers
    merchant_id: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    channel: str
    success: float  # the sampled success probability
    fee: int  # minor units
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    chosen: str | None
    fallbacks: tuple[str, ...]
    candidates: tuple[Candidate, ...]  # best first
    excluded: Mapping[str, str]  # channel -> reason (UPPER_SNAKE_CASE)
    config_version: int = 0
    reason: str = ""  # why the chosen one: SCORE, ONLY_CANDIDATE, PINNED; NONE_ELIGIBLE when none

    @property
    def order(self) -> tuple[str, ...]:
        return ((self.chosen,) if self.chosen else ()) + self.fallbacks


@dataclass(frozen=True, slots=True)
class ChannelView:
    """What the router knows of a channel now, for operators and metrics."""

    channel: str
    breaker: BreakerState
    estimated_success: float  # posterior mean
    samples: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    enabled: bool
    forced_open: bool


class Router:
    def __init__(self, capabilities: Sequence[Capabilities], config: RoutingConfig = RoutingConfig(), *,
                 seed: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.capabilities = {c.channel: c for c in capabilities}
        self.clock = clock
        self._rng = random.Random(seed)
        self.health: dict[str, ChannelHealth] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._volume: dict[tuple[str, str, int], int] = {}  # (channel, currency, day) -> minor units
        self.config = config
        self.apply(config)

    def apply(self, config: RoutingConfig) -> None:
        """Take a validated configuration; what was learned about each channel is kept."""
        for name in self.capabilities:
            health = self.health.get(name)
            if health is None:
                self.health[name] = ChannelHealth(window=config.health_window, max_age_s=config.health_max_age_s,
                                                  clock=self.clock)
            else:
                health.window, health.max_age_s = config.health_window, config.health_max_age_s
            breaker = self.breakers.get(name)
            if breaker is None:
                self.breakers[name] = CircuitBreaker(config.breaker, clock=self.clock)
            else:
                breaker.reconfigure(config.breaker)
            self.breakers[name].forced_open = config.rule(name).breaker_forced_open
        self.config = config
        # The hot path reads these per decision: resolve rules and fees once per configuration.
        self._terms = [(name, caps, config.rule(name), _fees(caps, config.rule(name)))
                       for name, caps in self.capabilities.items()]

    def fee(self, channel: str, currency: str, amount: int) -> int:
        schedule = _fees(self.capabilities[channel], self.config.rule(channel)).get(currency)
        return schedule.fee_for(amount) if schedule else 0

    def decide(self, request: RouteRequest) -> Decision:
        config = self.config
        rule = config.merchants.get(request.merchant_id, _NO_RULE)
        now = self.clock()
        day = int(now // DAY_S)
        excluded: dict[str, str] = {}
        candidates: list[Candidate] = []
        amount = max(request.amount, 1)
        exploration = config.exploration
        for name, caps, channel_rule, fees in self._terms:
            reason = self._exclusion(name, caps, channel_rule, request, rule, now, day)
            if reason:
                excluded[name] = reason
                continue
            schedule = fees.get(request.currency)
            fee = schedule.fee_for(request.amount) if schedule else 0
            health = self.health[name]
            if exploration == 1.0:
                success = health.sample(self._rng)
            elif exploration == 0.0:
                success = health.mean()  # greedy: deterministic, the cheapest of equals wins
            else:
                mean = health.mean()
                success = mean + exploration * (health.sample(self._rng) - mean)
            candidates.append(Candidate(name, success, fee, success - config.fee_weight * fee / amount))
        candidates.sort(key=lambda c: (-c.score, c.fee, c.channel))
        names = tuple(c.channel for c in candidates)
        if not names:
            why = "NONE_ELIGIBLE"
        elif rule.pinned is not None:
            why = "PINNED"
        else:
            why = "ONLY_CANDIDATE" if len(names) == 1 else "SCORE"
        return Decision(names[0] if names else None, names[1:], tuple(candidates), excluded, config.version, why)

    def eligible(self, channel: str, request: RouteRequest) -> str:
        """Why `channel` may not carry `request` now ("" when it may): fallbacks are re-checked
        before use, since a breaker may have opened or an operator disabled the channel."""
        caps = self.capabilities.get(channel)
        if caps is None:
            return "NOT_CONFIGURED"
        now = self.clock()
        return self._exclusion(channel, caps, self.config.rule(channel), request,
                               self.config.merchants.get(request.merchant_id, _NO_RULE), now, int(now // DAY_S))

    def _exclusion(self, name: str, caps: Capabilities, terms: ChannelRule, request: RouteRequest,
                   rule: MerchantRule, now: float, day: int) -> str:
        if not terms.enabled:
            return "DISABLED"
        if terms.maintenance and any(start <= now < end for start, end in terms.maintenance):
            return "MAINTENANCE"
        if name in rule.deny or (rule.allow is not None and name not in rule.allow):
            return "MERCHANT_RULE"
        if rule.pinned is not None and name != rule.pinned:
            return "PINNED_ELSEWHERE"
        if request.asset not in caps.assets:
            return "ASSET"
        if request.currency not in caps.currencies:
            return "CURRENCY"
        if not caps.min_amount <= request.amount <= caps.max_amount:
            return "AMOUNT_LIMIT"
        if request.card_bin and caps.bin_ranges and not any(
                low <= request.card_bin[: len(low)] <= high for low, high in caps.bin_ranges):
            return "CARD_BIN"
        if terms.bank_codes is not None and request.bank_code and request.bank_code not in terms.bank_codes:
            return "BANK_CODE"
        cap = terms.daily_caps.get(request.currency)
        if cap is not None and self._volume.get((name, request.currency, day), 0) + request.amount > cap:
            return "DAILY_CAP"
        if not self.breakers[name].allows():
            return "BREAKER_OPEN"
        return ""

    def sent(self, channel: str, request: RouteRequest) -> None:
        """The payment went to `channel`: count its volume and, in half-open state, its probe."""
        key = (channel, request.currency, int(self.clock() // DAY_S))
        self._volume[key] = self._volume.get(key, 0) + request.amount
        self.breakers[channel].acquire()

    def add_volume(self, channel: str, currency: str, day: int, amount: int) -> None:
        """Volume sent before this process started (read back from the payments at start-up)."""
        key = (channel, currency, day)
        self._volume[key] = self._volume.get(key, 0) + amount

    def record(self, channel: str, *, succeeded: bool, reason: str = "", latency_ms: float | None = None) -> None:
        """A final or unknown answer from `channel` for a payment it was sent."""
        health = self.health.get(channel)
        if health is None:
            return  # a channel no longer configured
        health.record(succeeded=succeeded, reason=reason, latency_ms=latency_ms)
        payer = not succeeded and is_payer_decline(reason)
        self.breakers[channel].record(channel_fault=not succeeded and not payer, payer_decline=payer)

    def view(self, channel: str) -> ChannelView:
        health, breaker = self.health[channel], self.breakers[channel]
        return ChannelView(channel, breaker.state, health.mean(), health.samples, health.latency_ms(0.5),
                           health.latency_ms(0.99), self.config.rule(channel).enabled, breaker.forced_open)


def _fees(caps: Capabilities, rule: ChannelRule) -> Mapping[str, FeeSchedule]:
    return {**caps.fees, **rule.fees} if rule.fees else caps.fees
