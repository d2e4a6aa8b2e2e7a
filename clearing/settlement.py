"""Settlement execution: the interface the payment gateway implements, and how answers apply.

A closed window's instructions are fund flow: each one is a payout from the
payer pool's bank account to the payee pool's over the bank-transfer rail, sent
by the payment gateway's external path with all the care of any external
payment. The clearing service does not talk to banks; it hands each
instruction to a `SettlementExecutor` and applies the answer through the
window's state machine (window.py), durably, with the ledger posting of a
confirmed transfer between the two pool accounts in the same commit.

The contract, for whoever implements `SettlementExecutor.send`:

* **Idempotent by `instruction_id`.** The driver sends the same instruction
  again whenever it has no final answer for it: after PENDING or UNKNOWN (that
  re-send is how it polls), after NOT_SUBMITTED, after an exception, and after a
  crash between a send and the recording of its answer. A second send of a known
  id must never move money twice: it answers what became of the first (as
  CreatePayment does for a repeated request id), and the rail deduplicates on
  the id too.
* **Answers like any channel** (core/payments/dispatch.py `ChannelAnswer`):
  SUCCEEDED and FAILED are final and only given on the rail's explicit word;
  PENDING means accepted, answer later; UNKNOWN means it may have left and we
  cannot tell; NOT_SUBMITTED means it provably never left. Raising is read as
  UNKNOWN ("may have been sent"). `reason` is an UPPER_SNAKE_CASE code,
  `channel_reference` the rail's id (kept on the instruction for reconciliation).
* **No ledger postings.** The executor moves real money only; the clearing
  service posts the pool-to-pool transfer itself when it records SUCCEEDED
  (clearing/pools.py `settlement_transfer`), so a payout implementation must not
  also debit or credit the pool accounts for a settlement order.
* **Pools are names.** The executor maps a pool name to the bank account it
  stands for (its own configuration); the order carries only names.

How an answer moves an instruction (`next_state`): SUCCEEDED and FAILED as
said, UNKNOWN makes a PENDING instruction UNKNOWN, PENDING and NOT_SUBMITTED
change nothing (it is sent again at the next pass). A FAILED instruction is
retried as a new instruction (new id, `retry_of` set) up to the configured
number of times, then carried into the open window as an obligation when the
window finishes; never lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

from .window import InstructionState, SettlementInstruction


@dataclass(frozen=True, slots=True)
class SettlementOrder:
    """One settlement transfer to execute: `payer_pool`'s bank pays `payee_pool`'s."""

    instruction_id: str  # the idempotency key: "<window_id>/<index>"
    window_id: str
    payer_pool: str
    payee_pool: str
    amount_minor: int
    currency: str
    attempt: int  # 1 for the first send of this id, then 2, 3... for the re-sends that poll it
    retry_of: str = ""  # set when this instruction repeats a FAILED one (a new transfer)

    @classmethod
    def of(cls, instruction: SettlementInstruction, attempt: int) -> SettlementOrder:
        return cls(instruction.instruction_id, instruction.window_id, instruction.payer_pool,
                   instruction.payee_pool, instruction.amount_minor, instruction.currency, attempt,
                   instruction.retry_of or "")


class SettlementExecutor(Protocol):
    async def send(self, order: SettlementOrder) -> ChannelAnswer:
        """Send `order` over the transfer rail, or answer what became of it if it was sent before
        (see the module docstring). Raising means "may have been sent"."""
        ...


def next_state(current: InstructionState, answer: ChannelAnswer) -> InstructionState | None:
    """The state an answer moves an instruction to; None when it changes nothing."""
    outcome = answer.outcome
    if outcome is ChannelOutcome.SUCCEEDED:
        return InstructionState.SUCCEEDED
    if outcome is ChannelOutcome.FAILED:
        return InstructionState.FAILED
    if outcome is ChannelOutcome.UNKNOWN and current is InstructionState.PENDING:
        return InstructionState.UNKNOWN
    return None


EXECUTOR_ERROR = ChannelAnswer(ChannelOutcome.UNKNOWN, "EXECUTOR_ERROR")


@dataclass
class ScriptedExecutor:
    """A deterministic twin of the payment gateway's executor, for tests and demos.

    `script(order)` answers each send (default: SUCCEEDED). A rail that already answered
    SUCCEEDED or FAILED for an id keeps answering it, as a deduplicating rail does. `sends`
    lists every order received, in order."""

    script: Callable[[SettlementOrder], ChannelAnswer] | None = None
    sends: list[SettlementOrder] = field(default_factory=list)
    _final: dict[str, ChannelAnswer] = field(default_factory=dict)
    _count: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def send(self, order: SettlementOrder) -> ChannelAnswer:
        self.sends.append(order)
        self._count[order.instruction_id] += 1
        if order.instruction_id in self._final:
            return self._final[order.instruction_id]
        answer = self.script(order) if self.script is not None else ChannelAnswer(ChannelOutcome.SUCCEEDED)
        if answer.outcome in (ChannelOutcome.SUCCEEDED, ChannelOutcome.FAILED):
            self._final[order.instruction_id] = answer
        return answer

    def sent(self, instruction_id: str) -> int:
        """How many times `instruction_id` was sent."""
        return self._count[instruction_id]


def answers(*sequence: ChannelAnswer | ChannelOutcome) -> Callable[[SettlementOrder], ChannelAnswer]:
    """A script answering each instruction id with `sequence` in turn (the last one repeats)."""
    steps: Sequence[ChannelAnswer] = [a if isinstance(a, ChannelAnswer) else ChannelAnswer(a) for a in sequence]
    seen: defaultdict[str, int] = defaultdict(int)

    def script(order: SettlementOrder) -> ChannelAnswer:
        i = seen[order.instruction_id]
        seen[order.instruction_id] += 1
        return steps[min(i, len(steps) - 1)]

    return script
