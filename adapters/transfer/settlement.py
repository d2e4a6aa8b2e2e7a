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
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from typing import Final

from dualflow.adapters import metrics
from dualflow.adapters.contract import ChannelResult, Outcome
from dualflow.adapters.dispatcher import answer_of
from dualflow.clearing.settings import RailAccount
from dualflow.clearing.settlement import SettlementOrder
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

from .adapter import TransferAdapter, _segment
from .transformers import WireAccount, transfer_request, valid_id

# Every settlement transfer's rail id starts with this: payment instruction ids never do (they are
# a payment or refund id), so a callback about one is told apart (`is_settlement_id`).
PREFIX: Final = "stl."
_INSTRUCTION = re.compile(r"(?P<window>[^/]+)/(?P<index>[0-9]+)")


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
