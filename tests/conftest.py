"""Shared fixtures: storage backends (SQLite always, PostgreSQL when reachable).

PostgreSQL: DUALFLOW_TEST_PG names an admin DSN (default: the local server,
database `test`, trust auth). Each test run creates its own scratch database
and drops it at the end, and each test gets its own schema in it, so runs and
tests never collide. Without a reachable server the PostgreSQL tests skip with
the reason, except under CI (CI=true), where that fails the run: CI must test
both backends.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from dualflow.core.ledger.open_store import with_database, with_search_path

PG_ADMIN_DSN = os.environ.get("DUALFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A scratch PostgreSQL database for this test run; its DSN."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({exc.__class__.__name__}); set DUALFLOW_TEST_PG"
        if IN_CI:
            pytest.fail(f"CI=true requires PostgreSQL: {reason}", pytrace=False)
        pytest.skip(reason)
    name = f"dualflow_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(PG_ADMIN_DSN, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_database: str) -> Iterator[str]:
    """A DSN whose search_path is a fresh, empty schema of the scratch database."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(pg_database, schema)
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger database on each backend: a SQLite path or a postgresql:// DSN."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return str(request.getfixturevalue("pg_dsn"))
