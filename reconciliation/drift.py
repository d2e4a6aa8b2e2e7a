"""Balance drift: what each channel says it holds for us against our receivable for it.

For every channel whose adapter has the optional `BalanceReporting` capability and every currency
it settles, `BalanceDrift(db, adapters).check()` fetches the channel's verified balance
(`fetch_balance`) and compares it with our receivable account for that channel and currency
(`core/payments/accounts.py receivable_account`), read-only:

    ours    = debits_posted - credits_posted     what the channel owes us, posted only
    drift   = theirs - ours

Items in flight are reported, not flagged. A payment we still hold (pending debit) may already be
settled at the channel: it can make theirs higher by up to our `debits_pending`. A refund we still
hold (pending credit) may already be paid out by the channel: it can make theirs lower by up to our
`credits_pending`. So a drift within [-credits_pending, +debits_pending] is explained by what is
in flight; only the part beyond that band (`unexplained`) is a `BALANCE_DRIFT` finding. Our
account is read before and after the channel's answer (its `as_of` lies between the two reads),
and a drift is flagged only when neither read explains it, so a payment that settles on both sides
while we ask is not a finding.

Fees: a channel nets its fees out at once; we post them (`channel:<name>:fee_expense`) when a
reconciliation run posts the statement's fees. The check is meant to run after the day's runs
(the daily scheduler runs the internal check after its pass); before them, the fees not posted
yet show as a negative drift. A channel whose balance cannot be fetched or trusted is a
`BALANCE_UNAVAILABLE` finding, never a number.

Metrics: `dualflow_reconciliation_balance_drift_minor{channel,currency}` (theirs - ours, posted)
and `dualflow_reconciliation_balance_unexplained_minor{channel,currency}` (beyond in flight: 0
when the books agree; what to alert on), set for every channel and currency checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from dualflow.adapters.contract import BalanceReporting, BalanceUnavailable, ChannelAdapter
from dualflow.core.database import Database
from dualflow.core.in_flight import InFlightBand
from dualflow.core.payments.accounts import receivable_account

from . import metrics

log = logging.getLogger(__name__)


# Our receivable for a channel and currency at one read: posted (what the channel owes us),
# pending_in (payments held, maybe settled at the channel already), pending_out (refunds held,
# maybe paid out by the channel already).
Side = InFlightBand


@dataclass(frozen=True, slots=True)
class ChannelDrift:
    channel: str
    currency: str
    theirs: int = 0
    as_of_unix_s: int = 0
    ours: int = 0  # posted, at the read that explains most
    pending_in: int = 0
    pending_out: int = 0
    drift: int = 0  # theirs - ours
    unexplained: int = 0  # beyond what is in flight; a BALANCE_DRIFT finding when not 0
    error: str = ""  # BalanceUnavailable's reason: nothing to compare

    @property
    def subject(self) -> str:
        return f"{self.channel}/{self.currency}"

    def detail(self) -> str:
        if self.error:
            return f"no balance to trust from {self.channel} in {self.currency}: {self.error}"
        return (f"drift {self.unexplained:+d} beyond in flight: {self.channel} reports {self.theirs} "
                f"{self.currency} at {self.as_of_unix_s}, our receivable is {self.ours} posted (drift "
                f"{self.drift:+d}; in flight: payments held {self.pending_in}, refunds held {self.pending_out})")


class BalanceDrift:
    def __init__(self, db: Database, adapters: Mapping[str, ChannelAdapter], *, timeout_s: float = 30.0,
                 pooled: frozenset[str] = frozenset()) -> None:
        self.db = db
        self.adapters = adapters
        self.timeout_s = timeout_s  # per balance: a channel that hangs must not hold the whole check
        # Channels that collect straight into a reserve-fund pool: their settled money is swept from
        # the receivable into the pool account, so the receivable is not what they hold for us; the
        # pool's own check against the bank's record of the pool account covers them
        # (clearing/bank_check.py).
        self.pooled = pooled

    async def check(self) -> list[ChannelDrift]:
        """One ChannelDrift per reporting channel and currency it settles, in name order."""
        out: list[ChannelDrift] = []
        for name in sorted(self.adapters):
            adapter = self.adapters[name]
            if not isinstance(adapter, BalanceReporting) or name in self.pooled:
                continue  # a channel without the capability is not checked, a pooled one not here
            for currency in sorted(adapter.describe().currencies):
                out.append(await self._one(name, adapter, currency))
        return out

    async def _one(self, name: str, adapter: BalanceReporting, currency: str) -> ChannelDrift:
        before = await self._ours(name, currency)
        try:
            reported = await asyncio.wait_for(adapter.fetch_balance(currency), self.timeout_s)
        except BalanceUnavailable as exc:
            log.warning("balance drift: %s", exc)
            return ChannelDrift(name, currency, error=exc.reason)
        except asyncio.TimeoutError:
            log.warning("balance drift: channel %s gave no %s balance in %s s", name, currency, self.timeout_s)
            return ChannelDrift(name, currency, error="TIMEOUT")
        except Exception:  # noqa: BLE001 - a third-party adapter's failure is that channel's, not the check's
            log.exception("balance drift: channel %s failed to report its %s balance", name, currency)
            return ChannelDrift(name, currency, error="ADAPTER_ERROR")
        after = await self._ours(name, currency)
        theirs = reported.amount_minor
        assert reported.channel == name and reported.currency == currency, (reported, name, currency)
        # The channel's as_of lies between our two reads: whichever read explains more is the one
        # its answer is compared with.
        side = min((after, before), key=lambda s: abs(s.beyond(theirs)))
        found = ChannelDrift(name, currency, theirs, reported.as_of_unix_s, side.posted, side.pending_in,
                             side.pending_out, theirs - side.posted, side.beyond(theirs))
        metrics.BALANCE_DRIFT.labels(name, currency).set(found.drift)
        metrics.BALANCE_UNEXPLAINED.labels(name, currency).set(found.unexplained)
        return found

    async def _ours(self, channel: str, currency: str) -> Side:
        rows = await self.db.query("SELECT debits_pending, credits_pending, debits_posted, credits_posted "
                                   "FROM accounts WHERE id = ?", (receivable_account(channel, currency).id,))
        if not rows:
            return Side(0, 0, 0)  # never opened: nothing went through this channel in this currency
        dp, cp, dpo, cpo = (int(v or 0) for v in rows[0])
        return Side(dpo - cpo, dp, cp)
