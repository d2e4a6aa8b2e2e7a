"""Scratch ledger databases for a bench run, on whichever backend `--db` names.

No `--db`: a temporary directory of SQLite files, removed afterwards. A SQLite
path: that file for the first ledger and siblings for the others, kept
afterwards (refused if any exists: a bench never writes into a ledger it did
not create). A postgresql:// DSN: a new database on that server
(`dualflow_bench_<pid>_<random>`), one schema per ledger, dropped afterwards;
nothing that existed before is touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from dualflow.core.ledger.open_store import is_postgres, with_database, with_search_path


class ScratchLedgers:
    """Hands out one fresh, empty ledger URL per name; `close()` removes what it created."""

    def __init__(self, db: str | None) -> None:
        self.db = db
        self.backend = "postgres" if is_postgres(db) else "sqlite"
        self.database_dsn = ""  # postgres: the scratch database (pgbench runs there too)
        self._tmpdir: str | None = None
        self._admin_dsn = ""
        self._database = ""

    def open(self) -> None:
        if self.backend == "postgres":
            import psycopg

            assert self.db is not None
            self._admin_dsn = self.db
            self._database = f"dualflow_bench_{os.getpid()}_{secrets.token_hex(4)}"
            with psycopg.connect(self._admin_dsn, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'CREATE DATABASE "{self._database}"')
            self.database_dsn = with_database(self._admin_dsn, self._database)
        elif self.db is None:
            self._tmpdir = tempfile.mkdtemp(prefix="dualflow-bench-")

    def ledger(self, name: str) -> str:
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(self.database_dsn, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{name}"')
            return with_search_path(self.database_dsn, name)
        if self._tmpdir is not None:
            return str(Path(self._tmpdir) / f"{name}.db")
        assert self.db is not None
        base = Path(self.db)
        path = base if name == "main" else base.with_name(f"{base.stem}.{name}{base.suffix or '.db'}")
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():
                raise SystemExit(f"refusing to benchmark into {p}: it exists (give a new path, or no --db)")
        return str(path)

    def settle(self, url: str) -> None:
        """After a bulk load, what an operator would do before taking traffic, so that no case pays for it.

        PostgreSQL: VACUUM (ANALYZE) the bulk-loaded accounts table, which sets hint bits and gives
        the planner statistics (otherwise autovacuum does both in the middle of a measurement). Only
        that table: statistics taken of the still-empty transfers table would tell the planner it
        stays tiny, and its id lookups then become sequential scans as it grows (seen: 9 s per
        8,000-id lookup). SQLite: checkpoint the write-ahead log and truncate it.
        """
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE) accounts")
        else:
            import sqlite3

            conn = sqlite3.connect(url, timeout=30)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.close()

    def close(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._database:
            import psycopg

            with psycopg.connect(self._admin_dsn, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)')
            self._database = ""

    def __enter__(self) -> ScratchLedgers:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
