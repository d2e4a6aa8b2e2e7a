"""A dualflow server in its own process, as benches use it: start, find its port, SIGTERM.

The server runs `python -m dualflow.gateway.cli serve --listen 127.0.0.1:0`, so
client and server do not share one interpreter lock; it announces itself with
one line `dualflow listening grpc=HOST:PORT ...`, which gives the real port.
Its stderr goes to a log file whose tail is shown if it fails. `config` passes
a platform TOML file (`--config`: merchants, callers, vault keys); `serve_args` are
further `dualflow serve` options (e.g. `--callback-port N` for the channels' callbacks).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

_LISTENING = re.compile(r"^dualflow listening grpc=(\S+)")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class ServerFailed(RuntimeError):
    pass


class ServerProcess:
    def __init__(self, db: str, *, grace_s: float = 5.0, config: str | None = None,
                 serve_args: Sequence[str] = ()) -> None:
        self.db = db
        self.grace_s = grace_s
        self.config = config
        self.serve_args = tuple(serve_args)
        self.address = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="dualflow-bench-server-", suffix=".log", delete=False)

    async def start(self) -> str:
        config = ("--config", self.config) if self.config is not None else ()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dualflow.gateway.cli", "serve",
            "--listen", "127.0.0.1:0", "--db", self.db, "--grace", str(self.grace_s), *config, *self.serve_args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=self._log,
        )
        assert self._proc.stdout is not None
        try:
            while True:
                line = await asyncio.wait_for(self._proc.stdout.readline(), START_TIMEOUT_S)
                if not line:
                    raise ServerFailed(f"the server exited before listening:\n{self.log_tail()}")
                m = _LISTENING.match(line.decode(errors="replace"))
                if m:
                    self.address = m.group(1)
                    return self.address
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.communicate(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise ServerFailed(f"the server did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM") from None
        self._log.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise ServerFailed(f"the server exited with {proc.returncode}:\n{self.log_tail()}")
        Path(self._log.name).unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for profilers and /proc readers)."""
        return None if self._proc is None else self._proc.pid

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server process has used so far; None where /proc is missing."""
        if self._proc is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(the server's stderr was empty)"

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
