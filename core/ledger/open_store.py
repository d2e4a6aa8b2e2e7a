"""Database URLs: pick a ledger storage backend (a postgresql:// DSN or a SQLite path), and derive DSNs."""

from __future__ import annotations

import urllib.parse

from .store import LedgerStore


def is_postgres(db: str | None) -> bool:
    return bool(db) and db.startswith(("postgresql://", "postgres://"))  # type: ignore[union-attr]


def store_from_url(db: str) -> LedgerStore:
    if is_postgres(db):
        from .postgres_store import PostgresLedgerStore  # psycopg is only loaded when used

        return PostgresLedgerStore(db)
    from .sqlite_store import SqliteLedgerStore

    return SqliteLedgerStore(db)


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def with_search_path(dsn: str, schema: str) -> str:
    """The same DSN with `schema` as the session's search_path (tests give each test its own)."""
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
