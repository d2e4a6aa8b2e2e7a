"""The channel adapter contract: what every bank or PSP adapter implements.

An adapter turns a channel-neutral instruction into one channel's wire protocol
and back: signing, encryption, framing, verification, and mapping every answer
to an Outcome with our reason code. Adapters hold no payment state (the payment
gateway persists everything); they may hold connections, nonce caches and
certificates.

Outcomes are data, never exceptions. The rule that keeps customers from being
charged twice: only an explicit success or an explicit decline is final. A
timeout, a connection lost after the request was written, a garbled or
unverifiable reply is UNKNOWN; an answer code the adapter does not know is
PENDING. NOT_SUBMITTED is reserved for what provably never left this process
(connection refused before writing, local validation), and is the only outcome
after which another channel may be tried.

Adapters plug in through the entry-point group `dualflow.adapters`: each entry
point names a factory `(ChannelConfig) -> ChannelAdapter`.

Optional capabilities are small protocols of their own, checked with isinstance, so an adapter
without them still satisfies `ChannelAdapter`: `BalanceReporting` (`fetch_balance`, the balance the
channel reports for our account with it, used by reconciliation's balance drift check).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dualflow.core.payments.model import Asset, BankAccount

ENTRY_POINT_GROUP = "dualflow.adapters"


class Outcome(Enum):
    SUCCEEDED = "SUCCEEDED"  # final: the money moved
    FAILED = "FAILED"  # final: an explicit decline; `reason` says why
    PENDING = "PENDING"  # accepted, not final (or an answer code we do not know)
    UNKNOWN = "UNKNOWN"  # maybe sent, no trustworthy answer: query, never resend
    NOT_SUBMITTED = "NOT_SUBMITTED"  # provably never left: safe to try elsewhere

    @property
    def final(self) -> bool:
        return self in (Outcome.SUCCEEDED, Outcome.FAILED)


class Flow(Enum):
    PAY = "pay"
    QUERY = "query"
    REFUND = "refund"
    REVERSE = "reverse"
    CALLBACK = "callback"
    STATEMENT = "statement"


class FlowNotSupported(Exception):
    """This channel's protocol has no such flow (e.g. reversal over a PSP API)."""

    def __init__(self, channel: str, flow: Flow) -> None:
        super().__init__(f"channel {channel!r} does not support {flow.value}")
        self.channel = channel
        self.flow = flow


class CallbackRejected(Exception):
    """A callback that must not be trusted: bad signature, stale timestamp, replayed nonce,
    undecryptable or malformed. The message says which, never the payload."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # BAD_SIGNATURE, STALE, REPLAYED, UNDECRYPTABLE, MALFORMED, UNKNOWN_KEY


@dataclass(frozen=True, slots=True)
class ChannelResult:
    outcome: Outcome
    reason: str = ""  # our code, UPPER_SNAKE_CASE: CARD_DECLINED, INSUFFICIENT_FUNDS, TIMEOUT, BAD_MAC...
    channel_code: str = ""  # the channel's own code as received ("05", "PAYERROR")
    channel_reference: str = ""  # the channel's id for the transaction (RRN, transaction_id)
    fee: int = 0  # what the channel charged, minor units, when it says


@dataclass(frozen=True, slots=True)
class CardData:
    """A card as only the card adapter sees it, revealed from the vault at send time."""

    pan: str = field(repr=False)
    exp_month: int
    exp_year: int

    def __repr__(self) -> str:
        return f"CardData(pan={self.pan[:6]}******{self.pan[-4:]}, exp={self.exp_month:02d}/{self.exp_year})"


@dataclass(frozen=True, slots=True)
class PayInstruction:
    """Move `amount` from the payer to us. `instruction_id` is unique per attempt on a
    channel and is what the channel deduplicates on; `payment_id` is ours, for its records."""

    instruction_id: str
    payment_id: str
    merchant_id: str
    asset: Asset
    amount: int
    currency: str
    card: CardData | None = None
    bank_account: BankAccount | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class PayoutInstruction:
    """Pay `amount` from our account at the channel's bank to a beneficiary's account (an adapter
    with a payout flow has `async def payout(PayoutInstruction) -> ChannelResult`). A credit
    needs the beneficiary's full account number: `beneficiary_number`, or the channel's own
    directory (the transfer rail's `accounts` setting); without either it is NOT_SUBMITTED."""

    instruction_id: str
    payout_id: str  # ours, for the bank's records (like PayInstruction.payment_id)
    merchant_id: str
    amount: int
    currency: str
    beneficiary: BankAccount
    beneficiary_number: str = ""
    description: str = ""

    def __repr__(self) -> str:
        return (f"PayoutInstruction(instruction_id={self.instruction_id!r}, payout_id={self.payout_id!r}, "
                f"amount={self.amount}, currency={self.currency!r})")


@dataclass(frozen=True, slots=True)
class RefundInstruction:
    instruction_id: str  # the refund's own
    refund_id: str
    payment_id: str
    original_instruction_id: str
    original_reference: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class QueryRequest:
    instruction_id: str
    channel_reference: str = ""
    kind: str = "pay"  # "pay" | "refund" | "reverse"


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """A verified, decrypted notification: which instruction, and what became of it."""

    instruction_id: str
    result: ChannelResult
    kind: str = "pay"  # "pay" | "refund"
    notification_id: str = ""  # the channel's id for this notification (duplicates repeat it)


class StatementRejected(Exception):
    """A statement that must not be reconciled against: nothing of it may be applied.

    `reason`: BAD_ROW (a line does not parse or breaks the format), WRONG_TOTALS (the trailer's or
    summary's count or totals disagree with the lines), TRUNCATED (the file ends before its trailer,
    or in the middle of a line), BAD_CHECKSUM (the MAC, hash or signature over the file does not
    verify). `line_number` is 1-based in the file as received (the header is line 1); 0 means the
    file as a whole (a checksum carried outside the file, such as a signed hash or a reply signature).
    Whoever fetches a statement spools and verifies all of it before it yields a single line, so
    this is raised before anything was handed out."""

    REASONS = ("BAD_ROW", "WRONG_TOTALS", "TRUNCATED", "BAD_CHECKSUM")

    def __init__(self, reason: str, line_number: int, message: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason} at line {line_number}: {message}" if line_number else f"{reason}: {message}")
        self.reason = reason
        self.line_number = line_number
        self.detail = message


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of a channel's statement for a business day: what the channel really did."""

    business_date: str  # YYYY-MM-DD
    instruction_id: str
    channel_reference: str
    kind: str  # "pay" | "refund" | "reverse"
    amount: int
    currency: str
    status: Outcome  # SUCCEEDED or FAILED as the channel booked it
    fee: int = 0


@dataclass(frozen=True, slots=True)
class FeeTier:
    """From `from_amount` (minor units, per transaction) up, this fixed part and rate apply."""

    from_amount: int
    fixed: int = 0
    bps: int = 0


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """A channel's fee for one transaction, in integer minor units.

    fee = fixed + amount x bps / 10,000, the basis-point part rounded half up
    (amounts are positive, so half up is `(amount * bps + 5_000) // 10_000`);
    the tier with the highest `from_amount` not above the amount replaces
    `fixed` and `bps`; the result is then held between `minimum` and `maximum`.
    """

    fixed: int = 0
    bps: int = 0
    minimum: int = 0
    maximum: int | None = None
    tiers: tuple[FeeTier, ...] = ()  # ascending from_amount

    def fee_for(self, amount: int) -> int:
        fixed, bps = self.fixed, self.bps
        for tier in self.tiers:
            if amount < tier.from_amount:
                break
            fixed, bps = tier.fixed, tier.bps
        fee = max(fixed + (amount * bps + 5_000) // 10_000, self.minimum)
        return fee if self.maximum is None else min(fee, self.maximum)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "fee") -> FeeSchedule:
        """Parse `{fixed, bps, minimum, maximum, tiers = [{from_amount, fixed, bps}, ...]}`
        (every key optional); ValueError names the offending key."""
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table with fixed, bps, minimum, maximum, tiers")
        unknown = set(table) - {"fixed", "bps", "minimum", "maximum", "tiers"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")

        def count(value: Any, key: str) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}.{key} must be a non-negative integer (minor units or basis points)")
            return value

        tiers = []
        raw_tiers = table.get("tiers", [])
        if not isinstance(raw_tiers, (list, tuple)):
            raise ValueError(f"{where}.tiers must be a list of tables")
        for i, tier in enumerate(raw_tiers):
            if not isinstance(tier, Mapping) or "from_amount" not in tier or set(tier) - {"from_amount", "fixed", "bps"}:
                raise ValueError(f"{where}.tiers[{i}] must be a table with from_amount, fixed, bps")
            tiers.append(FeeTier(count(tier["from_amount"], f"tiers[{i}].from_amount"),
                                 count(tier.get("fixed", 0), f"tiers[{i}].fixed"),
                                 count(tier.get("bps", 0), f"tiers[{i}].bps")))
        if any(a.from_amount >= b.from_amount for a, b in zip(tiers, tiers[1:])):
            raise ValueError(f"{where}.tiers must be in strictly ascending from_amount")
        maximum = table.get("maximum")
        schedule = cls(count(table.get("fixed", 0), "fixed"), count(table.get("bps", 0), "bps"),
                       count(table.get("minimum", 0), "minimum"),
                       None if maximum is None else count(maximum, "maximum"), tuple(tiers))
        if schedule.maximum is not None and schedule.maximum < schedule.minimum:
            raise ValueError(f"{where}.maximum is below its minimum")
        return schedule

    def to_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {"fixed": self.fixed, "bps": self.bps, "minimum": self.minimum}
        if self.maximum is not None:
            table["maximum"] = self.maximum
        if self.tiers:
            table["tiers"] = [{"from_amount": t.from_amount, "fixed": t.fixed, "bps": t.bps} for t in self.tiers]
        return table


@dataclass(frozen=True, slots=True)
class Capabilities:
    channel: str
    assets: frozenset[Asset]
    currencies: frozenset[str]
    flows: frozenset[Flow]
    min_amount: int = 1
    max_amount: int = 2**63 - 1
    bin_ranges: tuple[tuple[str, str], ...] = ()  # inclusive (low, high) prefixes; empty: any card
    fees: Mapping[str, FeeSchedule] = field(default_factory=dict)  # by currency
    # Whether the adapter itself carries the card number (a card bank: DE 2). Only then does
    # the dispatcher reveal it from the vault; a PSP that collects the card itself never sees it.
    needs_card_number: bool = False
    # The bank code of the channel's own account (a transfer channel's pool account); "" = none.
    # A payment whose payer (or beneficiary) banks there moves within one bank, which banks
    # usually price lower: `same_bank_fees` (by currency; empty = none) then prices it instead of
    # `fees`. The router compares the request's bank_code with home_bank (routing/policy.py).
    home_bank: str = ""
    same_bank_fees: Mapping[str, FeeSchedule] = field(default_factory=dict)

    def accepts(self, asset: Asset, currency: str, amount: int, bin6: str = "") -> bool:
        if asset not in self.assets or currency not in self.currencies:
            return False
        if not self.min_amount <= amount <= self.max_amount:
            return False
        if bin6 and self.bin_ranges:
            return any(low <= bin6[: len(low)] <= high for low, high in self.bin_ranges)
        return True


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One channel's configuration: where it is, its keys (read from files), its terms."""

    name: str
    kind: str  # the entry point that builds the adapter: "iso8583", "psp", "transfer", ...
    settings: Mapping[str, Any] = field(default_factory=dict)  # kind-specific: host, port, url, ids
    key_files: Mapping[str, Path] = field(default_factory=dict, repr=False)  # name -> file holding the key

    def read_key(self, name: str) -> bytes:
        """A key's bytes from its file (never from the repository or the config text)."""
        path = self.key_files.get(name)
        if path is None:
            raise KeyError(f"channel {self.name!r} has no key file {name!r} configured")
        return Path(path).read_bytes().strip()


@runtime_checkable
class ChannelAdapter(Protocol):
    name: str

    def describe(self) -> Capabilities: ...

    async def start(self) -> None:
        """Open connections, sign on; idempotent."""
        ...

    async def close(self) -> None: ...

    async def submit(self, instruction: PayInstruction) -> ChannelResult: ...

    async def query(self, request: QueryRequest) -> ChannelResult: ...

    async def refund(self, instruction: RefundInstruction) -> ChannelResult: ...

    async def reverse(self, request: QueryRequest, amount: int, currency: str) -> ChannelResult:
        """Undo an authorization whose outcome stayed unknown (card networks: 0400)."""
        ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackEvent:
        """Verify, decrypt and map an asynchronous notification; raise CallbackRejected if untrusted."""
        ...

    def callback_response(self, accepted: bool) -> tuple[int, bytes, Mapping[str, str]]:
        """What the channel expects back for a callback (status, body, headers): it retries
        until it sees the acknowledgement, so a rejected callback must not be acknowledged."""
        ...

    def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]: ...


@dataclass(frozen=True, slots=True)
class ChannelBalance:
    """What a channel says it holds for us in one currency at `as_of_unix_s`: settled funds net of
    its fees and of the refunds it paid out, as its own book computes them (minor units; negative
    when we owe the channel)."""

    channel: str
    currency: str
    amount_minor: int
    as_of_unix_s: int


class BalanceUnavailable(Exception):
    """No balance we can trust: the channel could not be reached, answered an error, or its reply
    did not verify (`reason`: CONNECTION_FAILED, TIMEOUT, BANK_ERROR, UNTRUSTED, GARBLED,
    UNSUPPORTED_CURRENCY, UNSUPPORTED: not configured for it). Never a number to compare against."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@runtime_checkable
class BalanceReporting(Protocol):
    """Optional: an adapter that can ask its channel for our balance there. Check with
    `isinstance(adapter, BalanceReporting)`; adapters without it are simply not drift-checked."""

    name: str

    async def fetch_balance(self, currency: str) -> ChannelBalance:
        """The channel's signed, verified report of our balance in `currency`; raise
        BalanceUnavailable when there is none to trust."""
        ...
