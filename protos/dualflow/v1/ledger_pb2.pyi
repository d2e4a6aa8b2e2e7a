from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccountCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_CODE_UNSPECIFIED: _ClassVar[AccountCode]
    ACCOUNT_CODE_WALLET: _ClassVar[AccountCode]
    ACCOUNT_CODE_POINTS: _ClassVar[AccountCode]
    ACCOUNT_CODE_POOL: _ClassVar[AccountCode]
    ACCOUNT_CODE_FEE: _ClassVar[AccountCode]
    ACCOUNT_CODE_CLEARING: _ClassVar[AccountCode]
    ACCOUNT_CODE_RECEIVABLE: _ClassVar[AccountCode]
    ACCOUNT_CODE_SUSPENSE: _ClassVar[AccountCode]
    ACCOUNT_CODE_MERCHANT: _ClassVar[AccountCode]
    ACCOUNT_CODE_EQUITY: _ClassVar[AccountCode]
    ACCOUNT_CODE_OPERATING: _ClassVar[AccountCode]

class AccountFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_FLAG_NONE: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_LINKED: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_HISTORY: _ClassVar[AccountFlag]
    ACCOUNT_FLAG_CLOSED: _ClassVar[AccountFlag]

class TransferFlag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_FLAG_NONE: _ClassVar[TransferFlag]
    TRANSFER_FLAG_LINKED: _ClassVar[TransferFlag]
    TRANSFER_FLAG_PENDING: _ClassVar[TransferFlag]
    TRANSFER_FLAG_POST_PENDING: _ClassVar[TransferFlag]
    TRANSFER_FLAG_VOID_PENDING: _ClassVar[TransferFlag]
    TRANSFER_FLAG_CLOSING_DEBIT: _ClassVar[TransferFlag]
    TRANSFER_FLAG_CLOSING_CREDIT: _ClassVar[TransferFlag]
    TRANSFER_FLAG_EXPIRY: _ClassVar[TransferFlag]

class CreateAccountResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREATE_ACCOUNT_RESULT_UNSPECIFIED: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_OK: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_LINKED_EVENT_FAILED: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_LINKED_EVENT_CHAIN_OPEN: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_ID_INVALID: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_FLAGS_INVALID: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_CURRENCY_INVALID: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_CODE_INVALID: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_BALANCES_MUST_BE_ZERO: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_TIMESTAMP_MUST_BE_ZERO: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS: _ClassVar[CreateAccountResult]
    CREATE_ACCOUNT_RESULT_EXISTS: _ClassVar[CreateAccountResult]

class CreateTransferResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREATE_TRANSFER_RESULT_UNSPECIFIED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_OK: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_LINKED_EVENT_FAILED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_LINKED_EVENT_CHAIN_OPEN: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_ID_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_FLAGS_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_TIMESTAMP_MUST_BE_ZERO: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_ACCOUNT_ID_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_SAME_ACCOUNT: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_ID_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_TIMEOUT_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_AMOUNT_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_CODE_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_CURRENCY_INVALID: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_EXISTS_WITH_DIFFERENT_FIELDS: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_EXISTS: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_ACCOUNT_NOT_FOUND: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_CURRENCY_MISMATCH: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_ACCOUNT_CLOSED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_NOT_FOUND: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_NOT_PENDING: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_FIELDS_DIFFER: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_ALREADY_POSTED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_ALREADY_VOIDED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_PENDING_EXPIRED: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_EXCEEDS_PENDING_AMOUNT: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_OVERFLOW: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS: _ClassVar[CreateTransferResult]
    CREATE_TRANSFER_RESULT_EXCEEDS_DEBITS: _ClassVar[CreateTransferResult]

class StatementSide(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATEMENT_SIDE_BOTH: _ClassVar[StatementSide]
    STATEMENT_SIDE_DEBITS: _ClassVar[StatementSide]
    STATEMENT_SIDE_CREDITS: _ClassVar[StatementSide]
ACCOUNT_CODE_UNSPECIFIED: AccountCode
ACCOUNT_CODE_WALLET: AccountCode
ACCOUNT_CODE_POINTS: AccountCode
ACCOUNT_CODE_POOL: AccountCode
ACCOUNT_CODE_FEE: AccountCode
ACCOUNT_CODE_CLEARING: AccountCode
ACCOUNT_CODE_RECEIVABLE: AccountCode
ACCOUNT_CODE_SUSPENSE: AccountCode
ACCOUNT_CODE_MERCHANT: AccountCode
ACCOUNT_CODE_EQUITY: AccountCode
ACCOUNT_CODE_OPERATING: AccountCode
ACCOUNT_FLAG_NONE: AccountFlag
ACCOUNT_FLAG_LINKED: AccountFlag
ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS: AccountFlag
ACCOUNT_FLAG_CREDITS_MUST_NOT_EXCEED_DEBITS: AccountFlag
ACCOUNT_FLAG_HISTORY: AccountFlag
ACCOUNT_FLAG_CLOSED: AccountFlag
TRANSFER_FLAG_NONE: TransferFlag
TRANSFER_FLAG_LINKED: TransferFlag
TRANSFER_FLAG_PENDING: TransferFlag
TRANSFER_FLAG_POST_PENDING: TransferFlag
TRANSFER_FLAG_VOID_PENDING: TransferFlag
TRANSFER_FLAG_CLOSING_DEBIT: TransferFlag
TRANSFER_FLAG_CLOSING_CREDIT: TransferFlag
TRANSFER_FLAG_EXPIRY: TransferFlag
CREATE_ACCOUNT_RESULT_UNSPECIFIED: CreateAccountResult
CREATE_ACCOUNT_RESULT_OK: CreateAccountResult
CREATE_ACCOUNT_RESULT_LINKED_EVENT_FAILED: CreateAccountResult
CREATE_ACCOUNT_RESULT_LINKED_EVENT_CHAIN_OPEN: CreateAccountResult
CREATE_ACCOUNT_RESULT_ID_INVALID: CreateAccountResult
CREATE_ACCOUNT_RESULT_FLAGS_INVALID: CreateAccountResult
CREATE_ACCOUNT_RESULT_CURRENCY_INVALID: CreateAccountResult
CREATE_ACCOUNT_RESULT_CODE_INVALID: CreateAccountResult
CREATE_ACCOUNT_RESULT_BALANCES_MUST_BE_ZERO: CreateAccountResult
CREATE_ACCOUNT_RESULT_TIMESTAMP_MUST_BE_ZERO: CreateAccountResult
CREATE_ACCOUNT_RESULT_EXISTS_WITH_DIFFERENT_FIELDS: CreateAccountResult
CREATE_ACCOUNT_RESULT_EXISTS: CreateAccountResult
CREATE_TRANSFER_RESULT_UNSPECIFIED: CreateTransferResult
CREATE_TRANSFER_RESULT_OK: CreateTransferResult
CREATE_TRANSFER_RESULT_LINKED_EVENT_FAILED: CreateTransferResult
CREATE_TRANSFER_RESULT_LINKED_EVENT_CHAIN_OPEN: CreateTransferResult
CREATE_TRANSFER_RESULT_ID_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_FLAGS_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_TIMESTAMP_MUST_BE_ZERO: CreateTransferResult
CREATE_TRANSFER_RESULT_ACCOUNT_ID_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_SAME_ACCOUNT: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_ID_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_TIMEOUT_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_AMOUNT_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_CODE_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_CURRENCY_INVALID: CreateTransferResult
CREATE_TRANSFER_RESULT_EXISTS_WITH_DIFFERENT_FIELDS: CreateTransferResult
CREATE_TRANSFER_RESULT_EXISTS: CreateTransferResult
CREATE_TRANSFER_RESULT_ACCOUNT_NOT_FOUND: CreateTransferResult
CREATE_TRANSFER_RESULT_CURRENCY_MISMATCH: CreateTransferResult
CREATE_TRANSFER_RESULT_ACCOUNT_CLOSED: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_NOT_FOUND: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_NOT_PENDING: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_FIELDS_DIFFER: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_ALREADY_POSTED: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_ALREADY_VOIDED: CreateTransferResult
CREATE_TRANSFER_RESULT_PENDING_EXPIRED: CreateTransferResult
CREATE_TRANSFER_RESULT_EXCEEDS_PENDING_AMOUNT: CreateTransferResult
CREATE_TRANSFER_RESULT_OVERFLOW: CreateTransferResult
CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS: CreateTransferResult
CREATE_TRANSFER_RESULT_EXCEEDS_DEBITS: CreateTransferResult
STATEMENT_SIDE_BOTH: StatementSide
STATEMENT_SIDE_DEBITS: StatementSide
STATEMENT_SIDE_CREDITS: StatementSide

class Account(_message.Message):
    __slots__ = ("id", "currency", "code", "flags", "user_data", "timestamp", "debits_pending", "debits_posted", "credits_pending", "credits_posted")
    ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    id: int
    currency: str
    code: AccountCode
    flags: int
    user_data: int
    timestamp: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    def __init__(self, id: _Optional[int] = ..., currency: _Optional[str] = ..., code: _Optional[_Union[AccountCode, str]] = ..., flags: _Optional[int] = ..., user_data: _Optional[int] = ..., timestamp: _Optional[int] = ..., debits_pending: _Optional[int] = ..., debits_posted: _Optional[int] = ..., credits_pending: _Optional[int] = ..., credits_posted: _Optional[int] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "currency", "code", "flags", "user_data", "timeout_s", "timestamp")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PENDING_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int
    currency: str
    code: int
    flags: int
    user_data: int
    timeout_s: int
    timestamp: int
    def __init__(self, id: _Optional[int] = ..., debit_account_id: _Optional[int] = ..., credit_account_id: _Optional[int] = ..., amount: _Optional[int] = ..., pending_id: _Optional[int] = ..., currency: _Optional[str] = ..., code: _Optional[int] = ..., flags: _Optional[int] = ..., user_data: _Optional[int] = ..., timeout_s: _Optional[int] = ..., timestamp: _Optional[int] = ...) -> None: ...

class CreateAccountsRequest(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ...) -> None: ...

class CreateAccountsResponse(_message.Message):
    __slots__ = ("results", "timestamps")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[CreateAccountResult]
    timestamps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[CreateAccountResult, str]]] = ..., timestamps: _Optional[_Iterable[int]] = ...) -> None: ...

class CreateTransfersRequest(_message.Message):
    __slots__ = ("transfers",)
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    def __init__(self, transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ...) -> None: ...

class CreateTransfersResponse(_message.Message):
    __slots__ = ("results", "timestamps")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[CreateTransferResult]
    timestamps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, results: _Optional[_Iterable[_Union[CreateTransferResult, str]]] = ..., timestamps: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupAccountsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupAccountsResponse(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ...) -> None: ...

class LookupTransfersRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LookupTransfersResponse(_message.Message):
    __slots__ = ("transfers",)
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    def __init__(self, transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ...) -> None: ...

class AccountFilter(_message.Message):
    __slots__ = ("account_id", "timestamp_min", "timestamp_max", "limit", "newest_first", "side", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MIN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MAX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: int
    timestamp_min: int
    timestamp_max: int
    limit: int
    newest_first: bool
    side: StatementSide
    page_token: str
    def __init__(self, account_id: _Optional[int] = ..., timestamp_min: _Optional[int] = ..., timestamp_max: _Optional[int] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ..., side: _Optional[_Union[StatementSide, str]] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetAccountTransfersRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AccountFilter
    def __init__(self, filter: _Optional[_Union[AccountFilter, _Mapping]] = ...) -> None: ...

class GetAccountTransfersResponse(_message.Message):
    __slots__ = ("transfers", "next_page_token")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[Transfer]
    next_page_token: str
    def __init__(self, transfers: _Optional[_Iterable[_Union[Transfer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AccountBalance(_message.Message):
    __slots__ = ("timestamp", "transfer_id", "debits_pending", "debits_posted", "credits_pending", "credits_posted")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    transfer_id: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    def __init__(self, timestamp: _Optional[int] = ..., transfer_id: _Optional[int] = ..., debits_pending: _Optional[int] = ..., debits_posted: _Optional[int] = ..., credits_pending: _Optional[int] = ..., credits_posted: _Optional[int] = ...) -> None: ...

class GetAccountBalancesRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: AccountFilter
    def __init__(self, filter: _Optional[_Union[AccountFilter, _Mapping]] = ...) -> None: ...

class GetAccountBalancesResponse(_message.Message):
    __slots__ = ("balances", "next_page_token")
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    balances: _containers.RepeatedCompositeFieldContainer[AccountBalance]
    next_page_token: str
    def __init__(self, balances: _Optional[_Iterable[_Union[AccountBalance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
