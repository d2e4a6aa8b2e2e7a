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

Same-bank fees: a channel whose own account is at a bank (`Capabilities.home_bank`, a transfer
channel's pool account) may price a payment whose payer (or beneficiary) banks there with its
`same_bank_fees` schedule for the currency: an intra-bank move, usually cheaper. When the
request's `bank_code` is the channel's home bank and such a schedule exists, it prices the
payment instead of the general one, in the decision's score and candidate fee and in `fee()`.
An operator's `fees` override replaces the general schedule only: a same-bank schedule comes
from the channel's own settings and still applies when the bank matches.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dualflow.adapters.contract import Capabilities, FeeSchedule
from dualflow.core.payments.model import Asset

from .breaker import BreakerState, CircuitBreaker
from .config import ChannelRule, MerchantRule, RoutingConfig
from .health import ChannelHealth, is_payer_decline, sample_many

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
        self._plans: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}  # see _plan
        self._entries: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._bins_matter = any(caps.bin_ranges for caps in self.capabilities.values())
        self._banks_matter = any(config.rule(name).bank_codes is not None for name in self.capabilities)
        # The banks at which some channel prices differently (same-bank fees): only these payer
        # banks need plans of their own when no rule's bank_codes makes every bank matter.
        self._home_banks = frozenset(caps.home_bank for caps in self.capabilities.values()
                                     if caps.home_bank and caps.same_bank_fees)

    def fee(self, channel: str, currency: str, amount: int, bank_code: str = "") -> int:
        """What `channel` charges for `amount` (minor units) in `currency`; `bank_code` is the
        payer's (or beneficiary's) bank, which selects the channel's same-bank schedule when it
        is the channel's home bank."""
        caps = self.capabilities[channel]
        schedule = _schedule(caps, _fees(caps, self.config.rule(channel)), currency, bank_code)
        return schedule.fee_for(amount) if schedule else 0

    def decide(self, request: RouteRequest) -> Decision:
        # The hot path (issue 5: p99 <= 50 us for 10 channels; `dualflow bench routing`). What
        # depends only on the request's shape is resolved once per shape and configuration
        # (`_plan`); per decision remain the amount, the clock (maintenance, daily caps,
        # breakers), the fees and one posterior draw per eligible channel. `eligible()` is the
        # reference implementation of the same rules in the same order; a unit test holds
        # the two equal.
        config = self.config
        now = self.clock()
        amount = request.amount
        excluded: dict[str, str] = {}
        names: list[str] = []
        fees: list[int] = []
        healths: list[ChannelHealth] = []
        add_name, add_fee, add_health = names.append, fees.append, healths.append
        for name, special, low, high, fee_terms, health, breaker, rest in self._plan(request):
            if special:
                reason = self._special(name, rest, request, now)
                if reason:
                    excluded[name] = reason
                    continue
            elif not low <= amount <= high:
                excluded[name] = "AMOUNT_LIMIT"
                continue
            if breaker.forced_open or (breaker._state is not _CLOSED and not breaker.allows()):
                excluded[name] = "BREAKER_OPEN"
                continue
            if fee_terms is None:
                fee = 0
            elif fee_terms.__class__ is tuple:  # FeeSchedule.fee_for without tiers, inlined
                fixed, bps, minimum, maximum = fee_terms
                fee = fixed + (amount * bps + 5_000) // 10_000
                if fee < minimum:
                    fee = minimum
                if maximum is not None and fee > maximum:
                    fee = maximum
            else:
                fee = fee_terms.fee_for(amount)
            add_name(name)
            add_fee(fee)
            add_health(health)
        if not names:
            return Decision(None, (), (), excluded, config.version, "NONE_ELIGIBLE")
        exploration = config.exploration
        if exploration == 1.0:
            successes = sample_many(healths, self._rng, now)
        elif exploration == 0.0:
            successes = [h.mean() for h in healths]  # greedy: deterministic, the cheapest of equals wins
        else:
            successes = [m + exploration * (s - m) for m, s in
                         zip([h.mean() for h in healths], sample_many(healths, self._rng, now))]
        fee_weight, divisor = config.fee_weight, max(amount, 1)
        # Best score first, then the lower fee, then the name (unique, so nothing further is compared).
        # -(s - x) == x - s exactly, so the key is the score's exact negation.
        scored = sorted([(fee_weight * f / divisor - s, f, n, s) for n, f, s in zip(names, fees, successes)])
        # Candidate(n, s, f, score) for each, with the frozen dataclass's per-field
        # object.__setattr__ replaced by setting the slots directly (a third of the cost).
        candidates = []
        add_candidate = candidates.append
        for key, f, n, s in scored:
            candidate = _new(Candidate)
            _set_channel(candidate, n)
            _set_success(candidate, s)
            _set_fee(candidate, f)
            _set_score(candidate, -key)
            add_candidate(candidate)
        order = tuple([c[2] for c in scored])
        chosen_breaker = self.breakers[order[0]]
        if chosen_breaker._state is not _CLOSED:
            # The probe slot is taken with the decision, in the same synchronous step that saw it
            # free: concurrent payments cannot all pass a half-open breaker's `probes` limit.
            chosen_breaker.acquire()
        if config.merchants and config.merchants.get(request.merchant_id, _NO_RULE).pinned is not None:
            why = "PINNED"
        else:
            why = "ONLY_CANDIDATE" if len(order) == 1 else "SCORE"
        decision = _new(Decision)  # Decision(order[0], order[1:], ...), slots set directly as above
        _set_chosen(decision, order[0])
        _set_fallbacks(decision, order[1:])
        _set_candidates(decision, tuple(candidates))
        _set_excluded(decision, excluded)
        _set_version(decision, config.version)
        _set_reason(decision, why)
        return decision

    def _special(self, name: str, rest: tuple[Any, ...], request: RouteRequest, now: float) -> str:
        """`_exclusion` for a channel with a shape-dependent reason, maintenance windows or a
        daily cap (the breaker aside): the reasons in `_exclusion`'s order, first one wins."""
        early, maintenance, middle, low, high, late, cap = rest
        if early:
            return early
        if maintenance and any(start <= now < end for start, end in maintenance):
            return "MAINTENANCE"
        if middle:
            return middle
        if not low <= request.amount <= high:
            return "AMOUNT_LIMIT"
        if late:
            return late
        if cap is not None and self._volume.get((name, request.currency, int(now // DAY_S)), 0) + \
                request.amount > cap:
            return "DAILY_CAP"
        return ""

    def _plan(self, request: RouteRequest) -> list[tuple[Any, ...]]:
        """Per channel, what `_exclusion` decides from the request's shape alone (merchant,
        asset, currency, card BIN, payer bank) under the current configuration, split where
        the clock- and amount-dependent checks come in between (`_special`); a channel with
        none of those (the usual case) is only checked for its amount limits and breaker.
        Plus the fee schedule (as (fixed, bps, minimum, maximum) when it has no tiers, for the
        inlined fee; the same-bank one when the payer banks at the channel's home bank) and the
        channel's health and breaker."""
        if self._banks_matter:
            bank = request.bank_code
        elif self._home_banks:  # a payer bank where no channel prices differently shares the plan of ""
            bank = request.bank_code if request.bank_code in self._home_banks else ""
        else:
            bank = ""
        key = (request.merchant_id, request.asset, request.currency,
               request.card_bin if self._bins_matter else "", bank)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        config = self.config
        rule = config.merchants.get(request.merchant_id, _NO_RULE)
        plan = []
        for name, caps, terms, fees in self._terms:
            early = "" if terms.enabled else "DISABLED"
            if name in rule.deny or (rule.allow is not None and name not in rule.allow):
                middle = "MERCHANT_RULE"
            elif rule.pinned is not None and name != rule.pinned:
                middle = "PINNED_ELSEWHERE"
            elif request.asset not in caps.assets:
                middle = "ASSET"
            elif request.currency not in caps.currencies:
                middle = "CURRENCY"
            else:
                middle = ""
            if request.card_bin and caps.bin_ranges and not any(
                    low <= request.card_bin[: len(low)] <= high for low, high in caps.bin_ranges):
                late = "CARD_BIN"
            elif terms.bank_codes is not None and request.bank_code and request.bank_code not in terms.bank_codes:
                late = "BANK_CODE"
            else:
                late = ""
            schedule = fees.get(request.currency)
            same_bank = False  # `_schedule`, inlined: the payer banks where the channel's account is
            if request.bank_code and request.bank_code == caps.home_bank:
                same = caps.same_bank_fees.get(request.currency)
                if same is not None:
                    schedule, same_bank = same, True
            fee_terms = schedule if schedule is None or schedule.tiers else (
                schedule.fixed, schedule.bps, schedule.minimum, schedule.maximum)
            cap = terms.daily_caps.get(request.currency)
            special = bool(early or terms.maintenance or middle or late or cap is not None)
            # Shapes share their entries: a new shape then keeps one new list alive, not twenty
            # new objects (which the garbage collector would keep scanning).
            entry_key = (name, request.currency, early, middle, late, same_bank)
            entry = self._entries.get(entry_key)
            if entry is None:
                entry = self._entries[entry_key] = (
                    name, special, caps.min_amount, caps.max_amount, fee_terms, self.health[name],
                    self.breakers[name], (early, terms.maintenance, middle, caps.min_amount, caps.max_amount, late, cap))
            plan.append(entry)
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        self._plans[key] = plan
        return plan

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
        """The payment was committed to `channel`: count its daily volume."""
        key = (channel, request.currency, int(self.clock() // DAY_S))
        self._volume[key] = self._volume.get(key, 0) + request.amount

    def claim(self, channel: str) -> bool:
        """Take the right to send to a fallback `channel` now (a half-open breaker's probe slot);
        False when its breaker has no slot left."""
        breaker = self.breakers.get(channel)
        return breaker is not None and breaker.acquire()

    def add_volume(self, channel: str, currency: str, day: int, amount: int) -> None:
        """Volume sent before this process started (read back from the payments at start-up)."""
        key = (channel, currency, day)
        self._volume[key] = self._volume.get(key, 0) + amount

    def record(self, channel: str, *, succeeded: bool, reason: str = "", latency_ms: float | None = None) -> None:
        """A final or unknown answer from `channel` for a payment it was sent."""
        health = self.health.get(channel)
        if health is None:
            return  # a channel no longer configured
        payer = not succeeded and is_payer_decline(reason)
        breaker = self.breakers[channel]
        # An open breaker owns the outage: when it trips, the estimate forgets the channel's past
        # (its faults describe an outage the breaker now stands for, its successes a channel that
        # was fine before), and answers that arrive while it is open (sent before it opened) are
        # not learned from, as the breaker itself ignores them. After the cool-down the channel
        # competes again from the prior, so a recovered channel is probed and wins its traffic
        # back within about a cool-down, not only once its outage ages out of the estimate.
        if breaker.state is not BreakerState.OPEN:
            health.record(succeeded=succeeded, reason=reason, latency_ms=latency_ms)
        opened_at = breaker._opened_at
        breaker.record(channel_fault=not succeeded and not payer, payer_decline=payer)
        if breaker._opened_at != opened_at:  # it tripped on this answer
            health.forget()

    def view(self, channel: str) -> ChannelView:
        health, breaker = self.health[channel], self.breakers[channel]
        return ChannelView(channel, breaker.state, health.mean(), health.samples, health.latency_ms(0.5),
                           health.latency_ms(0.99), self.config.rule(channel).enabled, breaker.forced_open)


_CLOSED = BreakerState.CLOSED
_PLANS_MAX = 4_096  # request shapes remembered per configuration (merchants x assets x currencies x BINs x banks)
_new = object.__new__
_set_channel, _set_success = Candidate.channel.__set__, Candidate.success.__set__  # type: ignore[attr-defined]
_set_fee, _set_score = Candidate.fee.__set__, Candidate.score.__set__  # type: ignore[attr-defined]
_set_chosen, _set_fallbacks = Decision.chosen.__set__, Decision.fallbacks.__set__  # type: ignore[attr-defined]
_set_candidates, _set_excluded = Decision.candidates.__set__, Decision.excluded.__set__  # type: ignore[attr-defined]
_set_version, _set_reason = Decision.config_version.__set__, Decision.reason.__set__  # type: ignore[attr-defined]




def _fees(caps: Capabilities, rule: ChannelRule) -> Mapping[str, FeeSchedule]:
    """The general schedules: the adapter's, with the operator's overrides by currency."""
    return {**caps.fees, **rule.fees} if rule.fees else caps.fees


def _schedule(caps: Capabilities, fees: Mapping[str, FeeSchedule], currency: str,
              bank_code: str) -> FeeSchedule | None:
    """The schedule that prices a payment: the channel's same-bank one when the payer's bank is
    the channel's home bank and it has one for `currency`, else the general one from `fees`."""
    if bank_code and bank_code == caps.home_bank:
        same = caps.same_bank_fees.get(currency)
        if same is not None:
            return same
    return fees.get(currency)
