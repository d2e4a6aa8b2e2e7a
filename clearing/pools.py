"""Reserve-fund pools (备付金资金池) in the ledger, and the invariant that ties them to what we owe.

A pool is our account at one bank; it holds real money for our users. In the
ledger each pool has one account per currency on the asset side (code POOL,
debit-normal: its balance is debits minus credits, what we hold at that bank).
Its id is derived from its name like every account in core/payments/accounts.py
("pool:<name>" and the currency), so every process names it without a lookup.
A pool account carries no overdraft flag on purpose: a settlement transfer the
bank confirmed is a fact and must always be recordable, and a pool whose ledger
balance went negative is exactly what the invariant and reconciliation report.

The invariant, per currency, over posted balances (a pending hold has moved no
money yet, and it sits on both sides' pending columns):

    pools + in_transit == wallets + merchants + own_funds

where, by ledger account code (core/ledger/model.py AccountCode):

* **pools** (POOL, debit-normal): money at our banks.
* **in_transit** (RECEIVABLE, debit-normal): what a channel owes us for payments
  it took and has not yet paid into a pool (core/payments/accounts.py
  `receivable_account` per channel). It is money on its way to a pool, so it
  counts on the pools' side; when the channel settles into a pool it moves from
  one term to the other.
* **wallets** (WALLET, credit-normal): user wallets (`holding_account(Party("user",
  id), Asset.WALLET, currency)`), the virtual accounts over the pools.
* **merchants** (MERCHANT and POINTS, credit-normal): merchants' settlement
  accounts, which are customer money too: a wallet payment to a merchant moves
  money from a wallet to a merchant without touching a pool, so the invariant
  must count both or every purchase would break it. Points are not money but
  live in the same currencies: a user's points (POINTS) are exactly what a
  merchant's points account (MERCHANT) is short, so they cancel out here.
* **own_funds** (FEE, EQUITY, OPERATING, credit-normal): our own money in the
  pools. Fee income (`fee_account`, "platform:fees") is ours the moment a
  payment succeeds and stays in the pools until swept out; EQUITY is capital we
  paid into a pool (`deposit_own_funds`, "platform:equity"); OPERATING is what
  we spent from them.

`difference_minor` is the left side minus the right. Double entry makes it zero
whenever no posted money sits in an account outside these codes (CLEARING,
SUSPENSE), which `unclassified_minor` reports: a non-zero difference is money
that is neither in a pool nor owed to anyone nor ours, for a person to look at.
The other half of the check, each pool's ledger balance against the bank's own
statement of that account, is reconciliation's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from dualflow.core.ledger.model import Account, AccountCode, Transfer
from dualflow.core.payments.accounts import account_id, pool_account

# Ledger transfer codes of clearing's own postings (payments use 1-4).
CODE_SETTLEMENT: Final = 20  # a settlement transfer between two pools, once the bank confirmed it
CODE_OWN_FUNDS: Final = 21  # our own money paid into a pool

_POOLS_SIDE: Final = {AccountCode.POOL: "pools", AccountCode.RECEIVABLE: "in_transit"}
_OWED_SIDE: Final = {AccountCode.WALLET: "wallets", AccountCode.MERCHANT: "merchants",
                     AccountCode.POINTS: "merchants", AccountCode.FEE: "own_funds",
                     AccountCode.EQUITY: "own_funds", AccountCode.OPERATING: "own_funds"}


def own_funds_account(currency: str) -> Account:
    """Our capital in the pools (credit-normal): the other side of `deposit_own_funds`."""
    return Account(id=account_id(f"platform:equity|{currency}"), currency=currency, code=AccountCode.EQUITY)


def settlement_transfer(instruction_id: str, payer_pool: str, payee_pool: str, amount_minor: int,
                        currency: str) -> Transfer:
    """The ledger side of a settlement transfer the bank confirmed: money left the payer pool's
    bank for the payee pool's. Its id derives from the instruction id, so recording it twice
    answers EXISTS."""
    return Transfer(id=account_id(f"clearing:{instruction_id}#settled"),
                    debit_account_id=pool_account(payee_pool, currency).id,
                    credit_account_id=pool_account(payer_pool, currency).id,
                    amount=amount_minor, currency=currency, code=CODE_SETTLEMENT)


class _Ledger(Protocol):
    async def create_accounts(self, accounts: Sequence[Account]) -> Any: ...
    async def create_transfers(self, transfers: Sequence[Transfer]) -> Any: ...
    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


async def open_pool_accounts(ledger: _Ledger, pools: Iterable[str], currencies: Iterable[str]) -> None:
    """Create every pool's account in every currency (EXISTS for those already there)."""
    accounts = [pool_account(p, c) for p in pools for c in currencies]
    if accounts:
        result = await ledger.create_accounts(accounts)
        assert all(r in (1, 11) for r in result.results), result.results  # OK or EXISTS


async def deposit_own_funds(ledger: _Ledger, pool: str, currency: str, amount_minor: int, key: str) -> None:
    """Record our own money paid into `pool` (capital, or the float a pool starts with); `key`
    makes it idempotent."""
    await ledger.create_accounts([pool_account(pool, currency), own_funds_account(currency)])
    result = await ledger.create_transfers([Transfer(
        id=account_id(f"clearing:own-funds:{key}"), debit_account_id=pool_account(pool, currency).id,
        credit_account_id=own_funds_account(currency).id, amount=amount_minor, currency=currency,
        code=CODE_OWN_FUNDS)])
    assert result.results[0] in (1, 15), result.results  # OK or EXISTS


@dataclass(frozen=True, slots=True)
class PoolBalance:
    pool: str
    currency: str
    account_id: int
    balance_minor: int  # posted: debits - credits (what the bank should show)
    pending_in_minor: int  # held towards the pool, not yet moved
    pending_out_minor: int


@dataclass(frozen=True, slots=True)
class PoolInvariant:
    """One currency's two sides (see the module docstring)."""

    currency: str
    pools_minor: int = 0
    in_transit_minor: int = 0
    wallets_minor: int = 0
    merchants_minor: int = 0
    own_funds_minor: int = 0
    unclassified_minor: int = 0  # debit-normal balance of CLEARING / SUSPENSE accounts

    @property
    def assets_minor(self) -> int:
        return self.pools_minor + self.in_transit_minor

    @property
    def owed_minor(self) -> int:
        return self.wallets_minor + self.merchants_minor + self.own_funds_minor

    @property
    def difference_minor(self) -> int:
        """Pools side minus owed side: 0 when the invariant holds."""
        return self.assets_minor - self.owed_minor


async def pool_balances(ledger: _Ledger, pools: Iterable[str], currencies: Iterable[str]) -> list[PoolBalance]:
    """Every configured pool's ledger balance in every configured currency, by (pool, currency);
    a pool account never used reads as zero."""
    wanted = [(p, c, pool_account(p, c).id) for p in pools for c in currencies]
    found = {a.id: a for a in (await ledger.lookup_accounts([i for _, _, i in wanted]) if wanted else [])}
    out = []
    for pool, currency, ident in wanted:
        a = found.get(ident)
        out.append(PoolBalance(pool, currency, ident,
                               a.debits_posted - a.credits_posted if a else 0,
                               a.debits_pending if a else 0, a.credits_pending if a else 0))
    return out


SUMS_BY_CODE: Final = ("SELECT currency, code, SUM(debits_posted), SUM(credits_posted) FROM accounts "
                       "GROUP BY currency, code")


async def invariant(ledger: _Ledger, currencies: Iterable[str] | None = None) -> list[PoolInvariant]:
    """Both sides of the invariant per currency (every currency with an account, or those given),
    by currency. One aggregate over the accounts table: meant for a periodic check, not a hot path."""
    sums: dict[str, dict[str, int]] = {}
    for currency, code, debits, credits in await ledger.query(SUMS_BY_CODE):
        side = sums.setdefault(currency, {})
        debit_balance = int(debits) - int(credits)  # PostgreSQL sums BIGINT as numeric
        if code in _POOLS_SIDE:
            key = _POOLS_SIDE[code]
            side[key] = side.get(key, 0) + debit_balance
        elif code in _OWED_SIDE:
            key = _OWED_SIDE[code]
            side[key] = side.get(key, 0) - debit_balance
        else:
            side["unclassified"] = side.get("unclassified", 0) + debit_balance
    wanted = sorted(set(sums) if currencies is None else set(currencies))
    return [PoolInvariant(c, **{f"{k}_minor": v for k, v in sums.get(c, {}).items()}) for c in wanted]
