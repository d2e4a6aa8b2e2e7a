"""Tables beside the ledger's, in the same database, with the same durability.

Payments, the outbox, webhooks and the card vault keep their rows in the
ledger's database (SQLite file or PostgreSQL) so that a payment's state, its
ledger postings and its outbox event commit in ONE transaction. Writes go
through the ledger's single group-commit writer; reads use the store's read
connections.

SQL written for this interface must run unchanged on SQLite and PostgreSQL:
- placeholders are `?` (the PostgreSQL store rewrites them to `%s`);
- column types are BIGINT and TEXT only (JSON goes in TEXT, bytes base64 in TEXT);
- upserts are `INSERT ... ON CONFLICT (cols) DO NOTHING | DO UPDATE SET c = excluded.c`;
- no AUTOINCREMENT/SERIAL: ids come from the caller or from `Database.next_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

Statement = tuple[str, Sequence[Any]]


class Database(Protocol):
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read on a read connection; rows as tuples."""
        ...

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run the statements in one durable transaction through the group-commit writer;
        returns only after COMMIT. Row counts are not reported (PostgreSQL pipelines
        them): read first, or use `INSERT ... ON CONFLICT` to make a write idempotent."""
        ...
