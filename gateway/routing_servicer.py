"""The `dualflow.v1.RoutingAdmin` gRPC service: protobuf <-> the routing configuration's
table form (routing/config.py), over routing/control.py, which validates, versions,
stores and applies. Domain errors become statuses in the interceptor."""

from __future__ import annotations

from typing import Any

import grpc

from dualflow.core.errors import Aborted, FieldViolation, InvalidRequest, NotFound, PreconditionFailed
from dualflow.routing.breaker import BreakerState
from dualflow.routing.config import ConfigRejected, to_table
from dualflow.routing.control import Applied, RoutingControl, UnknownChannel, VersionConflict
from dualflow.v1 import routing_pb2 as pb
from dualflow.v1 import routing_pb2_grpc

from .auth import current_caller

_BREAKER = {BreakerState.CLOSED: pb.BREAKER_CLOSED, BreakerState.HALF_OPEN: pb.BREAKER_HALF_OPEN,
            BreakerState.OPEN: pb.BREAKER_OPEN}
_OPTIONAL_TOP = ("fee_weight", "exploration", "health_window", "health_max_age_s", "fallback_deadline_s")
_OPTIONAL_BREAKER = ("window", "min_samples", "open_at", "cool_down_s", "probes", "probes_to_close")


# ---- protobuf -> table (what routing.config.parse validates)
def config_from_pb(msg: pb.RoutingConfig) -> dict[str, Any]:
    table: dict[str, Any] = {key: getattr(msg, key) for key in _OPTIONAL_TOP if msg.HasField(key)}
    breaker = {key: getattr(msg.breaker, key) for key in _OPTIONAL_BREAKER if msg.breaker.HasField(key)}
    if breaker:
        table["breaker"] = breaker
    channels: dict[str, Any] = {}
    for name, rule in msg.channels.items():
        entry: dict[str, Any] = {"disabled_reason": rule.disabled_reason,
                                 "breaker_forced_open": rule.breaker_forced_open}
        if rule.HasField("enabled"):
            entry["enabled"] = rule.enabled
        if rule.maintenance:
            entry["maintenance"] = [{"start": w.start_unix_s, "end": w.end_unix_s} for w in rule.maintenance]
        if rule.daily_caps:
            entry["daily_caps"] = dict(rule.daily_caps)
        if rule.bank_codes:
            entry["bank_codes"] = list(rule.bank_codes)
        if rule.fees:
            entry["fees"] = {currency: _fee_from_pb(fee) for currency, fee in rule.fees.items()}
        channels[name] = entry
    table["channels"] = channels
    merchants: dict[str, Any] = {}
    for merchant_id, m in msg.merchants.items():
        entry = {"deny": list(m.deny)}
        if m.allow:
            entry["allow"] = list(m.allow)
        if m.pinned:
            entry["pinned"] = m.pinned
        merchants[merchant_id] = entry
    table["merchants"] = merchants
    return table


def _fee_from_pb(fee: pb.FeeSchedule) -> dict[str, Any]:
    table: dict[str, Any] = {"fixed": fee.fixed, "bps": fee.bps, "minimum": fee.minimum,
                             "tiers": [{"from_amount": t.from_amount, "fixed": t.fixed, "bps": t.bps}
                                       for t in fee.tiers]}
    if fee.HasField("maximum"):
        table["maximum"] = fee.maximum
    return table


# ---- table -> protobuf
def config_to_pb(table: dict[str, Any]) -> pb.RoutingConfig:
    msg = pb.RoutingConfig(**{key: table[key] for key in _OPTIONAL_TOP},
                           breaker=pb.BreakerSettings(**table["breaker"]))
    for name, rule in table["channels"].items():
        out = msg.channels[name]
        out.enabled = rule["enabled"]
        out.disabled_reason = rule.get("disabled_reason", "")
        out.breaker_forced_open = rule.get("breaker_forced_open", False)
        out.maintenance.extend(pb.MaintenanceWindow(start_unix_s=w["start"], end_unix_s=w["end"])
                               for w in rule.get("maintenance", []))
        out.daily_caps.update(rule.get("daily_caps", {}))
        out.bank_codes.extend(rule.get("bank_codes", []))
        for currency, fee in rule.get("fees", {}).items():
            out.fees[currency].CopyFrom(pb.FeeSchedule(
                fixed=fee["fixed"], bps=fee["bps"], minimum=fee["minimum"], maximum=fee.get("maximum"),
                tiers=[pb.FeeTier(**t) for t in fee.get("tiers", [])]))
    for merchant_id, m in table["merchants"].items():
        msg.merchants[merchant_id].CopyFrom(pb.MerchantRule(allow=m.get("allow", []), deny=m.get("deny", []),
                                                            pinned=m.get("pinned", "")))
    return msg


def version_to_pb(applied: Applied) -> pb.RoutingConfigVersion:
    return pb.RoutingConfigVersion(version=applied.config.version, config=config_to_pb(to_table(applied.config)),
                                   source=applied.source, applied_at_ns=applied.created_at_ns)


class RoutingAdminServicer(routing_pb2_grpc.RoutingAdminServicer):
    def __init__(self, control: RoutingControl | None) -> None:
        self.control = control

    def _control(self) -> RoutingControl:
        if self.control is None:
            raise PreconditionFailed("no channels are configured, so there is nothing to route",
                                     reason="CHANNELS_NOT_CONFIGURED")
        return self.control

    @staticmethod
    def _source() -> str:
        return f"rpc:{current_caller().name}"

    async def GetRoutingConfig(self, request: pb.GetRoutingConfigRequest,
                               context: grpc.aio.ServicerContext) -> pb.RoutingConfigVersion:
        return version_to_pb(self._control().current)

    async def ReplaceRoutingConfig(self, request: pb.ReplaceRoutingConfigRequest,
                                   context: grpc.aio.ServicerContext) -> pb.RoutingConfigVersion:
        control = self._control()
        expected = request.expected_version if request.HasField("expected_version") else None
        with _domain_errors():
            applied = await control.replace(config_from_pb(request.config), source=self._source(),
                                            expected_version=expected)
        return version_to_pb(applied)

    async def SetChannelEnabled(self, request: pb.SetChannelEnabledRequest,
                                context: grpc.aio.ServicerContext) -> pb.RoutingConfigVersion:
        control = self._control()
        with _domain_errors():
            applied = await control.set_enabled(request.channel, request.enabled, request.reason,
                                                source=self._source())
        return version_to_pb(applied)

    async def ForceBreaker(self, request: pb.ForceBreakerRequest,
                           context: grpc.aio.ServicerContext) -> pb.RoutingConfigVersion:
        control = self._control()
        with _domain_errors():
            applied = await control.force_breaker(request.channel, request.open, source=self._source())
        return version_to_pb(applied)

    async def ListChannelHealth(self, request: pb.ListChannelHealthRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListChannelHealthResponse:
        control = self._control()
        router = control.router
        channels = []
        for name in sorted(router.capabilities):
            view = router.view(name)
            channels.append(pb.ChannelHealth(
                channel=name, breaker=_BREAKER[view.breaker], estimated_success=view.estimated_success,
                samples=view.samples, latency_p50_ms=view.latency_p50_ms or 0.0,
                latency_p99_ms=view.latency_p99_ms or 0.0, enabled=view.enabled,
                breaker_forced_open=view.forced_open))
        return pb.ListChannelHealthResponse(channels=channels, config_version=router.config.version)


class _domain_errors:
    """Routing's own errors -> the domain errors the interceptor turns into statuses."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, ConfigRejected):
            raise InvalidRequest(
                f"the routing configuration was not applied ({len(exc.problems)} problems); the running one stays",
                reason="ROUTING_CONFIG_INVALID",
                violations=tuple(FieldViolation(f"config.{path}" if path else "config", why)
                                 for path, why in exc.problems)) from None
        if isinstance(exc, VersionConflict):
            raise Aborted(str(exc), reason="CONFIG_VERSION_CONFLICT",
                          metadata={"expected_version": str(exc.expected),
                                    "current_version": str(exc.current)}) from None
        if isinstance(exc, UnknownChannel):
            raise NotFound(str(exc), reason="CHANNEL_NOT_FOUND", metadata={"channel": exc.channel[:64]}) from None
        return False
