"""The routing decision: hard eligibility, explained exclusions, health and fee in the score,
and the breaker steering traffic away from a failing channel and back after recovery."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow
from dualflow.core.payments.model import Asset
from dualflow.routing.breaker import BreakerSettings
from dualflow.routing.config import ChannelRule, MerchantRule, RoutingConfig
from dualflow.routing.policy import RouteRequest, Router


def caps(name: str, bps: int, **kw: object) -> Capabilities:
    return Capabilities(channel=name, assets=frozenset({Asset.BANK_CARD}), currencies=frozenset({"CNY"}),
                        flows=frozenset({Flow.PAY, Flow.QUERY}), fees={"CNY": FeeSchedule(bps=bps)},
                        **kw)  # type: ignore[arg-type]


CARD = RouteRequest(Asset.BANK_CARD, "CNY", 10_000, card_bin="411111", merchant_id="shop")


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ineligible_channels_are_excluded_with_reasons_and_never_fall_back() -> None:
    clock = Clock()
    config = RoutingConfig(version=7, channels={
        "off": ChannelRule(enabled=False), "maint": ChannelRule(maintenance=((clock.now - 1, clock.now + 60),)),
        "capped": ChannelRule(daily_caps={"CNY": 15_000}),
    }, merchants={"shop": MerchantRule(deny=frozenset({"denied"}))})
    router = Router([
        caps("a", 50), caps("off", 10), caps("maint", 10), caps("small", 10, max_amount=5_000),
        caps("unionpay", 10, bin_ranges=(("62", "62"),)), caps("capped", 10), caps("denied", 10),
    ], config, clock=clock)
    router.sent("capped", RouteRequest(Asset.BANK_CARD, "CNY", 10_000))
    decision = router.decide(CARD)
    assert decision.order == ("a",) and decision.reason == "ONLY_CANDIDATE" and decision.config_version == 7
    assert decision.excluded == {"off": "DISABLED", "maint": "MAINTENANCE", "small": "AMOUNT_LIMIT",
                                 "unionpay": "CARD_BIN", "capped": "DAILY_CAP", "denied": "MERCHANT_RULE"}
    assert router.eligible("capped", CARD) == "DAILY_CAP" and router.eligible("a", CARD) == ""
    assert router.decide(RouteRequest(Asset.BANK_TRANSFER, "CNY", 1)).chosen is None


def test_equal_health_goes_to_the_cheaper_channel_and_pinning_wins() -> None:
    router = Router([caps("dear", 80), caps("cheap", 20)], seed=3)
    for name in ("dear", "cheap"):
        for _ in range(200):
            router.record(name, succeeded=True)
    chosen = [router.decide(CARD).chosen for _ in range(200)]
    # Thompson sampling keeps exploring a little; the cheaper of two equally healthy channels
    # gets most of the traffic.
    assert chosen.count("cheap") > 150
    pinned = Router([caps("dear", 80), caps("cheap", 20)],
                    RoutingConfig(merchants={"shop": MerchantRule(pinned="dear")}))
    decision = pinned.decide(CARD)
    assert decision.order == ("dear",) and decision.reason == "PINNED"
    assert decision.excluded == {"cheap": "PINNED_ELSEWHERE"}


def test_failing_channel_loses_traffic_by_breaker_and_wins_it_back_after_recovery() -> None:
    clock = Clock()
    settings = BreakerSettings(window=20, min_samples=10, open_at=0.5, cool_down_s=60, probes=2, probes_to_close=2)
    router = Router([caps("a", 20), caps("b", 40)], RoutingConfig(breaker=settings), seed=1, clock=clock)
    for _ in range(50):
        router.record("a", succeeded=True)
        router.record("b", succeeded=True)
    for _ in range(10):  # "a" goes down: timeouts
        router.sent("a", CARD)
        router.record("a", succeeded=False, reason="TIMEOUT")
    decision = router.decide(CARD)
    assert decision.order == ("b",) and decision.excluded == {"a": "BREAKER_OPEN"}
    clock.now += 61  # half-open: probes go to "a" again when it scores best
    for _ in range(2):
        router.sent("a", CARD)
        router.record("a", succeeded=True)
    assert router.breakers["a"].allows()
    clock.now += RoutingConfig().health_max_age_s + 1  # the estimate forgets outcomes older than this
    for _ in range(20):
        router.record("a", succeeded=True)
    chosen = [router.decide(CARD).chosen for _ in range(100)]
    assert chosen.count("a") > 50, "recovered and cheaper: most traffic is back"


def test_payer_declines_do_not_open_the_breaker_and_decisions_are_reproducible() -> None:
    router = Router([caps("a", 20)], seed=5)
    for _ in range(100):
        router.sent("a", CARD)
        router.record("a", succeeded=False, reason="INSUFFICIENT_FUNDS")
    assert router.decide(CARD).chosen == "a"
    first = Router([caps("a", 20), caps("b", 20)], seed=9, clock=Clock())
    second = Router([caps("a", 20), caps("b", 20)], seed=9, clock=Clock())
    assert [first.decide(CARD).candidates for _ in range(20)] == [second.decide(CARD).candidates for _ in range(20)]


def test_a_new_configuration_changes_fees_and_keeps_what_was_learned() -> None:
    clock = Clock()
    router = Router([caps("a", 20), caps("b", 40)], clock=clock)
    for _ in range(9):  # one short of tripping the breaker (which would start the estimate over)
        router.record("a", succeeded=False, reason="TIMEOUT")
    assert router.fee("b", "CNY", 10_000) == 40
    tiered = FeeSchedule.from_table({"fixed": 0, "bps": 10, "minimum": 15, "tiers": [{"from_amount": 50_000, "bps": 5}]})
    router.apply(RoutingConfig(version=2, channels={"b": ChannelRule(fees={"CNY": tiered})}))
    assert router.fee("b", "CNY", 10_000) == 15  # 10 by rate, held at the minimum
    assert router.fee("b", "CNY", 100_000) == 50  # the 5 bps tier
    assert router.view("a").samples == 9 and router.view("a").estimated_success < 0.1
    assert router.decide(CARD).config_version == 2


def test_fee_schedule_rounds_half_up_and_rejects_bad_tables() -> None:
    assert FeeSchedule(bps=55).fee_for(10) == 0 and FeeSchedule(bps=50).fee_for(100) == 1  # 0.055 / 0.5
    assert FeeSchedule(fixed=100, bps=60, maximum=500).fee_for(1_000_000) == 500
    for bad in ({"bps": -1}, {"fixed": 1.5}, {"tiers": [{"from_amount": 5}, {"from_amount": 5}]},
                {"minimum": 10, "maximum": 5}, {"rate": 3}):
        try:
            FeeSchedule.from_table(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_the_decision_excludes_exactly_what_eligible_says_and_prices_like_fee(data: st.DataObject) -> None:
    """decide() caches what depends only on a request's shape and inlines the fee; eligible()
    and fee() are the plain reference. They must agree on every channel, every reason."""
    clock = Clock()
    names = [f"c{i}" for i in range(5)]
    channel_caps = [caps(name, data.draw(st.integers(0, 80)), min_amount=data.draw(st.sampled_from((1, 5_000))),
                         bin_ranges=data.draw(st.sampled_from(((), (("62", "62"),), (("4", "5"),)))))
                    for name in names]
    rules = {}
    for name in names:
        rules[name] = ChannelRule(
            enabled=data.draw(st.booleans()) or data.draw(st.booleans()),
            maintenance=data.draw(st.sampled_from(((), ((clock.now - 10, clock.now + 10),), ((0.0, 1.0),)))),
            daily_caps=data.draw(st.sampled_from(({}, {"CNY": 15_000}, {"USD": 1}))),
            bank_codes=data.draw(st.sampled_from((None, frozenset({"ICBC"})))),
            fees=data.draw(st.sampled_from(({}, {"CNY": FeeSchedule.from_table(
                {"fixed": 3, "bps": 25, "minimum": 20, "maximum": 60,
                 "tiers": [{"from_amount": 20_000, "bps": 10}]})}))))
    merchants = {"shop": MerchantRule(allow=data.draw(st.sampled_from((None, frozenset(names[:3])))),
                                      deny=data.draw(st.sampled_from((frozenset(), frozenset({"c1"})))),
                                      pinned=data.draw(st.sampled_from((None, "c2"))))}
    router = Router(channel_caps, RoutingConfig(channels=rules, merchants=merchants,
                                                breaker=BreakerSettings(min_samples=2, window=4)),
                    seed=data.draw(st.integers(0, 9)), clock=clock)
    for name in names:
        for _ in range(data.draw(st.integers(0, 3))):
            router.sent(name, RouteRequest(Asset.BANK_CARD, "CNY", 10_000))
            router.record(name, succeeded=data.draw(st.booleans()), reason="TIMEOUT")
        router.breakers[name].forced_open = data.draw(st.integers(0, 9)) == 0
    for _ in range(4):
        request = RouteRequest(data.draw(st.sampled_from((Asset.BANK_CARD, Asset.BANK_TRANSFER))),
                               data.draw(st.sampled_from(("CNY", "USD"))), data.draw(st.integers(1, 40_000)),
                               card_bin=data.draw(st.sampled_from(("", "411111", "622588"))),
                               bank_code=data.draw(st.sampled_from(("", "ICBC", "CMB"))),
                               merchant_id=data.draw(st.sampled_from(("shop", "other"))))
        decision = router.decide(request)
        for name in names:
            assert decision.excluded.get(name, "") == router.eligible(name, request), (name, request)
        assert {c.channel for c in decision.candidates} == {n for n in names if not router.eligible(n, request)}
        for c in decision.candidates:
            assert c.fee == router.fee(c.channel, request.currency, request.amount)
            assert c.score == c.success - router.config.fee_weight * c.fee / max(request.amount, 1)
        keys = [(-c.score, c.fee, c.channel) for c in decision.candidates]
        assert keys == sorted(keys) and decision.order == tuple(c.channel for c in decision.candidates)
        clock.now += data.draw(st.sampled_from((0.0, 15.0, 86_400.0)))


def test_a_tripped_breaker_starts_the_estimate_over_and_late_answers_are_not_learned() -> None:
    """The breaker owns an outage: when it trips the estimate forgets the channel's past, answers
    that arrive while it is open (sent before it opened) are ignored, and after the cool-down
    the channel competes from the prior: it is probed and, once it answers, wins traffic back
    long before the outage would have aged out of the estimate."""
    clock = Clock()
    settings = BreakerSettings(window=20, min_samples=10, open_at=0.5, cool_down_s=30, probes=3, probes_to_close=3)
    router = Router([caps("a", 20), caps("b", 40)], RoutingConfig(breaker=settings), seed=4, clock=clock)
    for _ in range(500):
        router.record("a", succeeded=True)
        router.record("b", succeeded=True)
    for _ in range(10):
        router.sent("a", CARD)
        router.record("a", succeeded=False, reason="TIMEOUT")
    assert router.view("a").breaker.value == "open" and router.view("a").samples == 0
    for _ in range(40):  # the rest of what was in flight when it died
        router.record("a", succeeded=False, reason="TIMEOUT")
    assert router.view("a").samples == 0 and router.decide(CARD).excluded == {"a": "BREAKER_OPEN"}
    clock.now += 31  # half-open: "a" (Beta(1, 1)) is a candidate again and is sometimes drawn
    probes = 0
    for _ in range(2_000):
        decision = router.decide(CARD)
        if decision.chosen == "a":
            probes += 1
            router.sent("a", CARD)
            router.record("a", succeeded=True)  # it recovered
        else:
            router.record("b", succeeded=True)
    assert router.view("a").breaker.value == "closed" and router.view("a").samples == probes
    chosen = [router.decide(CARD).chosen for _ in range(200)]
    # (Without starting over, its 50 timeouts would keep it below 1% until they aged out.)
    assert chosen.count("a") > 50, "recovered: it carries a fair share again, its outage forgotten"


def test_a_half_open_breaker_lets_through_no_more_probes_than_allowed_and_lost_probes_expire() -> None:
    clock = Clock()
    settings = BreakerSettings(window=6, min_samples=3, open_at=0.5, cool_down_s=10, probes=1, probes_to_close=2)
    router = Router([caps("a", 20), caps("b", 400)], RoutingConfig(breaker=settings, exploration=0.0),
                    clock=clock)
    for _ in range(3):
        router.record("a", succeeded=False, reason="TIMEOUT")
    clock.now += 11  # half-open: one probe at a time
    # Decisions taken before any payment commits (concurrent CreatePayments): the slot is taken
    # by the decision itself, so only the first goes to "a".
    decisions = [router.decide(CARD) for _ in range(3)]
    assert [d.chosen for d in decisions] == ["a", "b", "b"]
    assert [d.excluded for d in decisions[1:]] == [{"a": "BREAKER_OPEN"}] * 2
    assert not router.claim("a"), "no slot for a fallback either"
    clock.now += 11  # the probe's answer never came back to the router: its slot is given up
    assert router.decide(CARD).chosen == "a"
