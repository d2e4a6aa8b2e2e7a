from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObligationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBLIGATION_STATUS_UNSPECIFIED: _ClassVar[ObligationStatus]
    OBLIGATION_ADMITTED: _ClassVar[ObligationStatus]
    OBLIGATION_QUEUED: _ClassVar[ObligationStatus]

class WindowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_STATE_UNSPECIFIED: _ClassVar[WindowState]
    WINDOW_OPEN: _ClassVar[WindowState]
    WINDOW_CLOSED: _ClassVar[WindowState]
    WINDOW_SETTLING: _ClassVar[WindowState]
    WINDOW_SETTLED: _ClassVar[WindowState]
    WINDOW_PARTIALLY_SETTLED: _ClassVar[WindowState]

class InstructionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUCTION_STATE_UNSPECIFIED: _ClassVar[InstructionState]
    INSTRUCTION_PENDING: _ClassVar[InstructionState]
    INSTRUCTION_SUCCEEDED: _ClassVar[InstructionState]
    INSTRUCTION_FAILED: _ClassVar[InstructionState]
    INSTRUCTION_UNKNOWN: _ClassVar[InstructionState]
OBLIGATION_STATUS_UNSPECIFIED: ObligationStatus
OBLIGATION_ADMITTED: ObligationStatus
OBLIGATION_QUEUED: ObligationStatus
WINDOW_STATE_UNSPECIFIED: WindowState
WINDOW_OPEN: WindowState
WINDOW_CLOSED: WindowState
WINDOW_SETTLING: WindowState
WINDOW_SETTLED: WindowState
WINDOW_PARTIALLY_SETTLED: WindowState
INSTRUCTION_STATE_UNSPECIFIED: InstructionState
INSTRUCTION_PENDING: InstructionState
INSTRUCTION_SUCCEEDED: InstructionState
INSTRUCTION_FAILED: InstructionState
INSTRUCTION_UNKNOWN: InstructionState

class Obligation(_message.Message):
    __slots__ = ("obligation_id", "debtor_pool", "creditor_pool", "amount_minor", "currency")
    OBLIGATION_ID_FIELD_NUMBER: _ClassVar[int]
    DEBTOR_POOL_FIELD_NUMBER: _ClassVar[int]
    CREDITOR_POOL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    obligation_id: str
    debtor_pool: str
    creditor_pool: str
    amount_minor: int
    currency: str
    def __init__(self, obligation_id: _Optional[str] = ..., debtor_pool: _Optional[str] = ..., creditor_pool: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class RecordObligationRequest(_message.Message):
    __slots__ = ("obligation",)
    OBLIGATION_FIELD_NUMBER: _ClassVar[int]
    obligation: Obligation
    def __init__(self, obligation: _Optional[_Union[Obligation, _Mapping]] = ...) -> None: ...

class RecordObligationResponse(_message.Message):
    __slots__ = ("obligation", "status", "window_id", "replayed", "released_obligation_ids")
    OBLIGATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_OBLIGATION_IDS_FIELD_NUMBER: _ClassVar[int]
    obligation: Obligation
    status: ObligationStatus
    window_id: str
    replayed: bool
    released_obligation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, obligation: _Optional[_Union[Obligation, _Mapping]] = ..., status: _Optional[_Union[ObligationStatus, str]] = ..., window_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., released_obligation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("pool", "currency", "owes_minor", "owed_minor", "net_minor", "net_debit_minor", "cap_minor", "queued_count", "queued_minor")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OWES_MINOR_FIELD_NUMBER: _ClassVar[int]
    OWED_MINOR_FIELD_NUMBER: _ClassVar[int]
    NET_MINOR_FIELD_NUMBER: _ClassVar[int]
    NET_DEBIT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CAP_MINOR_FIELD_NUMBER: _ClassVar[int]
    QUEUED_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_MINOR_FIELD_NUMBER: _ClassVar[int]
    pool: str
    currency: str
    owes_minor: int
    owed_minor: int
    net_minor: int
    net_debit_minor: int
    cap_minor: int
    queued_count: int
    queued_minor: int
    def __init__(self, pool: _Optional[str] = ..., currency: _Optional[str] = ..., owes_minor: _Optional[int] = ..., owed_minor: _Optional[int] = ..., net_minor: _Optional[int] = ..., net_debit_minor: _Optional[int] = ..., cap_minor: _Optional[int] = ..., queued_count: _Optional[int] = ..., queued_minor: _Optional[int] = ...) -> None: ...

class GetPositionsRequest(_message.Message):
    __slots__ = ("currency",)
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    currency: str
    def __init__(self, currency: _Optional[str] = ...) -> None: ...

class GetPositionsResponse(_message.Message):
    __slots__ = ("window_id", "positions")
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    def __init__(self, window_id: _Optional[str] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ...) -> None: ...

class CurrencyNetting(_message.Message):
    __slots__ = ("currency", "gross_minor", "net_minor", "efficiency", "obligation_count", "pools_nonzero", "transfer_count", "transfer_bound", "optimal")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    GROSS_MINOR_FIELD_NUMBER: _ClassVar[int]
    NET_MINOR_FIELD_NUMBER: _ClassVar[int]
    EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    OBLIGATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    POOLS_NONZERO_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_BOUND_FIELD_NUMBER: _ClassVar[int]
    OPTIMAL_FIELD_NUMBER: _ClassVar[int]
    currency: str
    gross_minor: int
    net_minor: int
    efficiency: float
    obligation_count: int
    pools_nonzero: int
    transfer_count: int
    transfer_bound: int
    optimal: bool
    def __init__(self, currency: _Optional[str] = ..., gross_minor: _Optional[int] = ..., net_minor: _Optional[int] = ..., efficiency: _Optional[float] = ..., obligation_count: _Optional[int] = ..., pools_nonzero: _Optional[int] = ..., transfer_count: _Optional[int] = ..., transfer_bound: _Optional[int] = ..., optimal: _Optional[bool] = ...) -> None: ...

class SettlementInstruction(_message.Message):
    __slots__ = ("instruction_id", "window_id", "index", "payer_pool", "payee_pool", "amount_minor", "currency", "state", "reason", "reference", "retry_of", "retried_by", "carried_as", "attempts", "updated_at_ns")
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYER_POOL_FIELD_NUMBER: _ClassVar[int]
    PAYEE_POOL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_FIELD_NUMBER: _ClassVar[int]
    RETRIED_BY_FIELD_NUMBER: _ClassVar[int]
    CARRIED_AS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    instruction_id: str
    window_id: str
    index: int
    payer_pool: str
    payee_pool: str
    amount_minor: int
    currency: str
    state: InstructionState
    reason: str
    reference: str
    retry_of: str
    retried_by: str
    carried_as: str
    attempts: int
    updated_at_ns: int
    def __init__(self, instruction_id: _Optional[str] = ..., window_id: _Optional[str] = ..., index: _Optional[int] = ..., payer_pool: _Optional[str] = ..., payee_pool: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., state: _Optional[_Union[InstructionState, str]] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., retry_of: _Optional[str] = ..., retried_by: _Optional[str] = ..., carried_as: _Optional[str] = ..., attempts: _Optional[int] = ..., updated_at_ns: _Optional[int] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("window_id", "state", "opened_at_ns", "closed_at_ns", "finished_at_ns", "next_cutoff_ns", "obligation_count", "queued_count", "positions", "netting", "instructions", "failed_instruction_ids")
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CUTOFF_NS_FIELD_NUMBER: _ClassVar[int]
    OBLIGATION_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_COUNT_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    NETTING_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    FAILED_INSTRUCTION_IDS_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    state: WindowState
    opened_at_ns: int
    closed_at_ns: int
    finished_at_ns: int
    next_cutoff_ns: int
    obligation_count: int
    queued_count: int
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    netting: _containers.RepeatedCompositeFieldContainer[CurrencyNetting]
    instructions: _containers.RepeatedCompositeFieldContainer[SettlementInstruction]
    failed_instruction_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, window_id: _Optional[str] = ..., state: _Optional[_Union[WindowState, str]] = ..., opened_at_ns: _Optional[int] = ..., closed_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., next_cutoff_ns: _Optional[int] = ..., obligation_count: _Optional[int] = ..., queued_count: _Optional[int] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ..., netting: _Optional[_Iterable[_Union[CurrencyNetting, _Mapping]]] = ..., instructions: _Optional[_Iterable[_Union[SettlementInstruction, _Mapping]]] = ..., failed_instruction_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseWindowRequest(_message.Message):
    __slots__ = ("window_id",)
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    def __init__(self, window_id: _Optional[str] = ...) -> None: ...

class GetWindowRequest(_message.Message):
    __slots__ = ("window_id",)
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    def __init__(self, window_id: _Optional[str] = ...) -> None: ...

class ListSettlementsRequest(_message.Message):
    __slots__ = ("window_id", "states", "page_size", "page_token")
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    window_id: str
    states: _containers.RepeatedScalarFieldContainer[InstructionState]
    page_size: int
    page_token: str
    def __init__(self, window_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[InstructionState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSettlementsResponse(_message.Message):
    __slots__ = ("instructions", "next_page_token")
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    instructions: _containers.RepeatedCompositeFieldContainer[SettlementInstruction]
    next_page_token: str
    def __init__(self, instructions: _Optional[_Iterable[_Union[SettlementInstruction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPoolBalancesRequest(_message.Message):
    __slots__ = ("currency",)
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    currency: str
    def __init__(self, currency: _Optional[str] = ...) -> None: ...

class PoolBalance(_message.Message):
    __slots__ = ("pool", "currency", "account_id", "balance_minor", "pending_in_minor", "pending_out_minor")
    POOL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_MINOR_FIELD_NUMBER: _ClassVar[int]
    PENDING_IN_MINOR_FIELD_NUMBER: _ClassVar[int]
    PENDING_OUT_MINOR_FIELD_NUMBER: _ClassVar[int]
    pool: str
    currency: str
    account_id: int
    balance_minor: int
    pending_in_minor: int
    pending_out_minor: int
    def __init__(self, pool: _Optional[str] = ..., currency: _Optional[str] = ..., account_id: _Optional[int] = ..., balance_minor: _Optional[int] = ..., pending_in_minor: _Optional[int] = ..., pending_out_minor: _Optional[int] = ...) -> None: ...

class PoolInvariant(_message.Message):
    __slots__ = ("currency", "pools_minor", "in_transit_minor", "wallets_minor", "merchants_minor", "own_funds_minor", "unclassified_minor", "difference_minor")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    POOLS_MINOR_FIELD_NUMBER: _ClassVar[int]
    IN_TRANSIT_MINOR_FIELD_NUMBER: _ClassVar[int]
    WALLETS_MINOR_FIELD_NUMBER: _ClassVar[int]
    MERCHANTS_MINOR_FIELD_NUMBER: _ClassVar[int]
    OWN_FUNDS_MINOR_FIELD_NUMBER: _ClassVar[int]
    UNCLASSIFIED_MINOR_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_MINOR_FIELD_NUMBER: _ClassVar[int]
    currency: str
    pools_minor: int
    in_transit_minor: int
    wallets_minor: int
    merchants_minor: int
    own_funds_minor: int
    unclassified_minor: int
    difference_minor: int
    def __init__(self, currency: _Optional[str] = ..., pools_minor: _Optional[int] = ..., in_transit_minor: _Optional[int] = ..., wallets_minor: _Optional[int] = ..., merchants_minor: _Optional[int] = ..., own_funds_minor: _Optional[int] = ..., unclassified_minor: _Optional[int] = ..., difference_minor: _Optional[int] = ...) -> None: ...

class GetPoolBalancesResponse(_message.Message):
    __slots__ = ("pools", "invariant")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    INVARIANT_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[PoolBalance]
    invariant: _containers.RepeatedCompositeFieldContainer[PoolInvariant]
    def __init__(self, pools: _Optional[_Iterable[_Union[PoolBalance, _Mapping]]] = ..., invariant: _Optional[_Iterable[_Union[PoolInvariant, _Mapping]]] = ...) -> None: ...
