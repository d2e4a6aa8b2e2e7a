"""The routing decision: which eligible channel carries a payment, and in what order the
others follow if the chosen one provably never received it.

Eligibility first, as hard filters (an ineligible channel is never chosen, not
even as a fallback): channel enabled, outside its maintenance windows, breaker
letting traffic through, asset, currency, amount limits, card BIN ranges, its
daily volume cap, and the merchant's rules (deny list, allow list, pinned
channel). Among the eligible, each gets a score: a Thompson sample of its
success probability (channel/health.py) minus `fee_weight` times its fee as a
fraction of the amount; the highest score is chosen and the rest, best first,
are the fallbacks. Every decision carries its explanation: the candidates with
their scores and why each other channel was excluded. Deterministic for a seed.

Not wired into the financial gateway yet (the router issue continues).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dualflow.adapters.contract import Capabilities
from dualflow.core.payments.model import Asset

from .breaker import BreakerSettings, CircuitBreaker
from .health import ChannelHealth, is_payer_decline

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class ChannelTerms:
    capabilities: Capabilities
    enabled: bool = True
    daily_cap: int | None = None  # minor units per UTC day, per currency; None: no cap
    maintenance: tuple[tuple[float, float], ...] = ()  # [start, end) unix seconds

    @property
    def name(self) -> str:
        return self.capabilities.channel


@dataclass(frozen=True, slots=True)
class MerchantRule:
    allow: frozenset[str] | None = None  # None: every channel
    deny: frozenset[str] = frozenset()
    pinned: str | None = None  # only this channel (still subject to eligibility)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    asset: Asset
    currency: str
    amount: int
    card_bin: str = ""
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

    @property
    def order(self) -> tuple[str, ...]:
        return ((self.chosen,) if self.chosen else ()) + self.fallbacks


@dataclass
class Router:
    channels: Sequence[ChannelTerms]
    merchant_rules: Mapping[str, MerchantRule] = field(default_factory=dict)
    fee_weight: float = 1.0
    seed: int = 0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    breaker_settings: BreakerSettings = BreakerSettings()

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.health = {c.name: ChannelHealth() for c in self.channels}
        self.breakers = {c.name: CircuitBreaker(self.breaker_settings, clock=self.clock) for c in self.channels}
        self._volume: dict[tuple[str, str, int], int] = {}  # (channel, currency, day) -> minor units

    def decide(self, request: RouteRequest) -> Decision:
        rule = self.merchant_rules.get(request.merchant_id, MerchantRule())
        excluded: dict[str, str] = {}
        candidates: list[Candidate] = []
        for terms in self.channels:
            reason = self._exclusion(terms, request, rule)
            if reason:
                excluded[terms.name] = reason
                continue
            fee_schedule = terms.capabilities.fees.get(request.currency)
            fee = fee_schedule.fee_for(request.amount) if fee_schedule else 0
            success = self.health[terms.name].sample(self._rng)
            score = success - self.fee_weight * fee / max(request.amount, 1)
            candidates.append(Candidate(terms.name, success, fee, score))
        candidates.sort(key=lambda c: (-c.score, c.fee, c.channel))
        names = tuple(c.channel for c in candidates)
        return Decision(names[0] if names else None, names[1:], tuple(candidates), excluded)

    def _exclusion(self, terms: ChannelTerms, request: RouteRequest, rule: MerchantRule) -> str:
        name, caps, now = terms.name, terms.capabilities, self.clock()
        if not terms.enabled:
            return "DISABLED"
        if any(start <= now < end for start, end in terms.maintenance):
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
        if request.card_bin and caps.bin_ranges and not caps.accepts(
                request.asset, request.currency, request.amount, request.card_bin):
            return "CARD_BIN"
        if terms.daily_cap is not None and \
                self._volume.get((name, request.currency, int(now // DAY_S)), 0) + request.amount > terms.daily_cap:
            return "DAILY_CAP"
        if not self.breakers[name].allows():
            return "BREAKER_OPEN"
        return ""

    def sent(self, channel: str, request: RouteRequest) -> None:
        """The payment went to `channel`: count its volume and, in half-open state, its probe."""
        key = (channel, request.currency, int(self.clock() // DAY_S))
        self._volume[key] = self._volume.get(key, 0) + request.amount
        self.breakers[channel].acquire()

    def record(self, channel: str, *, succeeded: bool, reason: str = "", latency_ms: float | None = None) -> None:
        """A final or unknown answer from `channel` for a payment it was sent."""
        self.health[channel].record(succeeded=succeeded, reason=reason, latency_ms=latency_ms)
        payer = not succeeded and is_payer_decline(reason)
        self.breakers[channel].record(channel_fault=not succeeded and not payer, payer_decline=payer)
