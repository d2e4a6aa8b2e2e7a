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

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .model import Asset, BankAccount


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
    kind: str  # "pay" | "refund" | "reverse"
    merchant_id: str
    asset: Asset
    amount: int
    currency: str
    channel: str
    card_token: str = ""  # the dispatcher reveals the card from the vault only when it speaks to the bank
    bank_account: BankAccount | None = None
    original_instruction_id: str = ""  # refund / reverse: the payment's instruction
    channel_reference: str = ""  # the channel's id of this instruction, or of the original
    description: str = ""


class ChannelDispatcher(Protocol):
    def channels_for(self, asset: Asset, currency: str, amount: int, card_bin: str = "") -> Sequence[str]:
        """The channels that can carry this payment, best first (empty: none can)."""
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
