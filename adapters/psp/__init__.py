"""Channel 2: a third-party PSP over signed HTTP JSON, modeled on WeChat Pay API v3.

`create(config) -> PspAdapter` is the `dualflow.adapters` entry point `psp`. Settings:
`base_url`, `mch_id`, `serial_no` (the merchant key's serial), `currencies`, `assets`,
`min_amount`, `max_amount`, `fee` ({fixed, bps} or per currency), optional `notify_url`,
`timeout_ms` (default 10000), `connect_timeout_ms`, `certificates_check_ms` (how often the
platform certificates file is stat'ed for a rotation; default 1000, 0: at every use). Key files:
`merchant_private_key` (PEM RSA private key), `platform_certificates` (PEM certificates or
`serial_no=`-named public keys; reloaded when it changes), `api_v3_key` (32 bytes).

Modules: `signing` (pure signing, verification and AES-GCM), `keys` (platform keys by
serial, nonce cache), `transformers` (the PSP's shapes to our outcomes, bill parsing),
`adapter` (the flows over aiohttp).

Errors: outcomes are values (ChannelResult). Exceptions are only
    FlowNotSupported         reverse, or query(kind="reverse")
    CallbackRejected         parse_callback: BAD_SIGNATURE, UNKNOWN_KEY, STALE, REPLAYED,
                             UNDECRYPTABLE, MALFORMED
    StatementUnavailable     fetch_statement: the bill could not be fetched or trusted
    ValueError / KeyError    create(): a bad setting or key file
"""

from __future__ import annotations

from dualflow.adapters.contract import ChannelConfig

from .adapter import PspAdapter, StatementUnavailable


def create(config: ChannelConfig) -> PspAdapter:
    return PspAdapter(config)


__all__ = ["PspAdapter", "StatementUnavailable", "create"]
