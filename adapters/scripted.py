"""A scripted in-process channel: answers success, failure, pending, unknown or
not-submitted, late or never.

It stands in for the financial gateway in tests and local development: tests
script exactly how the fund flow answers. A `Plan` says what `submit` answers,
what `query` answers once `settle_after_s` has passed (before that: PENDING, or
UNKNOWN if the submission was unknown), whether submit raises (the instruction
may have left: the payment gateway must treat that as UNKNOWN), and what a
reversal answers. One ScriptedChannel can pose as several channels (`names`),
so routing around a channel that refused a connection can be tested.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome, Instruction, RouteQuery
from dualflow.core.payments.model import Routing

SUCCEEDED = ChannelAnswer(ChannelOutcome.SUCCEEDED)
PENDING = ChannelAnswer(ChannelOutcome.PENDING)
UNKNOWN = ChannelAnswer(ChannelOutcome.UNKNOWN, "CHANNEL_TIMEOUT")
NOT_SUBMITTED = ChannelAnswer(ChannelOutcome.NOT_SUBMITTED, "CONNECTION_REFUSED")


def failed(reason: str = "DECLINED") -> ChannelAnswer:
    return ChannelAnswer(ChannelOutcome.FAILED, reason)


@dataclass(frozen=True, slots=True)
class Plan:
    on_submit: ChannelAnswer = SUCCEEDED
    final: ChannelAnswer | None = None  # what query answers after settle_after_s; None: never settles
    settle_after_s: float = 0.0
    submit_raises: bool = False  # submit fails after the request "left"
    submit_delay_s: float = 0.0
    on_reverse: ChannelAnswer = SUCCEEDED


@dataclass
class ScriptedChannel:
    """A ChannelDispatcher whose answers come from `script(instruction) -> Plan`."""

    script: Callable[[Instruction], Plan] = lambda _i: Plan()
    names: tuple[str, ...] = ("scripted",)
    reversible: bool = False
    submitted: list[Instruction] = field(default_factory=list)
    reversed: list[Instruction] = field(default_factory=list)
    queries: int = 0
    _plans: dict[str, tuple[Plan, float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.names[0]

    def route(self, query: RouteQuery) -> Routing:
        # Static: the names in order, the first chosen. Tests of the smart router use the real one.
        return Routing(chosen=self.names[0], reason="STATIC", fallbacks=self.names[1:])

    def sent(self, channel: str, query: RouteQuery) -> None:
        pass

    def next_channel(self, query: RouteQuery, routing: Routing, tried: frozenset[str], age_s: float) -> str:
        return next((name for name in routing.fallbacks if name not in tried), "")

    def supports_reversal(self, channel: str) -> bool:
        return self.reversible

    async def submit(self, instruction: Instruction) -> ChannelAnswer:
        plan = self.script(instruction)
        self.submitted.append(instruction)
        if plan.on_submit.outcome is not ChannelOutcome.NOT_SUBMITTED:
            self._plans[instruction.instruction_id] = (plan, time.monotonic())
        if plan.submit_delay_s:
            await asyncio.sleep(plan.submit_delay_s)
        if plan.submit_raises:
            raise ConnectionResetError("connection reset after the request was written")
        return plan.on_submit

    async def query(self, instruction: Instruction) -> ChannelAnswer:
        self.queries += 1
        entry = self._plans.get(instruction.instruction_id)
        if entry is None:
            # Never reached us: a real channel answers "no such order", which is a failure
            # only because the gateway writes PROCESSING before it sends.
            return failed("NOT_RECEIVED")
        plan, sent_at = entry
        if instruction.kind == "reverse":
            return plan.on_reverse
        if plan.final is not None and time.monotonic() - sent_at >= plan.settle_after_s:
            return plan.final
        return PENDING if plan.on_submit.outcome is not ChannelOutcome.UNKNOWN else UNKNOWN

    async def reverse(self, instruction: Instruction) -> ChannelAnswer:
        entry = self._plans.get(instruction.original_instruction_id)
        self.reversed.append(instruction)
        self._plans[instruction.instruction_id] = entry if entry else (Plan(), time.monotonic())
        return entry[0].on_reverse if entry else SUCCEEDED

    def remember(self, instruction_id: str, plan: Plan) -> None:
        """Pretend an instruction reached the channel earlier (a restarted gateway polls it)."""
        self._plans[instruction_id] = (plan, time.monotonic() - plan.settle_after_s)
