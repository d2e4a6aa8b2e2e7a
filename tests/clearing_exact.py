"""An exact, brute-force reference for clearing tests: written from the definitions, not from
clearing/netting.py, and only usable on small instances.

* `positions_of(obligations)`: owed minus owing per (currency, pool), by summing.
* `max_zero_sum_groups(values)`: tries every partition of the values into blocks (Bell(7) = 877
  for 7 pools) and answers the most blocks that each sum to zero.
* `min_transfers(values)`: N - that maximum. Any set of transfers settling the positions splits
  the pools into connected components, each summing to zero, and a component of k pools needs at
  least k - 1 transfers; a zero-sum block of k pools can be settled with k - 1. So this is the
  fewest transfers of any settlement, not just of ours.
* `flows_of(transfers)`: what a set of transfers does to each (currency, pool).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from dualflow.clearing import Obligation, SettlementTransfer


def positions_of(obligations: Iterable[Obligation]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for o in obligations:
        out[(o.currency, o.debtor_pool)] -= o.amount_minor
        out[(o.currency, o.creditor_pool)] += o.amount_minor
    return out


def flows_of(transfers: Iterable[SettlementTransfer]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for t in transfers:
        out[(t.currency, t.payer_pool)] -= t.amount_minor
        out[(t.currency, t.payee_pool)] += t.amount_minor
    return out


def partitions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every partition of `items` into non-empty blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        yield [[first], *smaller]
        for i in range(len(smaller)):
            yield [*smaller[:i], [first, *smaller[i]], *smaller[i + 1:]]


def max_zero_sum_groups(values: Sequence[int]) -> int:
    nonzero = [v for v in values if v]
    assert sum(nonzero) == 0
    assert len(nonzero) <= 9, "brute force: keep it small"
    if not nonzero:
        return 0
    return max(len(p) for p in partitions(nonzero) if all(sum(block) == 0 for block in p))


def min_transfers(values: Sequence[int]) -> int:
    nonzero = [v for v in values if v]
    return len(nonzero) - max_zero_sum_groups(nonzero)
