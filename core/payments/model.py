"""Payment orders, refunds and their states.

Enum numbers mirror protos/dualflow/v1/payments.proto one to one (a unit test
checks it), so the servicer converts by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final


class Asset(IntEnum):
    POINTS = 1
    WALLET = 2
    BANK_CARD = 3
    BANK_TRANSFER = 4

    @property
    def internal(self) -> bool:
        return self in (Asset.POINTS, Asset.WALLET)


class PaymentStatus(IntEnum):
    CREATED = 1
    PROCESSING = 2
    SUCCEEDED = 3
    FAILED = 4
    UNKNOWN = 5
    CANCELED = 6

    @property
    def final(self) -> bool:
        return self in FINAL


PAYMENT_KINDS: Final = ("pay", "payout")
FINAL: Final = frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CANCELED})

# The only moves a payment may make; everything else is refused (or, for a
# channel's late answer, recorded as a discrepancy).
TRANSITIONS: Final[dict[PaymentStatus, frozenset[PaymentStatus]]] = {
    PaymentStatus.CREATED: frozenset({PaymentStatus.PROCESSING, PaymentStatus.SUCCEEDED, PaymentStatus.FAILED,
                                      PaymentStatus.CANCELED}),
    PaymentStatus.PROCESSING: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.UNKNOWN}),
    PaymentStatus.UNKNOWN: frozenset({PaymentStatus.SUCCEEDED, PaymentStatus.FAILED}),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CANCELED: frozenset(),
}


def may_move(old: PaymentStatus, new: PaymentStatus) -> bool:
    return new in TRANSITIONS[old]


class RefundStatus(IntEnum):
    PROCESSING = 1
    SUCCEEDED = 2
    FAILED = 3
    UNKNOWN = 4


@dataclass(frozen=True, slots=True)
class CardInfo:
    """What a payment keeps of a card: the token and what may be shown."""

    token: str
    bin: str
    last4: str
    brand: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class BankAccount:
    bank_code: str
    account_last4: str
    holder_name: str


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    channel: str
    estimated_success: float  # the sampled success probability that was scored
    fee: int  # the channel's fee for this payment, minor units
    score: float


@dataclass(frozen=True, slots=True)
class Routing:
    """Why an external payment went where it went: recorded with the payment, shown by
    GetPayment and in its events."""

    chosen: str  # "" when no channel could carry it
    reason: str  # SCORE, ONLY_CANDIDATE, PINNED, STATIC, NONE_ELIGIBLE
    fallbacks: tuple[str, ...] = ()  # tried in order, only after NOT_SUBMITTED
    candidates: tuple[RouteCandidate, ...] = ()  # best first
    excluded: tuple[tuple[str, str], ...] = ()  # (channel, reason), e.g. ("cardbank", "BREAKER_OPEN")
    config_version: int = 0
    rerouted_from: tuple[str, ...] = ()  # channels that provably never received it

    def rerouted(self, from_channel: str) -> Routing:
        return replace(self, rerouted_from=self.rerouted_from + (from_channel,))


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A validated CreatePayment (or CreatePayout: kind "payout"), before it becomes a payment."""

    request_id: str
    merchant_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    asset: Asset
    trade_order_id: str = ""
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    card_token: str = ""
    bank_account: BankAccount | None = None
    kind: str = "pay"  # "pay" | "payout"


@dataclass(frozen=True, slots=True)
class Payment:
    payment_id: str
    request_id: str
    merchant_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    asset: Asset
    status: PaymentStatus
    fee: int
    created_at_ns: int
    updated_at_ns: int
    version: int = 1
    failure_reason: str = ""
    refunded_amount: int = 0
    trade_order_id: str = ""
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    card: CardInfo | None = None
    bank_account: BankAccount | None = None
    channel: str = ""
    channel_reference: str = ""
    attempt: int = 1  # which submission to a channel; a new one only after NOT_SUBMITTED
    routing: Routing | None = None  # external payments: the routing decision
    # "pay": money in (a purchase, a top-up: the payee is credited); "payout": money out of a
    # user's wallet to the user's own bank account (bank_account), through a channel.
    kind: str = "pay"

    @property
    def instruction_id(self) -> str:
        """What the channel deduplicates on: unique per attempt. "-" joins them because
        channels limit the alphabet (WeChat-style out_trade_no: [A-Za-z0-9_-|*], 6..32)."""
        return f"{self.payment_id}-{self.attempt}"

    def moved(self, status: PaymentStatus, now_ns: int, **changes: object) -> Payment:
        return replace(self, status=status, updated_at_ns=now_ns, version=self.version + 1, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Refund:
    refund_id: str
    payment_id: str
    request_id: str
    merchant_id: str
    amount: int
    currency: str
    status: RefundStatus
    created_at_ns: int
    updated_at_ns: int
    reason: str = ""
    failure_reason: str = ""
    status_note: str = ""  # who settled it when not the channel's own answer ("resolved by reconciliation <run>")


@dataclass(frozen=True, slots=True)
class Discrepancy:
    discrepancy_id: str
    payment_id: str
    kind: str
    recorded_status: PaymentStatus
    channel_outcome: str
    detail: str
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    asset: Asset
    currency: str
    available: int
    pending_in: int
    pending_out: int
    as_of_timestamp: int


@dataclass(frozen=True, slots=True)
class Merchant:
    merchant_id: str
    name: str
    currencies: frozenset[str]
    fee_bps: int = 0  # platform fee in basis points, charged to the merchant on each payment
