"""The ledger's records and result codes.

Numbers here mirror protos/dualflow/v1/ledger.proto one to one (a unit test
checks it): result codes and flag bits are a released contract and never
change meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Final

# Client ids live in 1 .. 2^63-1. Ids from 2^63 up are the ledger's own: the
# void recorded when pending transfer P expires has id EXPIRY_ID_BASE + P, so
# it is unique, derivable, and never collides with a client id.
ID_MAX: Final = 2**63 - 1
EXPIRY_ID_BASE: Final = 2**63
U64_MAX: Final = 2**64 - 1
NS_PER_S: Final = 1_000_000_000
# The most items one batch call may carry (TigerBeetle's figure).
BATCH_MAX: Final = 8190


class AccountCode(IntEnum):
    WALLET = 1
    POINTS = 2
    POOL = 3
    FEE = 4
    CLEARING = 5
    RECEIVABLE = 6
    SUSPENSE = 7
    MERCHANT = 8
    EQUITY = 9
    OPERATING = 10


ACCOUNT_CODES: Final = frozenset(int(c) for c in AccountCode)


class AccountFlags(IntFlag):
    NONE = 0
    LINKED = 1
    DEBITS_MUST_NOT_EXCEED_CREDITS = 2
    CREDITS_MUST_NOT_EXCEED_DEBITS = 4
    HISTORY = 8
    CLOSED = 16


ACCOUNT_FLAGS_ALL: Final = 31


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1
    PENDING = 2
    POST_PENDING = 4
    VOID_PENDING = 8
    CLOSING_DEBIT = 16
    CLOSING_CREDIT = 32
    EXPIRY = 64


TRANSFER_FLAGS_CLIENT: Final = 63  # every bit but EXPIRY


class PendingStatus(IntEnum):
    """Where a pending transfer stands; NONE for every other transfer."""

    NONE = 0
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class CreateAccountResult(IntEnum):
    OK = 1
    LINKED_EVENT_FAILED = 2
    LINKED_EVENT_CHAIN_OPEN = 3
    ID_INVALID = 4
    FLAGS_INVALID = 5
    CURRENCY_INVALID = 6
    CODE_INVALID = 7
    BALANCES_MUST_BE_ZERO = 8
    TIMESTAMP_MUST_BE_ZERO = 9
    EXISTS_WITH_DIFFERENT_FIELDS = 10
    EXISTS = 11


class CreateTransferResult(IntEnum):
    OK = 1
    LINKED_EVENT_FAILED = 2
    LINKED_EVENT_CHAIN_OPEN = 3
    ID_INVALID = 4
    FLAGS_INVALID = 5
    TIMESTAMP_MUST_BE_ZERO = 6
    ACCOUNT_ID_INVALID = 7
    SAME_ACCOUNT = 8
    PENDING_ID_INVALID = 9
    TIMEOUT_INVALID = 10
    AMOUNT_INVALID = 11
    CODE_INVALID = 12
    CURRENCY_INVALID = 13
    EXISTS_WITH_DIFFERENT_FIELDS = 14
    EXISTS = 15
    ACCOUNT_NOT_FOUND = 16
    CURRENCY_MISMATCH = 17
    ACCOUNT_CLOSED = 18
    PENDING_NOT_FOUND = 19
    PENDING_NOT_PENDING = 20
    PENDING_FIELDS_DIFFER = 21
    PENDING_ALREADY_POSTED = 22
    PENDING_ALREADY_VOIDED = 23
    PENDING_EXPIRED = 24
    EXCEEDS_PENDING_AMOUNT = 25
    OVERFLOW = 26
    EXCEEDS_CREDITS = 27
    EXCEEDS_DEBITS = 28


# Results that leave the ledger as it was and still count as success of the
# item: a replayed linked chain whose items all exist is not a failed chain.
ACCOUNT_SUCCESS: Final = frozenset({CreateAccountResult.OK, CreateAccountResult.EXISTS})
TRANSFER_SUCCESS: Final = frozenset({CreateTransferResult.OK, CreateTransferResult.EXISTS})


@dataclass(slots=True)
class Account:
    id: int
    currency: str
    code: int
    flags: int = 0
    user_data: int = 0
    timestamp: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def copy(self) -> Account:
        return Account(
            self.id, self.currency, self.code, self.flags, self.user_data, self.timestamp,
            self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted,
        )

    @property
    def closed(self) -> bool:
        return bool(self.flags & AccountFlags.CLOSED)


@dataclass(slots=True)
class Transfer:
    id: int
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    pending_id: int = 0
    currency: str = ""
    code: int = 0
    flags: int = 0
    user_data: int = 0
    timeout_s: int = 0
    timestamp: int = 0
    # Ledger-internal bookkeeping for pending transfers, not client fields.
    pending_status: int = PendingStatus.NONE
    expires_at: int = 0  # ns; 0 = never


@dataclass(slots=True, frozen=True)
class BalanceSnapshot:
    """An account's balances right after one transfer (accounts with HISTORY)."""

    account_id: int
    timestamp: int
    transfer_id: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(slots=True, frozen=True)
class AccountFilter:
    account_id: int
    timestamp_min: int = 0
    timestamp_max: int = 0
    limit: int = 1000
    newest_first: bool = False
    debits: bool = True
    credits: bool = True
