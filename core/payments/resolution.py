"""What a reconciliation run may change on the payments' side: open payments and refunds it
settles, and the channel's fees it posts.

`StatementResolver` is the reconciliation engine's `Resolver` (reconciliation/runner.py) over the
PaymentService: a MARK_SUCCEEDED or MARK_FAILED proposal becomes
`PaymentService.resolve_by_reconciliation`, the same procedures (MovePayment, MoveRefund), ledger
postings (pool sweeps included), outbox events and metrics as a channel's own answer, noted
"resolved by reconciliation <run id>". A payout (kind "payout") resolves like a payment. Only an open payment or refund moves; a final one never does (a FAILED payment the
channel settled is the engine's OPEN_DISCREPANCY, for a person).

`ChannelFees` posts each statement line's fee: debit the channel's fee expense
(`accounts.channel_fee_account`), credit its receivable (the channel keeps the fee out of what it
pays us). The transfer id derives from the channel, the line's instruction id and "fee", so a
re-run, or the same line fetched again, answers EXISTS instead of a second posting.

The proposal's action and result are reconciliation's types; this module only reads their
values, so `core` imports nothing of reconciliation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dualflow.core.ledger.model import CreateTransferResult, Transfer
from dualflow.core.ledger.service import LedgerService
from dualflow.core.ledger.state_machine import A_EXISTS, A_OK, T_EXISTS, T_OK

from .accounts import channel_fee_account, receivable_account, transfer_id
from .service import PaymentService

log = logging.getLogger(__name__)

CODE_CHANNEL_FEE: Final = 5  # ledger transfer code of a channel's fee (payments use 1-4, clearing 20-21)
FEE_BATCH: Final = 1_000  # transfers per ledger call
# Why a payment or refund failed, when a statement said so.
FAILED_REASONS: Final = {"MISSING_AT_CHANNEL": "NOT_ON_STATEMENT", "STATUS_MISMATCH": "FAILED_ON_STATEMENT"}


class StatementResolver:
    """reconciliation.runner.Resolver over the payment service."""

    def __init__(self, payments: PaymentService) -> None:
        self.payments = payments

    async def resolve(self, run_id: str, object_id: str, kind: str, action: Any, result: Any) -> bool:
        value = getattr(action, "value", action)
        assert value in ("MARK_SUCCEEDED", "MARK_FAILED"), f"not an automatic action: {value}"
        cls = getattr(getattr(result, "cls", None), "value", "")
        reference = ""
        for line in getattr(result, "lines", ()):
            if line.kind == kind and line.channel_reference:
                reference = line.channel_reference
                break
        return await self.payments.resolve_by_reconciliation(
            run_id, object_id, kind, value == "MARK_SUCCEEDED", reason=FAILED_REASONS.get(cls, "FAILED_ON_STATEMENT"),
            channel_reference=reference if kind != "refund" else "")


@dataclass(frozen=True, slots=True)
class FeeLine:
    """One statement line's fee, as much of the line as the posting needs."""

    instruction_id: str  # ours; "" when the channel gave only its reference
    channel_reference: str
    kind: str  # pay | refund | reverse | payout
    currency: str
    fee: int  # minor units, > 0


@dataclass(slots=True)
class FeesPosted:
    """Per currency: lines whose fee was posted now, fees posted before (EXISTS), and the amount
    now posted; lines whose id was posted before with another fee (a second line for the same
    instruction with another fee: a DUPLICATE for a person) are counted, not posted."""

    posted: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    amount_minor: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0

    def add(self, other: FeesPosted) -> None:
        for mine, theirs in ((self.posted, other.posted), (self.already, other.already),
                             (self.amount_minor, other.amount_minor)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.conflicts += other.conflicts


def fee_transfer_id(channel: str, line: FeeLine) -> int:
    """Derived from the channel, the instruction id (else the channel's reference) and "fee"."""
    about = line.instruction_id or f"ref:{line.channel_reference}"
    if line.kind != "pay":
        about += f"|{line.kind}"
    return transfer_id(f"{channel}|{about}", "fee")


class ChannelFees:
    """Posts the fees of a channel's statement lines to the ledger, idempotently per line."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger
        self._opened: set[tuple[str, str]] = set()

    async def post(self, channel: str, lines: Iterable[FeeLine]) -> FeesPosted:
        total = FeesPosted()
        batch: list[FeeLine] = []
        for line in lines:
            if line.fee <= 0:
                continue
            batch.append(line)
            if len(batch) >= FEE_BATCH:
                total.add(await self._post(channel, batch))
                batch = []
        if batch:
            total.add(await self._post(channel, batch))
        return total

    async def _post(self, channel: str, batch: Sequence[FeeLine]) -> FeesPosted:
        currencies = sorted({x.currency for x in batch} - {c for ch, c in self._opened if ch == channel})
        if currencies:
            accounts = [a for c in currencies
                        for a in (channel_fee_account(channel, c), receivable_account(channel, c))]
            opened = await self.ledger.create_accounts(accounts)
            assert all(r in (A_OK, A_EXISTS) for r in opened.results), f"fee accounts misconfigured: {opened.results}"
            self._opened.update((channel, c) for c in currencies)
        seen: dict[int, Transfer] = {}
        unique: list[tuple[FeeLine, Transfer]] = []
        out = FeesPosted()
        for x in batch:
            t = Transfer(id=fee_transfer_id(channel, x), debit_account_id=channel_fee_account(channel, x.currency).id,
                         credit_account_id=receivable_account(channel, x.currency).id, amount=x.fee,
                         currency=x.currency, code=CODE_CHANNEL_FEE)
            before = seen.get(t.id)
            if before is None:
                seen[t.id] = t
                unique.append((x, t))
            elif (before.amount, before.currency) == (t.amount, t.currency):  # the same line twice: once
                out.already[x.currency] = out.already.get(x.currency, 0) + 1
            else:
                out.conflicts += 1
                log.warning("channel %s fee for %s not posted: another line of the batch has another fee", channel,
                            x.instruction_id or x.channel_reference)
        result = await self.ledger.create_transfers([t for _, t in unique])
        for (x, t), r in zip(unique, result.results, strict=True):
            if r == T_OK:
                out.posted[x.currency] = out.posted.get(x.currency, 0) + 1
                out.amount_minor[x.currency] = out.amount_minor.get(x.currency, 0) + t.amount
            elif r == T_EXISTS:
                out.already[x.currency] = out.already.get(x.currency, 0) + 1
            else:
                out.conflicts += 1
                log.warning("channel %s fee for %s not posted: %s", channel, x.instruction_id or x.channel_reference,
                            CreateTransferResult(r).name)
        return out
