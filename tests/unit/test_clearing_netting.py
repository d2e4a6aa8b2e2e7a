"""Multilateral netting: positions, settlement transfers, figures; checked against a brute-force
exact solver (tests/clearing_exact.py) on small random cases."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from clearing_exact import flows_of, max_zero_sum_groups, min_transfers, partitions, positions_of

from dualflow.clearing import (
    InvalidObligation,
    net,
    net_positions,
    NettingOptions,
    Obligation,
    settle_positions,
    SettlementTransfer,
)
from dualflow.core.money import AMOUNT_MAX


def obligations(table: str, currency: str = "CNY") -> list[Obligation]:
    """One line per obligation: `debtor creditor amount`."""
    out = []
    for i, line in enumerate(l for l in table.strip().splitlines() if l.strip()):
        debtor, creditor, amount = line.split()
        out.append(Obligation(f"o{i}", debtor, creditor, int(amount), currency))
    return out


def transfers(table: str, currency: str = "CNY") -> tuple[SettlementTransfer, ...]:
    """One line per transfer: `payer payee amount`."""
    return tuple(SettlementTransfer(p, q, int(a), currency)
                 for p, q, a in (l.split() for l in table.strip().splitlines() if l.strip()))


def test_the_seed_example_settles_one_transfer_of_the_difference() -> None:
    result = net(obligations("""
        A B 51
        B A 50
    """))
    cny = result.by_currency["CNY"]
    assert cny.positions == {"A": -1, "B": 1}
    assert cny.transfers == transfers("A B 1")
    assert (cny.gross_minor, cny.net_minor, cny.obligation_count) == (101, 1, 2)
    assert cny.efficiency == Fraction(100, 101)
    assert (cny.pools_nonzero, cny.transfer_bound, cny.zero_sum_groups, cny.optimal) == (2, 1, 1, True)


# Each case: obligations, then the expected transfers (`-` for none), then gross / net / count.
CASES = [
    ("A B 10\nB C 10\nC A 10", "-", (30, 0, 0)),  # a cycle nets to nothing
    ("A B 10\nA C 5", "A B 10\nA C 5", (15, 15, 2)),  # nothing to net: N - 1 = 2
    ("A B 7\nC D 7\nB D 3\nD B 3", "A B 7\nC D 7", (20, 14, 2)),  # two pairs: 2 groups of 2, not N - 1 = 3
    # A -9, B +4, C +5, D -2, E +2: {A, B, C} and {D, E} net to zero: 3 transfers, not 4
    ("A B 4\nA C 5\nD E 2", "A B 4\nA C 5\nD E 2", (11, 11, 3)),
    ("A B 3\nB A 3", "-", (6, 0, 0)),  # pools whose obligations cancel appear with 0
]


@pytest.mark.parametrize(("table", "expected", "figures"), CASES)
def test_small_tables(table: str, expected: str, figures: tuple[int, int, int]) -> None:
    cny = net(obligations(table)).by_currency["CNY"]
    assert cny.transfers == (() if expected == "-" else transfers(expected))
    assert (cny.gross_minor, cny.net_minor, len(cny.transfers)) == figures
    assert cny.optimal


def test_efficiency_is_exact_and_zero_without_gross() -> None:
    cny = net(obligations("A B 3\nB A 3")).by_currency["CNY"]
    assert cny.efficiency == 1
    assert net([]).by_currency == {}


def test_currencies_net_separately_and_in_code_order() -> None:
    obs = [*obligations("A B 5\nB A 2", "USD"), *obligations("A B 5\nB C 5", "CNY")]
    obs = [Obligation(f"{o.currency}{o.obligation_id}", o.debtor_pool, o.creditor_pool, o.amount_minor, o.currency)
           for o in obs]
    result = net(obs)
    assert list(result.by_currency) == ["CNY", "USD"]
    assert result.transfers == (*transfers("A C 5"), *transfers("A B 3", "USD"))
    assert net_positions(obs) == {"CNY": {"A": -5, "B": 0, "C": 5}, "USD": {"A": -3, "B": 3}}


@pytest.mark.parametrize(("fields", "message"), [
    (("o", "A", "B", 0, "CNY"), "amount_minor"),
    (("o", "A", "B", -5, "CNY"), "amount_minor"),
    (("o", "A", "B", True, "CNY"), "amount_minor"),
    (("o", "A", "B", 1.0, "CNY"), "amount_minor"),
    (("o", "A", "B", AMOUNT_MAX + 1, "CNY"), "amount_minor"),
    (("o", "A", "A", 5, "CNY"), "cannot owe itself"),
    (("o", "A", "B", 5, "XXX"), "currency"),
    (("", "A", "B", 5, "CNY"), "obligation_id"),
    (("o", "", "B", 5, "CNY"), "debtor_pool"),
])
def test_an_invalid_obligation_is_a_domain_error(fields: tuple, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidObligation, match=message) as raised:
        Obligation(*fields)
    assert raised.value.reason == "INVALID_OBLIGATION"


def test_the_brute_force_reference_agrees_with_hand_counts() -> None:
    assert sum(1 for _ in partitions([1, 2, 3, 4])) == 15  # Bell(4)
    assert max_zero_sum_groups([-9, 4, 5, -2, 2]) == 2
    assert min_transfers([-1, -1, -1, 1, 1, 1]) == 3
    assert min_transfers([-3, -3, 2, 2, 2]) == 4  # no zero-sum block but the whole


def random_obligations(rng: random.Random, pools: int, count: int, amount_max: int,
                       currencies: tuple[str, ...] = ("CNY",)) -> list[Obligation]:
    names = [f"P{i}" for i in range(pools)]
    out = []
    for i in range(count):
        debtor, creditor = rng.sample(names, 2)
        out.append(Obligation(f"o{i}", debtor, creditor, rng.randint(1, amount_max), rng.choice(currencies)))
    return out


def check_settlement(obs: list[Obligation], options: NettingOptions = NettingOptions()) -> None:
    """What must hold for any netting: positions reproduced, exactly the net moved, debtors pay
    creditors, at most N - 1 transfers, each payer-payee pair once, sorted output."""
    result = net(obs, options)
    expected = positions_of(obs)
    for currency, c in result.by_currency.items():
        assert sum(c.positions.values()) == 0
        assert {(currency, p): v for p, v in c.positions.items() if v} == \
            {k: v for k, v in expected.items() if k[0] == currency and v}
        flows = flows_of(c.transfers)
        assert {k: v for k, v in flows.items() if v} == {(currency, p): v for p, v in c.positions.items() if v}
        assert sum(t.amount_minor for t in c.transfers) == c.net_minor == sum(v for v in c.positions.values() if v > 0)
        assert c.gross_minor == sum(o.amount_minor for o in obs if o.currency == currency)
        for t in c.transfers:
            assert t.amount_minor > 0 and c.positions[t.payer_pool] < 0 < c.positions[t.payee_pool]
        assert len(c.transfers) <= c.transfer_bound
        assert list(c.transfers) == sorted(c.transfers, key=lambda t: (t.payer_pool, t.payee_pool))
        assert len({(t.payer_pool, t.payee_pool) for t in c.transfers}) == len(c.transfers)


def test_small_random_cases_match_the_brute_force_optimum() -> None:
    """N <= 7 pools, small amounts (so that groups netting to zero are common): our settlement
    reproduces the positions and takes exactly the fewest transfers any settlement can."""
    rng = random.Random(20261126)
    below_bound = 0
    for case in range(600):
        pools = rng.randint(2, 7)
        obs = random_obligations(rng, pools, rng.randint(1, 12), rng.choice((3, 5, 10, 100)))
        check_settlement(obs)
        c = net(obs).by_currency["CNY"]
        assert c.optimal, "N <= exact_limit is always solved exactly"
        optimum = min_transfers(list(c.positions.values()))
        assert len(c.transfers) == optimum, (case, c.positions, c.transfers)
        below_bound += len(c.transfers) < c.transfer_bound
    assert below_bound > 50, "the cases must exercise zero-sum groups, not just N - 1"


def test_the_exact_stage_beyond_pairs_matches_the_brute_force() -> None:
    """Positions built from zero-sum blocks of 3 and 4 pools (no opposite pairs to help)."""
    rng = random.Random(7)
    for _ in range(200):
        values: list[int] = []
        while len(values) <= 4:  # 6 to 8 pools
            size = rng.choice((3, 4))
            block = [rng.randint(1, 9) for _ in range(size - 1)]
            values += [*(-v for v in block), sum(block)] if rng.random() < 0.5 else [*block, -sum(block)]
        positions = {f"P{i}": v for i, v in enumerate(values)}
        moves, optimal = settle_positions(positions, "CNY")
        assert optimal and len(moves) == min_transfers(values), (values, moves)
        assert dict(flows_of(moves)) == {("CNY", p): v for p, v in positions.items()}


def test_without_the_exact_stage_every_stage_keeps_the_guarantees() -> None:
    rng = random.Random(11)
    for case in range(300):
        obs = random_obligations(rng, rng.randint(2, 30), rng.randint(1, 80), rng.choice((4, 20, 1000)),
                                 currencies=("CNY", "USD"))
        for options in (NettingOptions(exact_limit=0), NettingOptions(exact_limit=0, search_budget=0),
                        NettingOptions(exact_limit=3, search_budget=50)):
            check_settlement(obs, options)


def test_the_heuristic_finds_planted_groups_of_two_three_and_four() -> None:
    """60 pools (beyond exact_limit) made of zero-sum groups of 2, 3 and 4 with large random
    amounts (no accidental groups): every group is found, so N - groups transfers."""
    rng = random.Random(3)
    positions: dict[str, int] = {}
    groups = 0
    while len(positions) < 60:
        size = (2, 3, 4, 4)[groups % 4]
        shape = rng.choice([(1, size - 1), (size - 1, 1)] + ([(2, 2)] if size == 4 else []))
        debts = [rng.randint(10**9, 10**12) for _ in range(shape[0])]
        credits = _split(sum(debts), shape[1], rng)
        for v in [*(-d for d in debts), *credits]:
            positions[f"P{len(positions):03d}"] = v
        groups += 1
    moves, optimal = settle_positions(positions, "CNY")
    assert not optimal
    assert len(moves) == len(positions) - groups
    assert dict(flows_of(moves)) == {("CNY", p): v for p, v in positions.items()}


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def test_output_does_not_depend_on_the_order_obligations_arrive_in() -> None:
    rng = random.Random(5)
    obs = random_obligations(rng, 40, 400, 50, currencies=("CNY", "EUR"))
    first = net(obs)
    for _ in range(3):
        rng.shuffle(obs)
        assert net(obs) == first


def test_a_large_random_instance_keeps_the_guarantees() -> None:
    rng = random.Random(8)
    obs = random_obligations(rng, 300, 5000, 10_000)
    check_settlement(obs)
