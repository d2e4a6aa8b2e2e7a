"""The payment gateway's view of the financial gateway: channel-neutral instructions out,
success / failure / pending / unknown back.

The real dispatcher (adapters/) picks a channel, speaks its protocol and maps
its answers; the payment gateway only needs this interface. An exception or a
timeout while submitting means the instruction may have left the process: the
payment becomes UNKNOWN and is polled, never resubmitted (resubmitting an
unknown submission is how customers get charged twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .model import Asset, BankAccount


class ChannelOutcome(Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PENDING = "PENDING"  # accepted, answer later (poll or callback)
    UNKNOWN = "UNKNOWN"  # we cannot tell whether it happened


@dataclass(frozen=True, slots=True)
class ChannelAnswer:
    outcome: ChannelOutcome
    reason: str = ""  # UPPER_SNAKE_CASE, e.g. CARD_DECLINED, TIMEOUT
    channel_reference: str = ""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One movement of real money, as the channel needs it. `instruction_id` is the
    payment or refund id: channels use it as their idempotency key."""

    instruction_id: str
    kind: str  # "pay" | "refund"
    merchant_id: str
    asset: Asset
    amount: int
    currency: str
    channel: str
    card_token: str = ""  # the dispatcher reveals the card from the vault only when it speaks to the bank
    bank_account: BankAccount | None = None
    original_id: str = ""  # for a refund: the payment it refunds
    channel_reference: str = ""


class ChannelDispatcher(Protocol):
    def channel_for(self, asset: Asset, currency: str) -> str:
        """The channel that will carry an external payment (recorded before submission)."""
        ...

    async def submit(self, instruction: Instruction) -> ChannelAnswer:
        """Send once. Raising means "may have been sent": the caller treats it as UNKNOWN."""
        ...

    async def query(self, instruction: Instruction) -> ChannelAnswer:
        """Ask what became of an instruction sent earlier (polling)."""
        ...
