"""Row shapes shared by the SQL backends: records to rows and back, and the rows one commit writes.

Both SQLite and PostgreSQL store the same columns in the same order, so a
record converts to a row (and a snapshot's changes to rows) in one place.
Ids and user_data that may be 2^63 or more go through `to_db`/`from_db`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import Account, Transfer
from .store import from_db, to_db

ACCOUNT_COLUMNS = (
    "id, currency, code, flags, user_data, timestamp, "
    "debits_pending, debits_posted, credits_pending, credits_posted"
)
TRANSFER_COLUMNS = (
    "id, debit_account_id, credit_account_id, amount, pending_id, currency, code, flags, "
    "user_data, timeout_s, timestamp, pending_status, expires_at"
)
BALANCE_COLUMNS = (
    "account_id, timestamp, transfer_id, debits_pending, debits_posted, credits_pending, credits_posted"
)


def account_from_row(r: Sequence[Any]) -> Account:
    return Account(r[0], r[1], r[2], r[3], from_db(r[4]), r[5], r[6], r[7], r[8], r[9])


def transfer_from_row(r: Sequence[Any]) -> Transfer:
    return Transfer(
        from_db(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], from_db(r[8]), r[9], r[10], r[11], r[12]
    )


def account_row(a: Account) -> tuple[Any, ...]:
    return (
        a.id, a.currency, a.code, a.flags, to_db(a.user_data), a.timestamp,
        a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
    )


def transfer_row(t: Transfer) -> tuple[Any, ...]:
    return (
        to_db(t.id), t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.currency,
        t.code, t.flags, to_db(t.user_data), t.timeout_s, t.timestamp, t.pending_status, t.expires_at,
    )


def write_rows(snap: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The rows a snapshot's changes turn into, by statement kind."""
    new_account_ids = {a.id for a in snap.new_accounts}
    new_transfer_ids = {t.id for t in snap.new_transfers}
    accounts = snap.accounts
    transfers = snap.transfers
    return {
        "insert_accounts": [account_row(a) for a in snap.new_accounts],
        "insert_transfers": [transfer_row(t) for t in snap.new_transfers],
        "update_accounts": [
            (a.flags, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.id)
            for i in sorted(snap.changed_account_ids - new_account_ids)
            if (a := accounts.get(i)) is not None
        ],
        "update_pending": [
            (transfers[i].pending_status, to_db(i))
            for i in sorted(snap.changed_pending_ids - new_transfer_ids)
            if i in transfers
        ],
        "insert_balances": [
            (h.account_id, h.timestamp, to_db(h.transfer_id), h.debits_pending, h.debits_posted,
             h.credits_pending, h.credits_posted)
            for h in snap.history
        ],
    }
