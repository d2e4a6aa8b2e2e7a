"""`dualflow serve` as a real child process, for tests that kill, signal and restart it.

The server binds port 0 and announces the real address on one stdout line
(`dualflow listening grpc=HOST:PORT [metrics=URL] db=BACKEND`); `ServeProcess`
reads it from a reader thread, so stdout never fills up and every later line
(the shutdown lines) is kept for assertions. stderr goes to a file whose tail is
quoted in failures. The `serve_processes` fixture ends every process a test
started, whatever happened, so no server outlives its test.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

LISTENING = re.compile(r"^dualflow listening grpc=(?P<grpc>\S+)(?: metrics=(?P<metrics>\S+))? db=(?P<db>\S+)")


class ServeProcess:
    """One `python -m dualflow.gateway.cli serve` child; start() waits for its announcement."""

    def __init__(self, db: str, log_dir: Path, *extra_args: str, name: str = "serve") -> None:
        self.db = db
        self.args = [sys.executable, "-m", "dualflow.gateway.cli", "serve", "--listen", "127.0.0.1:0",
                     "--db", db, *extra_args]
        self.stderr_path = log_dir / f"{name}-{os.getpid()}-{time.monotonic_ns()}.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.address = ""
        self.metrics_url: str | None = None
        self.backend = ""

    def start(self, timeout_s: float = 30.0) -> ServeProcess:
        assert self.proc is None, "already started"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
                # Its own process group: a Ctrl-C aimed at pytest does not reach it; we end it by pid.
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"stdout-{self.proc.pid}", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"server did not announce itself in {timeout_s}s\n{self.diagnostics()}") from None
            if line is None:
                rc = self.proc.wait(timeout=10)
                raise AssertionError(f"server exited with {rc} before announcing itself\n{self.diagnostics()}")
            m = LISTENING.match(line)
            if m:
                self.address = m["grpc"]
                self.metrics_url = m["metrics"]
                self.backend = m["db"]
                return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed; what is on disk is all that survives."""
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)  # every stdout line is in self.lines once it ends
        return rc

    def stderr_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def diagnostics(self) -> str:
        return f"argv: {self.args}\nstdout: {self.lines}\nstderr tail:\n{self.stderr_tail()}"

    def close(self) -> None:
        """Make sure the process is gone (SIGKILL if need be) and its pipe is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        finally:
            if self._reader is not None:
                self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


class ServeFactory:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ServeProcess] = []

    def __call__(self, db: str, *extra_args: str, name: str = "serve", timeout_s: float = 30.0) -> ServeProcess:
        p = ServeProcess(db, self.log_dir, *extra_args, name=name)
        self.started.append(p)  # before start(): a failed start is cleaned up too
        return p.start(timeout_s)

    def close_all(self) -> None:
        for p in self.started:
            p.close()


@pytest.fixture
def serve_processes(tmp_path: Path) -> Iterator[ServeFactory]:
    """Start `dualflow serve` children with `serve_processes(db, *args)`; all are killed at teardown."""
    factory = ServeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close_all()


def run_cli(args: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m dualflow.gateway.cli ARGS` to completion (killed at the timeout)."""
    return subprocess.run([sys.executable, "-m", "dualflow.gateway.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s, env=env)
