"""A reserve-fund pool's own account balance at its bank, over the transfer rail: what clearing's
pool bank check (clearing/bank_check.py) compares with the pool's ledger account.

    GET /accounts/{bank_code}/{number}/balance
        -> 200 {"bank_code", "last4", "balance", "held", "as_of"} | 404 NOT_FOUND | 400 INVALID_ACCOUNT

`balance` has every transfer the bank settled applied; `held` is what accepted, unsettled debits
will take from it (still inside `balance`); `as_of` is ISO 8601 with an offset. The account has one
currency and the reply does not name it. The reply is believed only when its signature verifies
and it names the account asked about (bank code and last four digits).

The request is signed and its reply verified exactly like every other (the adapter's key ring,
reply nonce cache, connection pool and in-flight gauge), but not through
`TransferAdapter._exchange`: that logs the request path, and this path carries the account's full
number. Here logs and errors name an account by its bank code and last four digits only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from dualflow.adapters import metrics
from dualflow.adapters.contract import BalanceUnavailable
from dualflow.clearing.bank_check import AccountBalance
from dualflow.clearing.settings import RailAccount

from .adapter import _UNVERIFIED, TransferAdapter, _segment
from .signing import SignatureError
from .transformers import WireAccount, WireError, load_json


async def fetch_pool_balance(adapter: TransferAdapter, account: RailAccount) -> AccountBalance:
    """The bank's signed, verified balance of one of our accounts there; BalanceUnavailable (with
    a reason: CONNECTION_FAILED, TIMEOUT, UNTRUSTED, BANK_ERROR, GARBLED, UNSUPPORTED) when there
    is none to trust."""
    last4 = account.number[-4:]
    where = f"channel {adapter.name!r}: account {account.bank_code} *{last4}"
    if not account.number or WireAccount(bank_code=account.bank_code, name=account.name or "-",
                                         number=account.number).problem():
        raise BalanceUnavailable("UNSUPPORTED", f"{where}: not an account the rail can name")
    path = adapter._prefix + f"/accounts/{_segment(account.bank_code)}/{_segment(account.number)}/balance"
    status, raw = await _get(adapter, path, where)
    if status != 200:
        code = adapter._error_code(raw) or str(status)
        raise BalanceUnavailable("BANK_ERROR", f"{where}: the bank answered {code}")
    try:
        return _parse(load_json(raw), account.bank_code, last4)
    except (WireError, KeyError, TypeError, ValueError, AttributeError):
        raise BalanceUnavailable("GARBLED", f"{where}: not a balance of this account") from None


def pool_balance_fetcher(adapter: TransferAdapter) -> Callable[[str, RailAccount, str], Awaitable[AccountBalance]]:
    """`fetch` for clearing's `PoolBankCheck` over this channel: a currency the channel does not
    move is UNSUPPORTED_CURRENCY, any other is the account's (the rail keeps no currency per account)."""

    async def fetch(pool: str, account: RailAccount, currency: str) -> AccountBalance:
        if currency not in adapter.settings.currencies:
            raise BalanceUnavailable("UNSUPPORTED_CURRENCY", f"channel {adapter.name!r} does not move {currency}")
        return await fetch_pool_balance(adapter, account)

    return fetch


async def _get(adapter: TransferAdapter, path: str, where: str) -> tuple[int, bytes]:
    """One signed GET and its verified reply, as `TransferAdapter._exchange` does, logging nothing
    of the path."""
    headers = adapter.settings.keys.sign("GET", path, b"")
    metrics.IN_FLIGHT.labels(adapter.name).inc()
    try:
        async with adapter._client().request("GET", URL(adapter._origin + path, encoded=True), headers=headers,
                                             timeout=adapter._timeout, allow_redirects=False) as resp:
            raw = await resp.read()
            status, reply_headers = resp.status, {k: v for k, v in resp.headers.items()}
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        reason = "TIMEOUT" if isinstance(exc, TimeoutError) else "CONNECTION_FAILED"
        raise BalanceUnavailable(reason, f"{where}: no connection ({exc.__class__.__name__})") from None
    except TimeoutError:
        raise BalanceUnavailable("TIMEOUT", f"{where}: no reply in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise BalanceUnavailable("CONNECTION_FAILED", f"{where}: lost ({exc.__class__.__name__})") from None
    finally:
        metrics.IN_FLIGHT.labels(adapter.name).dec()
    try:
        adapter.settings.keys.verify("GET", path, reply_headers, raw, now=time.time(), nonces=adapter._reply_nonces,
                                     window_s=adapter.settings.window_s)
    except SignatureError as exc:
        raise BalanceUnavailable("UNTRUSTED", f"{where}: {_UNVERIFIED[exc.reason]} (HTTP {status})") from None
    return status, raw


def _parse(obj: Any, bank_code: str, last4: str) -> AccountBalance:
    balance, held, as_of = obj["balance"], obj["held"], obj["as_of"]
    # A signed answer about some other account is no answer about ours.
    if obj["bank_code"] != bank_code or obj["last4"] != last4:
        raise WireError("another account")
    if type(balance) is not int or type(held) is not int or held < 0 or not isinstance(as_of, str):
        raise WireError("not a balance")
    moment = datetime.fromisoformat(as_of)
    if moment.tzinfo is None:
        raise WireError("as_of without an offset")
    return AccountBalance(balance, held, int(moment.timestamp()))
