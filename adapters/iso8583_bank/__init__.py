"""Channel 1: a card bank speaking ISO 8583 over TCP (2-byte length framing, AES-CMAC MAC).

`create(config)` is the `dualflow.adapters` entry point `iso8583`. Settings (config.settings):

- `host`, `port`: the bank's ISO 8583 endpoint (required: port);
- `terminal_id` (DE 41, up to 8), `merchant_id` (DE 42, card acceptor id, up to 15);
- `currencies` (ISO 4217 alphabetic, default ["CNY"]), `min_amount`, `max_amount`,
  `fee_fixed`, `fee_bps`, `bin_ranges` ([[low, high], ...] BIN prefixes; empty: any card);
- `statement_url`: where the bank's daily statements are fetched (`GET {url}/statement?date=`);
- timings, in seconds: `reply_timeout_s` (10; then UNKNOWN), `connect_timeout_s` (3),
  `connect_wait_s` (2: how long a request waits for a link before NOT_SUBMITTED),
  `echo_interval_s` (30), `echo_timeout_s` (min(5, reply timeout)), `reconnect_initial_s`
  (0.05), `reconnect_max_s` (5).

Key files (config.key_files): `mac_key`, the AES-128 MAC key as 32 hex digits.

Modules: `spec` (the dialect as data), `codec` (bytes), `transformers` (instructions to fields,
replies to outcomes), `link` (the TCP link), `adapter` (the flows), `metrics`.
"""

from __future__ import annotations

from dualflow.adapters.contract import ChannelConfig

from .adapter import Iso8583BankAdapter, StatementError, parse_statement
from .codec import FrameError, Iso8583Error, MacError, Message, MessageError

__all__ = [
    "FrameError",
    "Iso8583BankAdapter",
    "Iso8583Error",
    "MacError",
    "Message",
    "MessageError",
    "StatementError",
    "create",
    "parse_statement",
]


def create(config: ChannelConfig) -> Iso8583BankAdapter:
    raw = config.read_key("mac_key")
    try:
        key = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"channel {config.name!r}: mac_key must be 32 hex digits") from None
    if len(key) != 16:
        raise ValueError(f"channel {config.name!r}: mac_key must be an AES-128 key (32 hex digits)")
    return Iso8583BankAdapter(config, key)
