"""Random ledger histories through LedgerService + SQLite, step by step against a reference model.

The reference model here is written from the rules (the proto's comments, the
check order the unit tables pin down), not from core/ledger/state_machine.py,
and on purpose it works differently: plain records in dicts, a copy of the
whole state to undo a failed linked chain (the state machine keeps an undo
journal), and its own bookkeeping of timestamps and expiry. Every step goes to
both; the store must answer what the model answers, and afterwards hold
exactly the model's rows. On top of that, after every step:

* per currency, debits == credits, pending and posted separately (`currency_totals`);
* no account with a limit flag is over its limit;
* replaying an earlier request answers EXISTS for every item that was OK and,
  unless something new succeeds, moves no balance (an item that failed before
  is not recorded, so its replay is evaluated afresh and may now succeed);
* a failed linked chain leaves no trace: none of its new ids can be looked up.

Time is injected (`clock_ns`), the sweeper is off (`expiry_interval_s=0`) and
a `tick` step moves the clock and may call `expire_due()`; so runs are
deterministic and hypothesis can shrink and replay them.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from dualflow.core.ledger.batch import ExpirePending
from dualflow.core.ledger.model import (
    BATCH_MAX,
    EXPIRY_ID_BASE,
    ID_MAX,
    NS_PER_S,
    Account,
    AccountCode,
    AccountFilter,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from dualflow.core.ledger.service import LedgerService
from dualflow.core.ledger.sqlite_store import SqliteLedgerStore
from dualflow.core.money import is_currency

A = CreateAccountResult
R = CreateTransferResult
AF = AccountFlags
TF = TransferFlags

NOW0 = 1_750_000_000 * NS_PER_S
AMOUNT_MAX = 2**63 - 1
U64 = 2**64
CURRENCIES = ("CNY", "JPY", "USD")
ACCOUNT_IDS = range(1, 9)  # ids the steps create; 9 never exists
ACCOUNT_CODES = {int(c) for c in AccountCode}
ACCOUNT_FLAG_BITS = sum(int(f) for f in AF.__members__.values())
TRANSFER_FLAG_BITS = sum(int(f) for f in TF.__members__.values()) & ~TF.EXPIRY
# An expiry sweep is one ExpirePending command; a command reserves one
# timestamp per item it may carry.
EXPIRY_TIMESTAMPS = ExpirePending().limit


# ------------------------------------------------------------------- the model

@dataclass
class MAccount:
    id: int
    currency: str
    code: int
    flags: int
    user_data: int
    timestamp: int
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass
class MTransfer:
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int
    currency: str
    code: int
    flags: int
    user_data: int
    timeout_s: int
    timestamp: int
    pending_status: int = PendingStatus.NONE
    expires_at: int = 0


@dataclass
class Model:
    now: int = NOW0
    last_timestamp: int = 0
    accounts: dict[int, MAccount] = field(default_factory=dict)
    transfers: dict[int, MTransfer] = field(default_factory=dict)
    history: dict[int, list[tuple[int, ...]]] = field(default_factory=dict)

    # ---- state as a value, for chains
    def _save(self) -> tuple[Any, ...]:
        return (
            {k: replace(v) for k, v in self.accounts.items()},
            {k: replace(v) for k, v in self.transfers.items()},
            {k: list(v) for k, v in self.history.items()},
        )

    def _restore(self, saved: tuple[Any, ...]) -> None:
        self.accounts, self.transfers, self.history = saved

    def _reserve(self, count: int) -> int:
        self.last_timestamp = max(self.last_timestamp + count, self.now)
        return self.last_timestamp - count + 1

    # ---- batches
    def create_accounts(self, items: Sequence[Account]) -> tuple[list[int], list[int]]:
        return self._batch(items, self._account, A)

    def create_transfers(self, items: Sequence[Transfer]) -> tuple[list[int], list[int]]:
        return self._batch(items, self._transfer, R)

    def _batch(self, items: Sequence[Any], apply: Callable[[Any, int], int], codes: Any) -> tuple[list[int], list[int]]:
        n = len(items)
        first = self._reserve(n)
        results = [0] * n
        for span, is_open in chains(items):
            if len(span) == 1 and not is_open:
                results[span[0]] = apply(items[span[0]], first + span[0])
                continue
            saved = self._save()
            failed_at = -1
            for k in span:
                r = codes.LINKED_EVENT_CHAIN_OPEN if is_open and k == span[-1] else apply(items[k], first + k)
                results[k] = r
                if r not in (codes.OK, codes.EXISTS):
                    failed_at = k
                    break
            if failed_at >= 0:
                self._restore(saved)
                for k in span:
                    if k != failed_at:
                        results[k] = codes.LINKED_EVENT_FAILED
                if is_open:
                    results[span[-1]] = codes.LINKED_EVENT_CHAIN_OPEN
        rows = self.accounts if codes is A else self.transfers
        stamps = [
            first + k if r == codes.OK else rows[items[k].id].timestamp if r == codes.EXISTS else 0
            for k, r in enumerate(results)
        ]
        return results, stamps

    # ---- one account
    def _account(self, a: Account, ts: int) -> int:
        if a.timestamp:
            return A.TIMESTAMP_MUST_BE_ZERO
        if not 1 <= a.id <= ID_MAX:
            return A.ID_INVALID
        both_limits = AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.CREDITS_MUST_NOT_EXCEED_DEBITS
        if a.flags & ~ACCOUNT_FLAG_BITS or a.flags & both_limits == both_limits:
            return A.FLAGS_INVALID
        if not is_currency(a.currency):
            return A.CURRENCY_INVALID
        if a.code not in ACCOUNT_CODES:
            return A.CODE_INVALID
        if (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted) != (0, 0, 0, 0):
            return A.BALANCES_MUST_BE_ZERO
        if not 0 <= a.user_data < U64:
            return A.ID_INVALID
        e = self.accounts.get(a.id)
        if e is not None:
            same = (e.currency, e.code, e.flags & ~AF.CLOSED, e.user_data) == \
                (a.currency, a.code, a.flags & ~AF.CLOSED, a.user_data)
            return A.EXISTS if same else A.EXISTS_WITH_DIFFERENT_FIELDS
        self.accounts[a.id] = MAccount(a.id, a.currency, a.code, a.flags, a.user_data, ts)
        return A.OK

    # ---- one transfer
    def _transfer(self, t: Transfer, ts: int) -> int:
        if t.timestamp:
            return R.TIMESTAMP_MUST_BE_ZERO
        if not 1 <= t.id <= ID_MAX:
            return R.ID_INVALID
        if t.flags & ~TRANSFER_FLAG_BITS:
            return R.FLAGS_INVALID
        if sum(1 for f in (TF.PENDING, TF.POST_PENDING, TF.VOID_PENDING) if t.flags & f) > 1:
            return R.FLAGS_INVALID
        if t.flags & (TF.CLOSING_DEBIT | TF.CLOSING_CREDIT) and not t.flags & TF.PENDING:
            return R.FLAGS_INVALID
        if not 0 <= t.user_data < U64:
            return R.ID_INVALID
        if t.flags & (TF.POST_PENDING | TF.VOID_PENDING):
            return self._settle(t, ts)
        if not (1 <= t.debit_account_id <= ID_MAX and 1 <= t.credit_account_id <= ID_MAX):
            return R.ACCOUNT_ID_INVALID
        if t.debit_account_id == t.credit_account_id:
            return R.SAME_ACCOUNT
        if t.pending_id:
            return R.PENDING_ID_INVALID
        if t.timeout_s and not t.flags & TF.PENDING:
            return R.TIMEOUT_INVALID
        if not 1 <= t.amount <= AMOUNT_MAX:
            return R.AMOUNT_INVALID
        if not t.code:
            return R.CODE_INVALID
        if not is_currency(t.currency):
            return R.CURRENCY_INVALID
        if t.id in self.transfers:
            return self._same_request(self.transfers[t.id], t)
        dr = self.accounts.get(t.debit_account_id)
        cr = self.accounts.get(t.credit_account_id)
        if dr is None or cr is None:
            return R.ACCOUNT_NOT_FOUND
        if not dr.currency == cr.currency == t.currency:
            return R.CURRENCY_MISMATCH
        if (dr.flags | cr.flags) & AF.CLOSED:
            return R.ACCOUNT_CLOSED
        dr_debits = dr.debits_pending + dr.debits_posted + t.amount
        cr_credits = cr.credits_pending + cr.credits_posted + t.amount
        if dr_debits > AMOUNT_MAX or cr_credits > AMOUNT_MAX:
            return R.OVERFLOW
        if dr.flags & AF.DEBITS_MUST_NOT_EXCEED_CREDITS and dr_debits > dr.credits_posted:
            return R.EXCEEDS_CREDITS
        if cr.flags & AF.CREDITS_MUST_NOT_EXCEED_DEBITS and cr_credits > cr.debits_posted:
            return R.EXCEEDS_DEBITS
        row = MTransfer(t.id, t.debit_account_id, t.credit_account_id, t.amount, 0, t.currency, t.code,
                        t.flags, t.user_data, t.timeout_s, ts)
        if t.flags & TF.PENDING:
            dr.debits_pending += t.amount
            cr.credits_pending += t.amount
            row.pending_status = PendingStatus.PENDING
            row.expires_at = ts + t.timeout_s * NS_PER_S if t.timeout_s else 0
            if t.flags & TF.CLOSING_DEBIT:
                dr.flags |= AF.CLOSED
            if t.flags & TF.CLOSING_CREDIT:
                cr.flags |= AF.CLOSED
        else:
            dr.debits_posted += t.amount
            cr.credits_posted += t.amount
        self._record(row, dr, cr)
        return R.OK

    def _settle(self, t: Transfer, ts: int) -> int:
        posting = bool(t.flags & TF.POST_PENDING)
        if not 1 <= t.pending_id <= ID_MAX or t.pending_id == t.id:
            return R.PENDING_ID_INVALID
        if t.timeout_s:
            return R.TIMEOUT_INVALID
        if not (0 <= t.debit_account_id <= ID_MAX and 0 <= t.credit_account_id <= ID_MAX):
            return R.ACCOUNT_ID_INVALID
        if not 0 <= t.amount <= AMOUNT_MAX:
            return R.AMOUNT_INVALID
        if t.currency and not is_currency(t.currency):
            return R.CURRENCY_INVALID
        if t.id in self.transfers:
            return self._same_request(self.transfers[t.id], t)
        p = self.transfers.get(t.pending_id)
        if p is None:
            return R.PENDING_NOT_FOUND
        if not p.flags & TF.PENDING:
            return R.PENDING_NOT_PENDING
        for asked, actual in ((t.debit_account_id, p.debit_account_id), (t.credit_account_id, p.credit_account_id),
                              (t.currency, p.currency), (t.code, p.code)):
            if asked and asked != actual:
                return R.PENDING_FIELDS_DIFFER
        if p.pending_status == PendingStatus.POSTED:
            return R.PENDING_ALREADY_POSTED
        if p.pending_status == PendingStatus.VOIDED:
            return R.PENDING_ALREADY_VOIDED
        if p.pending_status == PendingStatus.EXPIRED or 0 < p.expires_at <= self.now:
            return R.PENDING_EXPIRED
        amount = t.amount or p.amount
        if amount > p.amount:
            return R.EXCEEDS_PENDING_AMOUNT
        if not posting and amount != p.amount:
            return R.PENDING_FIELDS_DIFFER
        dr, cr = self.accounts[p.debit_account_id], self.accounts[p.credit_account_id]
        assert dr.debits_posted + amount <= AMOUNT_MAX, "a post can never overflow: its hold was counted"
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if posting:
            dr.debits_posted += amount
            cr.credits_posted += amount
            p.pending_status = PendingStatus.POSTED
        else:
            self._reopen(p, dr, cr)
            p.pending_status = PendingStatus.VOIDED
        row = MTransfer(t.id, p.debit_account_id, p.credit_account_id, amount, p.id, p.currency, p.code,
                        t.flags, t.user_data, 0, ts)
        self._record(row, dr, cr)
        return R.OK

    def _same_request(self, e: MTransfer, t: Transfer) -> int:
        """EXISTS iff `t` asks for exactly what `e` is (post/void may leave the pending's fields zero)."""
        if (e.flags, e.pending_id, e.user_data, e.timeout_s) != (t.flags, t.pending_id, t.user_data, t.timeout_s):
            return R.EXISTS_WITH_DIFFERENT_FIELDS
        settling = bool(t.flags & (TF.POST_PENDING | TF.VOID_PENDING))
        for asked, stored in ((t.debit_account_id, e.debit_account_id), (t.credit_account_id, e.credit_account_id),
                              (t.currency, e.currency), (t.code, e.code)):
            if asked != stored and not (settling and not asked):
                return R.EXISTS_WITH_DIFFERENT_FIELDS
        if settling and t.amount == 0:
            # 0 asks for the whole hold: the same request only if the whole hold was settled.
            wanted = self.transfers[e.pending_id].amount
        else:
            wanted = t.amount
        return R.EXISTS if wanted == e.amount else R.EXISTS_WITH_DIFFERENT_FIELDS

    @staticmethod
    def _reopen(p: MTransfer, dr: MAccount, cr: MAccount) -> None:
        if p.flags & TF.CLOSING_DEBIT:
            dr.flags &= ~AF.CLOSED
        if p.flags & TF.CLOSING_CREDIT:
            cr.flags &= ~AF.CLOSED

    def _record(self, row: MTransfer, dr: MAccount, cr: MAccount) -> None:
        self.transfers[row.id] = row
        for acc in (dr, cr):
            if acc.flags & AF.HISTORY:
                self.history.setdefault(acc.id, []).append((
                    row.timestamp, row.id,
                    acc.debits_pending, acc.debits_posted, acc.credits_pending, acc.credits_posted,
                ))

    # ---- expiry
    def expire_due(self) -> int:
        due = sorted(
            (p for p in self.transfers.values()
             if p.pending_status == PendingStatus.PENDING and 0 < p.expires_at <= self.now),
            key=lambda p: (p.expires_at, p.id),
        )
        if not due:
            return 0
        first = self._reserve(EXPIRY_TIMESTAMPS)
        for i, p in enumerate(due):
            dr, cr = self.accounts[p.debit_account_id], self.accounts[p.credit_account_id]
            dr.debits_pending -= p.amount
            cr.credits_pending -= p.amount
            self._reopen(p, dr, cr)
            p.pending_status = PendingStatus.EXPIRED
            self._record(MTransfer(
                EXPIRY_ID_BASE + p.id, p.debit_account_id, p.credit_account_id, p.amount, p.id, p.currency,
                p.code, TF.VOID_PENDING | TF.EXPIRY, p.user_data, 0, first + i,
            ), dr, cr)
        return len(due)


def chains(items: Sequence[Any]) -> list[tuple[list[int], bool]]:
    """Index spans of the batch's chains (a lone item is a chain of one) and whether each is left open."""
    out, start = [], 0
    for k, item in enumerate(items):
        if not item.flags & TF.LINKED:  # the same bit for accounts and transfers
            out.append((list(range(start, k + 1)), False))
            start = k + 1
    if start < len(items):
        out.append((list(range(start, len(items))), True))
    return out


# ------------------------------------------------------------- drawing steps

def pick(data: st.DataObject, *choices: tuple[int, Any]) -> Any:
    """One of `choices` by weight; a strategy is drawn from. The first choice is where shrinking goes."""
    k = data.draw(st.integers(0, sum(w for w, _ in choices) - 1))
    for weight, value in choices:
        if k < weight:
            return data.draw(value) if isinstance(value, st.SearchStrategy) else value
        k -= weight
    raise AssertionError("unreachable")


def draw_account(data: st.DataObject, account_id: int | None = None, valid: bool = False) -> Account:
    a = _draw_account(data, account_id, valid)
    if not valid and pick(data, (15, False), (1, True)):
        fault = data.draw(st.sampled_from(["id", "balance", "timestamp", "user_data"]))
        if fault == "id":
            a.id = data.draw(st.sampled_from([0, -1, EXPIRY_ID_BASE]))
        elif fault == "balance":
            a.credits_posted = 1
        elif fault == "timestamp":
            a.timestamp = 1
        else:
            a.user_data = U64
    return a


def _draw_account(data: st.DataObject, account_id: int | None, valid: bool) -> Account:
    return Account(
        id=account_id if account_id is not None else data.draw(st.sampled_from(ACCOUNT_IDS)),
        currency=data.draw(st.sampled_from(CURRENCIES)) if valid else pick(
            data, (12, st.sampled_from(CURRENCIES)), (1, "XXX")),
        code=data.draw(st.integers(1, 10)) if valid else pick(
            data, (12, st.integers(1, 10)), (1, st.sampled_from([0, 11]))),
        flags=pick(
            data, (4, 0), (3, AF.DEBITS_MUST_NOT_EXCEED_CREDITS), (2, AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
            (2, AF.HISTORY), (2, AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.HISTORY),
            (1, AF.CREDITS_MUST_NOT_EXCEED_DEBITS | AF.HISTORY), (0 if valid else 1, AF.CLOSED),
            (0 if valid else 1, AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.CREDITS_MUST_NOT_EXCEED_DEBITS),
        ) | (0 if valid else pick(data, (4, 0), (1, AF.LINKED))),
        user_data=pick(data, (6, 0), (1, st.integers(1, U64 - 1))),
    )


def draw_amount(data: st.DataObject) -> int:
    return pick(data, (20, st.integers(1, 100)), (5, st.integers(101, 10**6)), (1, 0), (1, 2**62),
                (1, AMOUNT_MAX))


# ------------------------------------------------------------- the machine

T_ = TypeVar("T_")


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dualflow-props-")
        self.model = Model()
        self.loop = asyncio.new_event_loop()
        self.svc = LedgerService(
            SqliteLedgerStore(Path(self.dir) / "ledger.db"),
            clock_ns=lambda: self.model.now, expiry_interval_s=0,
        )
        self.run(self.svc.start())
        self.requests: list[tuple[str, list[Any], list[int]]] = []  # (kind, items, results), for replays
        self.next_id = 1
        self.tried_transfer_ids: set[int] = set()
        self.steps = 0
        self.accounts_seen: dict[int, tuple[Any, ...]] = {}

    def run(self, coro: Coroutine[Any, Any, T_]) -> T_:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.svc.stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- submitting to both
    def submit_accounts(self, items: list[Account]) -> list[int]:
        before = set(self.model.accounts)
        want, want_stamps = self.model.create_accounts([replace(a) for a in items])
        got = self.run(self.svc.create_accounts([replace(a) for a in items]))
        assert [A(r).name for r in got.results] == [A(r).name for r in want], items
        assert got.timestamps == want_stamps
        self.check_failed_chains_left_nothing(items, got.results, before, A)
        self.requests.append(("accounts", items, list(got.results)))
        return list(got.results)

    def submit_transfers(self, items: list[Transfer]) -> list[int]:
        before = set(self.model.transfers)
        self.tried_transfer_ids.update(t.id for t in items if 1 <= t.id <= ID_MAX)
        want, want_stamps = self.model.create_transfers([replace(t) for t in items])
        got = self.run(self.svc.create_transfers([replace(t) for t in items]))
        assert [R(r).name for r in got.results] == [R(r).name for r in want], items
        assert got.timestamps == want_stamps
        self.check_failed_chains_left_nothing(items, got.results, before, R)
        self.requests.append(("transfers", items, list(got.results)))
        return list(got.results)

    def check_failed_chains_left_nothing(self, items: list[Any], results: list[int], before: set[int],
                                         codes: Any) -> None:
        created = {item.id for item, r in zip(items, results) if r == codes.OK}
        for span, _ in chains(items):
            if all(results[k] in (codes.OK, codes.EXISTS) for k in span):
                continue
            assert codes.OK not in [results[k] for k in span], "a failed chain reported an item OK"
            fresh = sorted({items[k].id for k in span if 1 <= items[k].id <= ID_MAX} - before - created)
            if fresh:
                lookup = self.svc.lookup_accounts if codes is A else self.svc.lookup_transfers
                assert self.run(lookup(fresh)) == [], f"a failed chain left rows behind: {fresh}"

    # ---- drawing transfers from the model's state
    def fresh_id(self, data: st.DataObject) -> int:
        if self.next_id > 1 and pick(data, (14, False), (1, True)):
            return self.next_id - 1  # the same id again, often within one batch
        self.next_id += 1
        return self.next_id - 1

    def account_id(self, data: st.DataObject) -> int:
        existing = sorted(self.model.accounts)
        if existing:
            return pick(data, (12, st.sampled_from(existing)), (1, st.integers(1, 9)))
        return data.draw(st.integers(1, 9))

    def draw_transfer(self, data: st.DataObject, kind: str = "") -> Transfer:
        m = self.model
        kind = kind or pick(data, (8, "plain"), (7, "pending"), (2, "post"), (1, "void"), (2, "reuse"), (2, "junk"))
        linked = pick(data, (4, 0), (1, TF.LINKED))
        clients = [t for t in m.transfers.values() if t.id <= ID_MAX]
        if kind == "reuse" and clients:
            e = data.draw(st.sampled_from(sorted(clients, key=lambda t: t.id)))
            t = Transfer(e.id, e.debit_account_id, e.credit_account_id, e.amount, e.pending_id, e.currency, e.code,
                         e.flags, e.user_data, e.timeout_s)
            change = pick(data, (4, ""), (1, "amount"), (1, "user_data"), (1, "code"), (1, "linked"))
            if change == "amount":
                t.amount += 1
            elif change == "user_data":
                t.user_data += 1
            elif change == "code":
                t.code += 1
            elif change == "linked":
                t.flags ^= TF.LINKED
            return t
        if kind in ("post", "void"):
            holds = sorted((t for t in clients if t.flags & TF.PENDING), key=lambda t: t.id)
            open_holds = [t for t in holds if t.pending_status == PendingStatus.PENDING]
            p = pick(data, (6, st.sampled_from(open_holds) if open_holds else st.none()),
                     (2, st.sampled_from(holds) if holds else st.none()), (1, None))
            base = p.amount if p else 10
            if kind == "post":
                amount = pick(data, (3, 0), (3, st.integers(1, max(base, 1))), (2, base), (1, base + 1))
            else:
                amount = pick(data, (4, 0), (3, base), (1, st.integers(1, max(base, 1))))
            return Transfer(
                id=self.fresh_id(data),
                debit_account_id=pick(data, (8, 0), (2, p.debit_account_id if p else 1), (1, st.integers(1, 9))),
                credit_account_id=pick(data, (8, 0), (2, p.credit_account_id if p else 2), (1, st.integers(1, 9))),
                amount=amount,
                pending_id=p.id if p else pick(data, (3, st.integers(1, self.next_id + 1)), (1, 0)),
                currency=pick(data, (8, ""), (2, p.currency if p else "CNY"), (1, st.sampled_from(CURRENCIES))),
                code=pick(data, (8, 0), (2, p.code if p else 1), (1, st.integers(1, 3))),
                flags=linked | (TF.POST_PENDING if kind == "post" else TF.VOID_PENDING),
                user_data=pick(data, (6, 0), (1, st.integers(1, 1000))),
                timeout_s=pick(data, (19, 0), (1, 1)),
            )
        dr = self.account_id(data)
        dr_row = m.accounts.get(dr)
        partners = sorted(a.id for a in m.accounts.values() if dr_row and a.id != dr and a.currency == dr_row.currency)
        cr = pick(data, (8, st.sampled_from(partners)), (2, st.integers(1, 9))) if partners else self.account_id(data)
        flags = linked
        timeout_s = 0
        if kind == "pending":
            flags |= TF.PENDING | pick(data, (12, 0), (1, TF.CLOSING_DEBIT), (1, TF.CLOSING_CREDIT))
            timeout_s = pick(data, (1, 0), (2, st.integers(1, 3)))
        t = Transfer(
            id=self.fresh_id(data), debit_account_id=dr, credit_account_id=cr, amount=draw_amount(data),
            currency=dr_row.currency if dr_row and pick(data, (12, True), (1, False)) else pick(
                data, (3, st.sampled_from(CURRENCIES)), (1, "XXX")),
            code=pick(data, (12, st.integers(1, 3)), (1, 0)),
            flags=flags, timeout_s=timeout_s, user_data=pick(data, (6, 0), (1, st.integers(1, U64 - 1))),
        )
        if kind == "junk":
            fault = data.draw(st.sampled_from([
                "id0", "expiry_flag", "same", "timeout", "timeout", "pending_id", "timestamp", "closing",
                "negative", "too_big", "user_data", "account_id", "currency", "currency",
            ]))
            if fault == "id0":
                t.id = 0
            elif fault == "expiry_flag":
                t.flags |= TF.EXPIRY
            elif fault == "same":
                t.credit_account_id = t.debit_account_id
            elif fault == "timeout":
                t.timeout_s, t.flags = 1, t.flags & ~TF.PENDING
            elif fault == "pending_id":
                t.pending_id = max(1, self.next_id - 2)
            elif fault == "timestamp":
                t.timestamp = 1
            elif fault == "closing":
                t.flags = (t.flags & ~TF.PENDING) | TF.CLOSING_DEBIT
            elif fault == "negative":
                t.amount = -t.amount or -1
            elif fault == "too_big":
                t.amount = AMOUNT_MAX + 1
            elif fault == "user_data":
                t.user_data = U64
            elif fault == "currency":
                t.currency = data.draw(st.sampled_from(["XXX", "", "cny", "XAU"]))
            else:
                t.debit_account_id = EXPIRY_ID_BASE + 1
        return t

    # ---- steps
    @initialize(data=st.data())
    def open_accounts(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(ACCOUNT_IDS), min_size=3, max_size=6, unique=True))
        results = self.submit_accounts([draw_account(data, i, valid=True) for i in ids])
        assert results == [A.OK] * len(ids)

    # One rule that picks its action by weight: with one rule per action,
    # Hypothesis' swarm testing switches whole actions off for a run, and half
    # the runs then never make a transfer.
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        has_holds = any(t.flags & TF.PENDING for t in self.model.transfers.values())
        action = pick(data, (6, "create_transfers"), (3 if has_holds else 0, "settle_holds"),
                      (2, "replay"), (2, "tick"), (1, "create_accounts"))
        note(f"step {self.steps + 1}: {action}")
        getattr(self, action)(data)

    def create_accounts(self, data: st.DataObject) -> None:
        self.submit_accounts([draw_account(data) for _ in range(data.draw(st.integers(1, 3)))])

    def create_transfers(self, data: st.DataObject) -> None:
        self.submit_transfers([self.draw_transfer(data) for _ in range(data.draw(st.integers(1, 6)))])

    def settle_holds(self, data: st.DataObject) -> None:
        self.submit_transfers([self.draw_transfer(data, pick(data, (3, "post"), (2, "void")))
                               for _ in range(data.draw(st.integers(1, 3)))])

    def replay(self, data: st.DataObject) -> None:
        transfer_requests = [r for r in self.requests if r[0] == "transfers"]
        if transfer_requests and pick(data, (5, True), (1, False)):
            kind, items, first = data.draw(st.sampled_from(transfer_requests))
        else:
            kind, items, first = data.draw(st.sampled_from(self.requests))
        rows_before = self.store_accounts()
        if kind == "accounts":
            results = self.submit_accounts(items)
            ok, exists = A.OK, A.EXISTS
        else:
            results = self.submit_transfers(items)
            ok, exists = R.OK, R.EXISTS
        for k, (was, now) in enumerate(zip(first, results)):
            if was == ok:
                assert now == exists, f"item {k} was OK, its replay answered {now}"
        if ok not in results:
            assert self.store_accounts() == rows_before, "a replay that created nothing moved balances"

    def tick(self, data: st.DataObject) -> None:
        self.model.now += data.draw(st.integers(0, 3)) * NS_PER_S + data.draw(st.integers(0, NS_PER_S - 1))
        if data.draw(st.booleans()):
            want = self.model.expire_due()
            assert self.run(self.svc.expire_due()) == want

    # ---- checks after every step
    def store_accounts(self) -> dict[int, tuple[Any, ...]]:
        return {a.id: astuple(a) for a in self.run(self.svc.lookup_accounts(list(range(0, 11))))}

    @invariant()
    def store_holds_the_model(self) -> None:
        m = self.model
        accounts = self.store_accounts()
        assert accounts == {i: astuple(a) for i, a in m.accounts.items()}
        ids = sorted(self.tried_transfer_ids | set(m.transfers))
        got = {t.id: astuple(t) for t in self.run(self.svc.lookup_transfers(ids))}
        assert got == {i: astuple(t) for i, t in m.transfers.items()}

        # Limits, read back from the store.
        for (_, _, _, flags, _, _, dp, dpo, cp, cpo) in accounts.values():
            if flags & AF.DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert dp + dpo <= cpo, accounts
            if flags & AF.CREDITS_MUST_NOT_EXCEED_DEBITS:
                assert cp + cpo <= dpo, accounts
            assert all(0 <= b <= AMOUNT_MAX for b in (dp, dpo, cp, cpo)), accounts

        # Double entry, per currency, pending and posted separately.
        totals = self.run(self.svc.currency_totals())
        for c in totals:
            assert c.debits_pending == c.credits_pending and c.debits_posted == c.credits_posted, c
        want: dict[str, list[int]] = {}
        for a in m.accounts.values():
            row = want.setdefault(a.currency, [0, 0, 0, 0])
            for k, v in enumerate((a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)):
                row[k] += v
        assert {c.currency: [c.debits_pending, c.debits_posted, c.credits_pending, c.credits_posted]
                for c in totals} == want

        # Statements and balance history: every transfer moves both its accounts'
        # balances, so only accounts that changed can have new rows; all of them
        # are read back every fifth step to catch rows written where they should not be.
        self.steps += 1
        changed = {i for i, row in accounts.items() if self.accounts_seen.get(i) != row}
        self.accounts_seen = accounts
        for account_id in (m.accounts if self.steps % 5 == 0 else changed):
            flt = AccountFilter(account_id, limit=BATCH_MAX)
            rows, _ = self.run(self.svc.account_balances(flt, ""))
            assert [(b.timestamp, b.transfer_id, b.debits_pending, b.debits_posted, b.credits_pending,
                     b.credits_posted) for b in rows] == m.history.get(account_id, [])
            statement, _ = self.run(self.svc.account_transfers(flt, ""))
            assert [t.id for t in statement] == [
                t.id for t in sorted(m.transfers.values(), key=lambda t: t.timestamp)
                if account_id in (t.debit_account_id, t.credit_account_id)
            ]


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def test_ledger_matches_the_reference_model() -> None:
    run_state_machine_as_test(LedgerMachine, settings=SETTINGS)


# ------------------------------------------------------------------- expiry

async def test_a_pending_transfer_expires_on_an_injected_clock(tmp_path: Path) -> None:
    now = [NOW0]
    svc = LedgerService(SqliteLedgerStore(tmp_path / "ledger.db"), clock_ns=lambda: now[0], expiry_interval_s=0)
    await svc.start()
    try:
        accounts = [Account(1, "CNY", AccountCode.WALLET, AF.DEBITS_MUST_NOT_EXCEED_CREDITS | AF.HISTORY),
                    Account(2, "CNY", AccountCode.POOL)]
        assert (await svc.create_accounts(accounts)).results == [A.OK, A.OK]
        hold = Transfer(11, 1, 2, 30, currency="CNY", code=1, flags=TF.PENDING | TF.CLOSING_DEBIT,
                        user_data=U64 - 1, timeout_s=1)
        result = await svc.create_transfers([Transfer(10, 2, 1, 100, currency="CNY", code=1), hold])
        assert result.results == [R.OK, R.OK]
        hold_ts = result.timestamps[1]
        (wallet,) = await svc.lookup_accounts([1])
        assert (wallet.debits_pending, wallet.credits_posted, wallet.closed) == (30, 100, True)
        assert await svc.store.next_expiry() == hold_ts + NS_PER_S

        now[0] = hold_ts + NS_PER_S - 1  # 1 ns early
        assert await svc.expire_due() == 0
        now[0] += 1
        assert await svc.expire_due() == 1
        assert await svc.expire_due() == 0, "expiring twice"
        assert await svc.store.next_expiry() is None

        (wallet,) = await svc.lookup_accounts([1])
        assert (wallet.debits_pending, wallet.debits_posted, wallet.credits_posted) == (0, 0, 100)
        assert not wallet.closed, "the expiry void reopens what the hold closed"
        (pool,) = await svc.lookup_accounts([2])
        assert (pool.credits_pending, pool.credits_posted) == (0, 0)
        (p,) = await svc.lookup_transfers([11])
        assert p.pending_status == PendingStatus.EXPIRED

        void_id = EXPIRY_ID_BASE + 11
        (void,) = await svc.lookup_transfers([void_id])
        assert (void.debit_account_id, void.credit_account_id, void.amount, void.pending_id, void.currency) \
            == (1, 2, 30, 11, "CNY")
        assert void.flags == TF.VOID_PENDING | TF.EXPIRY
        assert void.user_data == U64 - 1, "the void carries the hold's user_data (a u64 stored signed)"
        # Only the batch's last reserved timestamp is tied to the clock (ReserveTimestamps:
        # "at least to now_ns"), so the void sorts after the hold, not after its deadline.
        assert hold_ts < void.timestamp
        statement, token = await svc.account_transfers(AccountFilter(1), "")
        assert [t.id for t in statement] == [10, 11, void_id] and token == ""
        newest, _ = await svc.account_transfers(AccountFilter(1, newest_first=True, limit=1), "")
        assert [t.id for t in newest] == [void_id]
        history, _ = await svc.account_balances(AccountFilter(1), "")
        assert [(h.transfer_id, h.debits_pending, h.credits_posted) for h in history] \
            == [(10, 0, 100), (11, 30, 100), (void_id, 0, 100)]

        settle = await svc.create_transfers([Transfer(12, pending_id=11, flags=TF.POST_PENDING),
                                             Transfer(13, pending_id=11, flags=TF.VOID_PENDING)])
        assert settle.results == [R.PENDING_EXPIRED, R.PENDING_EXPIRED]
        replay = await svc.create_transfers([hold])
        assert (replay.results, replay.timestamps) == ([R.EXISTS], [hold_ts])
        spend = await svc.create_transfers([Transfer(14, 1, 2, 100, currency="CNY", code=1)])
        assert spend.results == [R.OK], "the released hold is spendable again"
    finally:
        await svc.stop()
