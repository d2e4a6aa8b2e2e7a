"""Shared set-up for payment tests: a ledger on each backend, merchants, funding."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dualflow.adapters.scripted import ScriptedChannel
from dualflow.core.ledger.model import Account, AccountCode, Transfer
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.accounts import Party, account_id, holding_account
from dualflow.core.payments.model import Asset, Merchant, PaymentRequest
from dualflow.core.payments.service import PaymentService

MERCHANTS = {
    "shop": Merchant("shop", "Shop", frozenset({"CNY", "USD"}), fee_bps=100),
    "other": Merchant("other", "Other shop", frozenset({"CNY"}), fee_bps=0),
}
TOPUP = Account(id=account_id("test:topup"), currency="CNY", code=AccountCode.EQUITY)


@asynccontextmanager
async def payment_service(db_url: str, channel: ScriptedChannel | None = None, **kw: Any) -> AsyncIterator[
        PaymentService]:
    clock = kw.pop("clock_ns", None)
    ledger_kw: dict[str, Any] = kw.pop("ledger_kw", {})
    if clock:
        ledger_kw["clock_ns"] = clock
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0, **ledger_kw)
    await ledger.start()
    timing = {"poll_initial_s": 0.01, "poll_max_interval_s": 0.05, "poll_tick_s": 0.01}
    service = PaymentService(ledger, MERCHANTS, dispatcher=channel, **{**timing, **kw})
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await ledger.stop()


async def fund(service: PaymentService, user: str, asset: Asset, amount: int, currency: str = "CNY") -> None:
    """Credit a user's wallet or points from a test equity account, straight in the ledger."""
    acct = holding_account(Party("user", user), asset, currency)
    source = Account(id=account_id(f"test:topup:{currency}"), currency=currency, code=AccountCode.EQUITY)
    await service.ledger.create_accounts([source, acct])
    tid = account_id(f"fund:{user}:{asset}:{amount}:{currency}")
    result = await service.ledger.create_transfers([Transfer(
        id=tid, debit_account_id=source.id, credit_account_id=acct.id, amount=amount, currency=currency, code=9)])
    assert result.results[0] in (1, 15), result.results


def pay(request_id: str, amount: int, asset: Asset = Asset.WALLET, payer: str = "user:alice",
        merchant: str = "shop", currency: str = "CNY", **kw: Any) -> PaymentRequest:
    return PaymentRequest(request_id=request_id, merchant_id=merchant, payer=payer,
                          payee=kw.pop("payee", f"merchant:{merchant}"), amount=amount, currency=currency,
                          asset=asset, **kw)


def vault_toml() -> str:
    """A `[vault]` table with fresh random keys, for platform configs written by tests."""
    def key() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    return f'[vault]\nactive = "k1"\nfingerprint_key = "{key()}"\n[vault.keys]\nk1 = "{key()}"\n'
