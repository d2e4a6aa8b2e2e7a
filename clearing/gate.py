"""Net debit caps at the door: a movement that would take a pool beyond its cap is refused before it happens.

The clearing center records a movement's obligation only once the money has moved (feed.py reads
the payment outbox), and then it is a fact a cap cannot refuse. So under the REFUSE policy the
payments ask `CapGate.admit` first, after validation and routing and before their ledger commit
(core/payments/service.py `admission`): a wallet payment between parties with different home
pools, or a payout from a pool other than the payer's home, that would push its debtor pool's net
debit beyond the cap is refused with `NetDebitCapExceeded`, and nothing is committed. The would-be
obligation comes from `Attribution.of_request` with homes only read (`PeekHomes`): asking assigns
no home. Collections (top-ups) are never refused: the money arrives whatever we say. Under QUEUE
every movement passes and its obligation queues in the center.

The position a movement is checked against is the open window's admitted position of its debtor
plus what the gate has *reserved*: movements it admitted whose obligation the feed has not recorded
yet (the feed lags the commit; a payout's obligation waits until the payout succeeds). Between
the check and the reservation nothing awaits, so two concurrent movements cannot both pass a cap
only one of them fits. A reservation (per payment id) is released when the feed has recorded the
payment's obligation or seen it fail or be canceled (`ObligationFeed.done`), and by the payments
when the request did not become a new payment (a replay, a refusal, a failure in the commit, an
error). Reservations live in memory only: a restart loses them, which lets a movement through that
would not have fitted, never refuses one that does, and the feed records it as a fact anyway.
The center holds an obligation (in its position) a moment before the feed, its write stored,
releases the reservation: before refusing, the gate drops the reservations whose obligation the
center holds already, so nothing is refused for being counted twice.
"""

from __future__ import annotations

import logging
from typing import Any

from dualflow.core.payments.model import Asset, PaymentRequest

from . import metrics
from .attribution import Attribution, KnownHomes, Owed, PeekHomes
from .caps import CapPolicy
from .errors import NetDebitCapExceeded

log = logging.getLogger(__name__)


class CapGate:
    def __init__(self, clearing: Any, attribution: Attribution, homes: KnownHomes) -> None:
        self.clearing = clearing  # ClearingService: its center's open window (caps, policy, positions)
        self.attribution = attribution
        self.homes = PeekHomes(homes)
        self._held: dict[str, Owed] = {}  # payment id -> the obligation reserved for it
        self._reserved: dict[tuple[str, str], int] = {}  # (debtor pool, currency) -> sum held

    @classmethod
    def attach(cls, clearing: Any, feed: Any) -> CapGate:
        """A gate over `feed`'s attribution and homes, released by what `feed` reads (ObligationFeed)."""
        gate = cls(clearing, feed.attribution, feed.homes)
        feed.done.append(gate.release)
        return gate

    async def admit(self, request: PaymentRequest, payment_id: str, channel: str = "") -> None:
        """Refuse (`NetDebitCapExceeded`) a movement its debtor pool's cap has no room for, or
        reserve room for it under `payment_id` (the id it will have; `channel` is the one routing
        chose). Nothing to do for a collection, for a movement within one pool, under QUEUE, or
        without any cap."""
        if request.asset is not Asset.WALLET and request.kind != "payout":
            return
        book = self.clearing.center.current.book
        if book.policy is not CapPolicy.REFUSE or (not book.caps.per_pool and book.caps.default_minor is None):
            return  # nothing can be refused: spare the home lookups (caps come from the configuration)
        owed = await self.attribution.of_request(request, payment_id, channel, self.homes)
        if not owed:
            return
        (obligation,) = owed
        # No await from here to the reservation: the check and the reservation are one step.
        book = self.clearing.center.current.book  # again: a cut-off may have opened another window
        if book.policy is not CapPolicy.REFUSE:
            return
        key = (obligation.debtor_pool, obligation.currency)
        cap = book.caps.cap(*key)
        after = obligation.amount_minor + self._reserved.get(key, 0) - book.position(*key).net_minor
        if cap is not None and after > cap and self._forget_recorded(key):
            after = obligation.amount_minor + self._reserved.get(key, 0) - book.position(*key).net_minor
        if cap is not None and after > cap:
            metrics.CAPS_HIT.labels(obligation.debtor_pool, obligation.currency, "refused").inc()
            raise NetDebitCapExceeded(obligation.debtor_pool, obligation.currency, cap, after,
                                      obligation.obligation_id)
        assert payment_id not in self._held, payment_id  # each request gets a new payment id
        self._held[payment_id] = obligation
        self._reserved[key] = self._reserved.get(key, 0) + obligation.amount_minor
        metrics.GATE_RESERVED.labels(*key).set(self._reserved[key])

    def release(self, payment_id: str) -> None:
        """Forget what was reserved for `payment_id` (nothing if nothing was)."""
        obligation = self._held.pop(payment_id, None)
        if obligation is None:
            return
        key = (obligation.debtor_pool, obligation.currency)
        left = self._reserved[key] - obligation.amount_minor
        assert left >= 0, (key, left)
        if left:
            self._reserved[key] = left
        else:
            del self._reserved[key]
        metrics.GATE_RESERVED.labels(*key).set(left)

    def _forget_recorded(self, key: tuple[str, str]) -> bool:
        """Release `key`'s reservations whose obligation a live window of the center holds (the feed
        has recorded it, or is storing it); True if there was one. Synchronous, like the check."""
        center = self.clearing.center
        recorded = [pid for pid, o in self._held.items()
                    if (o.debtor_pool, o.currency) == key and center.locate(o.obligation_id) is not None]
        for pid in recorded:
            self.release(pid)
        return bool(recorded)

    def reserved(self, pool: str, currency: str) -> int:
        """What the gate holds for `pool`'s movements not recorded yet, in minor units."""
        return self._reserved.get((pool, currency), 0)
