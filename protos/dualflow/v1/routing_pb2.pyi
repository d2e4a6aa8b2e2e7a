from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_CLOSED: _ClassVar[BreakerState]
    BREAKER_HALF_OPEN: _ClassVar[BreakerState]
    BREAKER_OPEN: _ClassVar[BreakerState]
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_CLOSED: BreakerState
BREAKER_HALF_OPEN: BreakerState
BREAKER_OPEN: BreakerState

class FeeTier(_message.Message):
    __slots__ = ("from_amount", "fixed", "bps")
    FROM_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FIXED_FIELD_NUMBER: _ClassVar[int]
    BPS_FIELD_NUMBER: _ClassVar[int]
    from_amount: int
    fixed: int
    bps: int
    def __init__(self, from_amount: _Optional[int] = ..., fixed: _Optional[int] = ..., bps: _Optional[int] = ...) -> None: ...

class FeeSchedule(_message.Message):
    __slots__ = ("fixed", "bps", "minimum", "maximum", "tiers")
    FIXED_FIELD_NUMBER: _ClassVar[int]
    BPS_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    fixed: int
    bps: int
    minimum: int
    maximum: int
    tiers: _containers.RepeatedCompositeFieldContainer[FeeTier]
    def __init__(self, fixed: _Optional[int] = ..., bps: _Optional[int] = ..., minimum: _Optional[int] = ..., maximum: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[FeeTier, _Mapping]]] = ...) -> None: ...

class MaintenanceWindow(_message.Message):
    __slots__ = ("start_unix_s", "end_unix_s")
    START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    start_unix_s: float
    end_unix_s: float
    def __init__(self, start_unix_s: _Optional[float] = ..., end_unix_s: _Optional[float] = ...) -> None: ...

class ChannelRule(_message.Message):
    __slots__ = ("enabled", "disabled_reason", "maintenance", "daily_caps", "bank_codes", "fees", "breaker_forced_open")
    class DailyCapsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FeesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeeSchedule
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeeSchedule, _Mapping]] = ...) -> None: ...
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    DAILY_CAPS_FIELD_NUMBER: _ClassVar[int]
    BANK_CODES_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FORCED_OPEN_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    disabled_reason: str
    maintenance: _containers.RepeatedCompositeFieldContainer[MaintenanceWindow]
    daily_caps: _containers.ScalarMap[str, int]
    bank_codes: _containers.RepeatedScalarFieldContainer[str]
    fees: _containers.MessageMap[str, FeeSchedule]
    breaker_forced_open: bool
    def __init__(self, enabled: _Optional[bool] = ..., disabled_reason: _Optional[str] = ..., maintenance: _Optional[_Iterable[_Union[MaintenanceWindow, _Mapping]]] = ..., daily_caps: _Optional[_Mapping[str, int]] = ..., bank_codes: _Optional[_Iterable[str]] = ..., fees: _Optional[_Mapping[str, FeeSchedule]] = ..., breaker_forced_open: _Optional[bool] = ...) -> None: ...

class MerchantRule(_message.Message):
    __slots__ = ("allow", "deny", "pinned")
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    allow: _containers.RepeatedScalarFieldContainer[str]
    deny: _containers.RepeatedScalarFieldContainer[str]
    pinned: str
    def __init__(self, allow: _Optional[_Iterable[str]] = ..., deny: _Optional[_Iterable[str]] = ..., pinned: _Optional[str] = ...) -> None: ...

class BreakerSettings(_message.Message):
    __slots__ = ("window", "min_samples", "open_at", "cool_down_s", "probes", "probes_to_close")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OPEN_AT_FIELD_NUMBER: _ClassVar[int]
    COOL_DOWN_S_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    PROBES_TO_CLOSE_FIELD_NUMBER: _ClassVar[int]
    window: int
    min_samples: int
    open_at: float
    cool_down_s: float
    probes: int
    probes_to_close: int
    def __init__(self, window: _Optional[int] = ..., min_samples: _Optional[int] = ..., open_at: _Optional[float] = ..., cool_down_s: _Optional[float] = ..., probes: _Optional[int] = ..., probes_to_close: _Optional[int] = ...) -> None: ...

class RoutingConfig(_message.Message):
    __slots__ = ("fee_weight", "exploration", "channels", "merchants", "breaker", "health_window", "health_max_age_s", "fallback_deadline_s")
    class ChannelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ChannelRule
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ChannelRule, _Mapping]] = ...) -> None: ...
    class MerchantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MerchantRule
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MerchantRule, _Mapping]] = ...) -> None: ...
    FEE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MERCHANTS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    HEALTH_WINDOW_FIELD_NUMBER: _ClassVar[int]
    HEALTH_MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    fee_weight: float
    exploration: float
    channels: _containers.MessageMap[str, ChannelRule]
    merchants: _containers.MessageMap[str, MerchantRule]
    breaker: BreakerSettings
    health_window: int
    health_max_age_s: float
    fallback_deadline_s: float
    def __init__(self, fee_weight: _Optional[float] = ..., exploration: _Optional[float] = ..., channels: _Optional[_Mapping[str, ChannelRule]] = ..., merchants: _Optional[_Mapping[str, MerchantRule]] = ..., breaker: _Optional[_Union[BreakerSettings, _Mapping]] = ..., health_window: _Optional[int] = ..., health_max_age_s: _Optional[float] = ..., fallback_deadline_s: _Optional[float] = ...) -> None: ...

class RoutingConfigVersion(_message.Message):
    __slots__ = ("version", "config", "source", "applied_at_ns")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    version: int
    config: RoutingConfig
    source: str
    applied_at_ns: int
    def __init__(self, version: _Optional[int] = ..., config: _Optional[_Union[RoutingConfig, _Mapping]] = ..., source: _Optional[str] = ..., applied_at_ns: _Optional[int] = ...) -> None: ...

class GetRoutingConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplaceRoutingConfigRequest(_message.Message):
    __slots__ = ("config", "expected_version")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    config: RoutingConfig
    expected_version: int
    def __init__(self, config: _Optional[_Union[RoutingConfig, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetChannelEnabledRequest(_message.Message):
    __slots__ = ("channel", "enabled", "reason")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    channel: str
    enabled: bool
    reason: str
    def __init__(self, channel: _Optional[str] = ..., enabled: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ForceBreakerRequest(_message.Message):
    __slots__ = ("channel", "open")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    channel: str
    open: bool
    def __init__(self, channel: _Optional[str] = ..., open: _Optional[bool] = ...) -> None: ...

class ChannelHealth(_message.Message):
    __slots__ = ("channel", "breaker", "estimated_success", "samples", "latency_p50_ms", "latency_p99_ms", "enabled", "breaker_forced_open")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FORCED_OPEN_FIELD_NUMBER: _ClassVar[int]
    channel: str
    breaker: BreakerState
    estimated_success: float
    samples: int
    latency_p50_ms: float
    latency_p99_ms: float
    enabled: bool
    breaker_forced_open: bool
    def __init__(self, channel: _Optional[str] = ..., breaker: _Optional[_Union[BreakerState, str]] = ..., estimated_success: _Optional[float] = ..., samples: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., enabled: _Optional[bool] = ..., breaker_forced_open: _Optional[bool] = ...) -> None: ...

class ListChannelHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListChannelHealthResponse(_message.Message):
    __slots__ = ("channels", "config_version")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedCompositeFieldContainer[ChannelHealth]
    config_version: int
    def __init__(self, channels: _Optional[_Iterable[_Union[ChannelHealth, _Mapping]]] = ..., config_version: _Optional[int] = ...) -> None: ...
