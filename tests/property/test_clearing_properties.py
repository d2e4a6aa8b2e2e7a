"""Clearing under random input: netting, caps and the window state machine.

* Netting (any obligations, any options, so every stage runs): per currency the net positions sum
  to zero and equal the obligations summed by hand; the transfers reproduce every position, move
  exactly the net, go from net debtors to net creditors, number at most N - 1, and equal the
  brute-force optimum (tests/clearing_exact.py) whenever the result claims to be optimal.
* Caps (random caps, both policies): no admitted obligation takes its debtor beyond its cap;
  every offered obligation is admitted, queued or refused, exactly one of them; under QUEUE each
  debtor's obligations are admitted in the order they were offered, the rest waiting in order.
* Windows (random operations on a ClearingCenter: record, close, begin, answers, retries,
  finish, new caps): a final window never changes again, a final instruction state never
  changes, a refused operation changes nothing, a finished window has every failure retried or
  carried, and money is conserved: succeeded transfers plus carried obligations reproduce each
  window's net positions; no admitted obligation is lost or counted twice.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict

from clearing_exact import flows_of, min_transfers, positions_of
from hypothesis import event, given, HealthCheck, settings
from hypothesis import strategies as st

from dualflow.clearing import (
    Admission,
    CapPolicy,
    ClearingCenter,
    IllegalTransition,
    InstructionState,
    net,
    NetDebitCapExceeded,
    NetDebitCaps,
    NettingOptions,
    Obligation,
    PositionBook,
    SettlementIncomplete,
    SettlementTransfer,
    SettlementWindow,
    WindowState,
)
from dualflow.core.money import AMOUNT_MAX

POOLS = [f"P{i}" for i in range(7)]
CURRENCIES = ["CNY", "USD", "JPY"]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

amounts = st.one_of(st.integers(1, 12), st.integers(1, 10**6), st.integers(AMOUNT_MAX // 2, AMOUNT_MAX))


@st.composite
def obligation_lists(draw: st.DrawFn, pools: list[str] = POOLS, max_size: int = 30) -> list[Obligation]:
    currencies = draw(st.lists(st.sampled_from(CURRENCIES), min_size=1, max_size=2, unique=True))
    rows = draw(st.lists(st.tuples(st.sampled_from(pools), st.sampled_from(pools), amounts,
                                   st.sampled_from(currencies)), max_size=max_size))
    return [Obligation(f"o{i}", d, c, a, cur) for i, (d, c, a, cur) in enumerate(rows) if d != c]


options = st.one_of(
    st.just(NettingOptions()),
    st.builds(NettingOptions, exact_limit=st.integers(0, 4), search_budget=st.integers(0, 300)),
)


@SETTINGS
@given(obs=obligation_lists(), opts=options)
def test_netting_reproduces_positions_moves_exactly_the_net_within_n_minus_1(
        obs: list[Obligation], opts: NettingOptions) -> None:
    result = net(obs, opts)
    by_hand = positions_of(obs)
    assert set(result.by_currency) == {o.currency for o in obs}
    for currency, c in result.by_currency.items():
        assert sum(c.positions.values()) == 0
        assert {p: v for p, v in c.positions.items()} == {p: v for (cur, p), v in by_hand.items() if cur == currency}
        flows = flows_of(c.transfers)
        assert {p: v for (_, p), v in flows.items() if v} == {p: v for p, v in c.positions.items() if v}
        assert sum(t.amount_minor for t in c.transfers) == c.net_minor
        values = c.positions.values()
        assert c.net_minor == sum(v for v in values if v > 0) == -sum(v for v in values if v < 0)
        assert all(c.positions[t.payer_pool] < 0 < c.positions[t.payee_pool] for t in c.transfers)
        assert len(c.transfers) <= max(c.pools_nonzero - 1, 0)
        assert 0 <= c.efficiency <= 1
        if c.optimal:
            assert len(c.transfers) == min_transfers(list(c.positions.values()))
        if opts == NettingOptions():
            assert c.optimal, "7 pools are always within the exact stage"


@SETTINGS
@given(obs=obligation_lists(pools=[f"P{i}" for i in range(30)], max_size=60), opts=options)
def test_netting_larger_cases_keep_the_guarantees(obs: list[Obligation], opts: NettingOptions) -> None:
    for currency, c in net(obs, opts).by_currency.items():
        flows = flows_of(c.transfers)
        assert {p: v for (_, p), v in flows.items() if v} == {p: v for p, v in c.positions.items() if v}
        assert len(c.transfers) <= max(c.pools_nonzero - 1, 0)
        assert sum(t.amount_minor for t in c.transfers) == c.net_minor


caps_strategy = st.builds(
    NetDebitCaps,
    per_pool=st.dictionaries(st.tuples(st.sampled_from(POOLS[:4]), st.sampled_from(CURRENCIES[:2])),
                             st.integers(0, 60), max_size=6),
    default_minor=st.one_of(st.none(), st.integers(0, 60)),
)


@SETTINGS
@given(caps=caps_strategy, policy=st.sampled_from(CapPolicy),
       rows=st.lists(st.tuples(st.sampled_from(POOLS[:4]), st.sampled_from(POOLS[:4]), st.integers(1, 40),
                               st.sampled_from(CURRENCIES[:2])), max_size=40))
def test_caps_are_never_exceeded_by_admitted_obligations(
        caps: NetDebitCaps, policy: CapPolicy, rows: list[tuple[str, str, int, str]]) -> None:
    book = PositionBook(caps, policy)
    admitted: list[Obligation] = []
    refused: list[Obligation] = []
    offered: list[Obligation] = []
    for i, (debtor, creditor, amount, currency) in enumerate(rows):
        if debtor == creditor:
            continue
        o = Obligation(f"o{i}", debtor, creditor, amount, currency)
        offered.append(o)
        try:
            sub = book.submit(o)
        except NetDebitCapExceeded as exc:
            assert policy is CapPolicy.REFUSE and exc.net_debit_after_minor > exc.cap_minor
            refused.append(o)
            continue
        assert sub.admission in (Admission.ADMITTED, Admission.QUEUED)
        admitted.extend(sub.admitted)
        for p in book.positions():
            cap = caps.cap(p.pool, p.currency)
            assert cap is None or p.net_debit_minor <= cap, (p, cap)
        assert positions_of(admitted) == Counter({(p.currency, p.pool): p.net_minor for p in book.positions()})
    queued = book.queued()
    ids = [o.obligation_id for o in [*admitted, *refused, *queued]]
    assert sorted(ids) == sorted(o.obligation_id for o in offered) and len(set(ids)) == len(ids)
    if policy is CapPolicy.QUEUE:
        assert not refused
        per_debtor: dict[tuple[str, str], list[str]] = defaultdict(list)
        for o in admitted:
            per_debtor[(o.debtor_pool, o.currency)].append(o.obligation_id)
        for o in queued:
            per_debtor[(o.debtor_pool, o.currency)].append(o.obligation_id)
        for key, seq in per_debtor.items():
            assert seq == [o.obligation_id for o in offered if (o.debtor_pool, o.currency) == key], key
    else:
        assert not queued


# ---------------------------------------------------------------- windows

S, F, U, P = (InstructionState.SUCCEEDED, InstructionState.FAILED, InstructionState.UNKNOWN,
              InstructionState.PENDING)


# Operations name their target by index among the *relevant* windows or instructions (CLOSED ones
# to begin, SETTLING ones to answer, retry or finish) so that random runs get far; `wild` picks
# among all of them instead, to try what the state machines must refuse.
wild = st.sampled_from([False, False, False, True])
operation = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(POOLS[:4]), st.sampled_from(POOLS[:4]), st.integers(1, 50)),
    st.tuples(st.just("close")),
    st.tuples(st.just("begin"), st.integers(0, 5), wild),
    st.tuples(st.just("report"), st.integers(0, 20), wild,
              st.sampled_from([S, S, F, U, P])),
    st.tuples(st.just("retry"), st.integers(0, 20), wild),
    st.tuples(st.just("finish"), st.integers(0, 5), wild),
    st.tuples(st.just("caps"), st.one_of(st.none(), st.integers(0, 80))),
)
WANTED = {"begin": WindowState.CLOSED, "finish": WindowState.SETTLING, "report": WindowState.SETTLING,
          "retry": WindowState.SETTLING}


def frozen_view(w: SettlementWindow) -> tuple:  # type: ignore[type-arg]
    return (w.state, copy.deepcopy(w.instructions), list(w.obligations), list(w.failed_instruction_ids))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(caps=st.one_of(st.none(), st.integers(0, 80)), policy=st.sampled_from(CapPolicy),
       ops=st.lists(operation, min_size=20, max_size=80))
def test_windows_never_leave_a_final_state_and_never_lose_money(
        caps: int | None, policy: CapPolicy, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    center = ClearingCenter(NetDebitCaps(default_minor=caps), policy)
    recorded: list[Obligation] = []  # offered and not refused
    for n, op in enumerate(ops):
        windows = list(center.windows.values())
        before = {w.window_id: frozen_view(w) for w in windows}
        final_instructions = {i.instruction_id: i.state for w in windows for i in w.instructions if i.state.final}
        refused = False
        try:
            if op[0] == "record":
                _, d, c, amount = op
                if d == c:
                    continue
                o = Obligation(f"o{n}", d, c, amount, "CNY")
                center.record(o)
                recorded.append(o)
            elif op[0] == "close":
                center.close()
            elif op[0] == "caps":
                center.reconfigure(NetDebitCaps(default_minor=op[1]))
            else:
                wanted = [w for w in windows if op[2] or w.state is WANTED[op[0]]]
                if op[0] in ("report", "retry"):
                    targets = [i for w in wanted for i in w.instructions
                               if op[2] or (not i.state.final if op[0] == "report" else i.state is F)]
                    if targets:
                        inst = targets[op[1] % len(targets)]
                        if op[0] == "report":
                            center.report(inst.instruction_id, op[3])
                        else:
                            center.retry(inst.instruction_id)
                elif wanted:
                    w = wanted[op[1] % len(wanted)]
                    if op[0] == "begin":
                        center.begin_settlement(w.window_id)
                    else:
                        center.finish(w.window_id)
        except (IllegalTransition, SettlementIncomplete, NetDebitCapExceeded):
            refused = True
        for w in windows:
            if refused or before[w.window_id][0].final:
                assert frozen_view(w) == before[w.window_id], (op, w.window_id)
        for w in center.windows.values():
            for i in w.instructions:
                if i.instruction_id in final_instructions:
                    assert i.state is final_instructions[i.instruction_id], (op, i)
        check_books(center, recorded)
    for w in center.windows.values():
        event(f"window {w.state.value}")
        for i in w.instructions:
            event(f"instruction {i.state.value}" + (" retried" if i.retried_by else "")
                  + (" carried" if i.carried_as else ""))


def check_books(center: ClearingCenter, recorded: list[Obligation]) -> None:
    admitted = [o for w in center.windows.values() for o in w.obligations]
    ids = [o.obligation_id for o in admitted]
    assert len(ids) == len(set(ids)), "an obligation admitted twice"
    waiting = {o.obligation_id for o in center.current.queued}
    assert ids_set(recorded) <= set(ids) | waiting, "an obligation lost"
    for w in center.windows.values():
        if w.state is WindowState.OPEN:
            continue
        positions = {k: v for k, v in positions_of(w.obligations).items() if v}
        live = [i for i in w.instructions if i.retried_by is None]
        if w.state.final:
            assert all(i.resolved for i in w.instructions)
            assert {i.instruction_id for i in w.instructions if i.carried_as} == set(w.failed_instruction_ids)
            assert (w.state is WindowState.SETTLED) == (not w.failed_instruction_ids)
            moved = [SettlementTransfer(i.payer_pool, i.payee_pool, i.amount_minor, i.currency)
                     for i in live if i.state is S]
            carried = [o for x in center.windows.values() for o in x.obligations
                       if o.obligation_id in {i.carried_as for i in live}]
            assert len(carried) == len(w.failed_instruction_ids), "a failed transfer not carried on"
            as_transfers = [SettlementTransfer(o.debtor_pool, o.creditor_pool, o.amount_minor, o.currency)
                            for o in carried]
            assert {k: v for k, v in flows_of([*moved, *as_transfers]).items() if v} == positions
        else:
            as_ordered = [SettlementTransfer(i.payer_pool, i.payee_pool, i.amount_minor, i.currency) for i in live]
            assert {k: v for k, v in flows_of(as_ordered).items() if v} == positions


def ids_set(obs: list[Obligation]) -> set[str]:
    return {o.obligation_id for o in obs}
