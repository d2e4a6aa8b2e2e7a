"""The platform's TOML configuration: vault keys, merchants, and the callers allowed in.

`load_config(path)` reads one TOML file (see examples/dualflow.example.toml) into
frozen dataclasses and validates all of it before anything starts: a problem is
a `ConfigError` whose message begins with the key path (`callers[1].burst`) and
never contains a secret (vault keys, API keys and their hashes are never echoed).
Secrets are also kept out of the dataclasses' reprs. With no callers,
authentication is disabled (`PlatformConfig.auth_enabled`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from dualflow.adapters.contract import ChannelConfig
from dualflow.clearing.caps import CapPolicy, NetDebitCaps
from dualflow.clearing.settings import ACCOUNT_NUMBER, BANK_CODE, POOL_NAME, ClearingSettings, RailAccount
from dualflow.core.errors import NotFound
from dualflow.core.money import is_currency
from dualflow.reconciliation.scheduler import ScheduleSettings

from .auth import ALL_MERCHANTS, PERMISSIONS, hash_api_key

VAULT_KEY_BYTES: Final = 32
FEE_BPS_MAX: Final = 10_000
API_KEY_PREFIX: Final = "dfk_"
API_KEY_LENGTH_MIN: Final = 16

# Caller names become a Prometheus label and appear in logs and errors.
_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MERCHANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_VAULT_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# What can travel as an ASCII gRPC metadata value after `Bearer `.
_API_KEY = re.compile(r"[\x21-\x7e]+")


class ConfigError(ValueError):
    """The configuration is unusable; `key_path` names the offending key (`""` for the whole file)."""

    def __init__(self, key_path: str, problem: str) -> None:
        super().__init__(f"{key_path}: {problem}" if key_path else problem)
        self.key_path = key_path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """Card-vault keys, 32 bytes each: `keys[active]` encrypts, the others still decrypt."""

    active: str
    keys: Mapping[str, bytes] = field(repr=False)
    fingerprint_key: bytes = field(repr=False)

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active]


@dataclass(frozen=True, slots=True)
class MerchantConfig:
    id: str
    name: str
    currencies: tuple[str, ...]
    fee_bps: int  # platform fee in basis points of the amount


@dataclass(frozen=True, slots=True)
class CallerConfig:
    """One client allowed in. The API key itself is never kept, only its SHA-256."""

    name: str
    permissions: frozenset[str]
    merchants: tuple[str, ...] = ()  # merchant ids, or ("*",)
    api_key_sha256: str | None = field(default=None, repr=False)
    mtls_common_name: str | None = None
    rate_per_s: float = 0.0  # token-bucket refill; 0 = unlimited
    burst: int = 1  # bucket capacity


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    request_key_window_s: int = 24 * 3600  # how long a request_id is remembered
    outbox_retention_s: int = 7 * 24 * 3600  # how long events stay readable by SubscribeEvents
    balance_cache_ttl_s: int = 2  # bound on staleness for changes made around the gateway


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    max_attempts: int = 8  # then the delivery is a dead letter
    timeout_s: int = 5  # per POST


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    # The router's operator configuration (routing/config.py), watched and re-read when it
    # changes; None: the newest version stored in the database, or the defaults.
    file: Path | None = None
    seed: int | None = None  # fixes the router's exploration sequence (tests, demos); None: random


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    vault: VaultConfig | None = None
    merchants: tuple[MerchantConfig, ...] = ()
    callers: tuple[CallerConfig, ...] = ()
    payments: PaymentsConfig = PaymentsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    channels: tuple[ChannelConfig, ...] = ()
    routing: RoutingSettings = RoutingSettings()
    clearing: ClearingSettings = ClearingSettings()
    reconciliation: ScheduleSettings = ScheduleSettings()
    _merchants_by_id: Mapping[str, MerchantConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_merchants_by_id", MappingProxyType({m.id: m for m in self.merchants}))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.callers)

    @property
    def merchants_by_id(self) -> Mapping[str, MerchantConfig]:
        return self._merchants_by_id

    def merchant(self, merchant_id: str) -> MerchantConfig:
        """The merchant with this id; NotFound (reason MERCHANT_NOT_FOUND) for an unknown one."""
        found = self._merchants_by_id.get(merchant_id)
        if found is None:
            raise NotFound(f"no merchant {merchant_id!r} is configured", reason="MERCHANT_NOT_FOUND",
                           metadata={"merchant_id": merchant_id})
        return found


def generate_api_key() -> str:
    """A new API key: `dfk_` and 32 URL-safe random characters (192 bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(24)


def load_config(path: str | Path) -> PlatformConfig:
    """Read and validate a TOML config file; ConfigError names the key path of any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give the position, never the offending text.
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> PlatformConfig:
    """Validate an already-parsed TOML document (what load_config does after reading the file)."""
    _known_keys(data, "", {"vault", "merchants", "callers", "payments", "webhooks", "channels", "routing",
                           "clearing", "reconciliation"})
    vault = _vault(data["vault"], "vault") if "vault" in data else None
    merchants = tuple(_merchant(m, f"merchants[{i}]") for i, m in enumerate(_array(data, "merchants", "")))
    seen: dict[str, int] = {}
    for i, m in enumerate(merchants):
        if m.id in seen:
            raise ConfigError(f"merchants[{i}].id", f"{m.id!r} is also merchants[{seen[m.id]}]")
        seen[m.id] = i
    callers = tuple(_caller(c, f"callers[{i}]", seen) for i, c in enumerate(_array(data, "callers", "")))
    _unique_callers(callers)
    payments = PaymentsConfig(**_positive_ints(data.get("payments", {}), "payments", PaymentsConfig()))
    webhooks = WebhooksConfig(**_positive_ints(data.get("webhooks", {}), "webhooks", WebhooksConfig()))
    channels = tuple(_channel(c, f"channels[{i}]") for i, c in enumerate(_array(data, "channels", "")))
    names = [c.name for c in channels]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"channels[{i}].name", f"{name!r} is also channels[{names.index(name)}]")
    clearing = _clearing(data["clearing"], "clearing") if "clearing" in data else ClearingSettings()
    clearing = replace(clearing, settlement_channel=_settlement_channel(clearing, channels, "clearing"),
                       channel_pools=_channel_pools(clearing, channels))
    return PlatformConfig(vault=vault, merchants=merchants, callers=callers, payments=payments, webhooks=webhooks,
                          channels=channels, routing=_routing(data.get("routing", {}), "routing"),
                          clearing=clearing,
                          reconciliation=_reconciliation(data.get("reconciliation", {}), "reconciliation"))


_TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _reconciliation(value: Any, at: str) -> ScheduleSettings:
    """The daily reconciliation: on or off, when the channels' statements are out, the SLA."""
    table = _table(value, at)
    _known_keys(table, at, {"enabled", "time_utc", "sla_s", "catch_up_days", "retry_s", "tick_s"})
    defaults = ScheduleSettings()
    enabled = table.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{at}.enabled", f"must be true or false, not {_kind(enabled)}")
    time_utc_s = defaults.time_utc_s
    if "time_utc" in table:
        m = _TIME_OF_DAY.fullmatch(_string(table["time_utc"], f"{at}.time_utc"))
        if m is None:
            raise ConfigError(f"{at}.time_utc", "must be HH:MM (UTC, 00:00 to 23:59)")
        time_utc_s = int(m[1]) * 3600 + int(m[2]) * 60
    sla_s = _non_negative(table.get("sla_s", defaults.sla_s), f"{at}.sla_s")
    days = _integer(table.get("catch_up_days", defaults.catch_up_days), f"{at}.catch_up_days")
    if not 1 <= days <= 31:
        raise ConfigError(f"{at}.catch_up_days", f"{days} is not 1..31")
    return ScheduleSettings(enabled=enabled, time_utc_s=time_utc_s, sla_s=sla_s, catch_up_days=days,
                            retry_s=_seconds(table.get("retry_s", defaults.retry_s), f"{at}.retry_s", zero_ok=False),
                            tick_s=_seconds(table.get("tick_s", defaults.tick_s), f"{at}.tick_s", zero_ok=False))


def _clearing(value: Any, at: str) -> ClearingSettings:
    """The clearing center: pools (one per bank), currencies, cut-off, net debit caps, settlement."""
    table = _table(value, at)
    _known_keys(table, at, {"pools", "currencies", "window_s", "cutoff_offset_s", "cap_policy", "default_cap_minor",
                            "caps", "settlement_retries", "settle_interval_s", "invariant_interval_s",
                            "settlement_channel", "rail_accounts", "default_pool", "merchant_pools"})
    pools = _string_list(_required(table, "pools", at), f"{at}.pools")
    if not pools:
        raise ConfigError(f"{at}.pools", "empty; name the pools, one per bank")
    for i, pool in enumerate(pools):
        if not POOL_NAME.fullmatch(pool):
            raise ConfigError(f"{at}.pools[{i}]", f"{pool!r} is not 1-64 letters, digits and _.- (it is a metrics "
                                                  "label and part of ledger account names)")
        if pool in pools[:i]:
            raise ConfigError(f"{at}.pools[{i}]", f"{pool!r} is also {at}.pools[{pools.index(pool)}]")
    currencies = _string_list(_required(table, "currencies", at), f"{at}.currencies")
    if not currencies:
        raise ConfigError(f"{at}.currencies", "empty; give at least one")
    for i, code in enumerate(currencies):
        if not is_currency(code):
            raise ConfigError(f"{at}.currencies[{i}]", f"{code!r} is not an ISO 4217 currency code")
        if code in currencies[:i]:
            raise ConfigError(f"{at}.currencies[{i}]", f"{code!r} is listed twice")
    window_s = _non_negative(table.get("window_s", 0), f"{at}.window_s")
    offset_s = _non_negative(table.get("cutoff_offset_s", 0), f"{at}.cutoff_offset_s")
    if offset_s and offset_s >= window_s:
        raise ConfigError(f"{at}.cutoff_offset_s", f"{offset_s} must be less than window_s ({window_s})"
                          if window_s else "needs window_s (the cut-off period it shifts)")
    policy = _string(table.get("cap_policy", "refuse"), f"{at}.cap_policy")
    if policy not in {p.value for p in CapPolicy}:
        raise ConfigError(f"{at}.cap_policy", f"{policy!r} is not refuse or queue")
    default_cap = _non_negative(table["default_cap_minor"], f"{at}.default_cap_minor") \
        if "default_cap_minor" in table else None
    caps: dict[tuple[str, str], int] = {}
    for pool, per_currency in _table(table.get("caps", {}), f"{at}.caps").items():
        if pool not in pools:
            raise ConfigError(f"{at}.caps.{pool}", f"{pool!r} is not one of {at}.pools")
        for code, cap in _table(per_currency, f"{at}.caps.{pool}").items():
            if code not in currencies:
                raise ConfigError(f"{at}.caps.{pool}.{code}", f"{code!r} is not one of {at}.currencies")
            caps[(pool, code)] = _non_negative(cap, f"{at}.caps.{pool}.{code}")
    defaults = ClearingSettings()
    retries = _non_negative(table.get("settlement_retries", defaults.settlement_retries),
                            f"{at}.settlement_retries")
    settle_s = _seconds(table.get("settle_interval_s", defaults.settle_interval_s), f"{at}.settle_interval_s",
                        zero_ok=False)
    invariant_s = _seconds(table.get("invariant_interval_s", defaults.invariant_interval_s),
                           f"{at}.invariant_interval_s", zero_ok=True)
    accounts = {pool: _rail_account(raw, pool, f"{at}.rail_accounts.{pool}", pools, f"{at}.pools")
                for pool, raw in _table(table.get("rail_accounts", {}), f"{at}.rail_accounts").items()}
    missing = [p for p in pools if p not in accounts]
    if accounts and missing:
        raise ConfigError(f"{at}.rail_accounts", f"no account for {missing[0]!r}; settlement needs every pool's")
    channel = _string(table.get("settlement_channel", ""), f"{at}.settlement_channel")
    if channel and not accounts:
        raise ConfigError(f"{at}.settlement_channel", f"needs {at}.rail_accounts (each pool's bank account)")
    default_pool = _string(table.get("default_pool", ""), f"{at}.default_pool")
    if default_pool and default_pool not in pools:
        raise ConfigError(f"{at}.default_pool", f"{default_pool!r} is not one of {at}.pools")
    merchant_pools = {}
    for merchant, pool in _table(table.get("merchant_pools", {}), f"{at}.merchant_pools").items():
        if _string(pool, f"{at}.merchant_pools.{merchant}") not in pools:
            raise ConfigError(f"{at}.merchant_pools.{merchant}", f"{pool!r} is not one of {at}.pools")
        merchant_pools[merchant] = pool
    return ClearingSettings(pools=tuple(pools), currencies=tuple(currencies), window_s=window_s,
                            cutoff_offset_s=offset_s, cap_policy=CapPolicy(policy),
                            caps=NetDebitCaps(caps, default_cap), settlement_retries=retries,
                            settle_interval_s=settle_s, invariant_interval_s=invariant_s,
                            rail_accounts=accounts, settlement_channel=channel, default_pool=default_pool,
                            merchant_pools=merchant_pools)


def _channel_pools(clearing: ClearingSettings, channels: Sequence[ChannelConfig]) -> dict[str, str]:
    """Transfer channels whose own account (settings.pool_account) is a pool's rail account: their
    collections land in that pool and their payouts leave from it."""
    by_account = {(a.bank_code, a.number): pool for pool, a in clearing.rail_accounts.items()}
    found = {}
    for c in channels:
        own = c.settings.get("pool_account") if c.kind == "transfer" else None
        if isinstance(own, Mapping):
            pool = by_account.get((str(own.get("bank_code", "")), str(own.get("number", ""))))
            if pool is not None:
                found[c.name] = pool
    return found


def _rail_account(value: Any, pool: str, at: str, pools: list[str], pools_at: str) -> RailAccount:
    """`{ bank_code, number, name }`: a pool's account at its bank, as the transfer rail names it."""
    if pool not in pools:
        raise ConfigError(at, f"{pool!r} is not one of {pools_at}")
    table = _table(value, at)
    _known_keys(table, at, {"bank_code", "number", "name"})
    bank_code = _string(_required(table, "bank_code", at), f"{at}.bank_code")
    if not BANK_CODE.fullmatch(bank_code):
        raise ConfigError(f"{at}.bank_code", "must be 2-16 letters or digits")
    number = _string(_required(table, "number", at), f"{at}.number")
    if not ACCOUNT_NUMBER.fullmatch(number):
        raise ConfigError(f"{at}.number", "must be 6-34 digits")  # never echoed: an account number
    name = _string(_required(table, "name", at), f"{at}.name")
    if not name.strip() or len(name) > 140:
        raise ConfigError(f"{at}.name", "must be 1-140 characters, not blank")
    return RailAccount(bank_code, number, name)


def _settlement_channel(clearing: ClearingSettings, channels: Sequence[ChannelConfig], at: str) -> str:
    """The transfer channel settlement runs over: `settlement_channel`, else the only transfer
    channel; "" when settlement is not configured (no rail accounts)."""
    if not clearing.rail_accounts:
        return ""
    rails = [c.name for c in channels if c.kind == "transfer"]
    if clearing.settlement_channel:
        if clearing.settlement_channel not in rails:
            raise ConfigError(f"{at}.settlement_channel", f"{clearing.settlement_channel!r} is not a [[channels]] "
                                                          "entry of kind \"transfer\"")
        chosen = clearing.settlement_channel
    elif len(rails) != 1:
        raise ConfigError(f"{at}.settlement_channel", f"{len(rails)} transfer channels are configured; name the one "
                                                      "settlement transfers go over")
    else:
        chosen = rails[0]
    # A currency the rail does not move would leave its windows SETTLING for ever: refuse it now.
    moved = next(c for c in channels if c.name == chosen).settings.get("currencies", ["CNY"])
    for i, code in enumerate(clearing.currencies):
        if not isinstance(moved, list) or code not in moved:
            raise ConfigError(f"{at}.currencies[{i}]", f"{code!r} is not moved by the settlement channel {chosen!r} "
                                                       "(its settings.currencies)")
    return chosen


def _non_negative(value: Any, at: str) -> int:
    number = _integer(value, at)
    if number < 0:
        raise ConfigError(at, f"{number} is negative")
    return number


def _seconds(value: Any, at: str, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not zero_ok):
        raise ConfigError(at, "must be a number of seconds " + (">= 0 (0 = never)" if zero_ok else "> 0"))
    return float(value)


def _routing(value: Any, at: str) -> RoutingSettings:
    table = _table(value, at)
    _known_keys(table, at, {"file", "seed"})
    seed = table.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"{at}.seed", "must be an integer")
    # The file may not exist yet (it is watched); its content is validated when read.
    file = Path(_string(table["file"], f"{at}.file")) if "file" in table else None
    return RoutingSettings(file=file, seed=seed)


def _channel(value: Any, at: str) -> ChannelConfig:
    """A channel: its adapter kind, kind-specific settings, and key FILES (never key material)."""
    table = _table(value, at)
    _known_keys(table, at, {"name", "kind", "settings", "keys"})
    name = _string(_required(table, "name", at), f"{at}.name")
    if not _CALLER_NAME.fullmatch(name):
        raise ConfigError(f"{at}.name", f"{name!r} is not 1-64 letters, digits and _.- (it is a metrics label)")
    kind = _string(_required(table, "kind", at), f"{at}.kind")
    settings = dict(_table(table.get("settings", {}), f"{at}.settings"))
    key_files: dict[str, Path] = {}
    for key_name, path in _table(table.get("keys", {}), f"{at}.keys").items():
        file = Path(_string(path, f"{at}.keys.{key_name}"))
        if not file.is_file():
            raise ConfigError(f"{at}.keys.{key_name}", f"no such file {str(file)!r}")
        key_files[key_name] = file
    return ChannelConfig(name=name, kind=kind, settings=settings, key_files=key_files)


def _positive_ints(value: Any, at: str, defaults: Any) -> dict[str, int]:
    """A table of positive integer settings, each one a field of `defaults`' dataclass."""
    table = _table(value, at)
    _known_keys(table, at, set(defaults.__dataclass_fields__))
    out = {}
    for key, v in table.items():
        number = _integer(v, f"{at}.{key}")
        if number < 1:
            raise ConfigError(f"{at}.{key}", f"{number} must be at least 1")
        out[key] = number
    return out


# ------------------------------------------------------------------ sections


def _vault(value: Any, at: str) -> VaultConfig:
    table = _table(value, at)
    _known_keys(table, at, {"active", "fingerprint_key", "keys"})
    keys_table = _table(_required(table, "keys", at), f"{at}.keys")
    if not keys_table:
        raise ConfigError(f"{at}.keys", "no keys; give at least the active one")
    keys = {}
    for key_id, v in keys_table.items():
        if not _VAULT_KEY_ID.fullmatch(key_id):
            raise ConfigError(f"{at}.keys.{key_id}", "a key id is 1-64 letters, digits and _.-")
        keys[key_id] = _key32(v, f"{at}.keys.{key_id}")
    active = _string(_required(table, "active", at), f"{at}.active")
    if active not in keys:
        raise ConfigError(f"{at}.active", f"{active!r} is not one of {at}.keys ({', '.join(sorted(keys))})")
    fingerprint_key = _key32(_required(table, "fingerprint_key", at), f"{at}.fingerprint_key")
    # One leaked secret must not both decrypt cards and forge their fingerprints.
    if any(hmac.compare_digest(fingerprint_key, k) for k in keys.values()):
        raise ConfigError(f"{at}.fingerprint_key", f"equals one of {at}.keys; it must be a separate key")
    return VaultConfig(active=active, keys=MappingProxyType(keys), fingerprint_key=fingerprint_key)


def _merchant(value: Any, at: str) -> MerchantConfig:
    table = _table(value, at)
    _known_keys(table, at, {"id", "name", "currencies", "fee_bps"})
    merchant_id = _string(_required(table, "id", at), f"{at}.id")
    if not _MERCHANT_ID.fullmatch(merchant_id):
        raise ConfigError(f"{at}.id", f"{merchant_id!r} is not 1-64 letters, digits and _.:- "
                                      "starting with a letter or digit")
    name = _string(table.get("name", merchant_id), f"{at}.name")
    currencies = _string_list(_required(table, "currencies", at), f"{at}.currencies")
    if not currencies:
        raise ConfigError(f"{at}.currencies", "empty; a merchant accepts at least one currency")
    for i, code in enumerate(currencies):
        if not is_currency(code):
            raise ConfigError(f"{at}.currencies[{i}]", f"{code!r} is not an ISO 4217 currency code")
    if len(set(currencies)) != len(currencies):
        raise ConfigError(f"{at}.currencies", "lists a currency twice")
    fee_bps = _integer(_required(table, "fee_bps", at), f"{at}.fee_bps")
    if not 0 <= fee_bps <= FEE_BPS_MAX:
        raise ConfigError(f"{at}.fee_bps", f"{fee_bps} is outside 0..{FEE_BPS_MAX} basis points")
    return MerchantConfig(id=merchant_id, name=name, currencies=tuple(currencies), fee_bps=fee_bps)


def _caller(value: Any, at: str, merchant_ids: Mapping[str, int]) -> CallerConfig:
    table = _table(value, at)
    _known_keys(table, at, {"name", "api_key", "api_key_sha256", "mtls_common_name", "merchants",
                            "permissions", "rate_per_s", "burst"})
    name = _string(_required(table, "name", at), f"{at}.name")
    if not _CALLER_NAME.fullmatch(name):
        raise ConfigError(f"{at}.name", f"{name!r} is not 1-64 letters, digits and _.- "
                                        "starting with a letter or digit")

    if "api_key" in table and "api_key_sha256" in table:
        raise ConfigError(f"{at}.api_key", "give either api_key or api_key_sha256, not both")
    key_sha256 = None
    if "api_key_sha256" in table:
        digest = _string(table["api_key_sha256"], f"{at}.api_key_sha256")
        if not _SHA256_HEX.fullmatch(digest):
            raise ConfigError(f"{at}.api_key_sha256", "not 64 hexadecimal digits (the SHA-256 of the key)")
        key_sha256 = digest.lower()
    elif "api_key" in table:
        key = _string(table["api_key"], f"{at}.api_key")
        if not _API_KEY.fullmatch(key):
            raise ConfigError(f"{at}.api_key", "must be printable ASCII without spaces (it travels in metadata)")
        if len(key) < API_KEY_LENGTH_MIN:
            raise ConfigError(f"{at}.api_key", f"shorter than {API_KEY_LENGTH_MIN} characters")
        key_sha256 = hash_api_key(key)
    common_name = None
    if "mtls_common_name" in table:
        common_name = _string(table["mtls_common_name"], f"{at}.mtls_common_name")
        if not common_name:
            raise ConfigError(f"{at}.mtls_common_name", "empty")
    if key_sha256 is None and common_name is None:
        raise ConfigError(at, "no credential: give api_key_sha256 (or api_key for local development) "
                              "and/or mtls_common_name")

    merchants = _string_list(table.get("merchants", []), f"{at}.merchants")
    for i, merchant_id in enumerate(merchants):
        if merchant_id != ALL_MERCHANTS and merchant_id not in merchant_ids:
            raise ConfigError(f"{at}.merchants[{i}]", f"{merchant_id!r} is not a configured merchant id "
                                                       f"(or \"{ALL_MERCHANTS}\" for all)")

    permissions = _string_list(_required(table, "permissions", at), f"{at}.permissions")
    if not permissions:
        raise ConfigError(f"{at}.permissions", "empty; a caller needs at least one permission")
    for i, permission in enumerate(permissions):
        if permission not in PERMISSIONS:
            raise ConfigError(f"{at}.permissions[{i}]",
                              f"unknown permission {permission!r}; known: {', '.join(sorted(PERMISSIONS))}")

    rate = table.get("rate_per_s", 0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
        raise ConfigError(f"{at}.rate_per_s", "must be a number >= 0 (0 = unlimited)")
    if "burst" in table:
        burst = _integer(table["burst"], f"{at}.burst")
        if burst < 1:
            raise ConfigError(f"{at}.burst", f"{burst} is less than 1")
    else:
        burst = max(1, math.ceil(rate))  # a second's worth of calls
    return CallerConfig(name=name, permissions=frozenset(permissions), merchants=tuple(merchants),
                        api_key_sha256=key_sha256, mtls_common_name=common_name,
                        rate_per_s=float(rate), burst=burst)


def _unique_callers(callers: tuple[CallerConfig, ...]) -> None:
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    common_names: dict[str, int] = {}
    for i, c in enumerate(callers):
        if c.name in names:
            raise ConfigError(f"callers[{i}].name", f"{c.name!r} is also callers[{names[c.name]}]")
        names[c.name] = i
        if c.api_key_sha256 is not None:
            if c.api_key_sha256 in keys:
                raise ConfigError(f"callers[{i}]", f"has the same API key as callers[{keys[c.api_key_sha256]}]")
            keys[c.api_key_sha256] = i
        if c.mtls_common_name is not None:
            if c.mtls_common_name in common_names:
                raise ConfigError(f"callers[{i}].mtls_common_name",
                                  f"{c.mtls_common_name!r} is also callers[{common_names[c.mtls_common_name]}]")
            common_names[c.mtls_common_name] = i


# ------------------------------------------------------------------ value checks


def _table(value: Any, at: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(at, f"must be a table, not {_kind(value)}")
    return value


def _array(data: Mapping[str, Any], key: str, at: str) -> list[Any]:
    value = data.get(key, [])
    path = f"{at}.{key}" if at else key
    if not isinstance(value, list):
        raise ConfigError(path, f"must be an array of tables ([[{key}]]), not {_kind(value)}")
    return value


def _known_keys(table: Mapping[str, Any], at: str, known: set[str]) -> None:
    for key in table:
        if key not in known:
            path = f"{at}.{key}" if at else key
            raise ConfigError(path, f"unknown key; expected one of {', '.join(sorted(known))}")


def _required(table: Mapping[str, Any], key: str, at: str) -> Any:
    if key not in table:
        raise ConfigError(f"{at}.{key}", "missing")
    return table[key]


def _string(value: Any, at: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(at, f"must be a string, not {_kind(value)}")
    return value


def _string_list(value: Any, at: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(at, f"must be an array of strings, not {_kind(value)}")
    for i, item in enumerate(value):
        _string(item, f"{at}[{i}]")
    return value


def _integer(value: Any, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(at, f"must be an integer, not {_kind(value)}")
    return value


def _key32(value: Any, at: str) -> bytes:
    # Never put the value in a message: it is key material.
    if not isinstance(value, str):
        raise ConfigError(at, f"must be a base64 string, not {_kind(value)}")
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(at, "not valid base64") from None
    if len(key) != VAULT_KEY_BYTES:
        raise ConfigError(at, f"decodes to {len(key)} bytes; a key is {VAULT_KEY_BYTES} bytes")
    return key


def _kind(value: Any) -> str:
    """A value's TOML type, for messages that must not show the value itself."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
