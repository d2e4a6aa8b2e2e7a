from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Asset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSET_UNSPECIFIED: _ClassVar[Asset]
    ASSET_POINTS: _ClassVar[Asset]
    ASSET_WALLET: _ClassVar[Asset]
    ASSET_BANK_CARD: _ClassVar[Asset]
    ASSET_BANK_TRANSFER: _ClassVar[Asset]

class PaymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STATUS_UNSPECIFIED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CREATED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_PROCESSING: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_SUCCEEDED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_FAILED: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_UNKNOWN: _ClassVar[PaymentStatus]
    PAYMENT_STATUS_CANCELED: _ClassVar[PaymentStatus]

class RefundStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFUND_STATUS_UNSPECIFIED: _ClassVar[RefundStatus]
    REFUND_STATUS_PROCESSING: _ClassVar[RefundStatus]
    REFUND_STATUS_SUCCEEDED: _ClassVar[RefundStatus]
    REFUND_STATUS_FAILED: _ClassVar[RefundStatus]
    REFUND_STATUS_UNKNOWN: _ClassVar[RefundStatus]
ASSET_UNSPECIFIED: Asset
ASSET_POINTS: Asset
ASSET_WALLET: Asset
ASSET_BANK_CARD: Asset
ASSET_BANK_TRANSFER: Asset
PAYMENT_STATUS_UNSPECIFIED: PaymentStatus
PAYMENT_STATUS_CREATED: PaymentStatus
PAYMENT_STATUS_PROCESSING: PaymentStatus
PAYMENT_STATUS_SUCCEEDED: PaymentStatus
PAYMENT_STATUS_FAILED: PaymentStatus
PAYMENT_STATUS_UNKNOWN: PaymentStatus
PAYMENT_STATUS_CANCELED: PaymentStatus
REFUND_STATUS_UNSPECIFIED: RefundStatus
REFUND_STATUS_PROCESSING: RefundStatus
REFUND_STATUS_SUCCEEDED: RefundStatus
REFUND_STATUS_FAILED: RefundStatus
REFUND_STATUS_UNKNOWN: RefundStatus

class CardSummary(_message.Message):
    __slots__ = ("token", "bin", "last4", "brand", "exp_month", "exp_year")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    LAST4_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    EXP_MONTH_FIELD_NUMBER: _ClassVar[int]
    EXP_YEAR_FIELD_NUMBER: _ClassVar[int]
    token: str
    bin: str
    last4: str
    brand: str
    exp_month: int
    exp_year: int
    def __init__(self, token: _Optional[str] = ..., bin: _Optional[str] = ..., last4: _Optional[str] = ..., brand: _Optional[str] = ..., exp_month: _Optional[int] = ..., exp_year: _Optional[int] = ...) -> None: ...

class BankAccountRef(_message.Message):
    __slots__ = ("bank_code", "account_last4", "holder_name")
    BANK_CODE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_LAST4_FIELD_NUMBER: _ClassVar[int]
    HOLDER_NAME_FIELD_NUMBER: _ClassVar[int]
    bank_code: str
    account_last4: str
    holder_name: str
    def __init__(self, bank_code: _Optional[str] = ..., account_last4: _Optional[str] = ..., holder_name: _Optional[str] = ...) -> None: ...

class PaymentMethod(_message.Message):
    __slots__ = ("card_token", "bank_account")
    CARD_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BANK_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    card_token: str
    bank_account: BankAccountRef
    def __init__(self, card_token: _Optional[str] = ..., bank_account: _Optional[_Union[BankAccountRef, _Mapping]] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_id", "request_id", "merchant_id", "payer", "payee", "amount", "currency", "asset", "status", "failure_reason", "fee", "refunded_amount", "trade_order_id", "description", "metadata", "card", "bank_account", "channel", "channel_reference", "created_at_ns", "updated_at_ns", "version", "attempt", "routing", "kind")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYER_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TRADE_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    BANK_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    request_id: str
    merchant_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    asset: Asset
    status: PaymentStatus
    failure_reason: str
    fee: int
    refunded_amount: int
    trade_order_id: str
    description: str
    metadata: _containers.ScalarMap[str, str]
    card: CardSummary
    bank_account: BankAccountRef
    channel: str
    channel_reference: str
    created_at_ns: int
    updated_at_ns: int
    version: int
    attempt: int
    routing: RoutingDecision
    kind: str
    def __init__(self, payment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., payer: _Optional[str] = ..., payee: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., asset: _Optional[_Union[Asset, str]] = ..., status: _Optional[_Union[PaymentStatus, str]] = ..., failure_reason: _Optional[str] = ..., fee: _Optional[int] = ..., refunded_amount: _Optional[int] = ..., trade_order_id: _Optional[str] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., card: _Optional[_Union[CardSummary, _Mapping]] = ..., bank_account: _Optional[_Union[BankAccountRef, _Mapping]] = ..., channel: _Optional[str] = ..., channel_reference: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., updated_at_ns: _Optional[int] = ..., version: _Optional[int] = ..., attempt: _Optional[int] = ..., routing: _Optional[_Union[RoutingDecision, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class RoutingDecision(_message.Message):
    __slots__ = ("chosen", "reason", "fallbacks", "candidates", "excluded", "config_version", "rerouted_from")
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    REROUTED_FROM_FIELD_NUMBER: _ClassVar[int]
    chosen: str
    reason: str
    fallbacks: _containers.RepeatedScalarFieldContainer[str]
    candidates: _containers.RepeatedCompositeFieldContainer[RouteCandidate]
    excluded: _containers.RepeatedCompositeFieldContainer[RouteExclusion]
    config_version: int
    rerouted_from: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chosen: _Optional[str] = ..., reason: _Optional[str] = ..., fallbacks: _Optional[_Iterable[str]] = ..., candidates: _Optional[_Iterable[_Union[RouteCandidate, _Mapping]]] = ..., excluded: _Optional[_Iterable[_Union[RouteExclusion, _Mapping]]] = ..., config_version: _Optional[int] = ..., rerouted_from: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteCandidate(_message.Message):
    __slots__ = ("channel", "estimated_success", "fee", "score")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    estimated_success: float
    fee: int
    score: float
    def __init__(self, channel: _Optional[str] = ..., estimated_success: _Optional[float] = ..., fee: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class RouteExclusion(_message.Message):
    __slots__ = ("channel", "reason")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    channel: str
    reason: str
    def __init__(self, channel: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CreatePayoutRequest(_message.Message):
    __slots__ = ("request_id", "merchant_id", "payer", "amount", "currency", "bank_account", "description", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYER_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BANK_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merchant_id: str
    payer: str
    amount: int
    currency: str
    bank_account: BankAccountRef
    description: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., payer: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., bank_account: _Optional[_Union[BankAccountRef, _Mapping]] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreatePaymentRequest(_message.Message):
    __slots__ = ("request_id", "merchant_id", "payer", "payee", "amount", "currency", "asset", "method", "trade_order_id", "description", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYER_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TRADE_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    merchant_id: str
    payer: str
    payee: str
    amount: int
    currency: str
    asset: Asset
    method: PaymentMethod
    trade_order_id: str
    description: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., payer: _Optional[str] = ..., payee: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., asset: _Optional[_Union[Asset, str]] = ..., method: _Optional[_Union[PaymentMethod, _Mapping]] = ..., trade_order_id: _Optional[str] = ..., description: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("merchant_id", "statuses", "asset", "created_from_ns", "created_to_ns", "page_size", "page_token")
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FROM_NS_FIELD_NUMBER: _ClassVar[int]
    CREATED_TO_NS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    statuses: _containers.RepeatedScalarFieldContainer[PaymentStatus]
    asset: Asset
    created_from_ns: int
    created_to_ns: int
    page_size: int
    page_token: str
    def __init__(self, merchant_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[PaymentStatus, str]]] = ..., asset: _Optional[_Union[Asset, str]] = ..., created_from_ns: _Optional[int] = ..., created_to_ns: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelPaymentRequest(_message.Message):
    __slots__ = ("payment_id", "reason")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    reason: str
    def __init__(self, payment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("refund_id", "payment_id", "request_id", "merchant_id", "amount", "currency", "status", "failure_reason", "reason", "created_at_ns", "updated_at_ns")
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    refund_id: str
    payment_id: str
    request_id: str
    merchant_id: str
    amount: int
    currency: str
    status: RefundStatus
    failure_reason: str
    reason: str
    created_at_ns: int
    updated_at_ns: int
    def __init__(self, refund_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., request_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., amount: _Optional[int] = ..., currency: _Optional[str] = ..., status: _Optional[_Union[RefundStatus, str]] = ..., failure_reason: _Optional[str] = ..., reason: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., updated_at_ns: _Optional[int] = ...) -> None: ...

class RefundPaymentRequest(_message.Message):
    __slots__ = ("request_id", "payment_id", "amount", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    payment_id: str
    amount: int
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., amount: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id", "asset", "currency")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    asset: Asset
    currency: str
    def __init__(self, user_id: _Optional[str] = ..., asset: _Optional[_Union[Asset, str]] = ..., currency: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("user_id", "asset", "currency", "available", "pending_in", "pending_out", "as_of_timestamp")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_IN_FIELD_NUMBER: _ClassVar[int]
    PENDING_OUT_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    asset: Asset
    currency: str
    available: int
    pending_in: int
    pending_out: int
    as_of_timestamp: int
    def __init__(self, user_id: _Optional[str] = ..., asset: _Optional[_Union[Asset, str]] = ..., currency: _Optional[str] = ..., available: _Optional[int] = ..., pending_in: _Optional[int] = ..., pending_out: _Optional[int] = ..., as_of_timestamp: _Optional[int] = ...) -> None: ...

class Discrepancy(_message.Message):
    __slots__ = ("discrepancy_id", "payment_id", "kind", "recorded_status", "channel_outcome", "detail", "created_at_ns")
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RECORDED_STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    discrepancy_id: str
    payment_id: str
    kind: str
    recorded_status: PaymentStatus
    channel_outcome: str
    detail: str
    created_at_ns: int
    def __init__(self, discrepancy_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., kind: _Optional[str] = ..., recorded_status: _Optional[_Union[PaymentStatus, str]] = ..., channel_outcome: _Optional[str] = ..., detail: _Optional[str] = ..., created_at_ns: _Optional[int] = ...) -> None: ...

class SubscribeEventsRequest(_message.Message):
    __slots__ = ("after_sequence", "types", "merchant_id")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    types: _containers.RepeatedScalarFieldContainer[str]
    merchant_id: str
    def __init__(self, after_sequence: _Optional[int] = ..., types: _Optional[_Iterable[str]] = ..., merchant_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "event_id", "type", "merchant_id", "created_at_ns", "data_json", "payment", "refund", "balance", "discrepancy")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    REFUND_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    DISCREPANCY_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    event_id: str
    type: str
    merchant_id: str
    created_at_ns: int
    data_json: str
    payment: Payment
    refund: Refund
    balance: Balance
    discrepancy: Discrepancy
    def __init__(self, sequence: _Optional[int] = ..., event_id: _Optional[str] = ..., type: _Optional[str] = ..., merchant_id: _Optional[str] = ..., created_at_ns: _Optional[int] = ..., data_json: _Optional[str] = ..., payment: _Optional[_Union[Payment, _Mapping]] = ..., refund: _Optional[_Union[Refund, _Mapping]] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., discrepancy: _Optional[_Union[Discrepancy, _Mapping]] = ...) -> None: ...

class TokenizeCardRequest(_message.Message):
    __slots__ = ("card_number", "exp_month", "exp_year")
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    EXP_MONTH_FIELD_NUMBER: _ClassVar[int]
    EXP_YEAR_FIELD_NUMBER: _ClassVar[int]
    card_number: str
    exp_month: int
    exp_year: int
    def __init__(self, card_number: _Optional[str] = ..., exp_month: _Optional[int] = ..., exp_year: _Optional[int] = ...) -> None: ...

class RegisterWebhookRequest(_message.Message):
    __slots__ = ("merchant_id", "url", "event_types")
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, merchant_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ...) -> None: ...

class WebhookEndpoint(_message.Message):
    __slots__ = ("endpoint_id", "merchant_id", "url", "event_types", "enabled", "secret")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    merchant_id: str
    url: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    enabled: bool
    secret: str
    def __init__(self, endpoint_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., url: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., enabled: _Optional[bool] = ..., secret: _Optional[str] = ...) -> None: ...

class ListWebhooksRequest(_message.Message):
    __slots__ = ("merchant_id",)
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    def __init__(self, merchant_id: _Optional[str] = ...) -> None: ...

class ListWebhooksResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[WebhookEndpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[WebhookEndpoint, _Mapping]]] = ...) -> None: ...

class DisableWebhookRequest(_message.Message):
    __slots__ = ("endpoint_id",)
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    def __init__(self, endpoint_id: _Optional[str] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("delivery_id", "endpoint_id", "event_id", "attempts", "last_error", "updated_at_ns")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    endpoint_id: str
    event_id: str
    attempts: int
    last_error: str
    updated_at_ns: int
    def __init__(self, delivery_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ..., event_id: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., updated_at_ns: _Optional[int] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("merchant_id", "limit")
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    merchant_id: str
    limit: int
    def __init__(self, merchant_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters",)
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class RedeliverWebhookRequest(_message.Message):
    __slots__ = ("delivery_id",)
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    def __init__(self, delivery_id: _Optional[str] = ...) -> None: ...

class RedeliverWebhookResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
