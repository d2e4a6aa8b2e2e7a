from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconciliationClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONCILIATION_CLASS_UNSPECIFIED: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_MATCHED: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_MISSING_AT_CHANNEL: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_MISSING_INTERNALLY: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_AMOUNT_MISMATCH: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_CURRENCY_MISMATCH: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_STATUS_MISMATCH: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_FEE_MISMATCH: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_DUPLICATE: _ClassVar[ReconciliationClass]
    RECONCILIATION_CLASS_EXPECTED: _ClassVar[ReconciliationClass]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_REJECTED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]

class DiscrepancyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCREPANCY_STATUS_UNSPECIFIED: _ClassVar[DiscrepancyStatus]
    DISCREPANCY_STATUS_OPEN: _ClassVar[DiscrepancyStatus]
    DISCREPANCY_STATUS_ASSIGNED: _ClassVar[DiscrepancyStatus]
    DISCREPANCY_STATUS_RESOLVED: _ClassVar[DiscrepancyStatus]

class ResolutionAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLUTION_ACTION_UNSPECIFIED: _ClassVar[ResolutionAction]
    RESOLUTION_ACTION_REFUND: _ClassVar[ResolutionAction]
    RESOLUTION_ACTION_MANUAL_POSTING: _ClassVar[ResolutionAction]
    RESOLUTION_ACTION_WRITE_OFF: _ClassVar[ResolutionAction]
RECONCILIATION_CLASS_UNSPECIFIED: ReconciliationClass
RECONCILIATION_CLASS_MATCHED: ReconciliationClass
RECONCILIATION_CLASS_MISSING_AT_CHANNEL: ReconciliationClass
RECONCILIATION_CLASS_MISSING_INTERNALLY: ReconciliationClass
RECONCILIATION_CLASS_AMOUNT_MISMATCH: ReconciliationClass
RECONCILIATION_CLASS_CURRENCY_MISMATCH: ReconciliationClass
RECONCILIATION_CLASS_STATUS_MISMATCH: ReconciliationClass
RECONCILIATION_CLASS_FEE_MISMATCH: ReconciliationClass
RECONCILIATION_CLASS_DUPLICATE: ReconciliationClass
RECONCILIATION_CLASS_EXPECTED: ReconciliationClass
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_REJECTED: RunState
RUN_STATE_FAILED: RunState
DISCREPANCY_STATUS_UNSPECIFIED: DiscrepancyStatus
DISCREPANCY_STATUS_OPEN: DiscrepancyStatus
DISCREPANCY_STATUS_ASSIGNED: DiscrepancyStatus
DISCREPANCY_STATUS_RESOLVED: DiscrepancyStatus
RESOLUTION_ACTION_UNSPECIFIED: ResolutionAction
RESOLUTION_ACTION_REFUND: ResolutionAction
RESOLUTION_ACTION_MANUAL_POSTING: ResolutionAction
RESOLUTION_ACTION_WRITE_OFF: ResolutionAction

class RunReconciliationRequest(_message.Message):
    __slots__ = ("channel", "business_date", "force")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_DATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    business_date: str
    force: bool
    def __init__(self, channel: _Optional[str] = ..., business_date: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ClassCount(_message.Message):
    __slots__ = ("match_class", "lines", "instructions", "amount_minor")
    class AmountMinorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MATCH_CLASS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    match_class: ReconciliationClass
    lines: int
    instructions: int
    amount_minor: _containers.ScalarMap[str, int]
    def __init__(self, match_class: _Optional[_Union[ReconciliationClass, str]] = ..., lines: _Optional[int] = ..., instructions: _Optional[int] = ..., amount_minor: _Optional[_Mapping[str, int]] = ...) -> None: ...

class FeeTotal(_message.Message):
    __slots__ = ("currency", "lines", "fee_minor", "posted_now")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    FEE_MINOR_FIELD_NUMBER: _ClassVar[int]
    POSTED_NOW_FIELD_NUMBER: _ClassVar[int]
    currency: str
    lines: int
    fee_minor: int
    posted_now: int
    def __init__(self, currency: _Optional[str] = ..., lines: _Optional[int] = ..., fee_minor: _Optional[int] = ..., posted_now: _Optional[int] = ...) -> None: ...

class ReconciliationRun(_message.Message):
    __slots__ = ("run_id", "channel", "business_date", "attempt", "state", "started_at_ns", "finished_at_ns", "lines", "instructions", "error_reason", "error_line", "detail", "counts", "auto_resolved", "auto_refused", "fees", "replayed", "results")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_DATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_LINE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    AUTO_REFUSED_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    channel: str
    business_date: str
    attempt: int
    state: RunState
    started_at_ns: int
    finished_at_ns: int
    lines: int
    instructions: int
    error_reason: str
    error_line: int
    detail: str
    counts: _containers.RepeatedCompositeFieldContainer[ClassCount]
    auto_resolved: int
    auto_refused: int
    fees: _containers.RepeatedCompositeFieldContainer[FeeTotal]
    replayed: bool
    results: int
    def __init__(self, run_id: _Optional[str] = ..., channel: _Optional[str] = ..., business_date: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[RunState, str]] = ..., started_at_ns: _Optional[int] = ..., finished_at_ns: _Optional[int] = ..., lines: _Optional[int] = ..., instructions: _Optional[int] = ..., error_reason: _Optional[str] = ..., error_line: _Optional[int] = ..., detail: _Optional[str] = ..., counts: _Optional[_Iterable[_Union[ClassCount, _Mapping]]] = ..., auto_resolved: _Optional[int] = ..., auto_refused: _Optional[int] = ..., fees: _Optional[_Iterable[_Union[FeeTotal, _Mapping]]] = ..., replayed: _Optional[bool] = ..., results: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("channel", "business_date", "page_size", "page_token")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_DATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channel: str
    business_date: str
    page_size: int
    page_token: str
    def __init__(self, channel: _Optional[str] = ..., business_date: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ReconciliationRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[ReconciliationRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReconciliationDiscrepancy(_message.Message):
    __slots__ = ("discrepancy_id", "channel", "business_date", "match_class", "instruction_id", "object_id", "first_run_id", "last_run_id", "status", "assignee", "resolution_action", "resolution_reason", "opened_at_ns", "updated_at_ns", "version", "detail", "body_json")
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_DATE_FIELD_NUMBER: _ClassVar[int]
    MATCH_CLASS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNEE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_REASON_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    discrepancy_id: str
    channel: str
    business_date: str
    match_class: ReconciliationClass
    instruction_id: str
    object_id: str
    first_run_id: str
    last_run_id: str
    status: DiscrepancyStatus
    assignee: str
    resolution_action: ResolutionAction
    resolution_reason: str
    opened_at_ns: int
    updated_at_ns: int
    version: int
    detail: str
    body_json: str
    def __init__(self, discrepancy_id: _Optional[str] = ..., channel: _Optional[str] = ..., business_date: _Optional[str] = ..., match_class: _Optional[_Union[ReconciliationClass, str]] = ..., instruction_id: _Optional[str] = ..., object_id: _Optional[str] = ..., first_run_id: _Optional[str] = ..., last_run_id: _Optional[str] = ..., status: _Optional[_Union[DiscrepancyStatus, str]] = ..., assignee: _Optional[str] = ..., resolution_action: _Optional[_Union[ResolutionAction, str]] = ..., resolution_reason: _Optional[str] = ..., opened_at_ns: _Optional[int] = ..., updated_at_ns: _Optional[int] = ..., version: _Optional[int] = ..., detail: _Optional[str] = ..., body_json: _Optional[str] = ...) -> None: ...

class ListDiscrepanciesRequest(_message.Message):
    __slots__ = ("status", "match_class", "channel", "min_age_s", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MATCH_CLASS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_S_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: DiscrepancyStatus
    match_class: ReconciliationClass
    channel: str
    min_age_s: int
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[DiscrepancyStatus, str]] = ..., match_class: _Optional[_Union[ReconciliationClass, str]] = ..., channel: _Optional[str] = ..., min_age_s: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDiscrepanciesResponse(_message.Message):
    __slots__ = ("discrepancies", "next_page_token")
    DISCREPANCIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    discrepancies: _containers.RepeatedCompositeFieldContainer[ReconciliationDiscrepancy]
    next_page_token: str
    def __init__(self, discrepancies: _Optional[_Iterable[_Union[ReconciliationDiscrepancy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AssignDiscrepancyRequest(_message.Message):
    __slots__ = ("discrepancy_id", "assignee")
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNEE_FIELD_NUMBER: _ClassVar[int]
    discrepancy_id: str
    assignee: str
    def __init__(self, discrepancy_id: _Optional[str] = ..., assignee: _Optional[str] = ...) -> None: ...

class ResolveDiscrepancyRequest(_message.Message):
    __slots__ = ("discrepancy_id", "action", "reason")
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    discrepancy_id: str
    action: ResolutionAction
    reason: str
    def __init__(self, discrepancy_id: _Optional[str] = ..., action: _Optional[_Union[ResolutionAction, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetDiscrepancyHistoryRequest(_message.Message):
    __slots__ = ("discrepancy_id",)
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    discrepancy_id: str
    def __init__(self, discrepancy_id: _Optional[str] = ...) -> None: ...

class DiscrepancyEvent(_message.Message):
    __slots__ = ("version", "at_ns", "actor", "event", "detail")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    version: int
    at_ns: int
    actor: str
    event: str
    detail: str
    def __init__(self, version: _Optional[int] = ..., at_ns: _Optional[int] = ..., actor: _Optional[str] = ..., event: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class GetDiscrepancyHistoryResponse(_message.Message):
    __slots__ = ("discrepancy", "events")
    DISCREPANCY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    discrepancy: ReconciliationDiscrepancy
    events: _containers.RepeatedCompositeFieldContainer[DiscrepancyEvent]
    def __init__(self, discrepancy: _Optional[_Union[ReconciliationDiscrepancy, _Mapping]] = ..., events: _Optional[_Iterable[_Union[DiscrepancyEvent, _Mapping]]] = ...) -> None: ...

class RunResult(_message.Message):
    __slots__ = ("position", "match_class", "action", "instruction_id", "channel_reference", "kind", "object_id", "has_ours", "our_amount_minor", "our_currency", "our_status", "has_theirs", "their_amount_minor", "their_currency", "their_status", "their_fee_minor", "line_count", "discrepancy_id", "detail")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MATCH_CLASS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_OURS_FIELD_NUMBER: _ClassVar[int]
    OUR_AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    OUR_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OUR_STATUS_FIELD_NUMBER: _ClassVar[int]
    HAS_THEIRS_FIELD_NUMBER: _ClassVar[int]
    THEIR_AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    THEIR_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    THEIR_STATUS_FIELD_NUMBER: _ClassVar[int]
    THEIR_FEE_MINOR_FIELD_NUMBER: _ClassVar[int]
    LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISCREPANCY_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    position: int
    match_class: ReconciliationClass
    action: str
    instruction_id: str
    channel_reference: str
    kind: str
    object_id: str
    has_ours: bool
    our_amount_minor: int
    our_currency: str
    our_status: str
    has_theirs: bool
    their_amount_minor: int
    their_currency: str
    their_status: str
    their_fee_minor: int
    line_count: int
    discrepancy_id: str
    detail: str
    def __init__(self, position: _Optional[int] = ..., match_class: _Optional[_Union[ReconciliationClass, str]] = ..., action: _Optional[str] = ..., instruction_id: _Optional[str] = ..., channel_reference: _Optional[str] = ..., kind: _Optional[str] = ..., object_id: _Optional[str] = ..., has_ours: _Optional[bool] = ..., our_amount_minor: _Optional[int] = ..., our_currency: _Optional[str] = ..., our_status: _Optional[str] = ..., has_theirs: _Optional[bool] = ..., their_amount_minor: _Optional[int] = ..., their_currency: _Optional[str] = ..., their_status: _Optional[str] = ..., their_fee_minor: _Optional[int] = ..., line_count: _Optional[int] = ..., discrepancy_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListRunResultsRequest(_message.Message):
    __slots__ = ("run_id", "page_size", "page_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    page_size: int
    page_token: str
    def __init__(self, run_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token", "total")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RunResult]
    next_page_token: str
    total: int
    def __init__(self, results: _Optional[_Iterable[_Union[RunResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class RunInternalCheckRequest(_message.Message):
    __slots__ = ("findings_max",)
    FINDINGS_MAX_FIELD_NUMBER: _ClassVar[int]
    findings_max: int
    def __init__(self, findings_max: _Optional[int] = ...) -> None: ...

class InternalFinding(_message.Message):
    __slots__ = ("kind", "subject", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    subject: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class InternalCheckResult(_message.Message):
    __slots__ = ("checked_at_ns", "counts", "findings", "payments_checked", "refunds_checked", "transfers_scanned", "truncated")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CHECKED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    PAYMENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    REFUNDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    checked_at_ns: int
    counts: _containers.ScalarMap[str, int]
    findings: _containers.RepeatedCompositeFieldContainer[InternalFinding]
    payments_checked: int
    refunds_checked: int
    transfers_scanned: int
    truncated: bool
    def __init__(self, checked_at_ns: _Optional[int] = ..., counts: _Optional[_Mapping[str, int]] = ..., findings: _Optional[_Iterable[_Union[InternalFinding, _Mapping]]] = ..., payments_checked: _Optional[int] = ..., refunds_checked: _Optional[int] = ..., transfers_scanned: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...
