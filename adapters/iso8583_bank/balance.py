"""The card bank's balance report: our balance at the bank in one currency, MACed like its files.

In real life a balance report delivered next to the settlement files; here the bank's
`GET {statement_url}/balance?currency=` endpoint. One line:

    BALANCE,<currency>,<amount>,<as of, unix seconds>,<MAC>\\n

`amount` is in minor units (negative when we owe the bank): settled payments less refunds and
reversals, net of fees, as the bank's settlement files count them. The MAC is AES-CMAC (32
upper-case hex digits) over every byte before it, the comma preceding it included, under
AES-CMAC(channel MAC key, "DUALFLOW BALANCE REPORT"), so the report, the settlement files and
the ISO 8583 messages never share a key. A report older or newer than `window_s` is not believed
(a replayed report).
"""

from __future__ import annotations

import hmac
import re

from dualflow.adapters.contract import BalanceUnavailable, ChannelBalance

from .statement import cmac

KEY_LABEL = b"DUALFLOW BALANCE REPORT"
_LINE = re.compile(rb"BALANCE,([A-Z]{3}),(-?[0-9]{1,18}),([0-9]{1,12}),([0-9A-F]{32})\n")


def balance_key(mac_key: bytes) -> bytes:
    return cmac(mac_key, KEY_LABEL)


def parse_balance(data: bytes, channel: str, currency: str, key: bytes, now_s: float,
                  window_s: int = 300) -> ChannelBalance:
    """The verified report, or BalanceUnavailable (GARBLED, UNTRUSTED) naming what is wrong."""
    where = f"channel {channel!r}: balance {currency}"
    found = _LINE.fullmatch(data)
    if found is None:
        raise BalanceUnavailable("GARBLED", f"{where}: not a balance report")
    head = data[: found.start(4)]
    if not hmac.compare_digest(cmac(key, head).hex().upper().encode(), found.group(4)):
        raise BalanceUnavailable("UNTRUSTED", f"{where}: the report's MAC does not verify")
    as_of = int(found.group(3))
    if found.group(1).decode() != currency:
        raise BalanceUnavailable("GARBLED", f"{where}: the report is for {found.group(1).decode()}")
    if abs(now_s - as_of) > window_s:
        raise BalanceUnavailable("UNTRUSTED", f"{where}: the report is {now_s - as_of:.0f} s old")
    return ChannelBalance(channel, currency, int(found.group(2)), as_of)
