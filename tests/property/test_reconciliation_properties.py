"""Properties of the matching engine over generated statements and instructions: every line and
every instruction is classified exactly once; shuffling the statement changes nothing; counting
plain matches instead of yielding them changes no count; tiny partitions (split again and again)
classify the same as the defaults."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import Outcome, StatementLine
from dualflow.reconciliation import engine
from dualflow.reconciliation.engine import Tally, reconcile
from dualflow.reconciliation.model import Instruction, Policy

H = 3600 * 10**9
POLICY = Policy(cutoff_ns=100 * H, now_ns=110 * H, sla_ns=24 * H,
                fee_for=lambda kind, currency, amount: amount // 100 if kind == "pay" else None)

ids = st.integers(0, 30).map(lambda n: f"pay_{n:03d}-1")
refs = st.sampled_from(["", "R1", "R2", "R3", "R4"])
amounts = st.sampled_from([100, 200, 1_000])
statuses_ours = st.sampled_from(["CREATED", "PROCESSING", "SUCCEEDED", "FAILED", "UNKNOWN", "CANCELED"])
instructions = st.lists(st.builds(
    lambda iid, kind, ref, amount, currency, status, created, window: Instruction(
        iid if kind == "pay" else "rfd" + iid[3:], kind, iid[:-2], "card", ref, amount, currency, status, created,
        window),
    ids, st.sampled_from(["pay", "pay", "refund"]), refs, amounts, st.sampled_from(["CNY", "USD"]), statuses_ours,
    st.sampled_from([90 * H, 105 * H]), st.sampled_from([0, 95 * H, 120 * H])),
    max_size=25, unique_by=lambda i: i.instruction_id)
lines = st.lists(st.builds(
    lambda iid, kind, ref, amount, currency, status, fee: StatementLine(
        "2024-01-02", iid if kind != "refund" else "rfd" + iid[3:], ref, kind, amount, currency, Outcome[status], fee),
    st.one_of(ids, st.just("")), st.sampled_from(["pay", "pay", "refund", "reverse"]), refs, amounts,
    st.sampled_from(["CNY", "CNY", "USD"]), st.sampled_from(["SUCCEEDED", "FAILED"]), st.sampled_from([0, 1, 2, 10])),
    max_size=30)


def run(statement: list[StatementLine], ours: list[Instruction], emit_matched: bool = True) -> tuple[list[Any], Tally]:
    engine.PARTITIONS = 8  # fewer, for speed; what a partition holds does not change the outcome

    async def lookup(wanted: Any) -> dict[str, Instruction]:
        return {}

    async def go() -> tuple[list[Any], Tally]:
        tally = Tally()
        results = [r async for r in reconcile(statement, ours, POLICY, lookup=lookup, tally=tally,
                                              emit_matched=emit_matched)]
        return results, tally

    return asyncio.run(go())


def content(results: list[Any]) -> Counter[Any]:
    """Results without positions: what shuffling must not change."""
    return Counter((r.cls, r.action, r.instruction, tuple(sorted(x[:-1] for x in r.lines))) for r in results)


@settings(max_examples=80, deadline=None)
@given(statement=lines, ours=instructions, seed=st.integers(0, 2**32))
def test_each_line_and_instruction_exactly_once_and_order_free(statement: list[StatementLine],
                                                                ours: list[Instruction], seed: int) -> None:
    results, tally = run(statement, ours)
    positions = [x.position for r in results for x in r.lines]
    assert sorted(positions) == list(range(1, len(statement) + 1)), "every line exactly once"
    assert sorted(r.instruction for r in results if r.instruction is not None) == sorted(ours), \
        "every instruction exactly once"
    assert sum(tally.lines.values()) == len(statement) and sum(tally.instructions.values()) == len(ours)
    for r in results:  # an instruction's lines are its own: by its id, or (a group of them) by its reference
        if r.instruction is not None and r.lines:
            ins = r.instruction
            assert any(x.instruction_id == ins.instruction_id or
                       (x.channel_reference and x.channel_reference == ins.channel_reference) for x in r.lines), r
    shuffled = list(statement)
    random.Random(seed).shuffle(shuffled)
    again, _ = run(shuffled, list(reversed(ours)))
    assert content(again) == content(results), "shuffling the statement (or our side) changes nothing"
    counted, tally_counted = run(statement, ours, emit_matched=False)
    assert (tally_counted.lines, tally_counted.instructions, tally_counted.amounts) == \
        (tally.lines, tally.instructions, tally.amounts)


@settings(max_examples=30, deadline=None)
@given(statement=lines, ours=instructions)
def test_tiny_partitions_classify_the_same(statement: list[StatementLine], ours: list[Instruction]) -> None:
    results, _ = run(statement, ours)
    saved = engine.PARTITION_ITEMS_MAX, engine.FLUSH_ITEMS
    engine.PARTITION_ITEMS_MAX, engine.FLUSH_ITEMS = 1, 3
    try:
        split, _ = run(statement, ours)
    finally:
        engine.PARTITION_ITEMS_MAX, engine.FLUSH_ITEMS = saved
    assert content(split) == content(results)
