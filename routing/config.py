"""The operator's routing configuration: what the router may do, as data.

A configuration says, per channel, whether it is enabled, its maintenance
windows, daily caps per currency, the payer banks it serves (bank transfers),
and negotiated fees that replace the adapter's defaults; per merchant, allow
and deny lists and a pinned channel; and the decision's weights and the
breaker's settings. It comes from a TOML file or the `RoutingAdmin` RPC, is
validated as a whole against the configured channels (every problem named, by
path), and only then replaces the running one: an invalid configuration changes
nothing. Each accepted configuration gets the next version number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dualflow.adapters.contract import FeeSchedule

from .breaker import BreakerSettings


class ConfigRejected(Exception):
    """A routing configuration that must not take effect; `problems` lists every reason."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {why}" for path, why in problems))
        self.problems = tuple(problems)  # (path, description)


@dataclass(frozen=True, slots=True)
class ChannelRule:
    enabled: bool = True
    disabled_reason: str = ""
    maintenance: tuple[tuple[float, float], ...] = ()  # [start, end) unix seconds
    daily_caps: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units per UTC day
    bank_codes: frozenset[str] | None = None  # payer banks served (bank transfers); None: any
    fees: Mapping[str, FeeSchedule] = field(default_factory=dict)  # currency -> replaces the adapter's
    breaker_forced_open: bool = False  # an operator's switch: no traffic until released


@dataclass(frozen=True, slots=True)
class MerchantRule:
    allow: frozenset[str] | None = None  # None: every channel
    deny: frozenset[str] = frozenset()
    pinned: str | None = None  # only this channel (still subject to eligibility)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    version: int = 0
    # Score = sampled success probability - fee_weight x fee / amount: at 1.0, one
    # percentage point of approval is worth a fee of 1% of the amount.
    fee_weight: float = 1.0
    # How widely the success estimate is sampled: 1 is Thompson sampling, 0 is greedy on the
    # posterior mean (deterministic; a recovered channel then wins traffic back only as its
    # old faults age out of the estimate), in between scales the sample towards the mean.
    exploration: float = 1.0
    channels: Mapping[str, ChannelRule] = field(default_factory=dict)
    merchants: Mapping[str, MerchantRule] = field(default_factory=dict)
    breaker: BreakerSettings = BreakerSettings()
    # Outcomes per channel the success estimate remembers, and none older than this. Enough to
    # tell 98% from 97% (a posterior sd of about 0.3 points at 2,000) and to follow a
    # degradation that develops over tens of minutes; an outage is the breaker's to catch, in
    # seconds (`dualflow bench routing --simulate` measured 200/600 s, 1,000/1,200 s,
    # 2,000/1,800 s and 5,000/3,600 s: BENCHMARKS.md).
    health_window: int = 2_000
    health_max_age_s: float = 1_800.0
    fallback_deadline_s: float = 30.0  # after NOT_SUBMITTED, try another channel only this long after creation

    def rule(self, channel: str) -> ChannelRule:
        return self.channels.get(channel) or _DEFAULT_RULE

    def with_channel(self, channel: str, **changes: Any) -> RoutingConfig:
        channels = dict(self.channels)
        channels[channel] = replace(self.rule(channel), **changes)
        return replace(self, channels=channels)


_DEFAULT_RULE = ChannelRule()
_DEFAULTS = RoutingConfig()


def parse(table: Mapping[str, Any], known_channels: Sequence[str], *, version: int = 0) -> RoutingConfig:
    """A configuration from its TOML/JSON form; ConfigRejected lists every problem."""
    problems: list[tuple[str, str]] = []
    known = set(known_channels)

    def check(ok: bool, path: str, why: str) -> bool:
        if not ok:
            problems.append((path, why))
        return ok

    unknown_keys = set(table) - {"fee_weight", "exploration", "channels", "merchants", "breaker", "health_window",
                                 "health_max_age_s", "fallback_deadline_s", "version"}
    check(not unknown_keys, "", f"unknown keys {sorted(unknown_keys)}")
    fee_weight = table.get("fee_weight", 1.0)
    check(_number(fee_weight) and 0 <= fee_weight <= 1_000, "fee_weight", "must be a number in [0, 1000]")
    exploration = table.get("exploration", 1.0)
    check(_number(exploration) and 0 <= exploration <= 1, "exploration", "must be a number in [0, 1]")
    health_window = table.get("health_window", _DEFAULTS.health_window)
    check(_count(health_window) and 10 <= health_window <= 100_000, "health_window",
          "must be an integer in [10, 100000]")
    max_age = table.get("health_max_age_s", _DEFAULTS.health_max_age_s)
    check(_number(max_age) and max_age > 0, "health_max_age_s", "must be a positive number of seconds")
    deadline = table.get("fallback_deadline_s", 30.0)
    check(_number(deadline) and deadline >= 0, "fallback_deadline_s", "must be a non-negative number of seconds")

    channels: dict[str, ChannelRule] = {}
    raw_channels = table.get("channels", {})
    if check(isinstance(raw_channels, Mapping), "channels", "must be a table of channel name -> rule"):
        for name, raw in raw_channels.items():
            path = f"channels.{name}"
            if not check(name in known, path, f"no such channel (configured: {sorted(known)})"):
                continue
            if not check(isinstance(raw, Mapping), path, "must be a table"):
                continue
            rule = _channel_rule(raw, path, check)
            if rule is not None:
                channels[name] = rule

    merchants: dict[str, MerchantRule] = {}
    raw_merchants = table.get("merchants", {})
    if check(isinstance(raw_merchants, Mapping), "merchants", "must be a table of merchant id -> rule"):
        for merchant_id, raw in raw_merchants.items():
            path = f"merchants.{merchant_id}"
            if not check(isinstance(raw, Mapping), path, "must be a table"):
                continue
            bad = set(raw) - {"allow", "deny", "pinned"}
            check(not bad, path, f"unknown keys {sorted(bad)}")
            allow = _names(raw.get("allow"), f"{path}.allow", known, check) if "allow" in raw else None
            deny = _names(raw.get("deny", []), f"{path}.deny", known, check) or frozenset()
            pinned = raw.get("pinned")
            if pinned is not None:
                check(isinstance(pinned, str) and pinned in known, f"{path}.pinned", "must name a configured channel")
                check(pinned not in deny and (allow is None or pinned in allow), f"{path}.pinned",
                      "the pinned channel is denied to this merchant: nothing could carry its payments")
            merchants[str(merchant_id)] = MerchantRule(allow, deny, pinned if isinstance(pinned, str) else None)

    breaker = BreakerSettings()
    raw_breaker = table.get("breaker", {})
    if check(isinstance(raw_breaker, Mapping), "breaker", "must be a table"):
        bad = set(raw_breaker) - set(BreakerSettings.__dataclass_fields__)
        check(not bad, "breaker", f"unknown keys {sorted(bad)}")
        values = {k: v for k, v in raw_breaker.items() if k not in bad}
        for key in ("window", "min_samples", "probes", "probes_to_close"):
            if key in values:
                check(_count(values[key]) and values[key] >= 1, f"breaker.{key}", "must be a positive integer")
        if "open_at" in values:
            check(_number(values["open_at"]) and 0 < values["open_at"] <= 1, "breaker.open_at",
                  "must be a fraction in (0, 1]")
        if "cool_down_s" in values:
            check(_number(values["cool_down_s"]) and values["cool_down_s"] > 0, "breaker.cool_down_s",
                  "must be a positive number of seconds")
        if not problems:
            breaker = BreakerSettings(**values)

    if problems:
        raise ConfigRejected(problems)
    return RoutingConfig(version=version, fee_weight=float(fee_weight), exploration=float(exploration),
                         channels=channels, merchants=merchants,
                         breaker=breaker, health_window=int(health_window), health_max_age_s=float(max_age),
                         fallback_deadline_s=float(deadline))


def _channel_rule(raw: Mapping[str, Any], path: str, check: Any) -> ChannelRule | None:
    bad = set(raw) - {"enabled", "disabled_reason", "maintenance", "daily_caps", "bank_codes", "fees",
                      "breaker_forced_open"}
    ok = check(not bad, path, f"unknown keys {sorted(bad)}")
    enabled = raw.get("enabled", True)
    ok &= check(isinstance(enabled, bool), f"{path}.enabled", "must be true or false")
    forced = raw.get("breaker_forced_open", False)
    ok &= check(isinstance(forced, bool), f"{path}.breaker_forced_open", "must be true or false")
    reason = raw.get("disabled_reason", "")
    ok &= check(isinstance(reason, str) and len(reason) <= 200, f"{path}.disabled_reason",
                "must be text of at most 200 characters")
    windows: list[tuple[float, float]] = []
    for i, window in enumerate(raw.get("maintenance", [])):
        w = f"{path}.maintenance[{i}]"
        if check(isinstance(window, Mapping) and _number(window.get("start")) and _number(window.get("end")), w,
                 "must be a table with start and end (unix seconds)"):
            ok &= check(window["start"] < window["end"], w, "start must be before end")
            windows.append((float(window["start"]), float(window["end"])))
        else:
            ok = False
    caps: dict[str, int] = {}
    raw_caps = raw.get("daily_caps", {})
    if check(isinstance(raw_caps, Mapping), f"{path}.daily_caps", "must map currency -> minor units"):
        for currency, cap in raw_caps.items():
            c = f"{path}.daily_caps.{currency}"
            ok &= check(_currency(currency), c, "must be an ISO 4217 code")
            ok &= check(_count(cap), c, "must be a non-negative integer of minor units")
            caps[str(currency)] = cap
    else:
        ok = False
    bank_codes = raw.get("bank_codes")
    if bank_codes is not None:
        ok &= check(isinstance(bank_codes, (list, tuple)) and all(isinstance(b, str) and b for b in bank_codes),
                    f"{path}.bank_codes", "must be a list of bank codes")
    fees: dict[str, FeeSchedule] = {}
    raw_fees = raw.get("fees", {})
    if check(isinstance(raw_fees, Mapping), f"{path}.fees", "must map currency -> fee table"):
        for currency, fee in raw_fees.items():
            f = f"{path}.fees.{currency}"
            ok &= check(_currency(currency), f, "must be an ISO 4217 code")
            try:
                fees[str(currency)] = FeeSchedule.from_table(fee, f)
            except ValueError as exc:
                ok = check(False, f, str(exc).removeprefix(f + ": ").removeprefix(f + " "))
    else:
        ok = False
    if not ok:
        return None
    return ChannelRule(enabled=enabled, disabled_reason=reason, maintenance=tuple(windows), daily_caps=caps,
                       bank_codes=frozenset(bank_codes) if bank_codes is not None else None, fees=fees,
                       breaker_forced_open=forced)


def to_table(config: RoutingConfig) -> dict[str, Any]:
    """The configuration in the form `parse` reads (for GetRoutingConfig and the history table)."""
    channels: dict[str, Any] = {}
    for name, rule in sorted(config.channels.items()):
        entry: dict[str, Any] = {"enabled": rule.enabled}
        if rule.disabled_reason:
            entry["disabled_reason"] = rule.disabled_reason
        if rule.maintenance:
            entry["maintenance"] = [{"start": s, "end": e} for s, e in rule.maintenance]
        if rule.daily_caps:
            entry["daily_caps"] = dict(sorted(rule.daily_caps.items()))
        if rule.bank_codes is not None:
            entry["bank_codes"] = sorted(rule.bank_codes)
        if rule.fees:
            entry["fees"] = {c: f.to_table() for c, f in sorted(rule.fees.items())}
        if rule.breaker_forced_open:
            entry["breaker_forced_open"] = True
        channels[name] = entry
    merchants: dict[str, Any] = {}
    for merchant_id, m in sorted(config.merchants.items()):
        entry = {}
        if m.allow is not None:
            entry["allow"] = sorted(m.allow)
        if m.deny:
            entry["deny"] = sorted(m.deny)
        if m.pinned:
            entry["pinned"] = m.pinned
        merchants[merchant_id] = entry
    b = config.breaker
    return {
        "fee_weight": config.fee_weight, "exploration": config.exploration, "health_window": config.health_window,
        "health_max_age_s": config.health_max_age_s, "fallback_deadline_s": config.fallback_deadline_s,
        "breaker": {"window": b.window, "min_samples": b.min_samples, "open_at": b.open_at,
                    "cool_down_s": b.cool_down_s, "probes": b.probes, "probes_to_close": b.probes_to_close},
        "channels": channels, "merchants": merchants,
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _currency(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 3 and value.isalpha() and value.isupper()


def _names(value: Any, path: str, known: set[str], check: Any) -> frozenset[str] | None:
    if not check(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value), path,
                 "must be a list of channel names"):
        return None
    unknown = sorted(set(value) - known)
    check(not unknown, path, f"no such channels {unknown}")
    return frozenset(value)
