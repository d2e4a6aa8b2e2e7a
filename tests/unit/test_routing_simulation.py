"""The routing simulation (routing/simulation.py): deterministic for a seed, exact in its
accounting, an oracle that never picks a dead channel while another is alive, and our
router ahead of round robin when a channel dies."""

from __future__ import annotations

import pytest

from dualflow.adapters.contract import FeeSchedule
from dualflow.routing.simulation import ChannelSpec, HOUR_S, Scenario, day_scenario, simulate


def small_scenario(**changes: object) -> Scenario:
    """Two hours at one payment a second over three channels; "primary" dies for 20 minutes."""
    fields: dict[str, object] = dict(
        channels=(
            ChannelSpec("primary", FeeSchedule(bps=40), rate=(
                (0.0, 0.98), (3_000.0, 0.98), (3_000.0, 0.0), (4_200.0, 0.0), (4_200.0, 0.98))),
            ChannelSpec("second", FeeSchedule(bps=50), rate=((0.0, 0.97),),
                        fee_changes=((5_400.0, FeeSchedule(bps=30)),)),
            ChannelSpec("cheap", FeeSchedule(bps=20), rate=((0.0, 0.90),)),
        ),
        duration_s=2 * HOUR_S, payments=7_200, payer_decline_rate=0.05, amount_min=1_000, amount_max=100_000)
    fields.update(changes)
    return Scenario(**fields)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_day_and_another_seed_another() -> None:
    scenario = small_scenario(payments=2_000)
    first = {name: t.to_json() for name, t in simulate(scenario, seed=11).tallies.items()}
    again = {name: t.to_json() for name, t in simulate(scenario, seed=11).tallies.items()}
    other = {name: t.to_json() for name, t in simulate(scenario, seed=12).tallies.items()}
    assert first == again
    assert first != other


# One line per policy: approved, payer declines, channel failures, dead sends, fees, sends (good, dead).
# Ten payments of 100.00 one second apart; "good" always works (fee 50), "dead" never answers
# (fee 10, so it is the cheapest); no payer declines; the answers come after the last payment
# (30 s timeout), so our router learns nothing and is not in this table.
EXACT = """
oracle           10 0  0  0 500  10  0
static_priority  10 0  0  0 500  10  0
cheapest_first    0 0 10 10   0   0 10
round_robin       5 0  5  5 250   5  5
"""


def exact_scenario(decline_rate: float) -> Scenario:
    return Scenario(channels=(ChannelSpec("good", FeeSchedule(bps=50), rate=((0.0, 1.0),)),
                              ChannelSpec("dead", FeeSchedule(bps=10), rate=((0.0, 0.0),))),
                    duration_s=10.0, payments=10, payer_decline_rate=decline_rate, amount_min=10_000,
                    amount_max=10_000)


@pytest.mark.parametrize("line", [row for row in EXACT.strip().splitlines()])
def test_accounting_is_exact_on_a_hand_computed_day(line: str) -> None:
    policy, *numbers = line.split()
    approved, declines, failures, dead, fees, good, dead_sends = map(int, numbers)
    tally = simulate(exact_scenario(0.0), seed=3).tally(policy)
    assert (tally.approved, tally.payer_declines, tally.channel_failures, tally.dead_sends, tally.fees_minor) == \
        (approved, declines, failures, dead, fees)
    assert tally.sends == {"good": good, "dead": dead_sends}
    assert tally.approval_rate == approved / 10
    # The objective without luck: 1 - 0.5% per payment on "good", 0 - 0.1% on "dead".
    assert tally.expected_score == pytest.approx(good * (1 - 0.005) + dead_sends * (0 - 0.001))
    everyone_declines = simulate(exact_scenario(1.0), seed=3).tally(policy)
    assert (everyone_declines.approved, everyone_declines.payer_declines, everyone_declines.fees_minor) == \
        (0, good, 0), "a payer's decline is never approved and pays no fee"


def test_ours_is_accounted_like_everyone_else() -> None:
    tally = simulate(exact_scenario(0.0), seed=3).tally("ours")
    assert tally.payments == 10 and tally.approved == tally.sends["good"]
    assert tally.dead_sends == tally.channel_failures == tally.sends["dead"]
    assert tally.fees_minor == 50 * tally.approved


def test_the_oracle_never_sends_to_a_dead_channel_while_another_is_alive() -> None:
    # "a" is dead from 100 s to 200 s, "b" from 150 s to 250 s: only 150-199 s has no live channel.
    scenario = Scenario(channels=(
        ChannelSpec("a", FeeSchedule(bps=10), rate=((0.0, 0.99), (100.0, 0.99), (100.0, 0.0), (200.0, 0.0),
                                                      (200.0, 0.99))),
        ChannelSpec("b", FeeSchedule(bps=90), rate=((0.0, 0.95), (150.0, 0.95), (150.0, 0.0), (250.0, 0.0),
                                                      (250.0, 0.95)))),
        duration_s=300.0, payments=300, payer_decline_rate=0.0, amount_min=10_000, amount_max=10_000)
    result = simulate(scenario, seed=1, policies=("oracle", "static_priority"))
    oracle = result.tally("oracle")
    assert oracle.dead_sends == 50, "only while both are dead (t = 150..199)"
    # b only while a alone is dead (100..149); with both dead, the cheaper a.
    assert oracle.sends == {"a": 250, "b": 50}
    assert result.tally("static_priority").dead_sends == 100, "static priority stays on a through its outage"


def test_a_rate_timeline_interpolates_and_steps() -> None:
    spec = ChannelSpec("x", FeeSchedule(), rate=((0.0, 1.0), (10.0, 0.5), (10.0, 0.0), (20.0, 0.0), (30.0, 1.0)))
    assert [spec.rate_at(t) for t in (-5, 0, 5, 9.999, 10, 15, 25, 30, 99)] == \
        [1.0, 1.0, 0.75, pytest.approx(0.50005), 0.0, 0.0, 0.5, 1.0, 1.0]


def test_our_router_beats_round_robin_and_static_priority_through_an_outage() -> None:
    result = simulate(small_scenario(), seed=2)
    ours, oracle = result.tally("ours"), result.tally("oracle")
    for baseline in ("round_robin", "static_priority"):
        assert ours.approved > result.tally(baseline).approved, (baseline, ours, result.tally(baseline))
    assert oracle.approval_rate - ours.approval_rate < 0.02
    # The primary is dead for 1,200 payments; the breaker stops our sends once the first timeouts
    # (30 s) are back, so only a small number reach it.
    assert ours.dead_sends < 150, ours
    assert result.tally("static_priority").dead_sends == 1_200


def test_the_standard_day_has_the_documented_size_and_events() -> None:
    day = day_scenario()
    assert day.payments == 172_800 and len(day.channels) >= 4
    rates = {c.name: [c.rate_at(h * HOUR_S) for h in range(25)] for c in day.channels}
    assert 0.0 in rates["cardbank"], "an outage"
    assert any(c.fee_changes for c in day.channels), "a fee change"
    assert min(rates["cardbank-b"]) < 0.95 < rates["cardbank-b"][-1], "a degradation and a recovery"
