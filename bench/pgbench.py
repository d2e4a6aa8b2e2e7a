"""PostgreSQL's own yardstick: `pgbench -b tpcb-like` against the server a bench uses.

TPC-B-like is one small read-modify-write transaction per payment (three
updates, one select, one insert) committed durably: what a naive ledger that
commits each transfer on its own would get from the same server. It runs in the
bench's scratch database (pgbench's tables live in its public schema), with
per-transaction latencies from pgbench's own log.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)


class PgbenchFailed(RuntimeError):
    pass


@dataclass
class PgbenchResult:
    tps: float
    latencies_s: list[float]
    transactions: int
    clients: int
    scale: int
    duration_s: int


def available() -> str | None:
    return shutil.which("pgbench")


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise PgbenchFailed(f"{' '.join(argv[:3])} ... failed ({proc.returncode}):\n{text[-2000:]}")
    return text


async def tpcb_like(dsn: str, *, scale: int, clients: int, threads: int, duration_s: int) -> PgbenchResult:
    exe = available()
    assert exe is not None, "pgbench is not installed"
    await _run(exe, "-i", "-q", "-s", str(scale), dsn)
    with tempfile.TemporaryDirectory(prefix="dualflow-pgbench-") as logdir:
        prefix = str(Path(logdir) / "tx")
        text = await _run(
            exe, "-b", "tpcb-like", "-c", str(clients), "-j", str(threads), "-T", str(duration_s),
            "-l", f"--log-prefix={prefix}", dsn,
        )
        m = _TPS.search(text)
        if m is None:
            raise PgbenchFailed(f"could not read the tps from pgbench's output:\n{text[-2000:]}")
        latencies_s: list[float] = []
        for log in Path(logdir).glob("tx.*"):
            for line in log.read_text().splitlines():
                # client_id transaction_no time_us script_no time_epoch time_us_frac
                fields = line.split()
                if len(fields) >= 3:
                    latencies_s.append(int(fields[2]) / 1e6)
    return PgbenchResult(float(m.group(1)), latencies_s, len(latencies_s), clients, scale, duration_s)
