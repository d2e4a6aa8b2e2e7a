"""Which pool holds whose money, and which inter-pool obligations a payment creates.

Users' wallets and merchants' accounts are virtual; the money behind them sits in one
reserve-fund pool per party, its *home pool*. A movement between parties with different
homes, or a collection or payout through a pool other than the party's home, leaves one pool
holding money that now belongs to another pool's parties: that pool owes the other (the
information flow), and the clearing center settles the net at cut-off (the fund flow).

Homes are assigned once, on a party's first movement, and never change silently:

* money landing straight in a pool (a collection over a channel that collects into that pool,
  `channel_pools`) homes its payee there: their money is there;
* money received from another party homes the payee with the payer, so nothing has to move;
* a merchant, and anyone else (a payer never seen before), starts at its configured pool
  (`merchant_pools`), else `default_pool`.

The rules, for movements that have happened (a SUCCEEDED payment or refund; points are not
money and create nothing):

==========================================  ======================  ======================
movement                                    debtor (owes)           creditor (is owed)
==========================================  ======================  ======================
wallet payment payer -> payee               home(payer)             home(payee)
collection into pool P for payee            P                       home(payee)
payout of payer's money from pool P         home(payer)             P
refund of a wallet payment                  home(payee)             home(payer)
refund (return) of a collection from P      home(payee)             P
==========================================  ======================  ======================

and nothing when debtor and creditor are the same pool. An obligation's id derives from what
created it (`pay:<payment id>`, `refund:<refund id>`), so recording it again is a replay.
Pure: `Attribution.obligations` reads and assigns homes through the `Homes` it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dualflow.core.payments.model import Asset, Payment, Refund


class Homes(Protocol):
    async def home(self, party: str, fallback: str) -> str:
        """`party`'s home pool; assigned `fallback` (durably) when it has none yet."""
        ...


@dataclass(frozen=True, slots=True)
class Owed:
    """One inter-pool obligation a movement created."""

    obligation_id: str
    debtor_pool: str
    creditor_pool: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Attribution:
    default_pool: str
    channel_pools: Mapping[str, str] = field(default_factory=dict)  # channel -> the pool it collects into
    merchant_pools: Mapping[str, str] = field(default_factory=dict)  # merchant id -> its configured pool
    currencies: frozenset[str] = frozenset()  # obligations exist only in these; empty: any

    def configured_home(self, party: str) -> str:
        kind, _, ident = party.partition(":")
        return self.merchant_pools.get(ident, self.default_pool) if kind == "merchant" else self.default_pool

    async def _home(self, homes: Homes, party: str, fallback: str = "") -> str:
        """`party`'s home; one not assigned yet becomes `fallback` (where its first money is), except
        that a merchant always starts at its configured pool."""
        if not fallback or party.startswith("merchant:"):
            fallback = self.configured_home(party)
        return await homes.home(party, fallback)

    async def of_payment(self, payment: Payment, homes: Homes) -> list[Owed]:
        """The obligation a SUCCEEDED payment created (none, or one)."""
        if payment.asset is Asset.POINTS or not self._counted(payment.currency):
            return []
        oid = f"pay:{payment.payment_id}"
        if payment.asset is Asset.WALLET:
            debtor = await self._home(homes, payment.payer)
            creditor = await self._home(homes, payment.payee, fallback=debtor)
        else:
            pool = self.channel_pools.get(payment.channel)
            if pool is None:
                return []  # the money is at a channel, not in a pool: nothing owed between pools
            if payment.kind == "payout":
                debtor, creditor = await self._home(homes, payment.payer, fallback=pool), pool
            else:
                debtor, creditor = pool, await self._home(homes, payment.payee, fallback=pool)
        return self._owed(oid, debtor, creditor, payment.amount, payment.currency)

    async def of_refund(self, refund: Refund, payment: Payment, homes: Homes) -> list[Owed]:
        """The obligation a SUCCEEDED refund of `payment` created: the payee gives money back."""
        if payment.asset is Asset.POINTS or not self._counted(refund.currency):
            return []
        oid = f"refund:{refund.refund_id}"
        debtor = await self._home(homes, payment.payee)
        if payment.asset is Asset.WALLET:
            creditor = await self._home(homes, payment.payer, fallback=debtor)
        else:
            pool = self.channel_pools.get(payment.channel)
            if pool is None:
                return []
            creditor = pool
        return self._owed(oid, debtor, creditor, refund.amount, refund.currency)

    def _counted(self, currency: str) -> bool:
        return not self.currencies or currency in self.currencies

    @staticmethod
    def _owed(oid: str, debtor: str, creditor: str, amount: int, currency: str) -> list[Owed]:
        return [] if debtor == creditor else [Owed(oid, debtor, creditor, amount, currency)]


class MemoryHomes:
    """Homes in a dict: for tests and simulations."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self.assigned: dict[str, str] = dict(initial or {})

    async def home(self, party: str, fallback: str) -> str:
        return self.assigned.setdefault(party, fallback)

