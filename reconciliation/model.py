"""What reconciliation says about a line or an instruction, and the pure rule that says it.

One channel, one business day: the channel's statement lines against our instructions for it.
Every line and every instruction ends in exactly one `Result`: a class (what is true), a
proposed action (what should happen), and the items it covers. A result covers at most one
instruction and the lines that belong with it (a card payment and the reversal that undid it
are one result); an extra line for the same instruction is a result of its own (DUPLICATE).

`classify` is the whole rule, a pure function of one instruction (or none), the lines that
share its instruction id (or channel reference), and the policy. Checks run in a fixed order and
the first that fails decides the class (TigerBeetle's style): currency, amount, status, fee. The
detail string names every difference found, so a fee that also differs on an auto-resolved
status is still visible, and a re-run after the resolution reports it as FEE_MISMATCH.

Proposed actions are data; nothing here changes a payment:
- MARK_SUCCEEDED / MARK_FAILED: auto-resolvable, the statement proves it (an UNKNOWN or
  PROCESSING payment or refund the channel settled or refused; one the channel never saw, past
  its SLA). The payment service applies them through its state machine (see `Resolver`).
- OPEN_DISCREPANCY: a person must look (we marked it FAILED and the channel settled it, we
  marked it SUCCEEDED and the channel has nothing or refused it, amounts, currencies, fees,
  duplicates and lines we know nothing of that moved money).
- WAIT: EXPECTED, the answer may still come. NONE: nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple


class Class(str, Enum):
    MATCHED = "MATCHED"
    MISSING_AT_CHANNEL = "MISSING_AT_CHANNEL"  # we think it happened, they have nothing
    MISSING_INTERNALLY = "MISSING_INTERNALLY"  # they have it, we do not
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    STATUS_MISMATCH = "STATUS_MISMATCH"
    FEE_MISMATCH = "FEE_MISMATCH"
    DUPLICATE = "DUPLICATE"  # a second line for the same instruction
    EXPECTED = "EXPECTED"  # not on the statement yet, and its answer may still come


class Action(str, Enum):
    NONE = "NONE"
    WAIT = "WAIT"
    MARK_SUCCEEDED = "MARK_SUCCEEDED"  # auto: an open payment/refund the channel settled
    MARK_FAILED = "MARK_FAILED"  # auto: an open payment/refund the channel refused or never saw
    OPEN_DISCREPANCY = "OPEN_DISCREPANCY"  # a person decides

    @property
    def automatic(self) -> bool:
        return self in (Action.MARK_SUCCEEDED, Action.MARK_FAILED)


# Our statuses (payments and refunds share the names), grouped by what they claim about money.
MOVED = frozenset({"SUCCEEDED"})
NOT_MOVED = frozenset({"FAILED", "CANCELED", "CREATED"})  # CREATED: never sent
OPEN = frozenset({"PROCESSING", "UNKNOWN"})  # sent, no final answer: the statement may settle it


class Instruction(NamedTuple):
    """One of our channel instructions: a payment's current attempt or a refund."""

    instruction_id: str  # f"{payment_id}-{attempt}" or f"{refund_id}-1"
    kind: str  # "pay" | "refund"
    object_id: str  # payment_id or refund_id
    channel: str
    channel_reference: str  # the channel's id, when an answer told us ("" otherwise)
    amount: int
    currency: str
    status: str  # our status name: CREATED, PROCESSING, SUCCEEDED, FAILED, UNKNOWN, CANCELED
    created_at_ns: int
    window_ends_ns: int = 0  # end of its polling window (0: not being polled)


class Line(NamedTuple):
    """One statement line as the engine keeps it (a StatementLine plus where it came)."""

    instruction_id: str
    channel_reference: str
    kind: str  # "pay" | "refund" | "reverse" | "payout"
    amount: int
    currency: str
    status: str  # "SUCCEEDED" | "FAILED"
    fee: int
    position: int  # 1-based order in which the statement delivered it


class Result(NamedTuple):
    cls: Class
    action: Action
    instruction: Instruction | None
    lines: tuple[Line, ...]
    detail: str = ""


FeeFor = Callable[[str, str, int], "int | None"]  # (kind, currency, amount) -> expected fee, None: not checked


@dataclass(frozen=True, slots=True)
class Policy:
    """What a run needs besides the data. Times are UTC nanoseconds.

    `cutoff_ns`: the statement's cut-off (by default the end of the business day); an
    instruction created later belongs on a later statement. `sla_ns`: how long after the later
    of the cut-off, its creation and the end of its polling window an instruction may still
    show up before its absence counts (EXPECTED until then, MISSING_AT_CHANNEL after).
    `fee_for`: our fee model, e.g. the adapter's FeeSchedule.fee_for for settled pays."""

    cutoff_ns: int
    now_ns: int
    sla_ns: int = 24 * 3600 * 10**9
    fee_for: FeeFor | None = None

    def deadline_ns(self, ins: Instruction) -> int:
        return max(self.cutoff_ns, ins.created_at_ns, ins.window_ends_ns) + self.sla_ns


def canonical(line: Line) -> tuple[object, ...]:
    """An order of lines that does not depend on the order the statement gave them in."""
    return (line.kind, line.status != "SUCCEEDED", line.amount, line.currency, line.channel_reference, line.fee,
            line.instruction_id, line.position)


def classify(ins: Instruction | None, lines: Sequence[Line], policy: Policy) -> list[Result]:
    """Every result for one instruction (or none) and the lines that belong with it."""
    if not lines:
        assert ins is not None
        return [unanswered(ins, policy)]
    ordered = sorted(lines, key=canonical)
    if ins is None:
        return orphans(ordered)
    mains = [x for x in ordered if x.kind == ins.kind]
    reverses = [x for x in ordered if x.kind == "reverse" and ins.kind == "pay"]
    others = [x for x in ordered if x.kind != ins.kind and not (x.kind == "reverse" and ins.kind == "pay")]
    results = orphans(others) if others else []
    if not mains and not reverses:
        return [unanswered(ins, policy), *results]
    primary: Line | None = None
    if mains:
        # The line that agrees with us, if one does; else the first in canonical order.
        primary = next((x for x in mains if (x.amount, x.currency) == (ins.amount, ins.currency)), mains[0])
        results += [duplicate(x) for x in mains if x is not primary]
    reversal: Line | None = None
    if reverses:
        reversal = next((x for x in reverses if x.status == "SUCCEEDED"), reverses[0])
        results += [duplicate(x) for x in reverses if x is not reversal]
    group = tuple(x for x in (primary, reversal) if x is not None)
    results.insert(0, compare(ins, primary, reversal, group, policy))
    return results


def compare(ins: Instruction, primary: Line | None, reversal: Line | None, group: tuple[Line, ...],
            policy: Policy) -> Result:
    """One instruction against the channel's line for it (and a reversal that undid it)."""
    ref = primary if primary is not None else reversal
    assert ref is not None
    reversed_ = reversal is not None and reversal.status == "SUCCEEDED"
    channel_status = "FAILED" if reversed_ or ref is reversal else ref.status
    differences = []
    if ref.currency != ins.currency:
        differences.append((Class.CURRENCY_MISMATCH, f"currency: ours {ins.currency}, channel {ref.currency}"))
    if ref.amount != ins.amount:
        differences.append((Class.AMOUNT_MISMATCH, f"amount: ours {ins.amount}, channel {ref.amount}"))
    agree = (ins.status in MOVED and channel_status == "SUCCEEDED") or \
        (ins.status in NOT_MOVED and channel_status == "FAILED")
    if not agree:
        how = "reversed" if reversed_ else channel_status
        differences.append((Class.STATUS_MISMATCH, f"status: ours {ins.status}, channel {how}"))
    if primary is not None and not reversed_:
        expected = 0 if channel_status == "FAILED" else \
            (policy.fee_for(primary.kind, primary.currency, primary.amount) if policy.fee_for else None)
        if expected is not None and primary.fee != expected:
            differences.append((Class.FEE_MISMATCH, f"fee: expected {expected}, channel {primary.fee}"))
    detail = "; ".join(text for _, text in differences)
    if not differences:
        return Result(Class.MATCHED, Action.NONE, ins, group, "reversed on both sides" if reversed_ else "")
    first = differences[0][0]
    if first is Class.STATUS_MISMATCH and ins.status in OPEN:
        action = Action.MARK_SUCCEEDED if channel_status == "SUCCEEDED" else Action.MARK_FAILED
    else:
        action = Action.OPEN_DISCREPANCY
    return Result(first, action, ins, group, detail)


def unanswered(ins: Instruction, policy: Policy) -> Result:
    """An instruction with no line for it on this statement."""
    if ins.status in NOT_MOVED:
        return Result(Class.MATCHED, Action.NONE, ins, (), "not on the statement; nothing moved on either side")
    deadline = policy.deadline_ns(ins)
    if policy.now_ns < deadline:
        return Result(Class.EXPECTED, Action.WAIT, ins, (), f"may still come until {deadline} ns")
    action = Action.MARK_FAILED if ins.status in OPEN else Action.OPEN_DISCREPANCY
    return Result(Class.MISSING_AT_CHANNEL, action, ins, (), f"ours {ins.status}; not on the statement, SLA passed")


def orphans(lines: Sequence[Line]) -> list[Result]:
    """Lines no instruction of ours claims, in canonical order: the first of each kind is
    MISSING_INTERNALLY, any further one of that kind a DUPLICATE of it."""
    out = []
    seen: set[str] = set()
    for x in lines:
        if x.kind in seen:
            out.append(duplicate(x))
        else:
            seen.add(x.kind)
            out.append(Result(Class.MISSING_INTERNALLY, Action.OPEN_DISCREPANCY if x.status == "SUCCEEDED"
                              else Action.NONE, None, (x,), f"channel {x.status}; we have no such instruction"))
    return out


def duplicate(line: Line) -> Result:
    """A further line for an instruction (or an unknown id) that already has its result: the
    instruction is in that result, never in this one."""
    return Result(Class.DUPLICATE, Action.OPEN_DISCREPANCY if line.status == "SUCCEEDED" else Action.NONE, None,
                  (line,), f"another {line.kind} line for {line.instruction_id or line.channel_reference}")
