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
Pure: `Attribution` reads and assigns homes through the `Homes` it is given. `of_request` answers
what a movement *would* owe before it happens (clearing/gate.py), through `PeekHomes`, which reads
stored homes and assigns none: a party without a home gets the fallback it would be assigned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dualflow.core.payments.model import Asset, Payment, PaymentRequest, Refund


class Homes(Protocol):
    async def home(self, party: str, fallback: str) -> str:
        """`party`'s home pool; assigned `fallback` (durably) when it has none yet."""
        ...


class KnownHomes(Protocol):
    async def lookup(self, party: str) -> str | None:
        """`party`'s home pool if it has one; assigns nothing."""
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
        return await self._of_movement(f"pay:{payment.payment_id}", payment.asset, payment.kind, payment.channel,
                                       payment.payer, payment.payee, payment.amount, payment.currency, homes)

    async def of_request(self, request: PaymentRequest, payment_id: str, channel: str, homes: Homes) -> list[Owed]:
        """The obligation `request` would create if it succeeded as payment `payment_id` over
        `channel` (the one routing chose; "" for an internal asset). Give it `PeekHomes`, so that
        asking assigns nothing: the homes are assigned when the movement has happened (the feed)."""
        return await self._of_movement(f"pay:{payment_id}", request.asset, request.kind, channel,
                                       request.payer, request.payee, request.amount, request.currency, homes)

    async def _of_movement(self, oid: str, asset: Asset, kind: str, channel: str, payer: str, payee: str,
                           amount: int, currency: str, homes: Homes) -> list[Owed]:
        if asset is Asset.POINTS or not self._counted(currency):
            return []
        if asset is Asset.WALLET:
            debtor = await self._home(homes, payer)
            creditor = await self._home(homes, payee, fallback=debtor)
        else:
            pool = self.channel_pools.get(channel)
            if pool is None:
                return []  # the money is at a channel, not in a pool: nothing owed between pools
            if kind == "payout":
                debtor, creditor = await self._home(homes, payer, fallback=pool), pool
            else:
                debtor, creditor = pool, await self._home(homes, payee, fallback=pool)
        return self._owed(oid, debtor, creditor, amount, currency)

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

    async def lookup(self, party: str) -> str | None:
        return self.assigned.get(party)


class PeekHomes:
    """`Homes` that only read: a stored home, else the fallback, which is not stored (what a
    movement that has not happened yet would be attributed)."""

    def __init__(self, homes: KnownHomes) -> None:
        self.homes = homes

    async def home(self, party: str, fallback: str) -> str:
        known = await self.homes.lookup(party)
        return fallback if known is None else known

