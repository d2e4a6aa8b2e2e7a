"""The routing simulation: a day of card payments offered to several routing policies at once,
over channels whose true success rates and fees change during the day.

Pure and deterministic: time is simulated (payment i arrives at i / rate seconds
after the start, answers arrive after each channel's latency), and every random
draw comes from one `random.Random(seed)`. Every policy sees the same payments
with the same luck: for payment i the simulation draws once its amount, a
uniform `u_channel` (the channel does its job iff u_channel < its true success
rate at that moment), a uniform `u_payer` (the payer declines iff u_payer <
`payer_decline_rate`, whatever the channel) and a latency factor, and offers
that same payment to each policy. A policy that picks a channel with a higher
true rate therefore never loses a payment that a worse pick would have won.

How a channel answers:

- it works and the payer pays: SUCCEEDED after its latency; the channel's fee
  for the amount (at that moment's fee schedule) is paid, and only then;
- it works and the payer declines: FAILED with a payer's reason
  (INSUFFICIENT_FUNDS or CARD_DECLINED) after its latency; not the channel's
  fault, and the router knows it (routing/health.py);
- it is degraded and fails this one: FAILED with CHANNEL_ERROR after its latency;
- it is dead (true rate 0): nothing comes back; the payment is lost as TIMEOUT
  after `timeout_s` (an unknown answer, so no other channel may be tried: the
  payment counts as failed), and it counts as a payment sent to a dead channel.

The policies, all offered the same payments:

- `ours`: the real `Router` (routing/policy.py) with the default `RoutingConfig`
  (only the fee changes applied, as an operator would, through `apply`), on a
  simulated clock, learning only from the answers as they arrive;
- `oracle`: knows every channel's true success rate at every moment and
  maximises the router's own objective, success - fee_weight x fee / amount
  (ties to the lower fee, then the name); it never picks a dead channel while
  another is alive;
- `static_priority`: always the operator's first channel (the best by that
  objective at the start of the day);
- `cheapest_first`: always the lowest fee for the amount at that moment;
- `round_robin`: the channels in turn.

The baselines are the plain strategies, with no health tracking of their own:
that is what they are the baselines for.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow
from dualflow.core.payments.model import Asset

from .config import RoutingConfig
from .policy import RouteRequest, Router

HOUR_S = 3_600.0
MINUTE_S = 60.0
START_UNIX_S = 1_790_553_600.0  # a UTC midnight (2026-09-28): the simulated day's 00:00
POLICIES = ("ours", "oracle", "static_priority", "cheapest_first", "round_robin")
PAYER_REASONS = ("INSUFFICIENT_FUNDS", "CARD_DECLINED")


@dataclass(frozen=True)
class ChannelSpec:
    """A simulated channel: its fees and its true success rate over the day.

    `rate` is a piecewise-linear timeline of (seconds since the start, true
    success probability) knots, constant before the first and after the last;
    two knots at the same time make a step (the later one holds from then on).
    `fee_changes` are (seconds since the start, the negotiated fee from then on).
    """

    name: str
    fee: FeeSchedule
    rate: tuple[tuple[float, float], ...]
    latency_ms: float = 800.0  # an answer takes latency_ms x (0.5 .. 1.5)
    fee_changes: tuple[tuple[float, FeeSchedule], ...] = ()

    def __post_init__(self) -> None:
        assert self.rate, f"{self.name}: a rate timeline needs at least one knot"
        assert all(a[0] <= b[0] for a, b in zip(self.rate, self.rate[1:])), f"{self.name}: knots out of order"
        assert all(0.0 <= p <= 1.0 for _t, p in self.rate), f"{self.name}: a rate outside [0, 1]"
        assert all(a[0] < b[0] for a, b in zip(self.fee_changes, self.fee_changes[1:])), self.name
        object.__setattr__(self, "_times", tuple(t for t, _p in self.rate))

    def rate_at(self, t: float) -> float:
        times: tuple[float, ...] = self._times  # type: ignore[attr-defined]
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            return self.rate[0][1]
        if i + 1 >= len(times):
            return self.rate[i][1]
        (t0, p0), (t1, p1) = self.rate[i], self.rate[i + 1]
        return p0 + (p1 - p0) * (t - t0) / (t1 - t0)  # t1 > t0: bisect_right passed equal times

    def capabilities(self, currency: str) -> Capabilities:
        return Capabilities(channel=self.name, assets=frozenset({Asset.BANK_CARD}), currencies=frozenset({currency}),
                            flows=frozenset({Flow.PAY, Flow.QUERY}), fees={currency: self.fee})


@dataclass(frozen=True)
class Scenario:
    channels: tuple[ChannelSpec, ...]
    duration_s: float
    payments: int  # arrivals evenly spaced over the duration
    payer_decline_rate: float
    amount_min: int  # minor units; amounts are log-uniform between these
    amount_max: int
    timeout_s: float = 30.0
    currency: str = "CNY"
    events: tuple[str, ...] = ()  # what happens when, for people

    def __post_init__(self) -> None:
        assert len({c.name for c in self.channels}) == len(self.channels) >= 1
        assert self.payments >= 1 and self.duration_s > 0 and 0 < self.amount_min <= self.amount_max
        assert 0.0 <= self.payer_decline_rate <= 1.0

    @property
    def rate_per_s(self) -> float:
        return self.payments / self.duration_s


def _at(hours: float, minutes: float = 0.0) -> float:
    return hours * HOUR_S + minutes * MINUTE_S


def day_scenario(rate_per_s: float = 2.0) -> Scenario:
    """The standard day (BENCHMARKS.md records it): four card channels in CNY, 7% payer
    declines, amounts log-uniform from 5 to 2,000 CNY, `rate_per_s` payments a second.

    - cardbank (the primary acquirer): 45 bps, 98.5%; dead 10:00-10:20 (its
      payments time out after 30 s), then back at once;
    - cardbank-b (a second acquirer): 55 bps, 98.5%; its fee falls to 30 bps at
      18:00 (a new contract), which makes it the better of the two; then a slow
      degradation from 20:00 to 22:00 down to 90%, held until 23:00, and a
      recovery to 98.5% by 23:30;
    - wallet-psp: 38 bps + 0.30 CNY per payment, 98.0%;
    - cheap-acquirer: 35 bps (the cheapest until 18:00), 95.0%.
    """
    healthy = 0.985
    channels = (
        ChannelSpec("cardbank", FeeSchedule(bps=45), latency_ms=600.0, rate=(
            (0.0, healthy), (_at(10), healthy), (_at(10), 0.0), (_at(10, 20), 0.0), (_at(10, 20), healthy))),
        ChannelSpec("cardbank-b", FeeSchedule(bps=55), latency_ms=700.0, rate=(
            (0.0, healthy), (_at(20), healthy), (_at(22), 0.90), (_at(23), 0.90), (_at(23, 30), healthy)),
            fee_changes=((_at(18), FeeSchedule(bps=30)),)),
        ChannelSpec("wallet-psp", FeeSchedule(fixed=30, bps=38), latency_ms=1_200.0, rate=((0.0, 0.980),)),
        ChannelSpec("cheap-acquirer", FeeSchedule(bps=35), latency_ms=700.0, rate=((0.0, 0.950),)),
    )
    duration = 24 * HOUR_S
    return Scenario(
        channels=channels, duration_s=duration, payments=int(round(duration * rate_per_s)),
        payer_decline_rate=0.07, amount_min=500, amount_max=200_000, timeout_s=30.0,
        events=(
            "10:00-10:20 cardbank (the primary) is dead: its payments time out after 30 s; 10:20 back at 98.5%",
            "18:00 cardbank-b's fee falls from 55 to 30 bps (applied to the router as a new configuration)",
            "20:00-22:00 cardbank-b degrades slowly from 98.5% to 90%, held until 23:00, recovered by 23:30",
        ))


@dataclass
class Tally:
    """What one policy did with the day's payments."""

    policy: str
    payments: int = 0
    approved: int = 0
    payer_declines: int = 0  # the channel worked, the payer declined
    channel_failures: int = 0  # CHANNEL_ERROR or TIMEOUT
    unrouted: int = 0  # no channel was eligible (ours only: every breaker open)
    fees_minor: int = 0  # paid on approved payments only
    approved_amount_minor: int = 0
    dead_sends: int = 0  # sent to a channel whose true rate was 0 at that moment
    sends: dict[str, int] = field(default_factory=dict)
    # The objective every policy is judged by, summed without luck: for each payment sent, the chosen
    # channel's true success rate then, minus fee_weight x fee / amount (the oracle maximises it).
    expected_score: float = 0.0

    @property
    def approval_rate(self) -> float:
        return self.approved / self.payments if self.payments else 0.0

    def check(self) -> None:
        assert self.approved + self.payer_declines + self.channel_failures + self.unrouted == self.payments, self
        assert sum(self.sends.values()) + self.unrouted == self.payments, self

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "payments": self.payments, "approved": self.approved,
                "approval_pct": round(100 * self.approval_rate, 3), "fees_minor": self.fees_minor,
                "dead_sends": self.dead_sends, "payer_declines": self.payer_declines,
                "channel_failures": self.channel_failures, "unrouted": self.unrouted,
                "approved_amount_minor": self.approved_amount_minor,
                "expected_score_per_payment": round(self.expected_score / self.payments, 6) if self.payments else 0.0,
                "sends": dict(self.sends)}


@dataclass
class Moment:
    """Payment i as every policy sees it: what each may know of it, and what only the oracle may."""

    index: int
    t: float  # seconds since the start
    request: RouteRequest
    fees: list[int]  # per channel, for this amount, at this moment's fees
    true_rates: list[float]  # per channel, at this moment (only the oracle looks)


class Policy:
    name = ""

    def choose(self, m: Moment) -> int | None:
        raise NotImplementedError

    def answered(self, t: float, channel: int, succeeded: bool, reason: str, latency_ms: float) -> None:
        """An answer arrives (at simulated time t); only a policy that learns cares."""

    def fees_changed(self, t: float, channel: int, schedule: FeeSchedule) -> None:
        pass

    learns = False


class Oracle(Policy):
    name = "oracle"

    def __init__(self, names: Sequence[str], fee_weight: float) -> None:
        self.names = list(names)
        self.fee_weight = fee_weight

    def choose(self, m: Moment) -> int | None:
        amount = max(m.request.amount, 1)
        alive = any(r > 0.0 for r in m.true_rates)
        best: tuple[float, int, str] | None = None
        chosen = None
        for i, (rate, fee) in enumerate(zip(m.true_rates, m.fees)):
            if alive and rate <= 0.0:
                continue  # a dead channel approves nothing, whatever its score
            key = (fee * self.fee_weight / amount - rate, fee, self.names[i])
            if best is None or key < best:
                best, chosen = key, i
        return chosen


class StaticPriority(Policy):
    name = "static_priority"

    def __init__(self, first: int) -> None:
        self.first = first

    def choose(self, m: Moment) -> int | None:
        return self.first


class CheapestFirst(Policy):
    name = "cheapest_first"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def choose(self, m: Moment) -> int | None:
        return min(range(len(m.fees)), key=lambda i: (m.fees[i], self.names[i]))


class RoundRobin(Policy):
    name = "round_robin"

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.next = 0

    def choose(self, m: Moment) -> int | None:
        chosen = self.next
        self.next = (self.next + 1) % self.channels
        return chosen


class SimClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Ours(Policy):
    """The real Router, on the simulated clock, told each answer when it arrives."""

    name = "ours"
    learns = True

    def __init__(self, scenario: Scenario, config: RoutingConfig, seed: int) -> None:
        self.scenario = scenario
        self.names = [c.name for c in scenario.channels]
        self.clock = SimClock(START_UNIX_S)
        self.router = Router([c.capabilities(scenario.currency) for c in scenario.channels], config, seed=seed,
                             clock=self.clock)

    def choose(self, m: Moment) -> int | None:
        self.clock.now = START_UNIX_S + m.t
        decision = self.router.decide(m.request)
        if decision.chosen is None:
            return None
        chosen = self.names.index(decision.chosen)
        # The router prices the payment from its own configuration: it must agree with the scenario.
        assert decision.candidates[0].fee == m.fees[chosen], (decision.candidates[0], m.fees)
        self.router.sent(decision.chosen, m.request)
        return chosen

    def answered(self, t: float, channel: int, succeeded: bool, reason: str, latency_ms: float) -> None:
        self.clock.now = START_UNIX_S + t
        self.router.record(self.names[channel], succeeded=succeeded, reason=reason, latency_ms=latency_ms)

    def fees_changed(self, t: float, channel: int, schedule: FeeSchedule) -> None:
        self.clock.now = START_UNIX_S + t
        config = self.router.config.with_channel(self.names[channel], fees={self.scenario.currency: schedule})
        self.router.apply(replace(config, version=config.version + 1))


@dataclass
class Result:
    scenario: Scenario
    seed: int
    tallies: dict[str, Tally]

    def tally(self, policy: str) -> Tally:
        return self.tallies[policy]


def policies_for(scenario: Scenario, config: RoutingConfig, seed: int,
                 names: Sequence[str] = POLICIES) -> list[Policy]:
    channel_names = [c.name for c in scenario.channels]
    fee_weight = config.fee_weight
    # The operator's priority: the best channel by the router's objective at the start of the day,
    # for a median-sized payment.
    median = int(round(math.sqrt(scenario.amount_min * scenario.amount_max)))
    first = min(range(len(channel_names)), key=lambda i: (
        scenario.channels[i].fee.fee_for(median) * fee_weight / median - scenario.channels[i].rate_at(0.0),
        channel_names[i]))
    make: dict[str, Callable[[], Policy]] = {
        "ours": lambda: Ours(scenario, config, seed),
        "oracle": lambda: Oracle(channel_names, fee_weight),
        "static_priority": lambda: StaticPriority(first),
        "cheapest_first": lambda: CheapestFirst(channel_names),
        "round_robin": lambda: RoundRobin(len(channel_names)),
    }
    return [make[n]() for n in names]


def simulate(scenario: Scenario, seed: int = 0, *, config: RoutingConfig | None = None,
             policies: Sequence[str] = POLICIES,
             on_progress: Callable[[int, int], None] | None = None, progress_every: int = 5_000) -> Result:
    """Offer every payment of the scenario to every policy, in arrival order, and tally."""
    config = config if config is not None else RoutingConfig()
    fee_weight = config.fee_weight
    chosen_policies = policies_for(scenario, config, seed, policies)
    channels = scenario.channels
    n = len(channels)
    tallies = {p.name: Tally(p.name, sends={c.name: 0 for c in channels}) for p in chosen_policies}
    pending: dict[str, list[tuple[float, int, int, bool, str, float]]] = {
        p.name: [] for p in chosen_policies if p.learns}
    schedules = [c.fee for c in channels]
    fee_changes = sorted((t, i, s) for i, c in enumerate(channels) for t, s in c.fee_changes)
    next_change = 0
    rng = random.Random(seed)
    log_min, log_span = math.log(scenario.amount_min), math.log(scenario.amount_max / scenario.amount_min)
    interval = scenario.duration_s / scenario.payments
    decline_rate = scenario.payer_decline_rate
    timeout_ms = scenario.timeout_s * 1000.0
    seq = 0
    for index in range(scenario.payments):
        t = index * interval
        amount = min(scenario.amount_max, max(scenario.amount_min, int(round(math.exp(log_min + rng.random() * log_span)))))
        u_channel, u_payer, u_latency = rng.random(), rng.random(), rng.random()
        while next_change < len(fee_changes) and fee_changes[next_change][0] <= t:
            at, i, schedule = fee_changes[next_change]
            schedules[i] = schedule
            for p in chosen_policies:
                p.fees_changed(at, i, schedule)
            next_change += 1
        moment = Moment(index, t, RouteRequest(Asset.BANK_CARD, scenario.currency, amount),
                        [s.fee_for(amount) for s in schedules], [c.rate_at(t) for c in channels])
        for p in chosen_policies:
            queue = pending.get(p.name)
            while queue and queue[0][0] <= t:
                at, _seq, i, ok, reason, latency_ms = heapq.heappop(queue)
                p.answered(at, i, ok, reason, latency_ms)
            tally = tallies[p.name]
            tally.payments += 1
            i = p.choose(moment)
            if i is None:
                tally.unrouted += 1
                continue
            assert 0 <= i < n
            tally.sends[channels[i].name] += 1
            rate = moment.true_rates[i]
            tally.expected_score += rate - fee_weight * moment.fees[i] / max(amount, 1)
            if rate <= 0.0:
                tally.dead_sends += 1
            if u_channel < rate:
                latency_ms = channels[i].latency_ms * (0.5 + u_latency)
                if u_payer < decline_rate:
                    ok, reason = False, PAYER_REASONS[0 if u_payer < decline_rate / 2 else 1]
                    tally.payer_declines += 1
                else:
                    ok, reason = True, ""
                    tally.approved += 1
                    tally.fees_minor += moment.fees[i]
                    tally.approved_amount_minor += amount
            else:
                tally.channel_failures += 1
                if rate <= 0.0:
                    ok, reason, latency_ms = False, "TIMEOUT", timeout_ms
                else:
                    ok, reason, latency_ms = False, "CHANNEL_ERROR", channels[i].latency_ms * (0.5 + u_latency)
            if queue is not None:
                seq += 1
                heapq.heappush(queue, (t + latency_ms / 1000.0, seq, i, ok, reason, latency_ms))
        if on_progress is not None and (index + 1) % progress_every == 0:
            on_progress(index + 1, scenario.payments)
    if on_progress is not None:
        on_progress(scenario.payments, scenario.payments)
    for tally in tallies.values():
        tally.check()
    return Result(scenario, seed, tallies)
