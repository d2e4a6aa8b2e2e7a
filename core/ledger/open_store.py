"""Pick a ledger storage backend from a URL: a postgresql:// DSN or a SQLite path."""

from __future__ import annotations

from .store import LedgerStore


def store_from_url(db: str) -> LedgerStore:
    if db.startswith(("postgresql://", "postgres://")):
        from .postgres_store import PostgresLedgerStore  # psycopg is only loaded when used

        return PostgresLedgerStore(db)
    from .sqlite_store import SqliteLedgerStore

    return SqliteLedgerStore(db)
