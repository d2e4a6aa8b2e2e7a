"""The routing decision: hard eligibility, explained exclusions, health and fee in the score,
and the breaker steering traffic away from a failing channel and back after recovery."""

from __future__ import annotations

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow
from dualflow.core.payments.model import Asset
from dualflow.routing.breaker import BreakerSettings
from dualflow.routing.policy import ChannelTerms, MerchantRule, RouteRequest, Router


def terms(name: str, bps: int, **kw: object) -> ChannelTerms:
    caps = Capabilities(channel=name, assets=frozenset({Asset.BANK_CARD}), currencies=frozenset({"CNY"}),
                        flows=frozenset({Flow.PAY, Flow.QUERY}), fees={"CNY": FeeSchedule(bps=bps)},
                        **{k: v for k, v in kw.items() if k in ("min_amount", "max_amount", "bin_ranges")})
    return ChannelTerms(caps, **{k: v for k, v in kw.items() if k in ("enabled", "daily_cap", "maintenance")})


CARD = RouteRequest(Asset.BANK_CARD, "CNY", 10_000, card_bin="411111", merchant_id="shop")


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ineligible_channels_are_excluded_with_reasons_and_never_fall_back() -> None:
    clock = Clock()
    router = Router([
        terms("a", 50), terms("off", 10, enabled=False),
        terms("maint", 10, maintenance=((clock.now - 1, clock.now + 60),)),
        terms("small", 10, max_amount=5_000), terms("unionpay", 10, bin_ranges=(("62", "62"),)),
        terms("capped", 10, daily_cap=15_000), terms("denied", 10),
    ], merchant_rules={"shop": MerchantRule(deny=frozenset({"denied"}))}, clock=clock)
    router.sent("capped", RouteRequest(Asset.BANK_CARD, "CNY", 10_000))
    decision = router.decide(CARD)
    assert decision.order == ("a",)
    assert decision.excluded == {"off": "DISABLED", "maint": "MAINTENANCE", "small": "AMOUNT_LIMIT",
                                 "unionpay": "CARD_BIN", "capped": "DAILY_CAP", "denied": "MERCHANT_RULE"}
    assert router.decide(RouteRequest(Asset.BANK_TRANSFER, "CNY", 1)).chosen is None


def test_equal_health_goes_to_the_cheaper_channel_and_pinning_wins() -> None:
    router = Router([terms("dear", 80), terms("cheap", 20)], seed=3)
    for name in ("dear", "cheap"):
        for _ in range(200):
            router.record(name, succeeded=True)
    chosen = [router.decide(CARD).chosen for _ in range(200)]
    # Thompson sampling keeps exploring a little; the cheaper of two equally healthy channels
    # gets most of the traffic.
    assert chosen.count("cheap") > 150
    pinned = Router([terms("dear", 80), terms("cheap", 20)],
                    merchant_rules={"shop": MerchantRule(pinned="dear")})
    assert pinned.decide(CARD).order == ("dear",)


def test_failing_channel_loses_traffic_by_breaker_and_wins_it_back_after_recovery() -> None:
    clock = Clock()
    settings = BreakerSettings(window=20, min_samples=10, open_at=0.5, cool_down_s=60, probes=2, probes_to_close=2)
    router = Router([terms("a", 20), terms("b", 40)], seed=1, clock=clock, breaker_settings=settings)
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
    for _ in range(200):  # the health window (200 outcomes) forgets the outage
        router.record("a", succeeded=True)
    chosen = [router.decide(CARD).chosen for _ in range(100)]
    assert chosen.count("a") > 50, "recovered and cheaper: most traffic is back"


def test_payer_declines_do_not_open_the_breaker_and_decisions_are_reproducible() -> None:
    router = Router([terms("a", 20)], seed=5)
    for _ in range(100):
        router.sent("a", CARD)
        router.record("a", succeeded=False, reason="INSUFFICIENT_FUNDS")
    assert router.decide(CARD).chosen == "a"
    first = Router([terms("a", 20), terms("b", 20)], seed=9)
    second = Router([terms("a", 20), terms("b", 20)], seed=9)
    assert [first.decide(CARD).candidates for _ in range(20)] == [second.decide(CARD).candidates for _ in range(20)]
