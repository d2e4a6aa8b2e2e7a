"""Settlement windows and the clearing center: state machines, retries, carry-over, re-driving."""

from __future__ import annotations

import dataclasses

import pytest

from dualflow.clearing import (
    Admission,
    CapPolicy,
    ClearingCenter,
    IllegalTransition,
    InstructionState,
    NetDebitCaps,
    Obligation,
    ObligationConflict,
    SettlementIncomplete,
    SettlementWindow,
    UnknownInstruction,
    UnknownWindow,
    WindowState,
)

S, F, U, P = (InstructionState.SUCCEEDED, InstructionState.FAILED, InstructionState.UNKNOWN,
              InstructionState.PENDING)


def ob(oid: str, debtor: str, creditor: str, amount: int, currency: str = "CNY") -> Obligation:
    return Obligation(oid, debtor, creditor, amount, currency)


def three_pool_window(window_id: str = "2026-11-26#1") -> SettlementWindow:
    """A owes B 51, B owes A 50, C owes B 7: instructions A->B 1, C->B 7."""
    w = SettlementWindow(window_id)
    for o in (ob("1", "A", "B", 51), ob("2", "B", "A", 50), ob("3", "C", "B", 7)):
        w.record(o)
    return w


def test_a_window_settles_through_its_states_with_ids_from_window_and_index() -> None:
    w = three_pool_window()
    result, handed_on = w.close()
    assert w.state is WindowState.CLOSED and handed_on == []
    assert [(i.instruction_id, i.payer_pool, i.payee_pool, i.amount_minor) for i in w.instructions] == \
        [("2026-11-26#1/0", "A", "B", 1), ("2026-11-26#1/1", "C", "B", 7)]
    assert [(s.gross_minor, s.net_minor, s.transfer_count) for s in w.summaries] == [(108, 8, 2)]
    assert result.by_currency["CNY"].net_minor == 8
    assert [i.state for i in w.begin_settlement()] == [P, P]
    assert w.state is WindowState.SETTLING
    assert w.report("2026-11-26#1/0", U, "reply lost")
    assert w.report("2026-11-26#1/0", S)
    assert w.report("2026-11-26#1/1", S)
    assert w.finish() == []
    assert w.state is WindowState.SETTLED and w.failed_instruction_ids == []


@pytest.mark.parametrize(("step", "state_after"), [
    ("close", WindowState.CLOSED), ("begin", WindowState.SETTLING), ("finish", WindowState.SETTLED),
])
def test_each_window_step_only_from_its_state(step: str, state_after: WindowState) -> None:
    w = three_pool_window()
    steps = {"close": w.close, "begin": w.begin_settlement, "finish": w.finish}
    order = ["close", "begin", "finish"]
    for earlier in order[:order.index(step)]:
        steps[earlier]()
        if earlier == "begin":
            for i in w.instructions:
                w.report(i.instruction_id, S)
    steps[step]()
    assert w.state is state_after
    for any_step in order:  # nothing may run twice or out of order from here
        if order.index(any_step) != order.index(step) + 1:
            with pytest.raises(IllegalTransition) as raised:
                steps[any_step]()
            assert raised.value.reason == "ILLEGAL_TRANSITION" and raised.value.current == state_after.value
    with pytest.raises(IllegalTransition):
        w.record(ob("9", "A", "B", 1))


def test_instruction_moves_follow_their_table_and_repeats_are_no_ops() -> None:
    w = three_pool_window()
    w.close()
    with pytest.raises(IllegalTransition):
        w.report("2026-11-26#1/0", S)  # not SETTLING yet
    w.begin_settlement()
    first, second = (i.instruction_id for i in w.instructions)
    assert w.report(first, F, "beneficiary account closed")
    assert not w.report(first, F, "the same answer again"), "a repeated answer changes nothing"
    assert w.instruction(first).reason == "beneficiary account closed"
    for contradiction in (S, U, P):
        with pytest.raises(IllegalTransition):
            w.report(first, contradiction)
    assert w.report(second, U)
    assert not w.report(second, U)
    with pytest.raises(IllegalTransition):
        w.report(second, P)
    with pytest.raises(SettlementIncomplete) as raised:
        w.finish()
    assert raised.value.reason == "SETTLEMENT_INCOMPLETE"
    w.report(second, S)
    with pytest.raises(IllegalTransition):
        w.report(second, F)
    with pytest.raises(UnknownInstruction):
        w.report("2026-11-26#1/7", S)
    with pytest.raises(UnknownInstruction):
        w.instruction("elsewhere/0")


def test_a_failed_instruction_retried_to_success_leaves_the_window_settled() -> None:
    w = three_pool_window()
    w.close()
    w.begin_settlement()
    first, second = (i.instruction_id for i in w.instructions)
    w.report(second, S)
    with pytest.raises(IllegalTransition):
        w.retry(second)  # only a failed one is retried
    w.report(first, F, "rail timeout")
    again = w.retry(first)
    assert (again.instruction_id, again.retry_of, again.state) == ("2026-11-26#1/2", first, P)
    assert (again.payer_pool, again.payee_pool, again.amount_minor) == ("A", "B", 1)
    assert w.retry(first) is again, "re-driving a retry answers the same instruction"
    with pytest.raises(SettlementIncomplete):
        w.finish()
    w.report(again.instruction_id, S)
    assert w.finish() == [] and w.state is WindowState.SETTLED
    assert w.instruction(first).state is F and w.instruction(first).retried_by == again.instruction_id


def test_a_failure_not_retried_is_carried_and_the_window_is_partially_settled() -> None:
    w = three_pool_window()
    w.close()
    w.begin_settlement()
    first, second = (i.instruction_id for i in w.instructions)
    w.report(first, S)
    w.report(second, F, "insufficient funds in pool C")
    carried = w.finish()
    assert carried == [ob("2026-11-26#1/1/carry", "C", "B", 7)]
    assert w.state is WindowState.PARTIALLY_SETTLED and w.failed_instruction_ids == [second]
    assert w.instruction(second).carried_as == "2026-11-26#1/1/carry"
    with pytest.raises(IllegalTransition):
        w.retry(second)
    with pytest.raises(IllegalTransition):
        w.report(second, S)


def test_closing_the_same_obligations_again_gives_the_same_instructions() -> None:
    """Re-driving after a crash: a window rebuilt from its persisted obligations nets to the same
    instruction ids, so the rail (deduplicating by id) never pays twice."""
    a = three_pool_window()
    b = SettlementWindow(a.window_id, obligations=list(reversed(a.obligations)))
    a.close()
    b.close()
    assert a.instructions == b.instructions


def test_a_window_rebuilt_from_its_fields_carries_on_where_it_was() -> None:
    caps = NetDebitCaps(default_minor=50)
    w = SettlementWindow("w", caps, CapPolicy.QUEUE)
    w.record(ob("1", "A", "B", 50))
    assert w.record(ob("2", "A", "C", 10)).admission is Admission.QUEUED
    fields = {f.name: getattr(w, f.name) for f in dataclasses.fields(w) if f.init}
    again = SettlementWindow(**{k: list(v) if isinstance(v, list) else v for k, v in fields.items()})
    assert again.positions() == w.positions() and again.queued == w.queued
    sub = again.record(ob("3", "C", "A", 10))
    assert sub.released == (ob("2", "A", "C", 10),)
    assert [o.obligation_id for o in again.obligations] == ["1", "3", "2"] and again.queued == []


def test_center_hands_queued_obligations_and_failures_to_the_next_window() -> None:
    center = ClearingCenter(NetDebitCaps(default_minor=100), CapPolicy.QUEUE)
    center.record(ob("1", "A", "B", 100))
    assert center.record(ob("2", "A", "C", 30)).admission is Admission.QUEUED
    first, result = center.close()
    assert (first.window_id, first.state, center.current.window_id) == ("W000001", WindowState.CLOSED, "W000002")
    assert first.queued == [ob("2", "A", "C", 30)], "recorded as handed on"
    assert center.current.obligations == [ob("2", "A", "C", 30)], "admitted in the new window (fresh position)"
    center.record(ob("3", "A", "B", 70))  # A at its cap of 100 in W000002
    instructions = center.begin_settlement("W000001")
    assert [i.instruction_id for i in instructions] == ["W000001/0"]
    center.report("W000001/0", F, "rail said no")
    center.finish("W000001")
    assert first.state is WindowState.PARTIALLY_SETTLED
    carried = ob("W000001/0/carry", "A", "B", 100)
    assert center.current.obligations[-1] == carried, "admitted beyond A's cap: the debt exists already"
    assert center.current.book.position("A", "CNY").net_debit_minor == 200


def test_center_ids_are_unique_across_windows() -> None:
    center = ClearingCenter()
    center.record(ob("1", "A", "B", 5))
    center.close()
    assert center.record(ob("1", "A", "B", 5)).admission is Admission.EXISTS
    with pytest.raises(ObligationConflict):
        center.record(ob("1", "A", "B", 6))
    assert center.current.obligations == []
    with pytest.raises(UnknownWindow):
        center.window("W999999")
    with pytest.raises(UnknownWindow):
        center.report("nope/0", S)


def test_an_empty_window_settles_with_no_instructions() -> None:
    center = ClearingCenter()
    window, result = center.close()
    assert result.by_currency == {} and window.instructions == []
    center.begin_settlement(window.window_id)
    assert center.finish(window.window_id).state is WindowState.SETTLED
