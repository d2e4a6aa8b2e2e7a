"""Multilateral netting: obligations between pools in, net positions and settlement transfers out.

An `Obligation` says that one reserve-fund pool owes another an amount (integer
minor units of one currency); the clearing center records them during a window
(the information flow). At cut-off `net()` turns them into:

* a **net position** per pool per currency: what the pool is owed minus what it
  owes (positive: net creditor, negative: net debtor). Per currency the
  positions sum to zero, always (asserted).
* **settlement transfers** (the fund flow to order) that move only the net:
  every transfer goes from a net debtor straight to a net creditor, so a pool
  only ever pays or only ever receives, and the transfers of a currency add up
  to exactly its **net amount**, defined as the sum of the positive positions
  (equivalently, of the absolute negative ones; no settlement of these
  positions can move less).
* the **gross amount** (the sum of the obligations' amounts, what settling each
  obligation on its own would move), and **netting efficiency**
  `1 - net / gross` as an exact `Fraction` (0 when gross is 0).

Transfer count. With N pools whose position is not zero, any partition of them
into groups that each sum to zero can be settled with (group size - 1)
transfers per group, so N - G transfers for G groups; fewer is impossible for
a settlement whose transfers form a forest, and the fewest transfers overall is
N - (the largest number of zero-sum groups). Finding that largest number is
NP-hard (it contains subset-sum), so `settle_positions` works in stages:

1. **Opposite pairs**: a debtor owing exactly what a creditor is owed is paired
   with it (ties by pool id). This never loses optimality: in any partition,
   moving such a pair into a group of its own keeps every group zero-sum and
   does not reduce the number of groups.
2. **Exact** (at most `exact_limit` pools left, default 12): dynamic
   programming over subsets finds the largest number of zero-sum groups
   (O(2^m * m)). With stage 1 it makes the whole result optimal, and the
   result says so (`optimal=True`).
3. **Small subsets** (more pools left): zero-sum groups of three (one pool
   against two) then four (two against two, one against three) are searched
   with hash tables (amount -> pools, sum of two -> a pair) and taken greedily
   as found, the tables rebuilt from the pools left until a round finds
   nothing, within `search_budget` (table entries built plus lookups; the
   default covers 1,000 pools several times over, and the work grows with the
   square of the pools); when the rest shrinks to `exact_limit` pools, stage 2
   finishes it. Taking a group greedily can cost a better partition elsewhere,
   and groups of five or more are only found by luck in stage 4, so no
   optimality is claimed on this path.
4. **Greedy** for what is left: the largest debtor pays the largest creditor
   min(debt, credit), except that a creditor owed exactly the debtor's amount
   (or a debtor owing exactly the creditor's) is preferred, since that closes
   two pools with one transfer. Each transfer closes at least one pool and the
   last closes two, so m pools take at most m - 1 transfers.

Guarantees: the transfers reproduce every pool's net position exactly; they
move exactly the net amount; there are at most N - 1 of them per currency
(N = pools with a non-zero position in it), fewer by one for each zero-sum
group found; the count is the optimum whenever `optimal` is True (always when
at most `exact_limit` pools remain after stage 1, in particular whenever
N <= exact_limit); and the output is a deterministic function of the
obligations (ties broken by pool id, transfers sorted by currency, payer,
payee; a payer pays a given payee at most once). Integer arithmetic only.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

from dualflow.core.money import AMOUNT_MAX, is_currency

from .errors import InvalidObligation

EXACT_LIMIT: Final = 12  # pools (after opposite pairs) solved exactly: 2^12 * 12 steps, a few ms
SEARCH_BUDGET: Final = 2_000_000  # pair-table entries + lookups stage 3 may spend per currency


@dataclass(frozen=True, slots=True)
class Obligation:
    """`debtor_pool` owes `creditor_pool` `amount_minor` of `currency`; `obligation_id` is the
    recorder's idempotency key (unique across windows)."""

    obligation_id: str
    debtor_pool: str
    creditor_pool: str
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        problems = []
        for name in ("obligation_id", "debtor_pool", "creditor_pool"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} must be a non-empty string")
        if self.debtor_pool == self.creditor_pool:
            problems.append("a pool cannot owe itself")
        amount = self.amount_minor
        if type(amount) is not int or not 0 < amount <= AMOUNT_MAX:
            problems.append(f"amount_minor must be an integer in 1..{AMOUNT_MAX}, not {amount!r}")
        if not isinstance(self.currency, str) or not is_currency(self.currency):
            problems.append(f"unknown currency {self.currency!r}")
        if problems:
            raise InvalidObligation(f"obligation {self.obligation_id!r}: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class SettlementTransfer:
    """One fund-flow movement that settles net positions: `payer_pool` pays `payee_pool`."""

    payer_pool: str
    payee_pool: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class CurrencyNetting:
    """The netting of one currency's obligations."""

    currency: str
    positions: dict[str, int]  # pool -> net position (owed minus owing), every pool seen, by pool id
    transfers: tuple[SettlementTransfer, ...]  # by (payer, payee)
    gross_minor: int  # sum of the obligations' amounts
    net_minor: int  # sum of the positive positions == sum of the transfers' amounts
    obligation_count: int
    optimal: bool  # the transfer count is proven minimal

    @property
    def pools_nonzero(self) -> int:
        """N: pools with a non-zero position (each must pay or receive)."""
        return sum(1 for p in self.positions.values() if p)

    @property
    def transfer_bound(self) -> int:
        """N - 1 (0 when nothing moves): the most transfers a settlement may take."""
        return max(self.pools_nonzero - 1, 0)

    @property
    def zero_sum_groups(self) -> int:
        """Groups of pools that settle among themselves: N - transfers (the transfers form a forest)."""
        return self.pools_nonzero - len(self.transfers)

    @property
    def efficiency(self) -> Fraction:
        """1 - net / gross, exactly; 0 when there is nothing gross."""
        return Fraction(0) if self.gross_minor == 0 else 1 - Fraction(self.net_minor, self.gross_minor)


@dataclass(frozen=True, slots=True)
class NettingResult:
    by_currency: dict[str, CurrencyNetting] = field(default_factory=dict)  # by currency code

    @property
    def transfers(self) -> tuple[SettlementTransfer, ...]:
        """Every currency's transfers, by (currency, payer, payee)."""
        return tuple(t for c in self.by_currency.values() for t in c.transfers)


@dataclass(frozen=True, slots=True)
class NettingOptions:
    exact_limit: int = EXACT_LIMIT
    search_budget: int = SEARCH_BUDGET  # 0 skips the small-subset stage


def net_positions(obligations: Iterable[Obligation]) -> dict[str, dict[str, int]]:
    """currency -> pool -> net position (owed minus owing), sorted by currency then pool; pools
    whose obligations cancel out appear with 0."""
    return {c: n.positions for c, n in _accumulate(obligations).items()}


def net(obligations: Iterable[Obligation], options: NettingOptions = NettingOptions()) -> NettingResult:
    """Net the obligations multilaterally, per currency (see the module docstring)."""
    out = {}
    for currency, acc in _accumulate(obligations).items():
        transfers, optimal = settle_positions(acc.positions, currency, options)
        net_minor = sum(p for p in acc.positions.values() if p > 0)
        moved = sum(t.amount_minor for t in transfers)
        assert moved == net_minor, (currency, moved, net_minor)
        out[currency] = CurrencyNetting(currency, acc.positions, transfers, acc.gross, net_minor, acc.count, optimal)
    return NettingResult(out)


@dataclass(slots=True)
class _Acc:
    positions: dict[str, int]
    gross: int = 0
    count: int = 0


def _accumulate(obligations: Iterable[Obligation]) -> dict[str, _Acc]:
    raw: dict[str, dict[str, int]] = {}
    gross: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for o in obligations:  # the hot loop: locals only, no attribute writes
        currency = o.currency
        pos = raw.get(currency)
        if pos is None:
            pos = raw[currency] = defaultdict(int)
        amount = o.amount_minor
        pos[o.debtor_pool] -= amount
        pos[o.creditor_pool] += amount
        gross[currency] += amount
        count[currency] += 1
    out = {}
    for currency in sorted(raw):
        positions = {pool: raw[currency][pool] for pool in sorted(raw[currency])}
        assert sum(positions.values()) == 0, currency
        out[currency] = _Acc(positions, gross[currency], count[currency])
    return out


def settle_positions(positions: Mapping[str, int], currency: str,
                     options: NettingOptions = NettingOptions()) -> tuple[tuple[SettlementTransfer, ...], bool]:
    """Transfers that settle `positions` (pool -> owed minus owing, summing to zero) and whether
    their count is proven minimal. See the module docstring for the stages and guarantees."""
    assert sum(positions.values()) == 0, "positions must sum to zero"
    transfers: list[SettlementTransfer] = []
    rest = _pair_opposites(sorted((pool, pos) for pool, pos in positions.items() if pos), currency, transfers)
    optimal = True
    if len(rest) > options.exact_limit:
        optimal = False
        rest = _small_groups(rest, currency, transfers, options)
    if len(rest) <= options.exact_limit:
        for group in _exact_groups(rest):
            _greedy(group, currency, transfers)
    else:
        _greedy(rest, currency, transfers)
    transfers.sort(key=lambda t: (t.payer_pool, t.payee_pool))
    bound = max(sum(1 for p in positions.values() if p) - 1, 0)
    assert len(transfers) <= bound, (len(transfers), bound)
    return tuple(transfers), optimal


# ---------------------------------------------------------------- stages

def _pair_opposites(items: list[tuple[str, int]], currency: str,
                    transfers: list[SettlementTransfer]) -> list[tuple[str, int]]:
    """Stage 1: pair each debtor with a creditor owed exactly its debt (pools in id order)."""
    creditors: dict[int, list[str]] = defaultdict(list)
    for pool, pos in items:
        if pos > 0:
            creditors[pos].append(pool)
    taken = set()
    for pool, pos in items:
        if pos < 0:
            waiting = creditors.get(-pos)
            if waiting:
                payee = waiting.pop(0)
                transfers.append(SettlementTransfer(pool, payee, -pos, currency))
                taken.add(pool)
                taken.add(payee)
    return [(pool, pos) for pool, pos in items if pool not in taken]


def _exact_groups(items: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Stage 2: a partition of `items` (summing to zero) into the most zero-sum groups.

    best[mask] is the most prefixes with a zero sum over orderings of mask's
    elements; a prefix order read back from the table cuts into groups at each
    zero prefix.
    """
    m = len(items)
    if m == 0:
        return []
    values = [pos for _, pos in items]
    size = 1 << m
    sums = [0] * size
    best = [0] * size
    for mask in range(1, size):
        low = mask & -mask
        sums[mask] = sums[mask ^ low] + values[low.bit_length() - 1]
        top = 0
        rest = mask
        while rest:
            low = rest & -rest
            b = best[mask ^ low]
            if b > top:
                top = b
            rest ^= low
        best[mask] = top + (sums[mask] == 0)
    order = []
    mask = size - 1
    while mask:
        want = best[mask] - (sums[mask] == 0)
        rest = mask
        while rest:
            low = rest & -rest
            if best[mask ^ low] == want:
                break
            rest ^= low
        order.append(low.bit_length() - 1)
        mask ^= low
    order.reverse()
    groups, current, running = [], [], 0
    for i in order:
        current.append(items[i])
        running += values[i]
        if running == 0:
            groups.append(current)
            current = []
    assert not current and len(groups) == best[size - 1]
    return groups


def _small_groups(items: list[tuple[str, int]], currency: str, transfers: list[SettlementTransfer],
                  options: NettingOptions) -> list[tuple[str, int]]:
    """Stage 3: take zero-sum groups of three, then of four, as found, within `search_budget`
    lookups; stops once `exact_limit` pools are left. Returns the pools left, by pool id."""
    creditors = _Side([(pool, pos) for pool, pos in items if pos > 0])
    debtors = _Side([(pool, -pos) for pool, pos in items if pos < 0])
    search = _Search(options.search_budget, options.exact_limit, creditors, debtors)

    def take(debtor_pools: list[str], creditor_pools: list[str]) -> None:
        group = [(p, -debtors.remove(p)) for p in debtor_pools] + [(p, creditors.remove(p)) for p in creditor_pools]
        _greedy(group, currency, transfers)

    search.threes(debtors, creditors, lambda one, two: take([one], two))
    search.threes(creditors, debtors, lambda one, two: take(two, [one]))
    search.fours(take)
    rest = [(p, a) for p, a in creditors.amount.items()] + [(p, -a) for p, a in debtors.amount.items()]
    return sorted(rest)


class _Side:
    """The live pools of one sign, by amount (positive: what a creditor is owed or a debtor owes)."""

    def __init__(self, pools: list[tuple[str, int]]) -> None:
        self.amount = dict(sorted(pools))
        self.at: dict[int, list[str]] = defaultdict(list)  # pools in id order
        for pool, amount in self.amount.items():
            self.at[amount].append(pool)

    def remove(self, pool: str) -> int:
        amount = self.amount.pop(pool)
        pools = self.at[amount]
        pools.remove(pool)
        if not pools:
            del self.at[amount]
        return amount

    def pair_sums(self) -> dict[int, tuple[str, str]]:
        """Sum of two live amounts -> one pair of pools making it (the last in id order). One pair
        per sum keeps this a single comprehension (about 6x faster than lists of every pair); a
        sum whose pair is taken is found again when the search rebuilds the table."""
        return {x + y: (a, b) for (a, x), (b, y) in itertools.combinations(self.amount.items(), 2)}

    def live(self, *pools: str) -> bool:
        return all(p in self.amount for p in pools)


class _Search:
    """The budgeted search of stage 3. Lookups are counted in bulk (one per candidate amount
    checked), so the budget bounds the work; candidates are listed by comprehensions, which keep
    the per-candidate cost at one dict lookup."""

    def __init__(self, budget: int, exact_limit: int, creditors: _Side, debtors: _Side) -> None:
        self.budget = budget
        self.exact_limit = exact_limit
        self.creditors = creditors
        self.debtors = debtors

    def more(self, cost: int = 0) -> bool:
        """Whether the search may go on after spending `cost` lookups."""
        self.budget -= cost
        return self.budget >= 0 and len(self.creditors.amount) + len(self.debtors.amount) > self.exact_limit

    def threes(self, ones: _Side, twos: _Side, take: Callable[[str, list[str]], None]) -> None:
        """One pool of `ones` against two of `twos` whose amounts add up to its amount."""
        amounts = sorted(twos.at)
        at = twos.at
        for one in list(ones.amount):
            target = ones.amount[one]
            below = amounts[:bisect.bisect_right(amounts, target // 2)]
            if not self.more(len(below)):
                return
            for a in [a for a in below if target - a in at]:
                pools_a, pools_b = at.get(a), at.get(target - a)
                if not pools_a or not pools_b or (pools_a is pools_b and len(pools_a) < 2):
                    continue
                take(one, [pools_a[0], pools_a[1] if pools_a is pools_b else pools_b[0]])
                break

    def fours(self, take: Callable[[list[str], list[str]], None]) -> None:
        """Two against two (a sum of two creditors equal to a sum of two debtors), then one against
        three (one pool's amount less one opposite pool's equal to an opposite pair's sum). Taking
        a group leaves other entries of the pair-sum tables stale, so each kind runs in rounds,
        rebuilding the tables from the pools left, until a round finds nothing."""
        creditors, debtors = self.creditors, self.debtors
        while True:
            sums = self._pair_sums()
            if sums is None:
                return
            credit_sums, debit_sums = sums
            took = 0
            for total in sorted(credit_sums.keys() & debit_sums.keys()):
                d, c = debit_sums[total], credit_sums[total]
                if debtors.live(*d) and creditors.live(*c):
                    take(list(d), list(c))
                    took += 1
            if not took or not self.more():
                break
        while True:
            sums = self._pair_sums()
            if sums is None:
                return
            took = 0
            for ones, threes, three_sums, as_debtor in ((debtors, creditors, sums[0], True),
                                                        (creditors, debtors, sums[1], False)):
                for one in list(ones.amount):
                    if one not in ones.amount:
                        continue
                    target = ones.amount[one]
                    if not self.more(len(threes.amount)):
                        return
                    for other, amount in [(o, a) for o, a in threes.amount.items()
                                          if a < target and target - a in three_sums]:
                        pair = three_sums[target - amount]
                        if other not in pair and threes.live(other, *pair):
                            if as_debtor:
                                take([one], [other, *pair])
                            else:
                                take([other, *pair], [one])
                            took += 1
                            break
            if not took:
                return

    def _pair_sums(self) -> tuple[dict[int, tuple[str, str]], dict[int, tuple[str, str]]] | None:
        """Fresh pair-sum tables of the live creditors and debtors, if the budget allows."""
        pairs = sum(len(s.amount) * (len(s.amount) - 1) // 2 for s in (self.creditors, self.debtors))
        if not self.more(pairs):
            return None
        return self.creditors.pair_sums(), self.debtors.pair_sums()


def _greedy(items: list[tuple[str, int]], currency: str, transfers: list[SettlementTransfer]) -> None:
    """Stage 4: settle a zero-sum set of pools with at most len(items) - 1 transfers; the largest
    debtor pays the largest creditor, an exact match (closing two pools at once) preferred."""
    if not items:
        return
    assert sum(pos for _, pos in items) == 0
    left: dict[str, int] = {}  # pool -> amount still to pay (debtors) or receive (creditors), > 0
    debtors: list[tuple[int, str]] = []  # heaps of (-amount, pool); stale entries skipped
    creditors: list[tuple[int, str]] = []
    debt_at: dict[int, list[str]] = defaultdict(list)  # amount -> heap of pools (stale entries skipped)
    credit_at: dict[int, list[str]] = defaultdict(list)
    debtor_set: set[str] = set()

    def put(pool: str, amount: int, debtor: bool) -> None:
        left[pool] = amount
        heapq.heappush(debtors if debtor else creditors, (-amount, pool))
        heapq.heappush((debt_at if debtor else credit_at)[amount], pool)

    def first_at(index: dict[int, list[str]], amount: int, skip: str | None = None) -> str | None:
        """The smallest pool id still at exactly `amount` (other than `skip`)."""
        pools = index.get(amount)
        while pools and left.get(pools[0]) != amount:
            heapq.heappop(pools)
        if not pools:
            return None
        found = [p for p in pools if p != skip and left.get(p) == amount]
        return min(found) if found else None

    def top(heap: list[tuple[int, str]]) -> tuple[str, int] | None:
        while heap:
            neg, pool = heap[0]
            if left.get(pool) == -neg:
                return pool, -neg
            heapq.heappop(heap)
        return None

    for pool, pos in items:
        if pos < 0:
            debtor_set.add(pool)
            put(pool, -pos, True)
        else:
            put(pool, pos, False)

    def pay(payer: str, payee: str, amount: int) -> None:
        transfers.append(SettlementTransfer(payer, payee, amount, currency))
        for pool in (payer, payee):
            rest = left.pop(pool) - amount
            if rest:
                put(pool, rest, pool in debtor_set)

    while True:
        d = top(debtors)
        if d is None:
            break
        debtor, debt = d
        exact = first_at(credit_at, debt)
        if exact is not None:
            pay(debtor, exact, debt)
            continue
        c = top(creditors)
        assert c is not None, "debts left without credits: positions did not sum to zero"
        creditor, credit = c
        exact = first_at(debt_at, credit, skip=debtor)
        if exact is not None:
            pay(exact, creditor, credit)
            continue
        pay(debtor, creditor, min(debt, credit))
    assert not left, left
