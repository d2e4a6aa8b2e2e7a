"""Our side of a balance someone else also keeps, with what is in flight between the two books.

Reconciliation compares a channel's balance with our receivable for it (reconciliation/drift.py),
clearing a bank's balance of a pool account with the pool's ledger account (clearing/bank_check.py).
Both read our account as posted plus pending: money on its way in that we still hold
(`pending_in`) may already be booked on their side, and can make theirs higher by up to that
much; money on its way out (`pending_out`) can make theirs lower by up to that much. Only a
difference beyond that band is unexplained.
"""

from __future__ import annotations

from typing import NamedTuple


class InFlightBand(NamedTuple):
    """Our account at one read."""

    posted: int  # debits_posted - credits_posted
    pending_in: int  # held towards the account: may already be booked on their side
    pending_out: int  # held out of the account: may already be booked on their side

    def beyond(self, theirs: int) -> int:
        """The part of theirs - posted that what is in flight does not explain (0 inside the band)."""
        difference = theirs - self.posted
        if difference > self.pending_in:
            return difference - self.pending_in
        if difference < -self.pending_out:
            return difference + self.pending_out
        return 0
