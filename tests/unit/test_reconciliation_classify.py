"""Classification, one case per line: our instruction (or none), the channel's lines, the
expected classes and actions. And the engine's passes: by instruction id, by reference, by
lookup among other days, EXPECTED against MISSING_AT_CHANNEL around the SLA."""

from __future__ import annotations

import pytest

from dualflow.adapters.contract import Outcome, StatementLine
from dualflow.reconciliation.engine import Tally, reconcile
from dualflow.reconciliation.model import Action, Class, Instruction, Line, Policy, Result, classify

H = 3600 * 10**9
CUTOFF = 100 * H
NOW = CUTOFF + 2 * H
POLICY = Policy(cutoff_ns=CUTOFF, now_ns=NOW, sla_ns=24 * H, fee_for=lambda kind, ccy, amount: amount // 100)


def ins(status: str, amount: int = 1_000, currency: str = "CNY", kind: str = "pay", ref: str = "R1",
        created: int = CUTOFF - 5 * H, window: int = 0, iid: str = "pay_a-1") -> Instruction:
    return Instruction(iid, kind, iid[:-2], "card", ref, amount, currency, status, created, window)


def line(status: str = "SUCCEEDED", amount: int = 1_000, currency: str = "CNY", kind: str = "pay", fee: int = 10,
         ref: str = "R1", position: int = 1, iid: str = "pay_a-1") -> Line:
    return Line(iid, ref, kind, amount, currency, status, fee, position)


def got(results: list[Result]) -> list[tuple[str, str]]:
    return [(r.cls.value, r.action.value) for r in results]


# ours | lines | expected (class, action) per result, the instruction's result first
CASES = [
    ("settled, agreed", ins("SUCCEEDED"), [line()], [("MATCHED", "NONE")]),
    ("refused, agreed", ins("FAILED"), [line("FAILED", fee=0)], [("MATCHED", "NONE")]),
    ("failed here, nothing there", ins("FAILED"), [], [("MATCHED", "NONE")]),
    ("canceled here, nothing there", ins("CANCELED"), [], [("MATCHED", "NONE")]),
    ("unknown, channel settled", ins("UNKNOWN"), [line()], [("STATUS_MISMATCH", "MARK_SUCCEEDED")]),
    ("processing, channel refused", ins("PROCESSING"), [line("FAILED", fee=0)], [("STATUS_MISMATCH", "MARK_FAILED")]),
    ("failed here, channel settled", ins("FAILED"), [line()], [("STATUS_MISMATCH", "OPEN_DISCREPANCY")]),
    ("settled here, channel refused", ins("SUCCEEDED"), [line("FAILED", fee=0)],
     [("STATUS_MISMATCH", "OPEN_DISCREPANCY")]),
    ("amount differs", ins("SUCCEEDED"), [line(amount=1_001)], [("AMOUNT_MISMATCH", "OPEN_DISCREPANCY")]),
    ("amount differs on an unknown one: a person", ins("UNKNOWN"), [line(amount=999)],
     [("AMOUNT_MISMATCH", "OPEN_DISCREPANCY")]),
    ("currency differs", ins("SUCCEEDED"), [line(currency="USD")], [("CURRENCY_MISMATCH", "OPEN_DISCREPANCY")]),
    ("fee differs from the model", ins("SUCCEEDED"), [line(fee=11)], [("FEE_MISMATCH", "OPEN_DISCREPANCY")]),
    ("a fee on a refused one", ins("FAILED"), [line("FAILED", fee=3)], [("FEE_MISMATCH", "OPEN_DISCREPANCY")]),
    ("two lines: the agreeing one matches, the other is a duplicate", ins("SUCCEEDED"),
     [line(amount=2_000, ref="R2", position=1), line(position=2)],
     [("MATCHED", "NONE"), ("DUPLICATE", "OPEN_DISCREPANCY")]),
    ("the same line twice", ins("SUCCEEDED"), [line(position=1), line(position=2)],
     [("MATCHED", "NONE"), ("DUPLICATE", "OPEN_DISCREPANCY")]),
    ("a refused duplicate needs nobody", ins("FAILED"), [line("FAILED", fee=0), line("FAILED", fee=0, position=2)],
     [("MATCHED", "NONE"), ("DUPLICATE", "NONE")]),
    ("card payment reversed, ours failed", ins("FAILED"), [line(), line(kind="reverse", fee=0, position=2)],
     [("MATCHED", "NONE")]),
    ("card payment reversed, ours settled", ins("SUCCEEDED"), [line(), line(kind="reverse", fee=0, position=2)],
     [("STATUS_MISMATCH", "OPEN_DISCREPANCY")]),
    ("card payment reversed, ours unknown", ins("UNKNOWN"), [line(), line(kind="reverse", fee=0, position=2)],
     [("STATUS_MISMATCH", "MARK_FAILED")]),
    ("a refund line under a payment's id", ins("SUCCEEDED"), [line(), line(kind="refund", amount=5, position=2)],
     [("MATCHED", "NONE"), ("MISSING_INTERNALLY", "OPEN_DISCREPANCY")]),
    ("a line nobody of ours has", None, [line()], [("MISSING_INTERNALLY", "OPEN_DISCREPANCY")]),
    ("a refused line nobody has", None, [line("FAILED", fee=0)], [("MISSING_INTERNALLY", "NONE")]),
    ("twice a line nobody has", None, [line(), line(position=2)],
     [("MISSING_INTERNALLY", "OPEN_DISCREPANCY"), ("DUPLICATE", "OPEN_DISCREPANCY")]),
    ("refund settled both sides", ins("SUCCEEDED", kind="refund", iid="rfd_a-1"),
     [line(kind="refund", iid="rfd_a-1", fee=0)], [("FEE_MISMATCH", "OPEN_DISCREPANCY")]),
]


@pytest.mark.parametrize("name, ours, lines, expected", CASES, ids=[c[0] for c in CASES])
def test_classify(name: str, ours: Instruction | None, lines: list[Line], expected: list[tuple[str, str]]) -> None:
    results = classify(ours, lines, POLICY)
    assert got(results) == expected
    # Every line and the instruction in exactly one result.
    assert sorted(x.position for r in results for x in r.lines) == sorted(x.position for x in lines)
    assert sum(r.instruction is not None for r in results) == (ours is not None)
    assert got(classify(ours, list(reversed(lines)), POLICY)) == expected, "the statement's order does not matter"


@pytest.mark.parametrize("status, now, expected", [
    ("SUCCEEDED", CUTOFF + 24 * H - 1, ("EXPECTED", "WAIT")),
    ("SUCCEEDED", CUTOFF + 24 * H, ("MISSING_AT_CHANNEL", "OPEN_DISCREPANCY")),
    ("UNKNOWN", CUTOFF + 24 * H - 1, ("EXPECTED", "WAIT")),
    ("UNKNOWN", CUTOFF + 24 * H, ("MISSING_AT_CHANNEL", "MARK_FAILED")),
    ("PROCESSING", CUTOFF + 30 * H, ("MISSING_AT_CHANNEL", "MARK_FAILED")),
])
def test_expected_until_the_sla_then_missing(status: str, now: int, expected: tuple[str, str]) -> None:
    policy = Policy(cutoff_ns=CUTOFF, now_ns=now, sla_ns=24 * H)
    assert got(classify(ins(status), [], policy)) == [expected]


def test_the_sla_runs_from_the_later_of_cutoff_creation_and_polling_window() -> None:
    late = CUTOFF + 24 * H + 1  # past the cut-off's SLA
    policy = Policy(cutoff_ns=CUTOFF, now_ns=late, sla_ns=24 * H)
    assert got(classify(ins("UNKNOWN"), [], policy)) == [("MISSING_AT_CHANNEL", "MARK_FAILED")]
    # Created after the cut-off: it belongs on the next statement.
    assert got(classify(ins("UNKNOWN", created=CUTOFF + 1 * H), [], policy)) == [("EXPECTED", "WAIT")]
    # Still inside its polling window (which ends after the cut-off): the answer may come.
    assert got(classify(ins("UNKNOWN", window=CUTOFF + 2 * H), [], policy)) == [("EXPECTED", "WAIT")]


def sl(iid: str, amount: int, status: str = "SUCCEEDED", ref: str = "", kind: str = "pay", fee: int = 0) -> StatementLine:
    return StatementLine("2024-01-02", iid, ref, kind, amount, "CNY", Outcome[status], fee)


async def run(lines: list[StatementLine], ours: list[Instruction], lookup: dict[str, Instruction] | None = None,
              emit_matched: bool = True) -> tuple[list[Result], Tally]:
    async def find(ids: object) -> dict[str, Instruction]:
        return {i: lookup[i] for i in ids if i in lookup}  # type: ignore[union-attr, attr-defined]

    tally = Tally()
    policy = Policy(cutoff_ns=CUTOFF, now_ns=NOW, sla_ns=24 * H)
    results = [r async for r in reconcile(lines, ours, policy, lookup=find if lookup else None, tally=tally,
                                          emit_matched=emit_matched)]
    return results, tally


async def test_engine_pairs_by_id_then_reference_then_lookup() -> None:
    ours = [ins("SUCCEEDED", iid="pay_a-1", ref="RA"), ins("UNKNOWN", iid="pay_b-1", ref="RB"),
            ins("SUCCEEDED", iid="pay_c-1", ref="RC"), ins("UNKNOWN", iid="pay_d-1", ref="", created=CUTOFF - 30 * H)]
    other_day = ins("SUCCEEDED", iid="pay_old-1", ref="RO", created=CUTOFF - 30 * H)
    lines = [sl("pay_a-1", 1_000, ref="RA"),
             sl("", 1_000, ref="RB"),  # no instruction id on the line: paired by the channel's reference
             sl("pay_old-1", 1_000, ref="RO"),  # yesterday's payment settled today
             sl("pay_zzz-1", 7, ref="RZ")]  # nobody's
    results, tally = await run(lines, ours, lookup={"pay_old-1": other_day})
    by_object = {r.instruction.object_id if r.instruction else r.lines[0].channel_reference: (r.cls, r.action)
                 for r in results}
    assert by_object == {
        "pay_a": (Class.MATCHED, Action.NONE),
        "pay_b": (Class.STATUS_MISMATCH, Action.MARK_SUCCEEDED),
        "pay_c": (Class.EXPECTED, Action.WAIT),
        "pay_d": (Class.EXPECTED, Action.WAIT),  # the SLA runs from the cut-off
        "pay_old": (Class.MATCHED, Action.NONE),
        "RZ": (Class.MISSING_INTERNALLY, Action.OPEN_DISCREPANCY),
    }
    assert tally.lines == {Class.MATCHED: 2, Class.STATUS_MISMATCH: 1, Class.MISSING_INTERNALLY: 1}
    assert tally.instructions == {Class.MATCHED: 2, Class.STATUS_MISMATCH: 1, Class.EXPECTED: 2}


async def test_counted_matches_are_not_yielded_but_tallied() -> None:
    ours = [ins("SUCCEEDED", iid=f"pay_{n}-1", ref=f"R{n}") for n in range(50)]
    lines = [sl(f"pay_{n}-1", 1_000, ref=f"R{n}") for n in range(50)] + [sl("pay_x-1", 5)]
    results, tally = await run(lines, ours, emit_matched=False)
    assert [r.cls for r in results] == [Class.MISSING_INTERNALLY]
    assert tally.lines == {Class.MATCHED: 50, Class.MISSING_INTERNALLY: 1}
    assert tally.instructions == {Class.MATCHED: 50}
    assert tally.amounts[(Class.MATCHED, "CNY")] == 50_000


async def test_an_oversized_partition_is_split_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from dualflow.reconciliation import engine

    monkeypatch.setattr(engine, "PARTITION_ITEMS_MAX", 4)
    monkeypatch.setattr(engine, "FLUSH_ITEMS", 7)
    ours = [ins("SUCCEEDED", iid=f"pay_{n}-1", ref=f"R{n}") for n in range(3_000)]
    lines = [sl(f"pay_{n}-1", 1_000, ref=f"R{n}") for n in range(1, 3_001)]
    results, tally = await run(lines, ours)
    assert tally.lines == {Class.MATCHED: 2_999, Class.MISSING_INTERNALLY: 1}
    assert tally.instructions == {Class.MATCHED: 2_999, Class.EXPECTED: 1}
    assert len(results) == 3_001
