"""The storage interface every ledger backend implements, and helpers they share.

Two backends, one semantics: SQLite (embedded default, core/ledger/sqlite_store.py)
and PostgreSQL (core/ledger/postgres_store.py). Both run the same group-commit
procedure (core/ledger/batch.py) and pass the same test suite.

Ids and user_data are unsigned 64-bit in the API but both databases store
signed 64-bit integers, so values from 2^63 up are stored as value - 2^64
(two's complement); `to_db`/`from_db` do that and nothing else.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dualflow.core.errors import InvalidRequest

from .batch import BatchResult, Command, Procedure
from .model import Account, AccountFilter, BalanceSnapshot, Transfer

_TWO_63 = 2**63
_TWO_64 = 2**64


def to_db(u64: int) -> int:
    return u64 - _TWO_64 if u64 >= _TWO_63 else u64


def from_db(i64: int) -> int:
    return i64 + _TWO_64 if i64 < 0 else i64


@dataclass(frozen=True, slots=True)
class CurrencyTotals:
    currency: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def balanced(self) -> bool:
        return self.debits_pending == self.credits_pending and self.debits_posted == self.credits_posted


class LedgerStore(Protocol):
    """What the ledger service needs from storage. All methods are safe to call concurrently
    except `commit`, which only the single group-commit writer calls."""

    backend: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def commit(self, commands: Sequence[Command], now_ns: int) -> list[BatchResult]:
        """Apply commands in one durable transaction; returns only after the commit is on disk."""
        ...

    async def run_procedure(self, procedure: Procedure) -> list[BatchResult]:
        """Run any group-commit procedure in one transaction (the benchmark's storage ceiling uses it)."""
        ...

    async def ensure_schema(self, statements: Sequence[str]) -> None:
        """Create the tables that live beside the ledger's (core/database.py); idempotent."""
        ...

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read of committed data; portable SQL with `?` placeholders."""
        ...

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...
    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]: ...
    async def account_transfers(self, flt: AccountFilter, after_timestamp: int) -> list[Transfer]: ...
    async def account_balances(self, flt: AccountFilter, after_timestamp: int) -> list[BalanceSnapshot]: ...
    async def currency_totals(self) -> list[CurrencyTotals]: ...
    async def next_expiry(self) -> int | None:
        """The earliest expires_at among still-pending transfers, or None."""
        ...


# ---- page tokens: opaque to clients, tied to the filter's direction
def encode_page_token(last_timestamp: int, newest_first: bool) -> str:
    return base64.urlsafe_b64encode(struct.pack(">BQ", 1 if newest_first else 0, last_timestamp)).decode()


def decode_page_token(token: str, newest_first: bool) -> int:
    """The timestamp to continue after; 0 for the first page."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        direction, last = struct.unpack(">BQ", raw)
    except Exception:
        raise InvalidRequest("page_token is not a token this service issued", reason="PAGE_TOKEN_INVALID") from None
    if direction != (1 if newest_first else 0):
        raise InvalidRequest("page_token belongs to a query in the other direction", reason="PAGE_TOKEN_INVALID")
    return int(last)


def bounds(flt: AccountFilter, after_timestamp: int) -> tuple[int, int]:
    """Inclusive [low, high] timestamp range for one page of `flt` (stored timestamps are < 2^63)."""
    low = flt.timestamp_min
    high = flt.timestamp_max or _TWO_63 - 1
    if after_timestamp:
        if flt.newest_first:
            high = min(high, after_timestamp - 1)
        else:
            low = max(low, after_timestamp + 1)
    return low, min(high, _TWO_63 - 1)
