"""Changing the routing configuration while payments flow: versioned, validated, durable.

Two ways in, one rule: the newest accepted change wins. The `RoutingAdmin` RPC
replaces the whole configuration (optionally only if the caller saw the current
version) or flips one switch (enable/disable a channel, force its breaker
open). A configuration file, if one is given, is watched and re-read when its
content changes. Either way the candidate is validated as a whole against the
configured channels first; an invalid one is refused with every reason and the
running configuration keeps working.

Each accepted configuration is stored with the next version number in the
`routing_configs` table of the platform's database before it takes effect, so
a restart resumes the newest (an RPC change is not undone by restarting with an
older file: the file is re-applied only when its content differs from the last
file version stored). Processes sharing a PostgreSQL database pick up each
other's versions from the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualflow.core.database import Database

from . import metrics
from .config import ConfigRejected, RoutingConfig, parse, to_table
from .policy import Router

log = logging.getLogger(__name__)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS routing_configs (
        version BIGINT PRIMARY KEY,
        source TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at_ns BIGINT NOT NULL,
        body TEXT NOT NULL
    )""",
]


class VersionConflict(Exception):
    """The configuration changed since the caller read it (optimistic concurrency)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"the routing configuration is at version {current}, not {expected}")
        self.expected = expected
        self.current = current


class UnknownChannel(Exception):
    def __init__(self, channel: str) -> None:
        super().__init__(f"no channel {channel!r} is configured")
        self.channel = channel


@dataclass(frozen=True, slots=True)
class Applied:
    config: RoutingConfig
    source: str  # "file:<path>", "rpc:<caller>", "default"
    created_at_ns: int


def _digest(table: Any) -> str:
    return hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RoutingControl:
    def __init__(self, router: Router, db: Database, *, file: Path | None = None,
                 watch_interval_s: float = 1.0) -> None:
        self.router = router
        self.db = db
        self.file = file
        self.watch_interval_s = watch_interval_s
        self.current = Applied(router.config, "default", 0)
        self._lock = asyncio.Lock()
        self._file_stamp: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self.db.ensure_schema(SCHEMA)
        await self._load_newest()
        if self.file is not None:
            await self._check_file(initial=True)
        self._task = asyncio.create_task(self._watch(), name="routing-config-watch")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ---- changes
    async def replace(self, table: dict[str, Any], *, source: str, expected_version: int | None = None) -> Applied:
        """Validate and apply a whole configuration; ConfigRejected / VersionConflict change nothing."""
        kind = source.split(":", 1)[0]
        async with self._lock:
            await self._load_newest()  # another process may have moved on
            current = self.current.config.version
            if expected_version is not None and expected_version != current:
                metrics.CONFIG_CHANGES.labels(kind, "conflict").inc()
                raise VersionConflict(expected_version, current)
            try:
                config = parse(table, list(self.router.capabilities), version=current + 1)
            except ConfigRejected:
                metrics.CONFIG_CHANGES.labels(kind, "rejected").inc()
                raise
            canonical = to_table(config)
            now_ns = time.time_ns()
            await self.db.write([(
                "INSERT INTO routing_configs (version, source, digest, created_at_ns, body) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (version) DO NOTHING",
                (config.version, source, _digest(table), now_ns, json.dumps(canonical, sort_keys=True)))])
            rows = await self.db.query("SELECT source, created_at_ns FROM routing_configs WHERE version = ?",
                                       (config.version,))
            if not rows or rows[0][0] != source or int(rows[0][1]) != now_ns:
                # Another process stored this version first: theirs stands; ours was not applied.
                metrics.CONFIG_CHANGES.labels(kind, "conflict").inc()
                await self._load_newest()
                raise VersionConflict(current, self.current.config.version)
            self._apply(Applied(config, source, now_ns))
            metrics.CONFIG_CHANGES.labels(kind, "applied").inc()
            log.info("routing configuration version %d applied (%s)", config.version, source)
            return self.current

    async def set_enabled(self, channel: str, enabled: bool, reason: str, *, source: str) -> Applied:
        self._known(channel)
        config = self.current.config.with_channel(channel, enabled=enabled, disabled_reason="" if enabled else reason)
        return await self.replace(to_table(config), source=source)

    async def force_breaker(self, channel: str, forced_open: bool, *, source: str) -> Applied:
        self._known(channel)
        config = self.current.config.with_channel(channel, breaker_forced_open=forced_open)
        return await self.replace(to_table(config), source=source)

    def _known(self, channel: str) -> None:
        if channel not in self.router.capabilities:
            raise UnknownChannel(channel)

    def _apply(self, applied: Applied) -> None:
        self.router.apply(applied.config)
        self.current = applied

    # ---- what is stored, and the file
    async def _load_newest(self) -> None:
        rows = await self.db.query(
            "SELECT version, source, created_at_ns, body FROM routing_configs ORDER BY version DESC LIMIT 1")
        if not rows or int(rows[0][0]) <= self.current.config.version:
            return
        version, source, created_at_ns, body = rows[0]
        try:
            config = parse(json.loads(body), list(self.router.capabilities), version=int(version))
        except ConfigRejected as rejected:
            # Stored by a process with other channels configured: keep ours, say why.
            log.error("routing configuration version %s does not fit this process's channels: %s", version, rejected)
            return
        self._apply(Applied(config, str(source), int(created_at_ns)))

    async def _check_file(self, initial: bool = False) -> None:
        assert self.file is not None
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            if initial:
                log.warning("routing file %s does not exist; using the stored or default configuration", self.file)
            return
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._file_stamp:
            return
        self._file_stamp = stamp
        source = f"file:{self.file}"
        try:
            table = tomllib.loads(self.file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            metrics.CONFIG_CHANGES.labels("file", "rejected").inc()
            log.error("routing file %s not applied, the running configuration stays: %s", self.file, exc)
            return
        digest = _digest(table)
        rows = await self.db.query(
            "SELECT digest FROM routing_configs WHERE source = ? ORDER BY version DESC LIMIT 1", (source,))
        if rows and rows[0][0] == digest:
            return  # this content was applied before; newer RPC changes stand
        try:
            await self.replace(table, source=source)
        except ConfigRejected as rejected:
            log.error("routing file %s not applied, the running configuration stays: %s", self.file, rejected)
        except VersionConflict:
            self._file_stamp = None  # try again at the next look

    async def _watch(self) -> None:
        while not self._stopping:  # a flag, not only cancellation: 3.11 can swallow one
            await asyncio.sleep(self.watch_interval_s)
            try:
                await self._load_newest()
                if self.file is not None:
                    await self._check_file()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad moment
                log.exception("checking for routing configuration changes failed")
