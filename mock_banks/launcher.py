"""Run a mock bank as its own process on loopback and talk to its admin endpoint.

Every mock server (`dualflow mock-bank <kind>`) binds port 0 unless told
otherwise and announces itself on one stdout line:

    mock-bank <kind> listening port=<PORT> admin=http://127.0.0.1:<ADMIN_PORT>

Its admin endpoint (HTTP JSON) is the same for every kind:
- `GET /profile`, `PUT /profile` (a partial profile: only the given fields change)
- `GET /book`: what the bank really did, one object per instruction
  (`instruction_id, kind, amount, currency, status, reference, fee`)
- `GET /statement?date=YYYY-MM-DD`: that business day's statement in the channel's own format

Profile fields every mock understands (rates are 0..1, times in milliseconds):
`latency_ms`, `jitter_ms`, `decline_rate`, `insufficient_funds_rate`, `timeout_rate` (not processed,
no reply), `lost_reply_rate` (processed, no reply), `late_reply_ms`, `pending_rate` (accepted, final
later: by callback or query), `settle_after_ms`, `duplicate_callback_rate`, `bad_signature_rate`,
`outage` (refuse connections), `fee_fixed`, `fee_bps`, `statement_fault` (the statement comes out
broken for reconciliation tests: "bad_row", "wrong_totals", "truncated", "bad_checksum"; "" for a
good one), `callback_drop_rate` (PSP and rail: notifications never sent), `phantom_amount` (card
bank: one approved payment of that amount nobody sent, on its book and statement; reads back 0),
`balance_offset` (minor units, may be negative: added to the balance the bank reports for us, for
balance drift tests). Each bank reports that balance over its own verified channel: the card
bank's admin `GET /balance?currency=` (MACed), the PSP's signed
`GET /v3/merchant/fund/balance/BASIC?currency=`, the rail's signed `GET /balances/{currency}`.
Every statement carries a trailer or summary with counts and totals, and a checksum:
the card bank's a MAC in its trailer, the PSP's a hash in its signed bill reply, the transfer
rail's the reply signature over the body.

This module starts processes and speaks HTTP; it imports nothing of the mocks.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LISTENING = re.compile(r"^mock-bank (?P<kind>\S+) listening port=(?P<port>\d+) admin=(?P<admin>\S+)")


class MockBankProcess:
    def __init__(self, kind: str, *args: str, log_dir: Path | None = None) -> None:
        self.kind = kind
        self.args = [sys.executable, "-m", "dualflow.gateway.cli", "mock-bank", kind, *args]
        self.log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.stderr_path = self.log_dir / f"mock-{kind}-{os.getpid()}-{time.monotonic_ns()}.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.admin_url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout_s: float = 20.0) -> MockBankProcess:
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=stderr, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True, name=f"mock-{self.kind}-stdout").start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"mock bank {self.kind} did not start:\n{self.stderr_tail()}") from None
            if line is None:
                raise RuntimeError(f"mock bank {self.kind} exited:\n{self.stderr_tail()}")
            m = LISTENING.match(line)
            if m:
                self.port = int(m["port"])
                self.admin_url = m["admin"]
                return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no stderr)"

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # ---- admin endpoint
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw and resp.headers.get_content_type() == "application/json" else raw.decode()

    def profile(self) -> dict[str, Any]:
        return self._call("GET", "/profile")  # type: ignore[no-any-return]

    def set_profile(self, **changes: Any) -> dict[str, Any]:
        return self._call("PUT", "/profile", changes)  # type: ignore[no-any-return]

    def book(self) -> list[dict[str, Any]]:
        return self._call("GET", "/book")  # type: ignore[no-any-return]

    def statement(self, date: str) -> str:
        return str(self._call("GET", f"/statement?date={date}"))

    def __enter__(self) -> MockBankProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(kinds: Sequence[str], *args: str) -> list[MockBankProcess]:
    return [MockBankProcess(kind, *args).start() for kind in kinds]
