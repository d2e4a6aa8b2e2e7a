"""The clearing service's pure parts: cut-off times, how executor answers move instructions, the
scripted executor, and the statements the store derives from a window's changes."""

from __future__ import annotations

import pytest

from dualflow.clearing import Obligation, SettlementWindow
from dualflow.clearing.settings import ClearingSettings
from dualflow.clearing.settlement import ScriptedExecutor, SettlementOrder, answers, next_state
from dualflow.clearing.store import (
    DELETE_QUEUED,
    INSERT_QUEUED,
    UPSERT_INSTRUCTION,
    UPSERT_OBLIGATION,
    UPSERT_WINDOW,
    ClearingStore,
    decode_page_token,
    encode_page_token,
)
from dualflow.clearing.caps import CapPolicy, NetDebitCaps
from dualflow.clearing.window import InstructionState
from dualflow.core.errors import InvalidRequest
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

S, F, U, P = (InstructionState.SUCCEEDED, InstructionState.FAILED, InstructionState.UNKNOWN,
              InstructionState.PENDING)
O = ChannelOutcome
H = 3600 * 10**9


@pytest.mark.parametrize(("window_s", "offset_s", "after_ns", "expected_ns"), [
    (0, 0, 5, None),  # closed by CloseWindow only
    (3600, 0, 0, H),  # hourly, on the hour
    (3600, 0, H - 1, H),
    (3600, 0, H, 2 * H),  # strictly after
    (86400, 61200, 0, 17 * H),  # 17:00 UTC daily
    (86400, 61200, 17 * H, 41 * H),
    (86400, 61200, 18 * H, 41 * H),
])
def test_cutoffs_fall_on_multiples_of_the_window_shifted_by_the_offset(
        window_s: int, offset_s: int, after_ns: int, expected_ns: int | None) -> None:
    assert ClearingSettings(window_s=window_s, cutoff_offset_s=offset_s).next_cutoff_ns(after_ns) == expected_ns


@pytest.mark.parametrize(("current", "outcome", "expected"), [
    (P, O.SUCCEEDED, S), (P, O.FAILED, F), (P, O.UNKNOWN, U), (P, O.PENDING, None), (P, O.NOT_SUBMITTED, None),
    (U, O.SUCCEEDED, S), (U, O.FAILED, F), (U, O.UNKNOWN, None), (U, O.PENDING, None),
    (U, O.NOT_SUBMITTED, None),
])
def test_answers_move_instructions_only_forward(current: InstructionState, outcome: ChannelOutcome,
                                                expected: InstructionState | None) -> None:
    assert next_state(current, ChannelAnswer(outcome)) is expected


async def test_the_scripted_executor_answers_in_turn_and_keeps_final_answers_like_a_deduplicating_rail() -> None:
    rail = ScriptedExecutor(answers(O.UNKNOWN, O.FAILED, O.SUCCEEDED))
    order = SettlementOrder("W1/0", "W1", "a", "b", 5, "CNY", 1)
    got = [(await rail.send(order)).outcome for _ in range(4)]
    assert got == [O.UNKNOWN, O.FAILED, O.FAILED, O.FAILED] and rail.sent("W1/0") == 4


def test_the_store_writes_only_what_changed_in_a_window() -> None:
    store = ClearingStore(db=None)
    w = SettlementWindow("W000001", NetDebitCaps(default_minor=10), CapPolicy.QUEUE)
    w.record(Obligation("1", "a", "b", 10, "CNY"))
    first = store.changes([w], now_ns=7)
    assert [sql for sql, _ in first] == [UPSERT_WINDOW, UPSERT_OBLIGATION]
    assert first[1][1] == ("1", "a", "b", 10, "CNY", "W000001", 0, 7)
    assert store.changes([w], now_ns=8) == [], "nothing changed, nothing written"
    w.record(Obligation("2", "a", "c", 5, "CNY"))  # queued: a is at its cap
    assert [(sql, params) for sql, params in store.changes([w], 9)] == [
        (UPSERT_OBLIGATION, ("2", "a", "c", 5, "CNY", "W000001", -1, 9)), (INSERT_QUEUED, ("W000001", "2", 1))]
    w.record(Obligation("3", "b", "a", 5, "CNY"))  # releases 2
    assert [(sql, params[0], params[6] if sql == UPSERT_OBLIGATION else None)
            for sql, params in store.changes([w], 10)] == [
        (UPSERT_OBLIGATION, "3", 1), (UPSERT_OBLIGATION, "2", 2), (DELETE_QUEUED, "W000001", None)]
    w.close()
    w.begin_settlement()
    sqls = [sql for sql, _ in store.changes([w], 11)]
    assert sqls == [UPSERT_WINDOW] + [UPSERT_INSTRUCTION] * len(w.instructions)
    w.report(w.instructions[0].instruction_id, U)
    assert [sql for sql, _ in store.changes([w], 12)] == [UPSERT_INSTRUCTION]


def test_page_tokens_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_page_token(encode_page_token(12, 3)) == (12, 3)
    with pytest.raises(InvalidRequest):
        decode_page_token("not-a-token")
