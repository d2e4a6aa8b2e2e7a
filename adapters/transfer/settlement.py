"""Settlement transfers over the bank-transfer rail: the clearing center's `SettlementExecutor`.

A closed window's instruction "payer pool pays payee pool" becomes one rail transfer (direction
`payout`) from the payer pool's bank account to the payee pool's, both from `[clearing]
rail_accounts`; the adapter's payout flow debits the channel's own `pool_account`, so this module
builds the same signed request with the payer pool's account as debtor and goes through the
adapter's exchange (signing, reply verification, outcome mapping, metrics). It moves money only:
the clearing service posts the pool-to-pool ledger transfer when it records SUCCEEDED.

Idempotency: the rail's id is a pure function of the instruction id (`rail_id`), and the request
body a pure function of the order, so a re-send is the same request and the rail answers 200
with the first transfer. A repeat (attempt > 1: the driver polls, or resumes after a crash)
first asks the rail (GET); only a NOT_FOUND, which proves the first send never got there, is
followed by a send.

Reconciliation: a bank's statement is one account's (adapter.py `fetch_statement` asks for its
channel's `pool_account`), so a settlement transfer is on two statements: the payer pool's
account's (its debtor) and the payee pool's (its creditor), whichever channel sent it. Its rows
belong to the channels whose pool is the payer or the payee (`[clearing] channel_pools`), not to
the settlement channel unless that is one of them. `SettlementInstructions` is reconciliation's
`InstructionSource` for one pooled channel (reconciliation/runner.py; the server wires one per
pooled transfer channel): the clearing center's instructions whose payer or payee pool is the
channel's pool, as rows of our side (kind "payout", the rail id, the state as a payment status),
and a run's resolution of an open one applied through `ClearingService.apply_statement_answer`
(from either statement: the second finds it final and changes nothing). The rail's fee on such a
line is the debtor's, posted once: only on the payer pool's channel (`fee_elsewhere`). A pool with
no channel has its side of a settlement reconciled nowhere. Reconciliation imports nothing of
clearing, clearing nothing of reconciliation: this module, which knows both the rail ids and the
clearing service, joins them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from dualflow.adapters import metrics
from dualflow.adapters.contract import ChannelResult, Outcome
from dualflow.adapters.dispatcher import answer_of
from dualflow.clearing.settings import RailAccount
from dualflow.clearing.settlement import SettlementOrder
from dualflow.clearing.window import InstructionState, SettlementInstruction
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

from .adapter import TransferAdapter, _segment
from .transformers import WireAccount, transfer_request, valid_id

# Every settlement transfer's rail id starts with this: payment instruction ids never do (they are
# a payment or refund id), so a callback about one is told apart (`is_settlement_id`).
PREFIX: Final = "stl."
_INSTRUCTION = re.compile(r"(?P<window>[^/]+)/(?P<index>[0-9]+)")
_RAIL_ID = re.compile(r"stl\.(?P<window>.+)\.(?P<index>[0-9]+)")
log = logging.getLogger(__name__)


def rail_id(instruction_id: str) -> str:
    """The rail's instruction id (1-64 of A-Z a-z 0-9 _ . -) for a clearing instruction id
    `<window>/<index>`: `stl.<window>.<index>` when that fits (injective: the index is digits and
    the window has no "/"), else `stl.h.` and 40 hex digits of its SHA-256."""
    m = _INSTRUCTION.fullmatch(instruction_id)
    if m is not None:
        candidate = f"{PREFIX}{m['window']}.{m['index']}"
        if valid_id(candidate) and not candidate.startswith(f"{PREFIX}h."):
            return candidate
    return f"{PREFIX}h.{hashlib.sha256(instruction_id.encode()).hexdigest()[:40]}"


def is_settlement_id(rail_instruction_id: str) -> bool:
    return rail_instruction_id.startswith(PREFIX)


def instruction_id_of(rail_instruction_id: str) -> str | None:
    """The clearing instruction id a rail id stands for (the inverse of `rail_id`); None for an id
    that is no settlement's, or a hashed one (`stl.h.`, not invertible)."""
    m = _RAIL_ID.fullmatch(rail_instruction_id)
    if m is None or rail_instruction_id.startswith(f"{PREFIX}h."):
        return None
    candidate = f"{m['window']}/{m['index']}"
    return candidate if rail_id(candidate) == rail_instruction_id else None


class RailSettlementExecutor:
    """`SettlementExecutor` over one transfer channel. `accounts`: pool name -> its bank account."""

    def __init__(self, adapter: TransferAdapter, accounts: Mapping[str, RailAccount]) -> None:
        self.adapter = adapter
        self.accounts = {pool: WireAccount(bank_code=a.bank_code, name=a.name, number=a.number)
                         for pool, a in accounts.items()}
        for pool, account in self.accounts.items():
            assert not account.problem(), f"pool {pool}: {account.problem()}"  # config validated it

    def __repr__(self) -> str:
        return f"RailSettlementExecutor(channel={self.adapter.name!r}, pools={sorted(self.accounts)!r})"

    async def send(self, order: SettlementOrder) -> ChannelAnswer:
        started = time.perf_counter()
        debtor, creditor = self.accounts.get(order.payer_pool), self.accounts.get(order.payee_pool)
        if debtor is None or creditor is None:
            # Provably never left; the driver sends it again (a config fix and restart resolve it).
            return ChannelAnswer(ChannelOutcome.NOT_SUBMITTED, "POOL_ACCOUNT_UNKNOWN")
        problem = self.adapter._check_amount(order.amount_minor, order.currency, rail_id(order.instruction_id))
        if problem:
            return ChannelAnswer(ChannelOutcome.NOT_SUBMITTED, problem[0])
        if order.attempt > 1:
            known = await self._ask(order)
            if known is not None:
                return known
        body = transfer_request(instruction_id=rail_id(order.instruction_id), direction="payout",
                                amount=order.amount_minor, currency=order.currency, debtor=debtor,
                                creditor=creditor, reference=rail_id(order.instruction_id),
                                description=f"settlement {order.instruction_id}"[:140],
                                callback_url=self.adapter.settings.callback_url)
        result = await self.adapter._post_transfer("/transfers", body, rail_id(order.instruction_id),
                                                   order.amount_minor, order.currency, "payout")
        return answer_of(self.adapter._done("payout", started, result))

    async def _ask(self, order: SettlementOrder) -> ChannelAnswer | None:
        """What the rail knows of an earlier send; None when it has no record of it (send it)."""
        started = time.perf_counter()
        ident = rail_id(order.instruction_id)
        reply = await self.adapter._exchange("GET", f"/transfers/{_segment(ident)}", b"", self.adapter._timeout)
        if isinstance(reply, ChannelResult):
            result = reply
        elif reply.status == 200:
            result = self.adapter._transfer_reply(reply.body, ident, order.amount_minor, order.currency, "payout")
        elif reply.status == 404 and self.adapter._error_code(reply.body) == "NOT_FOUND":
            result = None  # a signed "no such transfer": the first send never arrived
        else:
            result = ChannelResult(Outcome.UNKNOWN, "BANK_ERROR",
                                   self.adapter._error_code(reply.body) or str(reply.status))
        outcome = result.outcome if result is not None else Outcome.NOT_SUBMITTED
        metrics.POLLS.labels(self.adapter.name, outcome.value).inc()
        self.adapter._observe("query", started, outcome)
        return answer_of(result) if result is not None else None


# A settlement instruction's state as reconciliation names a payment's (reconciliation/model.py):
# PENDING and UNKNOWN are open (the statement may settle them), the others final.
STATUS: Final = {InstructionState.PENDING: "PROCESSING", InstructionState.UNKNOWN: "UNKNOWN",
                 InstructionState.SUCCEEDED: "SUCCEEDED", InstructionState.FAILED: "FAILED"}
KIND: Final = "payout"  # what the rail books a settlement transfer as


class _Clearing(Protocol):
    """What SettlementInstructions needs of clearing/service.py ClearingService."""

    async def sent_instructions(self, start_ns: int, end_ns: int) -> list[tuple[SettlementInstruction, int]]: ...

    async def instructions_by_id(self, instruction_ids: Sequence[str]) -> list[
        tuple[SettlementInstruction, int]]: ...

    async def apply_statement_answer(self, instruction_id: str, succeeded: bool, *, reason: str = "",
                                     channel_reference: str = "") -> bool: ...


class SettlementInstructions:
    """reconciliation.runner.InstructionSource over the clearing service, for one pooled channel:
    the settlement transfers its pool pays or is paid by, as our side of its reconciliation.

    `pool`: the channel's pool (None: every instruction, a channel whose account every settlement
    transfer touches); `channel_pools`: every pooled channel's pool, which decides the one channel
    of a payer pool that posts a settlement line's fee (the first by name).

    `day`: the instructions created on the business day (a window's at its close, a retry when
    made: never after the first send, so the rail books each on that day's statement or a later
    one, where `find` finds it by its rail id) and sent at least once; rows in reconciliation's
    Instruction field order: the rail id, kind "payout", the clearing instruction id as the
    object, the channel, the rail's reference, amount, currency, the state as a payment status
    (`STATUS`), the creation time, and no polling window (the driver asks until it knows).

    `resolve`: a MARK_SUCCEEDED or MARK_FAILED the statement proves (a line settled or rejected
    for an open instruction) goes to `ClearingService.apply_statement_answer`, the executor's
    answer path: exactly one pool-to-pool posting, and a final state never changes. One that
    only its absence proposes (MISSING_AT_CHANNEL past the SLA) is declined: the rail books a
    transfer on the statement of the day it became final, so an accepted one still on its way is
    on none yet, and failing it would have the driver retry with a new id, paying twice; the
    driver's own rule for a transfer the rail has no record of is to send the same id again."""

    def __init__(self, clearing: _Clearing, channel: str, pool: str | None = None,
                 channel_pools: Mapping[str, str] | None = None) -> None:
        self.clearing = clearing
        self.channel = channel
        self.pool = pool
        self._fee_channel: dict[str, str] = {}  # payer pool -> the channel that posts its fees
        for name, its_pool in sorted((channel_pools or {}).items()):
            self._fee_channel.setdefault(its_pool, name)
        assert pool is None or self._fee_channel.get(pool) is not None, f"{channel}: pool {pool} has no channel"

    def __repr__(self) -> str:
        return f"SettlementInstructions(channel={self.channel!r}, pool={self.pool!r})"

    def _ours(self, inst: SettlementInstruction) -> bool:
        return self.pool is None or self.pool in (inst.payer_pool, inst.payee_pool)

    def _row(self, inst: SettlementInstruction, created_at_ns: int) -> tuple[Any, ...]:
        return (rail_id(inst.instruction_id), KIND, inst.instruction_id, self.channel, inst.reference,
                inst.amount_minor, inst.currency, STATUS[inst.state], created_at_ns, 0)

    async def day(self, start_ns: int, end_ns: int) -> list[tuple[Any, ...]]:
        return [self._row(inst, created) for inst, created in await self.clearing.sent_instructions(start_ns, end_ns)
                if self._ours(inst)]

    async def _by_rail_id(self, instruction_ids: Sequence[str]) -> dict[str, tuple[SettlementInstruction, int]]:
        wanted = {i: own for i in instruction_ids if (own := instruction_id_of(i)) is not None}
        if not wanted:
            return {}
        found = await self.clearing.instructions_by_id(sorted(set(wanted.values())))
        return {rid: (inst, created) for inst, created in found
                if (rid := rail_id(inst.instruction_id)) in wanted and self._ours(inst)}

    async def find(self, instruction_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        found = await self._by_rail_id(instruction_ids)
        return {rid: self._row(inst, created) for rid, (inst, created) in found.items()}

    async def fee_elsewhere(self, instruction_ids: Sequence[str]) -> set[str]:
        """Of these statement lines' ids, the settlement transfers of this channel's pool whose fee
        another channel posts: the fee is the debtor's, posted once, on the payer pool's channel
        (its first by name); the payee's channel sees the same line and posts nothing for it."""
        if self.pool is None:
            return set()
        return {rid for rid, (inst, _created) in (await self._by_rail_id(instruction_ids)).items()
                if self._fee_channel.get(inst.payer_pool) != self.channel}

    async def resolve(self, run_id: str, object_id: str, action: Any, result: Any) -> bool:
        value = getattr(action, "value", action)
        assert value in ("MARK_SUCCEEDED", "MARK_FAILED"), f"not an automatic action: {value}"
        line = next((x for x in getattr(result, "lines", ()) if x.kind == KIND), None)
        if line is None:
            log.warning("reconciliation %s proposes %s for settlement %s without a line of the statement: declined "
                        "(the settlement driver asks the rail and sends the same id again)", run_id, value, object_id)
            return False
        succeeded = value == "MARK_SUCCEEDED"
        moved = await self.clearing.apply_statement_answer(
            object_id, succeeded, reason="SETTLED_ON_STATEMENT" if succeeded else "FAILED_ON_STATEMENT",
            channel_reference=line.channel_reference)
        if moved:
            log.info("settlement %s %s: resolved by reconciliation %s", object_id,
                     "succeeded" if succeeded else "failed", run_id)
        return moved
