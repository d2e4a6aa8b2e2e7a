"""The transfer channel's settings, read once from its ChannelConfig and checked.

A bad setting raises ConfigError naming the setting, never its value (account numbers and key
material stay out of messages). Keys come only from key files: `hmac_key` (hex; signs and
verifies) and optionally `hmac_key_previous` (verifies only, while the bank rolls keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dualflow.adapters.contract import ChannelConfig, FeeSchedule

from .signing import WINDOW_S, KeyRing, parse_hex_key
from .transformers import WireAccount


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TransferSettings:
    base_url: str
    pool: WireAccount  # our account at this bank: collections land here, payouts leave from here
    keys: KeyRing = field(repr=False)
    currencies: frozenset[str] = frozenset({"CNY"})
    min_amount: int = 1
    max_amount: int = 2**63 - 1
    fees: Mapping[str, FeeSchedule] = field(default_factory=dict)
    # For payments whose payer (or beneficiary) banks where `pool` does: intra-bank, cheaper.
    same_bank_fees: Mapping[str, FeeSchedule] = field(default_factory=dict)
    timeout_ms: int = 10_000  # a whole request, connect included
    connect_timeout_ms: int = 2_000
    statement_timeout_ms: int = 30_000
    callback_url: str = ""  # sent with each transfer; the bank POSTs its notifications there
    callback_path: str = "/callbacks/transfer"  # the path the bank signs callbacks over (see from_config)
    accounts: Mapping[str, str] = field(default_factory=dict, repr=False)  # "BANK:last4" -> full number
    window_s: int = WINDOW_S
    max_connections: int = 32

    @classmethod
    def from_config(cls, config: ChannelConfig) -> TransferSettings:
        s = config.settings
        base_url = _str(s, "base_url").rstrip("/")
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise ConfigError("settings.base_url must be an http(s) URL")
        pool_raw = s.get("pool_account")
        if not isinstance(pool_raw, Mapping):
            raise ConfigError("settings.pool_account must be a table with bank_code, number and name")
        pool = WireAccount(bank_code=str(pool_raw.get("bank_code", "")), name=str(pool_raw.get("name", "")),
                           number=str(pool_raw.get("number", "")))
        if not pool.number or pool.problem():
            raise ConfigError(f"settings.pool_account: {pool.problem() or 'number is required'}")
        try:
            current = parse_hex_key(config.read_key("hmac_key"))
            previous = ([parse_hex_key(config.read_key("hmac_key_previous"))]
                        if "hmac_key_previous" in config.key_files else [])
        except (KeyError, OSError, ValueError) as exc:
            raise ConfigError(f"key_files: {exc}") from None
        currencies = s.get("currencies", ["CNY"])
        if (not isinstance(currencies, (list, tuple)) or not currencies
                or not all(isinstance(c, str) and len(c) == 3 and c.isalpha() and c.isupper() for c in currencies)):
            raise ConfigError("settings.currencies must be a list of ISO 4217 codes")
        fees: dict[str, FeeSchedule] = {}
        for currency, fee in dict(s.get("fees", {})).items():
            try:
                fees[str(currency)] = FeeSchedule.from_table(fee, f"settings.fees.{currency}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        raw_same_bank = s.get("same_bank_fees", {})
        if not isinstance(raw_same_bank, Mapping):
            raise ConfigError("settings.same_bank_fees must map currency -> fee table")
        same_bank_fees: dict[str, FeeSchedule] = {}
        for currency, fee in raw_same_bank.items():
            if currency not in currencies:
                # A schedule for a currency the channel never carries would silently never apply.
                raise ConfigError(f"settings.same_bank_fees.{currency}: not one of settings.currencies")
            try:
                same_bank_fees[str(currency)] = FeeSchedule.from_table(fee, f"settings.same_bank_fees.{currency}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        callback_url = str(s.get("callback_url", ""))
        callback_path = str(s.get("callback_path", "")) or (urlsplit(callback_url).path if callback_url else "")
        accounts = s.get("accounts", {})
        if not isinstance(accounts, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in accounts.items()):
            raise ConfigError("settings.accounts must map 'BANK_CODE:last4' to an account number")
        settings = cls(
            base_url=base_url, pool=pool, keys=KeyRing.of(current, *previous), currencies=frozenset(currencies),
            min_amount=_int(s, "min_amount", "min_amount", 1),
            max_amount=_int(s, "max_amount", "max_amount", 2**63 - 1),
            fees=fees, same_bank_fees=same_bank_fees, timeout_ms=_int(s, "timeout_ms", "timeout_ms", 10_000),
            connect_timeout_ms=_int(s, "connect_timeout_ms", "connect_timeout_ms", 2_000),
            statement_timeout_ms=_int(s, "statement_timeout_ms", "statement_timeout_ms", 30_000),
            # The financial gateway's callback listener serves /callbacks/<channel name>.
            callback_url=callback_url, callback_path=callback_path or f"/callbacks/{config.name}",
            accounts=dict(accounts), window_s=_int(s, "window_s", "window_s", WINDOW_S),
            max_connections=_int(s, "max_connections", "max_connections", 32),
        )
        if not 1 <= settings.min_amount <= settings.max_amount:
            raise ConfigError("settings.min_amount must be at least 1 and at most max_amount")
        if settings.timeout_ms <= 0 or settings.connect_timeout_ms <= 0 or settings.window_s <= 0:
            raise ConfigError("settings timeouts and window_s must be positive")
        return settings


def _str(s: Mapping[str, Any], name: str) -> str:
    value = s.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"settings.{name} is required")
    return value


def _int(s: Mapping[str, Any], name: str, path: str, default: int) -> int:
    value = s.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"settings.{path} must be a non-negative integer")
    return value
