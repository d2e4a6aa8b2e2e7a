"""Settlement windows: the life of one clearing cycle, from the first obligation to the last transfer.

A window is `OPEN` while obligations are recorded into it (through its
`PositionBook`, which enforces net debit caps), `CLOSED` at cut-off (the
obligations are netted and the settlement instructions fixed), `SETTLING` while
the instructions travel the fund flow, and finally `SETTLED` (every
instruction succeeded, possibly after retries) or `PARTIALLY_SETTLED` (some
failed and were carried into a later window as new obligations; their ids are
listed in `failed_instruction_ids`). Nothing leaves a final state, and every
illegal move raises `IllegalTransition`.

Each instruction has its own state: `PENDING -> SUCCEEDED | FAILED | UNKNOWN`,
`UNKNOWN -> SUCCEEDED | FAILED` (an unknown answer is resolved by polling, a
callback or the rail's statement, never guessed). Reporting the state an
instruction already has is a no-op (answers repeat); any other move out of
SUCCEEDED or FAILED raises. A FAILED instruction is never lost: before the
window finishes it is either retried (`retry`: a new instruction with the same
payer, payee and amount, `retry_of` pointing back) or, at `finish`, carried into
the next window as an obligation of the payer to the payee (`carried_as`). A
window with a PENDING or UNKNOWN instruction cannot finish.

Persistence: everything here is a dataclass of plain fields (strings, ints,
str-valued enums, lists of those); the live `PositionBook` of an open window is
a cache rebuilt from `obligations` and `queued`. Instruction ids are
`<window_id>/<index>`, and netting is a deterministic function of the admitted
obligations, so re-driving a window after a crash produces the same ids: the
transfer rail, which deduplicates by id, never pays twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from fractions import Fraction

from .caps import NO_CAPS, Admission, CapPolicy, NetDebitCaps, PoolPosition, PositionBook, Submission
from .errors import IllegalTransition, SettlementIncomplete, UnknownInstruction
from .netting import NettingOptions, NettingResult, Obligation, net


class WindowState(str, Enum):
    OPEN = "open"
    CLOSED = "closed"
    SETTLING = "settling"
    SETTLED = "settled"
    PARTIALLY_SETTLED = "partially_settled"

    @property
    def final(self) -> bool:
        return self in (WindowState.SETTLED, WindowState.PARTIALLY_SETTLED)


class InstructionState(str, Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def final(self) -> bool:
        return self in (InstructionState.SUCCEEDED, InstructionState.FAILED)


WINDOW_MOVES: dict[WindowState, frozenset[WindowState]] = {
    WindowState.OPEN: frozenset({WindowState.CLOSED}),
    WindowState.CLOSED: frozenset({WindowState.SETTLING}),
    WindowState.SETTLING: frozenset({WindowState.SETTLED, WindowState.PARTIALLY_SETTLED}),
    WindowState.SETTLED: frozenset(),
    WindowState.PARTIALLY_SETTLED: frozenset(),
}

INSTRUCTION_MOVES: dict[InstructionState, frozenset[InstructionState]] = {
    InstructionState.PENDING: frozenset({InstructionState.SUCCEEDED, InstructionState.FAILED,
                                         InstructionState.UNKNOWN}),
    InstructionState.UNKNOWN: frozenset({InstructionState.SUCCEEDED, InstructionState.FAILED}),
    InstructionState.SUCCEEDED: frozenset(),
    InstructionState.FAILED: frozenset(),
}


def instruction_id_for(window_id: str, index: int) -> str:
    return f"{window_id}/{index}"


def carried_obligation_id(instruction_id: str) -> str:
    """The id of the obligation that carries a failed instruction into a later window."""
    return f"{instruction_id}/carry"


@dataclass(slots=True)
class SettlementInstruction:
    """One transfer of the fund flow: `payer_pool` pays `payee_pool`; `instruction_id` is the
    idempotency key to give the transfer rail."""

    instruction_id: str
    window_id: str
    index: int
    payer_pool: str
    payee_pool: str
    amount_minor: int
    currency: str
    state: InstructionState = InstructionState.PENDING
    reason: str = ""  # the rail's reason for the last answer (a failure's cause)
    reference: str = ""  # the rail's id for the transfer, once it named one (for reconciliation)
    retry_of: str | None = None  # the failed instruction this one repeats
    retried_by: str | None = None  # set on a FAILED one: the instruction repeating it
    carried_as: str | None = None  # set on a FAILED one at finish: the obligation carrying it on
    attempts: int = 0  # sends to the fund flow so far (kept by the settlement driver)
    updated_at_ns: int = 0  # when its state last changed (kept by the service, 0 in pure use)

    @property
    def resolved(self) -> bool:
        """Final, and if failed, retried or carried on (nothing more to do about it)."""
        if self.state is InstructionState.SUCCEEDED:
            return True
        return self.state is InstructionState.FAILED and (self.retried_by is not None or self.carried_as is not None)


@dataclass(slots=True)
class CurrencySummary:
    """A closed window's netting figures for one currency (see netting.CurrencyNetting)."""

    currency: str
    gross_minor: int
    net_minor: int
    obligation_count: int
    pools_nonzero: int
    transfer_count: int
    optimal: bool

    @property
    def efficiency(self) -> Fraction:
        return Fraction(0) if self.gross_minor == 0 else 1 - Fraction(self.net_minor, self.gross_minor)


@dataclass(slots=True)
class SettlementWindow:
    window_id: str
    caps: NetDebitCaps = NO_CAPS
    policy: CapPolicy = CapPolicy.REFUSE
    netting_options: NettingOptions = field(default_factory=NettingOptions)
    state: WindowState = WindowState.OPEN
    obligations: list[Obligation] = field(default_factory=list)  # admitted, in admission order
    queued: list[Obligation] = field(default_factory=list)  # waiting; after close, those handed on
    instructions: list[SettlementInstruction] = field(default_factory=list)  # by index
    summaries: list[CurrencySummary] = field(default_factory=list)  # by currency, set at close
    failed_instruction_ids: list[str] = field(default_factory=list)  # carried on at finish
    # Wall-clock marks kept by the service (clearing/service.py); the state machine never reads them.
    opened_at_ns: int = 0
    closed_at_ns: int = 0
    finished_at_ns: int = 0
    _book: PositionBook | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------ OPEN

    def record(self, obligation: Obligation, *, force: bool = False) -> Submission:
        """Offer an obligation to the open window (caps apply; see caps.PositionBook)."""
        self._require(WindowState.OPEN, "record an obligation")
        submission = self.book.submit(obligation, force=force)
        self._apply(submission, obligation)
        return submission

    def reconfigure(self, caps: NetDebitCaps) -> tuple[Obligation, ...]:
        """New caps for the open window; answers the queued obligations this admits."""
        self._require(WindowState.OPEN, "change caps")
        self.caps = caps
        released = self.book.reconfigure(caps)
        self._apply(Submission(Admission.EXISTS, released), None)
        return released

    @property
    def book(self) -> PositionBook:
        """The live positions of the open window (rebuilt from the persisted fields if needed)."""
        if self._book is None:
            self._book = PositionBook.restore(self.caps, self.policy, self.obligations, self.queued)
        return self._book

    def positions(self) -> list[PoolPosition]:
        """Each pool's admitted position, by (currency, pool)."""
        return self.book.positions() if self.state is WindowState.OPEN else \
            PositionBook.restore(self.caps, self.policy, self.obligations, ()).positions()

    def _apply(self, submission: Submission, obligation: Obligation | None) -> None:
        self.obligations.extend(submission.admitted)
        released = submission.released
        if released:
            ids = {o.obligation_id for o in released}
            self.queued = [o for o in self.queued if o.obligation_id not in ids]
        if submission.admission is Admission.QUEUED:
            assert obligation is not None
            self.queued.append(obligation)

    # ------------------------------------------------------------ OPEN -> CLOSED

    def close(self) -> tuple[NettingResult, list[Obligation]]:
        """Cut-off: net the admitted obligations and fix the settlement instructions. Answers the
        netting and the obligations still queued, which the caller offers to the next window
        (they stay listed in `queued` as the record of what was handed on)."""
        self._move(WindowState.CLOSED)
        handed_on = self.book.take_queued()
        assert [o.obligation_id for o in handed_on] == [o.obligation_id for o in self.queued]
        self._book = None
        result = net(self.obligations, self.netting_options)
        self.instructions = [
            SettlementInstruction(instruction_id_for(self.window_id, i), self.window_id, i,
                                  t.payer_pool, t.payee_pool, t.amount_minor, t.currency)
            for i, t in enumerate(result.transfers)
        ]
        self.summaries = [
            CurrencySummary(c.currency, c.gross_minor, c.net_minor, c.obligation_count, c.pools_nonzero,
                            len(c.transfers), c.optimal)
            for c in result.by_currency.values()
        ]
        return result, handed_on

    # ------------------------------------------------------------ CLOSED -> SETTLING

    def begin_settlement(self) -> list[SettlementInstruction]:
        """The instructions to hand to the fund flow (all PENDING)."""
        self._move(WindowState.SETTLING)
        return list(self.instructions)

    def instruction(self, instruction_id: str) -> SettlementInstruction:
        _, _, index = instruction_id.rpartition("/")
        if index.isdigit() and int(index) < len(self.instructions):
            found = self.instructions[int(index)]
            if found.instruction_id == instruction_id:
                return found
        raise UnknownInstruction(f"no instruction {instruction_id} in window {self.window_id}",
                                 metadata={"instruction_id": instruction_id, "window_id": self.window_id})

    def report(self, instruction_id: str, state: InstructionState, reason: str = "") -> bool:
        """The fund flow's answer for an instruction. True if it changed the instruction; the
        state it already has is a no-op (False) in any window state."""
        inst = self.instruction(instruction_id)
        if inst.state is state:
            return False
        self._require(WindowState.SETTLING, f"take answer {state.value} for {instruction_id}")
        if state not in INSTRUCTION_MOVES[inst.state]:
            raise IllegalTransition(f"instruction {instruction_id}", inst.state.value, state.value)
        inst.state = state
        inst.reason = reason
        return True

    def retry(self, instruction_id: str) -> SettlementInstruction:
        """A new PENDING instruction repeating a FAILED one (the same one again if it was already
        retried: re-driving is idempotent)."""
        inst = self.instruction(instruction_id)
        if inst.retried_by is not None:
            return self.instruction(inst.retried_by)
        self._require(WindowState.SETTLING, f"retry {instruction_id}")
        if inst.state is not InstructionState.FAILED:
            raise IllegalTransition(f"instruction {instruction_id}", inst.state.value, "retried")
        again = SettlementInstruction(instruction_id_for(self.window_id, len(self.instructions)), self.window_id,
                                      len(self.instructions), inst.payer_pool, inst.payee_pool,
                                      inst.amount_minor, inst.currency, retry_of=inst.instruction_id)
        inst.retried_by = again.instruction_id
        self.instructions.append(again)
        return again

    # ------------------------------------------------------------ SETTLING -> final

    def finish(self) -> list[Obligation]:
        """End the settlement: SETTLED if nothing failed for good, else PARTIALLY_SETTLED. Answers
        the obligations carrying each failed, unretried instruction into the next window (the
        payer still owes the payee); the caller records them there with `force=True`."""
        self._require(WindowState.SETTLING, "finish")
        waiting = [i.instruction_id for i in self.instructions if not i.state.final]
        if waiting:
            raise SettlementIncomplete(
                f"window {self.window_id} has {len(waiting)} instruction(s) pending or unknown: "
                + ", ".join(waiting[:5]), metadata={"window_id": self.window_id, "waiting": str(len(waiting))})
        carried = []
        for inst in self.instructions:
            if inst.state is InstructionState.FAILED and inst.retried_by is None:
                obligation = Obligation(carried_obligation_id(inst.instruction_id), inst.payer_pool,
                                        inst.payee_pool, inst.amount_minor, inst.currency)
                inst.carried_as = obligation.obligation_id
                self.failed_instruction_ids.append(inst.instruction_id)
                carried.append(obligation)
        self._move(WindowState.PARTIALLY_SETTLED if carried else WindowState.SETTLED)
        assert all(i.resolved for i in self.instructions)
        return carried

    # ------------------------------------------------------------ inside

    def _require(self, state: WindowState, action: str) -> None:
        if self.state is not state:
            raise IllegalTransition(f"window {self.window_id}", self.state.value, action)

    def _move(self, to: WindowState) -> None:
        if to not in WINDOW_MOVES[self.state]:
            raise IllegalTransition(f"window {self.window_id}", self.state.value, to.value)
        self.state = to
