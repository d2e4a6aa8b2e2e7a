"""Which ledger account holds what: parties and assets mapped to account ids.

Accounts are named, not numbered by hand: the id of "user alice's CNY wallet"
is a hash of that name, so every process derives the same id without a lookup
table, and the payment extension opens accounts on first use (a second open
answers EXISTS). A hash collision would surface as the ledger's
EXISTS_WITH_DIFFERENT_* result, never as a silent merge.

Parties are written "user:<id>" or "merchant:<id>".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dualflow.core.ledger.model import ID_MAX, Account, AccountCode, AccountFlags

from .model import Asset

NO_OVERDRAFT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


@dataclass(frozen=True, slots=True)
class Party:
    kind: str  # "user" | "merchant"
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def parse_party(text: str) -> Party | None:
    kind, sep, ident = text.partition(":")
    if not sep or kind not in ("user", "merchant") or not ident or len(text) > 128 or not text.isprintable():
        return None
    return Party(kind, ident)


def account_id(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & ID_MAX) or 1


def _account(name: str, currency: str, code: AccountCode, flags: AccountFlags = AccountFlags.NONE) -> Account:
    return Account(id=account_id(f"{name}|{currency}"), currency=currency, code=code, flags=flags)


def holding_account(party: Party, asset: Asset, currency: str) -> Account:
    """The account a party pays from or is paid into for an asset.

    - a user's points and wallet can never go negative;
    - a merchant's points account goes negative by the points it issued and not
      yet took back (its outstanding liability);
    - a merchant's money (wallet, card, transfer) settles in one settlement
      account, which refunds may not overdraw.
    """
    if party.kind == "user":
        if asset is Asset.POINTS:
            return _account(f"user:{party.id}:points", currency, AccountCode.POINTS, NO_OVERDRAFT)
        return _account(f"user:{party.id}:wallet", currency, AccountCode.WALLET, NO_OVERDRAFT)
    if asset is Asset.POINTS:
        return _account(f"merchant:{party.id}:points", currency, AccountCode.MERCHANT)
    return _account(f"merchant:{party.id}:settlement", currency, AccountCode.MERCHANT, NO_OVERDRAFT)


def fee_account(currency: str) -> Account:
    return _account("platform:fees", currency, AccountCode.FEE)


def receivable_account(channel: str, currency: str) -> Account:
    """What a channel owes us for external payments it took."""
    return _account(f"channel:{channel}:receivable", currency, AccountCode.RECEIVABLE)


def channel_fee_account(channel: str, currency: str) -> Account:
    """What a channel charged us (its fees, from its statements): our operating expense. The
    channel keeps the fee from what it settles, so a fee moves from the channel's receivable here."""
    return _account(f"channel:{channel}:fee_expense", currency, AccountCode.OPERATING)


def pool_account(pool: str, currency: str) -> Account:
    """A reserve-fund pool's ledger account (our account at one bank) in `currency`: asset side,
    debit-normal, no overdraft flag (clearing/pools.py says why). Here rather than in clearing/
    because payments move money in and out of pools too (a collection landing in one, a payout
    leaving one)."""
    return _account(f"pool:{pool}", currency, AccountCode.POOL)


def transfer_id(object_id: str, leg: str) -> int:
    """A ledger transfer id derived from a payment or refund id and the leg's role,
    so re-driving a step after a crash names the same transfers (the ledger answers EXISTS)."""
    return account_id(f"{object_id}#{leg}")


def fee_for(amount: int, fee_bps: int) -> int:
    """Basis points, rounded half up to the minor unit (integers only)."""
    return (amount * fee_bps + 5_000) // 10_000
