"""The ledger state machine: pure rules that turn a batch into results and row changes.

It never does I/O. A store prefetches every row a group commit may touch into a
`Snapshot`, runs these functions on it, and writes back what the snapshot says
changed, all in one database transaction. Checks run in a fixed order and the
first failure wins, so a result is a deterministic function of the request and
the ledger's state (TigerBeetle's discipline).

Linked chains commit all-or-nothing: a snapshot keeps an undo journal while a
chain is open and rolls it back when any item fails. An item that already
exists with the same fields counts as success inside a chain, so a replayed
chain answers EXISTS for every item and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from dualflow.core.money import CURRENCIES

from .model import (
    ACCOUNT_CODES,
    ACCOUNT_FLAGS_ALL,
    EXPIRY_ID_BASE,
    ID_MAX,
    NS_PER_S,
    TRANSFER_FLAGS_CLIENT,
    Account,
    AccountFlags,
    BalanceSnapshot,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    Transfer,
    TransferFlags,
)

AMOUNT_MAX: Final = ID_MAX
U32_MAX: Final = 2**32 - 1

# Plain ints on the hot path: IntEnum comparisons cost several times more.
_A = CreateAccountResult
_T = CreateTransferResult
A_OK, A_EXISTS = int(_A.OK), int(_A.EXISTS)
T_OK, T_EXISTS = int(_T.OK), int(_T.EXISTS)

F_LINKED = int(TransferFlags.LINKED)
F_PENDING = int(TransferFlags.PENDING)
F_POST = int(TransferFlags.POST_PENDING)
F_VOID = int(TransferFlags.VOID_PENDING)
F_CLOSING_DEBIT = int(TransferFlags.CLOSING_DEBIT)
F_CLOSING_CREDIT = int(TransferFlags.CLOSING_CREDIT)
F_EXPIRY = int(TransferFlags.EXPIRY)
F_CLOSING = F_CLOSING_DEBIT | F_CLOSING_CREDIT

AF_LINKED = int(AccountFlags.LINKED)
AF_DEBITS_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
AF_CREDITS_LIMIT = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
AF_HISTORY = int(AccountFlags.HISTORY)
AF_CLOSED = int(AccountFlags.CLOSED)

S_NONE = int(PendingStatus.NONE)
S_PENDING = int(PendingStatus.PENDING)
S_POSTED = int(PendingStatus.POSTED)
S_VOIDED = int(PendingStatus.VOIDED)
S_EXPIRED = int(PendingStatus.EXPIRED)


class Snapshot:
    """The rows a group commit may read or change, and the changes made to them."""

    __slots__ = (
        "accounts", "transfers", "now_ns",
        "new_accounts", "new_transfers", "changed_account_ids", "changed_pending_ids",
        "history", "expired", "_saved_accounts", "_saved_status", "_inserted_ids", "_marks",
    )

    def __init__(self, accounts: dict[int, Account], transfers: dict[int, Transfer], now_ns: int) -> None:
        self.accounts = accounts
        self.transfers = transfers
        self.now_ns = now_ns  # wall clock for expiry decisions
        self.new_accounts: list[Account] = []
        self.new_transfers: list[Transfer] = []
        self.changed_account_ids: set[int] = set()
        self.changed_pending_ids: set[int] = set()
        self.history: list[BalanceSnapshot] = []
        self.expired = 0
        self._saved_accounts: dict[int, Account] | None = None
        self._saved_status: dict[int, int] = {}
        self._inserted_ids: tuple[list[int], list[int]] = ([], [])
        self._marks = (0, 0, 0, 0)

    # --- undo journal for linked chains ---
    def begin(self) -> None:
        self._saved_accounts = {}
        self._saved_status = {}
        self._inserted_ids = ([], [])
        self._marks = (len(self.new_accounts), len(self.new_transfers), len(self.history), self.expired)

    def commit(self) -> None:
        self._saved_accounts = None

    def rollback(self) -> None:
        saved = self._saved_accounts
        assert saved is not None, "rollback without begin"
        for account_id, copy in saved.items():
            account = self.accounts.get(account_id)
            if account is not None:
                _restore(account, copy)
        for transfer_id, status in self._saved_status.items():
            self.transfers[transfer_id].pending_status = status
        new_account_ids, new_transfer_ids = self._inserted_ids
        for account_id in new_account_ids:
            del self.accounts[account_id]
        for transfer_id in new_transfer_ids:
            del self.transfers[transfer_id]
        n_acc, n_tr, n_hist, n_exp = self._marks
        del self.new_accounts[n_acc:]
        del self.new_transfers[n_tr:]
        del self.history[n_hist:]
        self.expired = n_exp
        self._saved_accounts = None

    def _touch(self, account: Account) -> None:
        saved = self._saved_accounts
        if saved is not None and account.id not in saved:
            saved[account.id] = account.copy()
        self.changed_account_ids.add(account.id)

    def _set_status(self, transfer: Transfer, status: int) -> None:
        if self._saved_accounts is not None and transfer.id not in self._saved_status:
            self._saved_status[transfer.id] = transfer.pending_status
        transfer.pending_status = status
        self.changed_pending_ids.add(transfer.id)

    def _insert_account(self, account: Account) -> None:
        self.accounts[account.id] = account
        self.new_accounts.append(account)
        if self._saved_accounts is not None:
            self._inserted_ids[0].append(account.id)

    def _insert_transfer(self, transfer: Transfer) -> None:
        self.transfers[transfer.id] = transfer
        self.new_transfers.append(transfer)
        if self._saved_accounts is not None:
            self._inserted_ids[1].append(transfer.id)

    def _record_history(self, account: Account, transfer: Transfer) -> None:
        if account.flags & AF_HISTORY:
            self.history.append(BalanceSnapshot(
                account.id, transfer.timestamp, transfer.id,
                account.debits_pending, account.debits_posted,
                account.credits_pending, account.credits_posted,
            ))


def _restore(account: Account, copy: Account) -> None:
    account.flags = copy.flags
    account.debits_pending = copy.debits_pending
    account.debits_posted = copy.debits_posted
    account.credits_pending = copy.credits_pending
    account.credits_posted = copy.credits_posted


Item = TypeVar("Item", Account, Transfer)


def _run_chains(
    items: Sequence[Item],
    snap: Snapshot,
    first_timestamp: int,
    apply_one: Callable[[Snapshot, Item, int], int],
    linked_bit: int,
    ok_results: tuple[int, int],
    failed: int,
    chain_open: int,
) -> list[int]:
    n = len(items)
    results = [0] * n
    chain_start = -1
    i = 0
    while i < n:
        item = items[i]
        linked = item.flags & linked_bit
        if linked and chain_start < 0:
            chain_start = i
            snap.begin()
        if linked and i == n - 1:
            result = chain_open
        else:
            result = apply_one(snap, item, first_timestamp + i)
        results[i] = result
        if chain_start >= 0:
            if result not in ok_results:
                snap.rollback()
                for j in range(chain_start, i):
                    results[j] = failed
                # Everything up to the chain's last item (the first without the bit) fails too.
                j = i
                while j < n - 1 and items[j].flags & linked_bit:
                    j += 1
                    results[j] = failed
                if j == n - 1 and items[j].flags & linked_bit and j != i:
                    results[j] = chain_open
                chain_start = -1
                i = j + 1
                continue
            if not linked:
                snap.commit()
                chain_start = -1
        i += 1
    return results


# --------------------------------------------------------------------- accounts

def create_accounts(snap: Snapshot, accounts: Sequence[Account], first_timestamp: int) -> list[int]:
    """Results (CreateAccountResult values) for `accounts`; item i gets timestamp first_timestamp + i."""
    return _run_chains(
        accounts, snap, first_timestamp, _create_account, AF_LINKED,
        (A_OK, A_EXISTS), int(_A.LINKED_EVENT_FAILED), int(_A.LINKED_EVENT_CHAIN_OPEN),
    )


def _create_account(snap: Snapshot, a: Account, timestamp: int) -> int:
    if a.timestamp != 0:
        return _A.TIMESTAMP_MUST_BE_ZERO
    if not 0 < a.id <= ID_MAX:
        return _A.ID_INVALID
    if a.flags & ~ACCOUNT_FLAGS_ALL or (a.flags & AF_DEBITS_LIMIT and a.flags & AF_CREDITS_LIMIT):
        return _A.FLAGS_INVALID
    if a.currency not in CURRENCIES:
        return _A.CURRENCY_INVALID
    if a.code not in ACCOUNT_CODES:
        return _A.CODE_INVALID
    if a.debits_pending or a.debits_posted or a.credits_pending or a.credits_posted:
        return _A.BALANCES_MUST_BE_ZERO
    if not 0 <= a.user_data < 2**64:
        return _A.ID_INVALID
    existing = snap.accounts.get(a.id)
    if existing is not None:
        # CLOSED is state, not identity: an account closed since its creation
        # still "exists" for a replay of that creation.
        same = (
            existing.currency == a.currency and existing.code == a.code
            and (existing.flags | AF_CLOSED) == (a.flags | AF_CLOSED)
            and existing.user_data == a.user_data
        )
        return A_EXISTS if same else _A.EXISTS_WITH_DIFFERENT_FIELDS
    snap._insert_account(Account(a.id, a.currency, a.code, a.flags, a.user_data, timestamp))
    return A_OK


# -------------------------------------------------------------------- transfers

def create_transfers(snap: Snapshot, transfers: Sequence[Transfer], first_timestamp: int) -> list[int]:
    """Results (CreateTransferResult values) for `transfers`; item i gets timestamp first_timestamp + i."""
    return _run_chains(
        transfers, snap, first_timestamp, _create_transfer, F_LINKED,
        (T_OK, T_EXISTS), int(_T.LINKED_EVENT_FAILED), int(_T.LINKED_EVENT_CHAIN_OPEN),
    )


def _create_transfer(snap: Snapshot, t: Transfer, timestamp: int) -> int:
    if t.timestamp != 0:
        return _T.TIMESTAMP_MUST_BE_ZERO
    if not 0 < t.id <= ID_MAX:
        return _T.ID_INVALID
    flags = t.flags
    if flags & ~TRANSFER_FLAGS_CLIENT:
        return _T.FLAGS_INVALID
    phase = flags & (F_PENDING | F_POST | F_VOID)
    if phase & (phase - 1):  # more than one of pending / post / void
        return _T.FLAGS_INVALID
    if flags & F_CLOSING and not flags & F_PENDING:
        return _T.FLAGS_INVALID
    if not 0 <= t.user_data < 2**64:
        return _T.ID_INVALID
    if phase & (F_POST | F_VOID):
        return _post_or_void(snap, t, timestamp)

    dr_id, cr_id, amount = t.debit_account_id, t.credit_account_id, t.amount
    if not (0 < dr_id <= ID_MAX and 0 < cr_id <= ID_MAX):
        return _T.ACCOUNT_ID_INVALID
    if dr_id == cr_id:
        return _T.SAME_ACCOUNT
    if t.pending_id != 0:
        return _T.PENDING_ID_INVALID
    # Wire types are uint32, but the domain API takes Python ints: bound them here so an
    # out-of-range value is a result, not an int64 overflow inside the commit.
    if (t.timeout_s and not flags & F_PENDING) or not 0 <= t.timeout_s <= U32_MAX:
        return _T.TIMEOUT_INVALID
    if not 0 < amount <= AMOUNT_MAX:
        return _T.AMOUNT_INVALID
    if not 0 < t.code <= U32_MAX:
        return _T.CODE_INVALID
    if t.currency not in CURRENCIES:
        return _T.CURRENCY_INVALID
    existing = snap.transfers.get(t.id)
    if existing is not None:
        return _exists(existing, t)
    dr = snap.accounts.get(dr_id)
    cr = snap.accounts.get(cr_id)
    if dr is None or cr is None:
        return _T.ACCOUNT_NOT_FOUND
    if dr.currency != t.currency or cr.currency != t.currency:
        return _T.CURRENCY_MISMATCH
    if dr.flags & AF_CLOSED or cr.flags & AF_CLOSED:
        return _T.ACCOUNT_CLOSED
    dr_debits = dr.debits_pending + dr.debits_posted + amount
    cr_credits = cr.credits_pending + cr.credits_posted + amount
    if dr_debits > AMOUNT_MAX or cr_credits > AMOUNT_MAX:
        return _T.OVERFLOW
    if dr.flags & AF_DEBITS_LIMIT and dr_debits > dr.credits_posted:
        return _T.EXCEEDS_CREDITS
    if cr.flags & AF_CREDITS_LIMIT and cr_credits > cr.debits_posted:
        return _T.EXCEEDS_DEBITS

    snap._touch(dr)
    snap._touch(cr)
    stored = Transfer(
        t.id, dr_id, cr_id, amount, 0, t.currency, t.code, flags, t.user_data, t.timeout_s, timestamp,
    )
    if flags & F_PENDING:
        dr.debits_pending += amount
        cr.credits_pending += amount
        stored.pending_status = S_PENDING
        if t.timeout_s:
            stored.expires_at = timestamp + t.timeout_s * NS_PER_S
        if flags & F_CLOSING_DEBIT:
            dr.flags |= AF_CLOSED
        if flags & F_CLOSING_CREDIT:
            cr.flags |= AF_CLOSED
    else:
        dr.debits_posted += amount
        cr.credits_posted += amount
    snap._insert_transfer(stored)
    snap._record_history(dr, stored)
    snap._record_history(cr, stored)
    return T_OK


def _exists(existing: Transfer, t: Transfer) -> int:
    """EXISTS when `t` asks for what `existing` already is; post/void may leave inherited fields zero."""
    if existing.flags != t.flags or existing.pending_id != t.pending_id or existing.user_data != t.user_data \
            or existing.timeout_s != t.timeout_s:
        return _T.EXISTS_WITH_DIFFERENT_FIELDS
    inherits = bool(t.flags & (F_POST | F_VOID))
    for mine, theirs, empty in (
        (t.debit_account_id, existing.debit_account_id, 0),
        (t.credit_account_id, existing.credit_account_id, 0),
        (t.amount, existing.amount, 0),
        (t.currency, existing.currency, ""),
        (t.code, existing.code, 0),
    ):
        if mine != theirs and not (inherits and mine == empty):
            return _T.EXISTS_WITH_DIFFERENT_FIELDS
    return T_EXISTS


def _post_or_void(snap: Snapshot, t: Transfer, timestamp: int) -> int:
    flags = t.flags
    # Ranges are checked on both sides: Python ints can be negative even where
    # the wire type is unsigned, and a negative post amount would post a
    # negative sum (balances going below zero while still "balanced").
    if not 0 < t.pending_id <= ID_MAX or t.pending_id == t.id:
        return _T.PENDING_ID_INVALID
    if t.timeout_s:
        return _T.TIMEOUT_INVALID
    if not (0 <= t.debit_account_id <= ID_MAX and 0 <= t.credit_account_id <= ID_MAX):
        return _T.ACCOUNT_ID_INVALID
    if not 0 <= t.amount <= AMOUNT_MAX:
        return _T.AMOUNT_INVALID
    if not 0 <= t.code <= U32_MAX:
        return _T.CODE_INVALID
    if t.currency and t.currency not in CURRENCIES:
        return _T.CURRENCY_INVALID
    existing = snap.transfers.get(t.id)
    if existing is not None:
        result = _exists(existing, t)
        # Post amount 0 means "the full pending amount", not "inherit whatever
        # was posted": its replay must not match an earlier partial post.
        if result == T_EXISTS and flags & F_POST and t.amount == 0:
            p = snap.transfers.get(t.pending_id)
            if p is not None and existing.amount != p.amount:
                return _T.EXISTS_WITH_DIFFERENT_FIELDS
        return result
    p = snap.transfers.get(t.pending_id)
    if p is None:
        return _T.PENDING_NOT_FOUND
    if not p.flags & F_PENDING:
        return _T.PENDING_NOT_PENDING
    if (t.debit_account_id and t.debit_account_id != p.debit_account_id) \
            or (t.credit_account_id and t.credit_account_id != p.credit_account_id) \
            or (t.currency and t.currency != p.currency) \
            or (t.code and t.code != p.code):
        return _T.PENDING_FIELDS_DIFFER
    status = p.pending_status
    if status == S_POSTED:
        return _T.PENDING_ALREADY_POSTED
    if status == S_VOIDED:
        return _T.PENDING_ALREADY_VOIDED
    if status == S_EXPIRED or (p.expires_at and p.expires_at <= snap.now_ns):
        return _T.PENDING_EXPIRED
    assert status == S_PENDING, f"pending transfer {p.id} has status {status}"
    amount = t.amount or p.amount
    if amount > p.amount:
        return _T.EXCEEDS_PENDING_AMOUNT
    if flags & F_VOID and amount != p.amount:
        return _T.PENDING_FIELDS_DIFFER
    dr = snap.accounts[p.debit_account_id]
    cr = snap.accounts[p.credit_account_id]
    if flags & F_POST and (dr.debits_posted + amount > AMOUNT_MAX or cr.credits_posted + amount > AMOUNT_MAX):
        return _T.OVERFLOW

    snap._touch(dr)
    snap._touch(cr)
    dr.debits_pending -= p.amount
    cr.credits_pending -= p.amount
    stored = Transfer(
        t.id, p.debit_account_id, p.credit_account_id, amount, p.id, p.currency, p.code, flags,
        t.user_data, 0, timestamp,
    )
    if flags & F_POST:
        dr.debits_posted += amount
        cr.credits_posted += amount
        snap._set_status(p, S_POSTED)
    else:
        _reopen_closed_by(p, dr, cr)
        snap._set_status(p, S_VOIDED)
    snap._insert_transfer(stored)
    snap._record_history(dr, stored)
    snap._record_history(cr, stored)
    return T_OK


def _reopen_closed_by(p: Transfer, dr: Account, cr: Account) -> None:
    if p.flags & F_CLOSING_DEBIT:
        dr.flags &= ~AF_CLOSED
    if p.flags & F_CLOSING_CREDIT:
        cr.flags &= ~AF_CLOSED


# ---------------------------------------------------------------------- expiry

def expire_pending(snap: Snapshot, pending: Sequence[Transfer], first_timestamp: int) -> int:
    """Void every still-pending transfer in `pending` whose timeout has passed.

    Each expiry is recorded as a ledger-made void transfer (id EXPIRY_ID_BASE +
    pending id, flags VOID_PENDING | EXPIRY) so statements show when and why the
    hold was released. Returns how many expired.
    """
    count = 0
    for i, p in enumerate(pending):
        if p.pending_status != S_PENDING or not p.expires_at or p.expires_at > snap.now_ns:
            continue
        dr = snap.accounts[p.debit_account_id]
        cr = snap.accounts[p.credit_account_id]
        snap._touch(dr)
        snap._touch(cr)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        _reopen_closed_by(p, dr, cr)
        snap._set_status(p, S_EXPIRED)
        void = Transfer(
            EXPIRY_ID_BASE + p.id, p.debit_account_id, p.credit_account_id, p.amount, p.id,
            p.currency, p.code, F_VOID | F_EXPIRY, p.user_data, 0, first_timestamp + i,
        )
        snap._insert_transfer(void)
        snap._record_history(dr, void)
        snap._record_history(cr, void)
        count += 1
    snap.expired += count
    return count


def check_balanced(accounts: Sequence[Account]) -> dict[str, tuple[int, int]]:
    """Per currency (debits, credits) over `accounts`, pending and posted separately summed.

    Returns only currencies where they differ: an empty dict means balanced.
    """
    totals: dict[str, list[int]] = {}
    for a in accounts:
        row = totals.setdefault(a.currency, [0, 0, 0, 0])
        row[0] += a.debits_pending
        row[1] += a.debits_posted
        row[2] += a.credits_pending
        row[3] += a.credits_posted
    return {
        c: (dp + dpo, cp + cpo)
        for c, (dp, dpo, cp, cpo) in totals.items()
        if dp != cp or dpo != cpo
    }
