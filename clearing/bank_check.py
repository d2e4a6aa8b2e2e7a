"""Each reserve-fund pool's ledger balance against the bank's own record of that pool's account.

The pool invariant (pools.py) proves the pools cover what we owe, as the ledger sees them; this is
the other half: for every pool with a bank account (`[clearing] rail_accounts`) and every currency
checked, `PoolBankCheck(...).check()` asks the bank for that account's balance through an injected
`fetch(pool, account, currency) -> AccountBalance` (the transfer rail's is
adapters/transfer/pool_balance.py `pool_balance_fetcher`; clearing imports no adapter) and compares
it with the pool's ledger account, read-only:

    ours        = debits_posted - credits_posted     what the pool holds, posted only
    difference  = theirs - ours

Items in flight are explained the way reconciliation/drift.py explains a channel's: money on its
way into the pool that we still hold (`debits_pending`) may already be credited at the bank, and
can make theirs higher by up to that much; money on its way out that we still hold
(`credits_pending`: a payout debiting the pool) may already be debited at the bank, and can make
theirs lower by up to that much. A difference inside [-pending_out, +pending_in] is explained;
only the part beyond it is `unexplained`. Ours is read before and after the bank's answer (its
`as_of` lies between the two) and the read that explains more is the one compared, so a transfer
that settles on both sides while we ask is not a finding. Until a debit settles at the bank it is
only `held` there (still inside its balance): that is reported, not used.

Settlement transfers between pools are posted by the clearing service only when the rail confirms
them (service.py `_answer`), with no pending stage in the ledger; between the bank settling one and
the service recording it, both pools differ by its amount. `in_flight(pool, currency) -> (in, out)`,
when given, adds the settlement transfers sent and not yet recorded to the band, so they explain
that too; without it such a difference is unexplained until the service records the answer.

Assumptions: a bank account holds one currency, and the bank's reply does not name it. The check
compares each pool's account in the `currency` it is given, default each configured currency,
which is only right when the pools' accounts all hold every currency checked (one configured
currency). The mock rail takes no fees from account balances; a real bank that does would show
them as a negative unexplained difference until we post them.

A balance that cannot be fetched or trusted (the fetch raises; an adapter's `BalanceUnavailable`
carries a `reason`) is UNAVAILABLE with that reason, never a number. Account numbers never appear
in results or logs: a pool is named by its name and its bank code.

Metrics (clearing/metrics.py): `dualflow_clearing_pool_bank_difference_minor{pool,currency}` and
`dualflow_clearing_pool_bank_unexplained_minor{pool,currency}` (0 when the books agree: what to
alert on), set for every pool and currency compared; an UNAVAILABLE one leaves them as they were.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dualflow.core.in_flight import InFlightBand

from . import metrics
from .pools import pool_balances
from .settings import ClearingSettings, RailAccount

log = logging.getLogger(__name__)

_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """What a bank says one of our accounts there holds (minor units of the account's currency)."""

    balance_minor: int  # every transfer the bank settled applied
    held_minor: int  # what accepted, unsettled debits will take from it (still inside balance_minor)
    as_of_unix_s: int


Fetch = Callable[[str, RailAccount, str], Awaitable[AccountBalance]]
InFlight = Callable[[str, str], Awaitable[tuple[int, int]]]


# Our pool account in one currency at one read: posted (debits - credits, what the bank should
# show), pending_in (debits_pending plus settlement transfers in flight towards the pool) and
# pending_out (credits_pending plus those in flight out of it). The band rule is drift's.
Side = InFlightBand


@dataclass(frozen=True, slots=True)
class PoolBankBalance:
    pool: str
    currency: str
    bank_code: str = ""
    theirs: int = 0  # the bank's balance
    held: int = 0  # the bank's holds on it (information: inside theirs)
    as_of_unix_s: int = 0
    ours: int = 0  # posted, at the read that explains most
    pending_in: int = 0
    pending_out: int = 0
    difference: int = 0  # theirs - ours
    unexplained: int = 0  # beyond what is in flight: not 0 is a finding
    error: str = ""  # why there is no balance to compare (UPPER_SNAKE_CASE)

    @property
    def status(self) -> str:
        """UNAVAILABLE (no number), UNEXPLAINED, IN_FLIGHT (a difference the band explains), MATCH."""
        if self.error:
            return "UNAVAILABLE"
        if self.unexplained:
            return "UNEXPLAINED"
        return "IN_FLIGHT" if self.difference else "MATCH"

    @property
    def subject(self) -> str:
        return f"{self.pool}/{self.currency}"

    def detail(self) -> str:
        if self.error:
            return f"no balance to trust for pool {self.pool} at {self.bank_code} in {self.currency}: {self.error}"
        return (f"pool {self.pool}: {self.bank_code} reports {self.theirs} {self.currency} (held {self.held}) at "
                f"{self.as_of_unix_s}, our ledger {self.ours} posted (difference {self.difference:+d}, "
                f"{self.unexplained:+d} beyond in flight: in {self.pending_in}, out {self.pending_out})")


class PoolBankCheck:
    """`ledger`: anything with `lookup_accounts` (LedgerService). `currency`: the one currency the
    pools' bank accounts hold ("" = each configured currency, see the module docstring)."""

    def __init__(self, ledger: Any, settings: ClearingSettings, fetch: Fetch, *, currency: str = "",
                 timeout_s: float = 30.0, in_flight: InFlight | None = None) -> None:
        if currency and currency not in settings.currencies:
            raise ValueError(f"currency {currency!r} is not a clearing currency")
        self.ledger = ledger
        self.settings = settings
        self.fetch = fetch
        self.currencies = (currency,) if currency else tuple(settings.currencies)
        self.timeout_s = timeout_s  # per balance: a bank that hangs must not hold the whole check
        self.in_flight = in_flight

    async def check(self) -> list[PoolBankBalance]:
        """One PoolBankBalance per pool with a bank account and currency checked, in configured
        pool order."""
        out = []
        for pool in self.settings.pools:
            account = self.settings.rail_accounts.get(pool)
            if account is None:
                continue  # no bank account configured: nothing to compare with
            for currency in self.currencies:
                out.append(await self._one(pool, account, currency))
        return out

    async def _one(self, pool: str, account: RailAccount, currency: str) -> PoolBankBalance:
        before = await self._ours(pool, currency)
        try:
            reported = await asyncio.wait_for(self.fetch(pool, account, currency), self.timeout_s)
        except asyncio.TimeoutError:
            log.warning("pool bank check: pool %s (%s) gave no %s balance in %s s", pool, account.bank_code,
                        currency, self.timeout_s)
            return PoolBankBalance(pool, currency, account.bank_code, error="TIMEOUT")
        except Exception as exc:  # noqa: BLE001 - the bank's failure is that pool's, not the check's
            reason = getattr(exc, "reason", "")
            if isinstance(reason, str) and _REASON.fullmatch(reason):
                log.warning("pool bank check: pool %s (%s) %s: %s", pool, account.bank_code, currency, exc)
            else:
                log.exception("pool bank check: fetching pool %s (%s) %s failed", pool, account.bank_code, currency)
                reason = "FETCH_ERROR"
            return PoolBankBalance(pool, currency, account.bank_code, error=reason)
        after = await self._ours(pool, currency)
        theirs = reported.balance_minor
        # The bank's as_of lies between our two reads: whichever explains more is compared.
        side = min((after, before), key=lambda s: abs(s.beyond(theirs)))
        found = PoolBankBalance(pool, currency, account.bank_code, theirs, reported.held_minor,
                                reported.as_of_unix_s, side.posted, side.pending_in, side.pending_out,
                                theirs - side.posted, side.beyond(theirs))
        metrics.POOL_BANK_DIFFERENCE.labels(pool, currency).set(found.difference)
        metrics.POOL_BANK_UNEXPLAINED.labels(pool, currency).set(found.unexplained)
        if found.unexplained:
            log.warning("pool bank check: %s", found.detail())
        return found

    async def _ours(self, pool: str, currency: str) -> Side:
        (balance,) = await pool_balances(self.ledger, [pool], [currency])
        moving_in, moving_out = await self.in_flight(pool, currency) if self.in_flight is not None else (0, 0)
        assert moving_in >= 0 and moving_out >= 0, (pool, currency, moving_in, moving_out)
        return Side(balance.balance_minor, balance.pending_in_minor + moving_in,
                    balance.pending_out_minor + moving_out)
