"""The ledger state machine as text tables: one line per account or transfer, the expected result last.

Scripts run against `Snapshot` + `create_accounts` / `create_transfers` /
`expire_pending` directly, with the accounts and transfers dicts standing in for
a store (the deterministic twin of storage). Every `commit` applies the lines
buffered since the last one as one batch and checks each item's result; after
every commit the harness also checks that debits equal credits per currency,
that every OK item was stored with its batch timestamp, and that a failed item
whose id was new left no row behind.

Script lines (columns are positional, `_` means zero or empty, `#` starts a comment):

    account  id  currency  code  flags  [ts= ud= dp= dpo= cp= cpo=]  RESULT
    transfer id  debit  credit  amount  pending_id  currency  code  flags  timeout_s  [ts= ud=]  RESULT
    commit                          apply the buffered items as one batch
    balance  A  dp dpo cp cpo       an account's balances
    flags    A  FLAGS               an account's flags
    status   T  PENDING|POSTED|...  a pending transfer's status
    absent   A1 T2 ...              no such account / transfer
    tick     N | Ns                 advance the clock N ns / N s
    clock    T                      set the clock to T's expires_at
    expire   N                      run expiry over every pending transfer; N expired

Ids `A7` and `T7` are 7. Numbers may be `MAX` (2^63-1) or `2^k`, `2^k+n`, `2^k-n`.
Transfer flags: L P POST VOID CD CC EXPIRY; account flags: L DL CL H C (or plain ints), joined by `|`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dualflow.core.ledger.model import (
    EXPIRY_ID_BASE,
    ID_MAX,
    NS_PER_S,
    Account,
    AccountCode,
    AccountFlags,
    BalanceSnapshot,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from dualflow.core.ledger.state_machine import (
    Snapshot,
    check_balanced,
    create_accounts,
    create_transfers,
    expire_pending,
)

NOW0 = 1_700_000_000 * NS_PER_S

TRANSFER_FLAG = {
    "L": TransferFlags.LINKED, "P": TransferFlags.PENDING, "POST": TransferFlags.POST_PENDING,
    "VOID": TransferFlags.VOID_PENDING, "CD": TransferFlags.CLOSING_DEBIT,
    "CC": TransferFlags.CLOSING_CREDIT, "EXPIRY": TransferFlags.EXPIRY,
}
ACCOUNT_FLAG = {
    "L": AccountFlags.LINKED, "DL": AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    "CL": AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS, "H": AccountFlags.HISTORY, "C": AccountFlags.CLOSED,
}


def num(tok: str) -> int:
    if tok == "_":
        return 0
    if tok == "MAX":
        return ID_MAX
    if m := re.fullmatch(r"[AT]?(-?\d+)", tok):
        return int(m.group(1))
    if m := re.fullmatch(r"2\^(\d+)([+-]\d+)?", tok):
        return 2 ** int(m.group(1)) + int(m.group(2) or 0)
    raise ValueError(f"not a number: {tok!r}")


def flags(tok: str, names: dict[str, int]) -> int:
    if tok == "_":
        return 0
    out = 0
    for part in tok.split("|"):
        out |= names[part] if part in names else num(part)
    return out


@dataclass
class Ledger:
    """What a store would keep between commits, plus a clock."""

    accounts: dict[int, Account] = field(default_factory=dict)
    transfers: dict[int, Transfer] = field(default_factory=dict)
    history: list[BalanceSnapshot] = field(default_factory=list)
    now_ns: int = NOW0
    last_timestamp: int = 0
    expiry_first_timestamp: int = 0

    def reserve(self, count: int) -> int:
        """First of `count` fresh timestamps (the stores' rule: never behind the clock)."""
        self.last_timestamp = max(self.last_timestamp + count, self.now_ns)
        return self.last_timestamp - count + 1

    def _check_after(self, snap: Snapshot, where: str) -> None:
        self.history += snap.history
        assert check_balanced(list(self.accounts.values())) == {}, f"{where}: ledger out of balance"

    def commit_accounts(self, items: list[Account], where: str = "") -> list[int]:
        before = set(self.accounts)
        first = self.reserve(len(items))
        snap = Snapshot(self.accounts, self.transfers, self.now_ns)
        results = create_accounts(snap, items, first)
        self._check_after(snap, where)
        self._check_rows(items, results, before, self.accounts, first, CreateAccountResult, where)
        return results

    def commit_transfers(self, items: list[Transfer], where: str = "") -> list[int]:
        before = set(self.transfers)
        first = self.reserve(len(items))
        snap = Snapshot(self.accounts, self.transfers, self.now_ns)
        results = create_transfers(snap, items, first)
        self._check_after(snap, where)
        self._check_rows(items, results, before, self.transfers, first, CreateTransferResult, where)
        return results

    @staticmethod
    def _check_rows(items, results, before, rows, first, enum, where) -> None:  # type: ignore[no-untyped-def]
        assert len(results) == len(items)
        created = {item.id for item, r in zip(items, results) if r == enum.OK}
        for i, (item, r) in enumerate(zip(items, results)):
            if r == enum.OK:
                assert rows[item.id].timestamp == first + i, f"{where}: item {i} stored with a wrong timestamp"
            elif r != enum.EXISTS and item.id not in before and item.id not in created:
                assert item.id not in rows, f"{where}: failed item {i} ({enum(r).name}) left a row"

    def expire(self) -> int:
        pending = sorted(
            (t for t in self.transfers.values() if t.pending_status == PendingStatus.PENDING and t.expires_at),
            key=lambda t: (t.expires_at, t.id),
        )
        snap = Snapshot(self.accounts, self.transfers, self.now_ns)
        first = self.reserve(max(len(pending), 1))
        count = expire_pending(snap, pending, first)
        if count:
            self.expiry_first_timestamp = first
        self._check_after(snap, "expire")
        return count


def run(script: str, ledger: Ledger | None = None) -> Ledger:
    led = ledger or Ledger()
    kind = ""
    batch: list[Account | Transfer] = []
    wanted: list[tuple[int, str, int]] = []  # (line number, line, expected result)
    for no, raw in enumerate(script.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"line {no}: {line!r}"
        op, *args = line.split()
        extra = {k: num(v) for k, v in (a.split("=", 1) for a in args if "=" in a)}
        cols = [a for a in args if "=" not in a]
        if op in ("account", "transfer"):
            assert kind in ("", op), f"{where}: accounts and transfers in one batch"
            kind = op
            if op == "account":
                id_, cur, code, fl, result = cols
                batch.append(Account(
                    num(id_), "" if cur == "_" else cur,
                    AccountCode[code] if code in AccountCode.__members__ else num(code),
                    flags(fl, ACCOUNT_FLAG), extra.get("ud", 0), extra.get("ts", 0),
                    extra.get("dp", 0), extra.get("dpo", 0), extra.get("cp", 0), extra.get("cpo", 0),
                ))
                wanted.append((no, line, CreateAccountResult[result]))
            else:
                id_, dr, cr, amount, pending_id, cur, code, fl, timeout, result = cols
                batch.append(Transfer(
                    num(id_), num(dr), num(cr), num(amount), num(pending_id), "" if cur == "_" else cur,
                    num(code), flags(fl, TRANSFER_FLAG), extra.get("ud", 0), num(timeout), extra.get("ts", 0),
                ))
                wanted.append((no, line, CreateTransferResult[result]))
            continue
        assert not batch or op == "commit", f"{where}: `commit` the buffered items first"
        if op == "commit":
            assert batch, f"{where}: nothing to commit"
            if kind == "account":
                got = led.commit_accounts(batch, where)  # type: ignore[arg-type]
                enum: type[CreateAccountResult] | type[CreateTransferResult] = CreateAccountResult
            else:
                got = led.commit_transfers(batch, where)  # type: ignore[arg-type]
                enum = CreateTransferResult
            wrong = [
                f"line {n}: {text!r}: got {enum(g).name}, want {enum(w).name}"
                for (n, text, w), g in zip(wanted, got) if g != w
            ]
            assert not wrong, "\n".join(wrong)
            batch, wanted, kind = [], [], ""
        elif op == "balance":
            a = led.accounts[num(cols[0])]
            got_b = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            assert got_b == tuple(map(num, cols[1:5])), f"{where}: balances are {got_b}"
        elif op == "flags":
            got_f = led.accounts[num(cols[0])].flags
            assert got_f == flags(cols[1], ACCOUNT_FLAG), f"{where}: flags are {AccountFlags(got_f)!r}"
        elif op == "status":
            got_s = led.transfers[num(cols[0])].pending_status
            assert got_s == PendingStatus[cols[1]], f"{where}: status is {PendingStatus(got_s).name}"
        elif op == "absent":
            for tok in cols:
                rows = led.accounts if tok.startswith("A") else led.transfers
                assert num(tok) not in rows, f"{where}: {tok} exists"
        elif op == "tick":
            led.now_ns += num(cols[0][:-1]) * NS_PER_S if cols[0].endswith("s") else num(cols[0])
        elif op == "clock":
            led.now_ns = led.transfers[num(cols[0])].expires_at
            assert led.now_ns, f"{where}: {cols[0]} never expires"
        elif op == "expire":
            got_n = led.expire()
            assert got_n == num(cols[0]), f"{where}: {got_n} expired"
        else:
            raise AssertionError(f"{where}: unknown op {op!r}")
    assert not batch, "script ends with items that were never committed"
    return led


SETUP = """
    # op      id   cur  code        flags  result
    account   A1   CNY  WALLET      _      OK
    account   A2   CNY  POOL        _      OK
    account   A3   USD  WALLET      _      OK
    account   A4   CNY  WALLET      DL     OK     # a wallet: debits never exceed credits
    account   A5   CNY  RECEIVABLE  CL     OK     # credits never exceed debits
    account   A6   CNY  POOL        _      OK
    commit
"""


# ------------------------------------------------------------------ accounts

def test_every_account_result_in_check_order() -> None:
    # Lines with two faults show which check comes first; the first failure wins.
    run("""
    # op      id     cur  code    flags   extra              result
    account   A1     CNY  WALLET  _                          OK
    account   MAX    JPY  EQUITY  DL|H    ud=2^64-1          OK
    account   A1     CNY  WALLET  _                          EXISTS                        # same batch
    account   A1     CNY  WALLET  C                          EXISTS                        # CLOSED is state, not identity
    account   A1     CNY  POOL    _                          EXISTS_WITH_DIFFERENT_FIELDS  # code
    account   A1     USD  WALLET  _                          EXISTS_WITH_DIFFERENT_FIELDS  # currency
    account   A1     CNY  WALLET  H                          EXISTS_WITH_DIFFERENT_FIELDS  # flags
    account   A1     CNY  WALLET  _       ud=7               EXISTS_WITH_DIFFERENT_FIELDS  # user_data
    account   0      XXX  0       64      ts=1               TIMESTAMP_MUST_BE_ZERO        # before the id
    account   0      XXX  0       64                         ID_INVALID                    # before flags
    account   2^63   CNY  WALLET  _                          ID_INVALID
    account   -1     CNY  WALLET  _                          ID_INVALID
    account   A2     XXX  0       32                         FLAGS_INVALID                 # unknown bit; before currency
    account   A2     XXX  0       DL|CL                      FLAGS_INVALID                 # contradictory limits
    account   A2     cny  0       _                          CURRENCY_INVALID              # before code
    account   A2     _    WALLET  _                          CURRENCY_INVALID
    account   A2     XAU  WALLET  _                          CURRENCY_INVALID              # no minor unit
    account   A2     CNY  0       _       dpo=1              CODE_INVALID                  # before balances
    account   A2     CNY  11      _                          CODE_INVALID
    account   A1     CNY  WALLET  _       cp=1  ud=2^64      BALANCES_MUST_BE_ZERO         # before user_data, EXISTS
    account   A2     CNY  WALLET  _       dp=1               BALANCES_MUST_BE_ZERO
    account   A2     CNY  WALLET  _       cpo=-1             BALANCES_MUST_BE_ZERO
    account   A1     CNY  POOL    _       ud=2^64            ID_INVALID                    # user_data is u64; before EXISTS
    account   A2     CNY  WALLET  _       ud=-1              ID_INVALID
    commit
    absent A2 A0
    flags A1 _
    """)


def test_account_replay_after_it_was_closed_answers_exists() -> None:
    led = run(SETUP + """
    transfer  T1  A1  A2  10  _  CNY  1  P|CD  _   OK
    commit
    flags A1 C
    account   A1  CNY  WALLET  _   EXISTS
    commit
    flags A1 C
    """)
    assert led.accounts[1].closed


def test_linked_accounts_commit_or_fail_together() -> None:
    run("""
    account   A1   CNY  WALLET  L    LINKED_EVENT_FAILED
    account   A2   CNY  0       L    CODE_INVALID                  # the failing middle item
    account   A3   CNY  WALLET  _    LINKED_EVENT_FAILED           # the chain's last item
    account   A4   CNY  WALLET  _    OK                            # not in the chain
    account   A5   CNY  WALLET  L    OK
    account   A6   CNY  WALLET  _    OK
    account   A7   CNY  WALLET  L    LINKED_EVENT_FAILED
    account   A7   CNY  POOL    _    EXISTS_WITH_DIFFERENT_FIELDS  # its own insert is rolled back
    account   A8   CNY  WALLET  L    LINKED_EVENT_FAILED
    account   A9   CNY  WALLET  L    LINKED_EVENT_CHAIN_OPEN       # a chain still open at the end
    commit
    absent A1 A2 A3 A7 A8 A9
    flags A5 L
    account   A5   CNY  WALLET  L    EXISTS                        # a replayed chain is not a failed one
    account   A6   CNY  WALLET  _    EXISTS
    account   A4   CNY  WALLET  L    EXISTS_WITH_DIFFERENT_FIELDS  # LINKED is part of the identity
    account   A10  CNY  WALLET  _    LINKED_EVENT_FAILED
    account   A11  CNY  WALLET  L    LINKED_EVENT_CHAIN_OPEN       # a lone linked last item
    commit
    absent A10 A11
    """)


# ----------------------------------------------------------------- transfers

def test_transfer_validation_results_in_check_order() -> None:
    run(SETUP + """
    # op       id     debit  credit  amount  pending  cur  code  flags      timeout  extra     result
    transfer   T1     A2     A1      100     _        CNY  1     _          _                  OK
    transfer   0      0      0       0       _        XXX  0     128        _        ts=1      TIMESTAMP_MUST_BE_ZERO
    transfer   0      0      0       0       _        XXX  0     128        _                  ID_INVALID       # before flags
    transfer   2^63   A2     A1      1       _        CNY  1     _          _                  ID_INVALID       # the ledger's own ids
    transfer   -1     A2     A1      1       _        CNY  1     _          _                  ID_INVALID
    transfer   T2     0      0       0       _        XXX  0     128        _                  FLAGS_INVALID    # unknown bit
    transfer   T2     A2     A1      1       _        CNY  1     EXPIRY     _                  FLAGS_INVALID    # the ledger's own bit
    transfer   T2     A2     A1      1       T1       CNY  1     P|POST     _                  FLAGS_INVALID
    transfer   T2     A2     A1      1       T1       CNY  1     POST|VOID  _                  FLAGS_INVALID
    transfer   T2     A2     A1      1       _        CNY  1     P|VOID     _                  FLAGS_INVALID
    transfer   T2     A2     A1      1       _        CNY  1     CD         _                  FLAGS_INVALID    # closing needs PENDING
    transfer   T2     A2     A1      1       _        CNY  1     CC         _                  FLAGS_INVALID
    transfer   T2     0      0       0       _        XXX  0     _          _        ud=2^64   ID_INVALID       # user_data is u64
    transfer   T2     0      0       0       _        XXX  0     _          _                  ACCOUNT_ID_INVALID  # before same-account
    transfer   T2     A1     2^63    1       _        CNY  1     _          _                  ACCOUNT_ID_INVALID
    transfer   T2     -1     A1      1       _        CNY  1     _          _                  ACCOUNT_ID_INVALID
    transfer   T2     A1     A1      0       T1       XXX  0     _          5                  SAME_ACCOUNT
    transfer   T2     A2     A1      0       T1       XXX  0     _          5                  PENDING_ID_INVALID  # only post/void name one
    transfer   T2     A2     A1      0       _        XXX  0     _          5                  TIMEOUT_INVALID     # only pending times out
    transfer   T2     A2     A1      0       _        XXX  0     _          _                  AMOUNT_INVALID
    transfer   T2     A2     A1      0       _        CNY  1     P          _                  AMOUNT_INVALID
    transfer   T2     A2     A1      -1      _        CNY  1     _          _                  AMOUNT_INVALID      # negative is impossible
    transfer   T2     A2     A1      2^63    _        CNY  1     _          _                  AMOUNT_INVALID      # a u64 that no balance can hold
    transfer   T2     A2     A1      1       _        XXX  0     _          _                  CODE_INVALID
    transfer   T1     A2     A1      1       _        XXX  1     _          _                  CURRENCY_INVALID    # before EXISTS
    transfer   T1     A2     A1      1       _        _    1     _          _                  CURRENCY_INVALID
    transfer   T1     A9     A3      100     _        USD  1     _          _                  EXISTS_WITH_DIFFERENT_FIELDS  # before not-found
    transfer   T1     A2     A1      100     _        CNY  1     _          _                  EXISTS
    transfer   T2     A9     A3      1       _        CNY  1     _          _                  ACCOUNT_NOT_FOUND   # before currency mismatch
    transfer   T2     A1     A9      1       _        CNY  1     _          _                  ACCOUNT_NOT_FOUND
    transfer   T2     A1     A3      1       _        CNY  1     _          _                  CURRENCY_MISMATCH   # the credit account is USD
    transfer   T2     A1     A3      1       _        USD  1     _          _                  CURRENCY_MISMATCH   # the debit account is CNY
    transfer   T2     A2     A1      1       _        USD  1     _          _                  CURRENCY_MISMATCH   # both CNY, the transfer USD
    transfer   T2     A2     A1      1       _        JPY  1     _          _                  CURRENCY_MISMATCH
    commit
    absent T0 T2
    balance A1  0 0 0 100
    balance A2  0 100 0 0
    """)


def test_exists_compares_every_client_field() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  100  _  CNY  1  _  _          OK
    transfer   T2   A2  A1  50   _  CNY  3  P  7  ud=9    OK
    commit
    transfer   T1   A2  A1  100  _  CNY  1  _  _          EXISTS
    transfer   T1   A2  A1  101  _  CNY  1  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # amount
    transfer   T1   A1  A2  100  _  CNY  1  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # direction
    transfer   T1   A2  A6  100  _  CNY  1  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # credit account
    transfer   T1   A6  A1  100  _  CNY  1  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # debit account
    transfer   T1   A2  A1  100  _  CNY  2  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # code
    transfer   T1   A2  A1  100  _  USD  1  _  _          EXISTS_WITH_DIFFERENT_FIELDS   # currency
    transfer   T1   A2  A1  100  _  CNY  1  P  _          EXISTS_WITH_DIFFERENT_FIELDS   # flags
    transfer   T1   A2  A1  100  _  CNY  1  _  _  ud=1    EXISTS_WITH_DIFFERENT_FIELDS   # user_data
    transfer   T2   A2  A1  50   _  CNY  3  P  7  ud=9    EXISTS
    transfer   T2   A2  A1  50   _  CNY  3  P  8  ud=9    EXISTS_WITH_DIFFERENT_FIELDS   # timeout
    transfer   T2   A2  A1  50   _  CNY  3  P  7          EXISTS_WITH_DIFFERENT_FIELDS
    commit
    balance A1  0 0 50 100
    balance A2  50 100 0 0
    """)


def test_limit_flags_exceeds_credits_and_exceeds_debits() -> None:
    run(SETUP + """
    transfer   T1   A4  A2  1    _  CNY  1  _  _   EXCEEDS_CREDITS   # an empty wallet
    transfer   T2   A2  A5  1    _  CNY  1  _  _   EXCEEDS_DEBITS    # credits beyond its debits
    transfer   T3   A2  A4  100  _  CNY  1  _  _   OK
    transfer   T4   A4  A2  60   _  CNY  1  P  _   OK
    transfer   T5   A4  A2  41   _  CNY  1  _  _   EXCEEDS_CREDITS   # pending debits count
    transfer   T6   A4  A2  40   _  CNY  1  _  _   OK                # exactly the credits
    transfer   T7   A2  A4  50   _  CNY  1  P  _   OK                # pending credits do not count...
    transfer   T8   A4  A2  1    _  CNY  1  _  _   EXCEEDS_CREDITS   # ...so nothing is left
    transfer   T9   A5  A2  30   _  CNY  1  _  _   OK                # debits are unlimited
    transfer   T10  A2  A5  20   _  CNY  1  P  _   OK
    transfer   T11  A2  A5  11   _  CNY  1  _  _   EXCEEDS_DEBITS    # pending credits count
    transfer   T12  A2  A5  10   _  CNY  1  _  _   OK
    transfer   T13  A4  A5  1    _  CNY  1  _  _   EXCEEDS_CREDITS   # both would fail: the debit side first
    commit
    balance A4  60 40 50 100
    balance A5  0 30 20 10
    transfer   T14  _   _   30   T4 _    0  POST  _   OK            # a partial post frees the rest
    commit
    balance A4  0 70 50 100
    transfer   T15  A4  A2  30   _  CNY  1  _  _   OK
    transfer   T16  A4  A2  1    _  CNY  1  _  _   EXCEEDS_CREDITS
    commit
    """)


def test_overflow_near_the_int64_limit() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  MAX     _  CNY  1  _  _   OK                 # A1 credits = 2^63-1
    transfer   T2   A6  A1  1       _  CNY  1  _  _   OVERFLOW           # the credit side
    transfer   T3   A2  A6  1       _  CNY  1  _  _   OVERFLOW           # the debit side
    transfer   T4   A1  A6  MAX     _  CNY  1  _  _   OK                 # each side alone still fits
    transfer   T5   A6  A2  2^62    _  CNY  1  P  _   OK
    transfer   T6   A6  A2  2^62    _  CNY  1  _  _   OVERFLOW           # pending debits count: 2^63
    transfer   T7   A6  A2  2^62-1  _  CNY  1  _  _   OK                 # exactly 2^63-1
    transfer   T8   A6  A2  1       _  CNY  1  P  _   OVERFLOW
    commit
    balance A6  2^62 2^62-1 0 MAX
    transfer   T9   _   _   0       T5 _    0  POST  _   OK              # a post never overflows
    commit
    balance A6  0 MAX 0 MAX
    """)


def test_overflow_and_closed_come_before_limits() -> None:
    run(SETUP + """
    transfer   T1   A2  A4  10   _  CNY  1  _      _   OK
    transfer   T2   A4  A2  10   _  CNY  1  P      _   OK
    transfer   T3   A4  A2  MAX  _  CNY  1  _      _   OVERFLOW          # also exceeds credits
    transfer   T4   A1  A6  5    _  CNY  1  P|CD   _   OK                # closes A1
    transfer   T5   A1  A3  5    _  USD  1  _      _   CURRENCY_MISMATCH # before closed
    transfer   T6   A1  A6  MAX  _  CNY  1  _      _   ACCOUNT_CLOSED    # before overflow
    commit
    """)


def test_closing_flags_close_and_a_void_reopens() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  100  _  CNY  1  _      _   OK
    transfer   T2   A1  A2  10   _  CNY  1  P      _   OK                # an ordinary hold
    transfer   T3   A1  A2  90   _  CNY  1  P|CD   _   OK                # close A1 with its last 90
    commit
    flags A1 C
    flags A2 _
    transfer   T4   A2  A1  1    _  CNY  1  _      _   ACCOUNT_CLOSED    # credit side closed
    transfer   T4   A1  A2  1    _  CNY  1  _      _   ACCOUNT_CLOSED    # debit side closed
    transfer   T4   A1  A2  1    _  CNY  1  P|CD   _   ACCOUNT_CLOSED    # closing twice
    transfer   T1   A2  A1  100  _  CNY  1  _      _   EXISTS            # a replay still answers
    transfer   T5   _   _   4    T2 _    0  POST   _   OK                # pending holds still settle
    commit
    flags A1 C
    balance A1  90 4 0 100
    transfer   T6   _   _   0    T3 _    0  VOID   _   OK                # the void reopens A1
    commit
    flags A1 _
    transfer   T7   A2  A1  1    _  CNY  1  _      _   OK
    transfer   T8   A2  A6  5    _  CNY  1  P|CC   _   OK                # close the credit side
    commit
    flags A6 C
    flags A2 _
    transfer   T9   A6  A2  1    _  CNY  1  _      _   ACCOUNT_CLOSED
    transfer   T10  _   _   0    T8 _    0  POST   _   OK                # posting keeps it closed
    commit
    flags A6 C
    transfer   T11  A2  A6  1    _  CNY  1  _      _   ACCOUNT_CLOSED
    commit
    """)


def test_closed_at_creation_refuses_transfers() -> None:
    run(SETUP + """
    account   A7   CNY  WALLET  C   OK
    commit
    transfer  T1   A2  A7  1  _  CNY  1  _  _   ACCOUNT_CLOSED
    transfer  T2   A7  A2  1  _  CNY  1  P  _   ACCOUNT_CLOSED
    commit
    """)


# --------------------------------------------------------- two-phase transfers

def test_pending_then_partial_post_releases_the_rest() -> None:
    led = run(SETUP + """
    transfer   T1   A2  A4  1000  _   CNY  1  _     _   OK
    transfer   T2   A4  A2  300   _   CNY  7  P     _   OK
    commit
    status T2 PENDING
    status T1 NONE
    balance A4  300 0 0 1000
    balance A2  0 1000 300 0
    transfer   T3   _   _   200   T2  _    0  POST  _   OK
    commit
    status T2 POSTED
    balance A4  0 200 0 1000
    balance A2  0 1000 0 200
    transfer   T3   _   _   200   T2  _    0  POST  _   EXISTS
    transfer   T3   A4  A2  200   T2  CNY  7  POST  _   EXISTS                        # inherited fields spelled out
    transfer   T3   _   _   0     T2  _    0  POST  _   EXISTS_WITH_DIFFERENT_FIELDS  # 0 asks for all 300
    transfer   T3   _   _   199   T2  _    0  POST  _   EXISTS_WITH_DIFFERENT_FIELDS
    transfer   T3   _   _   200   T2  _    0  VOID  _   EXISTS_WITH_DIFFERENT_FIELDS
    transfer   T4   _   _   0     T2  _    0  POST  _   PENDING_ALREADY_POSTED
    transfer   T4   _   _   0     T2  _    0  VOID  _   PENDING_ALREADY_POSTED
    commit
    balance A4  0 200 0 1000
    """)
    post = led.transfers[3]
    assert (post.debit_account_id, post.credit_account_id, post.amount, post.pending_id, post.currency, post.code) \
        == (4, 2, 200, 2, "CNY", 7), "a post records the pending's accounts, currency and code"


def test_post_with_zero_amount_posts_all_and_its_replay_exists() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  300   _   CNY  1  P     _   OK
    transfer   T2   _   _   0     T1  _    0  POST  _   OK
    commit
    balance A1  0 0 0 300
    transfer   T2   _   _   0     T1  _    0  POST  _   EXISTS
    transfer   T2   _   _   300   T1  _    0  POST  _   EXISTS
    commit
    """)


def test_void_releases_everything_and_nothing_settles_after_it() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  100   _   CNY  5  P     _   OK
    commit
    transfer   T2   _   _   50    T1  _    0  VOID  _   PENDING_FIELDS_DIFFER     # a void is all or nothing
    transfer   T2   _   _   101   T1  _    0  VOID  _   EXCEEDS_PENDING_AMOUNT
    transfer   T2   _   _   101   T1  _    0  POST  _   EXCEEDS_PENDING_AMOUNT
    transfer   T2   A2  A1  100   T1  CNY  5  VOID  _   OK
    commit
    status T1 VOIDED
    balance A1  0 0 0 0
    balance A2  0 0 0 0
    transfer   T2   _   _   0     T1  _    0  VOID  _   EXISTS
    transfer   T3   _   _   0     T1  _    0  POST  _   PENDING_ALREADY_VOIDED
    transfer   T3   _   _   0     T1  _    0  VOID  _   PENDING_ALREADY_VOIDED
    commit
    absent T3
    """)


def test_post_and_void_results_in_check_order() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  100   _   CNY  5  _     _   OK
    transfer   T2   A2  A1  100   _   CNY  5  P     9   OK
    transfer   T3   A2  A1  100   _   CNY  5  P     _   OK
    transfer   T4   _   _   0     T3  _    0  VOID  _   OK
    commit
    # op       id   debit  credit  amount  pending  cur  code  flags  timeout  result
    transfer   T9   2^63   _       2^63    _        XXX  0     POST   5        PENDING_ID_INVALID   # zero
    transfer   T9   _      _       0       T9       _    0     POST   _        PENDING_ID_INVALID   # itself
    transfer   T9   _      _       0       2^63     _    0     VOID   _        PENDING_ID_INVALID   # an expiry id
    transfer   T9   _      _       0       -5       _    0     VOID   _        PENDING_ID_INVALID
    transfer   T9   2^63   _       2^63    T2       XXX  0     POST   5        TIMEOUT_INVALID      # before account ids
    transfer   T9   2^63   _       2^63    T2       XXX  0     POST   _        ACCOUNT_ID_INVALID   # before amount
    transfer   T9   _      2^63    0       T2       _    0     VOID   _        ACCOUNT_ID_INVALID
    transfer   T9   -2     _       0       T2       _    0     VOID   _        ACCOUNT_ID_INVALID
    transfer   T9   _      _       2^63    T2       XXX  0     POST   _        AMOUNT_INVALID       # before currency
    transfer   T9   _      _       -1      T2       _    0     POST   _        AMOUNT_INVALID       # negative is impossible
    transfer   T9   _      _       -1      T2       _    0     VOID   _        AMOUNT_INVALID
    transfer   T4   _      _       0       T3       XXX  0     VOID   _        CURRENCY_INVALID     # before EXISTS
    transfer   T4   _      _       0       T3       _    0     VOID   _        EXISTS               # zeros inherit
    transfer   T4   _      _       0       T2       _    0     VOID   _        EXISTS_WITH_DIFFERENT_FIELDS  # pending_id
    transfer   T4   A6     _       0       T3       _    0     VOID   _        EXISTS_WITH_DIFFERENT_FIELDS
    transfer   T4   _      _       0       T3       _    0     VOID   _   ud=1 EXISTS_WITH_DIFFERENT_FIELDS
    transfer   T9   A6     _       0       T99      _    0     POST   _        PENDING_NOT_FOUND    # before fields differ
    transfer   T9   A6     _       0       T1       _    0     POST   _        PENDING_NOT_PENDING  # T1 was never a hold
    transfer   T9   A6     _       0       T3       _    0     POST   _        PENDING_FIELDS_DIFFER  # before already voided
    transfer   T9   _      A6      0       T2       _    0     POST   _        PENDING_FIELDS_DIFFER
    transfer   T9   _      _       0       T2       USD  0     POST   _        PENDING_FIELDS_DIFFER
    transfer   T9   _      _       0       T2       _    6     POST   _        PENDING_FIELDS_DIFFER
    transfer   T9   _      _       200     T3       _    0     POST   _        PENDING_ALREADY_VOIDED # before exceeds
    transfer   T9   _      _       101     T2       _    0     POST   _        EXCEEDS_PENDING_AMOUNT
    transfer   T9   A2     A1      100     T2       CNY  5     POST   _        OK
    commit
    status T2 POSTED
    balance A1  0 0 0 200
    """)


def test_post_after_expiry_is_pending_expired_swept_or_not() -> None:
    led = run(SETUP + """
    transfer   T1   A2  A4  100   _   CNY  1  _     _   OK
    transfer   T2   A4  A2  30    _   CNY  1  P     1   OK                # expires 1 s after its timestamp
    transfer   T3   A4  A2  20    _   CNY  1  P     2   OK
    transfer   T4   A4  A2  10    _   CNY  1  P     _   OK                # never expires
    commit
    clock T2
    tick -1                                                             # 1 ns before: still pending
    expire 0
    transfer   T5   _   _   0     T2  _    0  POST  _   OK
    commit
    status T2 POSTED
    clock T3                                                            # exactly at expires_at
    transfer   T6   _   _   0     T3  _    0  POST  _   PENDING_EXPIRED   # due, not yet swept
    transfer   T6   _   _   0     T3  _    0  VOID  _   PENDING_EXPIRED
    transfer   T6   A6  _   0     T3  _    0  POST  _   PENDING_FIELDS_DIFFER  # checked before expiry
    commit
    status T3 PENDING
    balance A4  30 30 0 100
    expire 1                                                            # T2 is posted: only T3
    status T3 EXPIRED
    balance A4  10 30 0 100
    transfer   T6   _   _   0     T3  _    0  POST  _   PENDING_EXPIRED   # swept
    transfer   T7   _   _   0     T3  _    0  VOID  _   PENDING_EXPIRED
    transfer   T8   _   _   0     T4  _    0  VOID  _   OK
    commit
    tick 3600s
    expire 0
    balance A4  0 30 0 100
    absent T6 T7
    """)
    void = led.transfers[EXPIRY_ID_BASE + 3]
    assert (void.debit_account_id, void.credit_account_id, void.amount, void.pending_id) == (4, 2, 20, 3)
    assert void.flags == TransferFlags.VOID_PENDING | TransferFlags.EXPIRY
    assert void.timestamp == led.expiry_first_timestamp, "the void takes the sweep's first timestamp"
    assert EXPIRY_ID_BASE + 2 not in led.transfers, "a posted hold does not expire"


def test_expiry_reopens_an_account_its_hold_closed() -> None:
    led = run(SETUP + """
    transfer   T1   A2  A1  10   _   CNY  1  P|CD|CC  1   OK
    commit
    flags A1 C
    flags A2 C
    tick 2s
    expire 1
    flags A1 _
    flags A2 _
    transfer   T2   A2  A1  10   _   CNY  1  _        _   OK
    commit
    """)
    assert led.transfers[EXPIRY_ID_BASE + 1].pending_status == PendingStatus.NONE


# --------------------------------------------------------------- linked chains

def test_a_failing_middle_item_rolls_back_the_chain() -> None:
    run(SETUP + """
    transfer   T1   A2  A4  100  _  CNY  1  _    _   OK
    commit
    transfer   T2   A4  A6  50   _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T3   A4  A6  60   _  CNY  1  L    _   EXCEEDS_CREDITS       # fails because of T2
    transfer   T4   A2  A6  1    _  CNY  1  _    _   LINKED_EVENT_FAILED   # the chain's last item
    transfer   T5   A2  A6  1    _  CNY  1  _    _   OK                    # the next, independent item
    commit
    absent T2 T3 T4
    balance A4  0 0 0 100
    balance A6  0 0 0 1
    transfer   T2   A4  A6  50   _  CNY  1  L    _   OK                    # the same chain, now fitting
    transfer   T3   A4  A6  50   _  CNY  1  L    _   OK
    transfer   T4   A2  A6  1    _  CNY  1  _    _   OK
    commit
    balance A4  0 100 0 100
    """)


def test_chains_open_at_the_end_and_failing_first() -> None:
    run(SETUP + """
    transfer   T1   A2  A6  1    _  CNY  1  _    _   OK
    transfer   T2   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T3   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_CHAIN_OPEN
    commit
    transfer   T4   A2  A6  0    _  CNY  1  L    _   AMOUNT_INVALID        # fails first
    transfer   T5   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T6   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_CHAIN_OPEN
    commit
    transfer   T7   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_CHAIN_OPEN  # alone
    commit
    transfer   T8   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T9   A2  A6  0    _  CNY  1  L    _   AMOUNT_INVALID
    transfer   T10  A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_CHAIN_OPEN
    commit
    absent T2 T3 T4 T5 T6 T7 T8 T9 T10
    balance A6  0 0 0 1
    """)


def test_a_replayed_chain_answers_exists_everywhere() -> None:
    run(SETUP + """
    transfer   T1   A2  A4  10   _  CNY  1  L    _   OK
    transfer   T2   A4  A6  10   _  CNY  1  L    _   OK      # spends what T1 brought in
    transfer   T3   A2  A6  5    _  CNY  1  P    _   OK
    commit
    balance A4  0 10 0 10
    transfer   T1   A2  A4  10   _  CNY  1  L    _   EXISTS
    transfer   T2   A4  A6  10   _  CNY  1  L    _   EXISTS
    transfer   T3   A2  A6  5    _  CNY  1  P    _   EXISTS
    commit
    balance A4  0 10 0 10
    balance A6  0 0 5 10
    transfer   T1   A2  A4  10   _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T2   A4  A6  11   _  CNY  1  L    _   EXISTS_WITH_DIFFERENT_FIELDS
    transfer   T4   A2  A6  5    _  CNY  1  _    _   LINKED_EVENT_FAILED
    commit
    absent T4
    """)


def test_a_failed_chain_undoes_posts_closes_and_its_own_holds() -> None:
    run(SETUP + """
    transfer   T1   A2  A1  40   _   CNY  1  P     _   OK
    commit
    transfer   T2   _   _   0    T1  _    0  L|POST  _  LINKED_EVENT_FAILED
    transfer   T3   A2  A1  5    _   CNY  1  L|P   _   LINKED_EVENT_FAILED
    transfer   T4   _   _   5    T3  _    0  L|POST  _  LINKED_EVENT_FAILED  # posts a hold made in the chain
    transfer   T5   A1  A6  1    _   CNY  1  L|P|CD _   LINKED_EVENT_FAILED  # closes A1...
    transfer   T6   A1  A6  1    _   CNY  1  _     _   ACCOUNT_CLOSED       # ...which fails the chain
    commit
    status T1 PENDING
    flags A1 _
    absent T2 T3 T4 T5 T6
    balance A1  0 0 40 0
    balance A2  40 0 0 0
    transfer   T2   _   _   0    T1  _    0  POST  _   OK                   # the undone post can happen
    commit
    balance A1  0 0 0 40
    """)


def test_two_chains_in_one_batch_are_independent() -> None:
    run(SETUP + """
    transfer   T1   A2  A6  1    _  CNY  1  L    _   LINKED_EVENT_FAILED
    transfer   T2   A2  A6  1    _  USD  1  _    _   CURRENCY_MISMATCH
    transfer   T3   A2  A6  2    _  CNY  1  L    _   OK
    transfer   T4   A2  A6  3    _  CNY  1  _    _   OK
    transfer   T1   A2  A6  7    _  CNY  1  _    _   OK                   # T1's id is free again
    commit
    balance A6  0 0 0 12
    """)


# --------------------------------------------------------------------- history

def test_history_rows_follow_every_balance_change() -> None:
    led = run("""
    account   A1   CNY  WALLET  H    OK
    account   A2   CNY  POOL    _    OK
    commit
    transfer  T1   A2  A1  100  _   CNY  1  _     _   OK
    transfer  T2   A1  A2  30   _   CNY  1  P     _   OK
    transfer  T3   _   _   20   T2  _    0  POST  _   OK
    transfer  T4   A1  A2  5    _   CNY  1  P     1   OK
    transfer  T5   A1  A2  7    _   CNY  1  L     _   LINKED_EVENT_FAILED   # no row for a failed chain
    transfer  T6   A1  A2  0    _   CNY  1  _     _   AMOUNT_INVALID
    commit
    tick 2s
    expire 1
    transfer  T7   _   _   0    T4  _    0  VOID  _   PENDING_EXPIRED
    commit
    """)
    rows = [(h.transfer_id, h.debits_pending, h.debits_posted, h.credits_pending, h.credits_posted)
            for h in led.history]
    assert rows == [
        (1, 0, 0, 0, 100),
        (2, 30, 0, 0, 100),
        (3, 0, 20, 0, 100),
        (4, 5, 20, 0, 100),
        (EXPIRY_ID_BASE + 4, 0, 20, 0, 100),
    ]
    assert all(h.account_id == 1 for h in led.history), "only accounts with HISTORY keep rows"
    for h in led.history:
        assert h.timestamp == led.transfers[h.transfer_id].timestamp


# ----------------------------------------------------------- the harness itself

def test_the_harness_notices_a_wrong_expectation() -> None:
    import pytest

    with pytest.raises(AssertionError, match="got OK, want EXISTS"):
        run(SETUP + """
        transfer   T1   A2  A1  1   _  CNY  1  _  _   EXISTS
        commit
        """)
    with pytest.raises(AssertionError, match="balances are"):
        run(SETUP + "balance A1 0 0 0 1")
