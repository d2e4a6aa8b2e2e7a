"""The payment gateway's view of the financial gateway: channel-neutral instructions out,
success / failure / pending / unknown / not-submitted back.

The real dispatcher (adapters/dispatcher.py) speaks to channel adapters; the
payment gateway only needs this interface. Two rules keep customers from being
charged twice: an exception or a timeout while submitting means the
instruction may have left, so the payment becomes UNKNOWN and is queried, never
resubmitted; and only NOT_SUBMITTED (provably never left) allows trying another
channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .model import Asset, BankAccount, Routing


class ChannelOutcome(Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PENDING = "PENDING"  # accepted, answer later (poll or callback)
    UNKNOWN = "UNKNOWN"  # we cannot tell whether it happened
    NOT_SUBMITTED = "NOT_SUBMITTED"  # it never left: another channel may be tried


@dataclass(frozen=True, slots=True)
class ChannelAnswer:
    outcome: ChannelOutcome
    reason: str = ""  # UPPER_SNAKE_CASE, e.g. CARD_DECLINED, TIMEOUT
    channel_reference: str = ""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One movement of real money, as a channel needs it.

    `instruction_id` is unique per attempt on a channel (payment id + "-" + attempt)
    and is what the channel deduplicates on; `object_id` is the payment or refund.
    """

    instruction_id: str
    object_id: str
    kind: str  # "pay" | "payout" | "refund" | "reverse"
    merchant_id: str
    asset: Asset
    amount: int
    currency: str
    channel: str
    card_token: str = ""  # the dispatcher reveals the card from the vault only when it speaks to the bank
    bank_account: BankAccount | None = None  # pay: the payer's account; payout: the beneficiary's
    original_instruction_id: str = ""  # refund / reverse: the payment's instruction
    channel_reference: str = ""  # the channel's id of this instruction, or of the original
    description: str = ""


@dataclass(frozen=True, slots=True)
class RouteQuery:
    """What routing may look at: never the card number, only its BIN."""

    asset: Asset
    currency: str
    amount: int
    merchant_id: str = ""
    card_bin: str = ""
    bank_code: str = ""  # the payer's bank (bank transfers)


class ChannelDispatcher(Protocol):
    def route(self, query: RouteQuery) -> Routing:
        """Which channel carries this payment, the ordered fallbacks, and why; `chosen` is
        empty when no channel can."""
        ...

    def sent(self, channel: str, query: RouteQuery) -> None:
        """A payment was committed to `channel` (daily volume, half-open probe slots)."""
        ...

    def next_channel(self, query: RouteQuery, routing: Routing, tried: frozenset[str], age_s: float) -> str:
        """After NOT_SUBMITTED: the next fallback still eligible now, "" when none is (or when
        the payment, `age_s` old, is past its fallback deadline)."""
        ...

    def supports_reversal(self, channel: str) -> bool:
        """Whether an UNKNOWN authorization on `channel` can be reversed after its polling window."""
        ...

    async def submit(self, instruction: Instruction) -> ChannelAnswer:
        """Send once. Raising means "may have been sent": the caller treats it as UNKNOWN."""
        ...

    async def query(self, instruction: Instruction) -> ChannelAnswer:
        """Ask what became of an instruction sent earlier (polling)."""
        ...

    async def reverse(self, instruction: Instruction) -> ChannelAnswer:
        """Undo an authorization whose outcome stayed unknown; SUCCEEDED means it is reversed."""
        ...
