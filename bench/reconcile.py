"""`dualflow bench reconcile`: reconcile a generated statement against as many instructions, vs
just reading the same statement, in the same run; time and peak memory, at N rows and at N/10.

Data (generated before any clock starts, in a temporary directory, removed afterwards):
- a card bank settlement file of N lines for one business day, in the real format (header,
  comma-separated lines in a random order, trailer with counts, totals and the AES-CMAC), and
- a scratch SQLite ledger database whose `payments` table (the payments' own schema and JSON
  bodies, inserted with executemany) holds N card payments on that channel and day, with
  `channel_polls` rows for the ones still polled;
- with a sprinkling of every class: per K = max(1, N // 2000) each of AMOUNT_MISMATCH,
  CURRENCY_MISMATCH, FEE_MISMATCH, DUPLICATE (a second line), MISSING_INTERNALLY (a line for no
  payment), MISSING_AT_CHANNEL (a SUCCEEDED payment without a line, past its SLA), EXPECTED (an
  UNKNOWN payment without a line, inside its polling window), and 2K STATUS_MISMATCH (K UNKNOWN
  payments the bank settled: auto-resolvable, K FAILED ones it settled: for a person).

Cases (each in its own process, so each peak resident set size is its own: VmHWM, see _peak_rss_kb):
- `parse_statement_N`: what `fetch_statement` does with the downloaded file: read and check every
  line, the trailer and the MAC into a spool, then stream every line as a StatementLine (the
  baseline of `reconcile_vs_parse`);
- `parse_single_pass_N`: one pass that checks every line and builds its StatementLine, nothing
  spooled (a cheaper reader that could not promise "verified before yielded"; for comparison);
- `reconcile_N`: the same statement read as in parse_statement, our payments read from the
  database through the Database protocol (`ours.read_instructions`, pages of the payments
  table), the engine's partitioned join, every line and instruction classified; plain matches
  counted, everything else yielded (as a run does). Its class counts must equal what was
  injected, or the bench fails.
The same at N/10. Ratios: `reconcile_vs_parse` = reconcile_N seconds / parse_statement_N
seconds (target at most 3); `peak_memory_10x_rows_vs_1x` = reconcile_N peak RSS / reconcile_N/10
peak RSS (flat in N is about 1; target at most 1.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FULL_ROWS = 1_000_000
QUICK_ROWS = 40_000
DATE = "2024-03-05"
CHANNEL = "cardbank"
FEE_BPS = 55
MAC_KEY = bytes(range(16))
HOUR_NS = 3600 * 10**9
TARGETS = {"reconcile_vs_parse": 3.0, "peak_memory_10x_rows_vs_1x": 1.5}


def add_parser(areas: Any) -> None:
    from .report import add_output_options

    p = areas.add_parser("reconcile", help="reconcile a generated statement vs only reading it; time and memory",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=None, help=f"statement lines and instructions (default {FULL_ROWS:,}; "
                                                           f"--quick: {QUICK_ROWS:,})")
    add_output_options(p)
    p.set_defaults(bench_run=run)


def run(args: argparse.Namespace) -> int:
    from .report import BenchFailure, run_and_report

    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    if rows < 100:
        raise SystemExit("--rows must be at least 100")
    return run_and_report("reconcile", lambda console: _bench(rows, bool(args.quick), console), args,
                          (BenchFailure,))


# ---------------------------------------------------------------- report with ceilings

def _report_class() -> Any:
    from .report import Ratio, Report

    @dataclass
    class CeilingRatio(Ratio):
        target_max: float = 0.0

        @property
        def passed(self) -> bool | None:
            return None if self.value is None else self.value <= self.target_max

    @dataclass
    class ReconcileReport(Report):
        def to_json(self) -> dict[str, Any]:
            out = super().to_json()
            out["targets"] = {r.name: {"max": r.target_max} for r in self.ratios}
            out["passed"] = {r.name: r.passed for r in self.ratios}
            return out

        def render(self, console: Any) -> None:
            from rich.table import Table

            m = self.machine
            cases = Table(title=f"dualflow bench {self.bench} - backend {self.backend} - {m['cpus']} cpus, "
                                f"Python {m['python']}")
            for column in ("case", "rows", "seconds", "rows/s", "peak RSS MB", "RSS at start MB"):
                cases.add_column(column, justify="left" if column == "case" else "right")
            for c in self.cases:
                cases.add_row(c.name, f"{c.extra['rows']:,}", f"{c.extra['seconds']:.3f}", f"{c.rate_per_s:,.0f}",
                              f"{c.extra['peak_rss_mb']:.1f}", f"{c.extra['start_rss_mb']:.1f}")
            console.print(cases)
            console.print(f"load average (1 min) at start {m.get('load_avg_1m_at_start')}, at end "
                          f"{m.get('load_avg_1m_at_end')}; platform {m['platform']}; source "
                          f"{self.settings.get('source') or 'unknown'}", highlight=False)
            table = Table(title="ratios (same run, same machine)")
            for column in ("ratio", "value", "target", "result", "definition"):
                table.add_column(column, justify="right" if column in ("value", "target") else "left")
            for r in self.ratios:
                verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[r.passed]
                table.add_row(r.name, "n/a" if r.value is None else f"{r.value:.3f}", f"<= {r.target_max:g}",
                              verdict, f"{r.numerator} / {r.denominator}")
            console.print(table)
            for note in self.notes:
                console.print(f"- {note}", highlight=False)

    return CeilingRatio, ReconcileReport


# ---------------------------------------------------------------- data

@dataclass
class Injected:
    k: int
    lines: dict[str, int] = field(default_factory=dict)
    instructions: dict[str, int] = field(default_factory=dict)


def _body_template() -> str:
    from dualflow.core.payments.model import Asset, CardInfo, Payment, PaymentStatus
    from dualflow.core.payments.records import payment_body

    p = Payment(payment_id="@PID@", request_id="@RID@", merchant_id="bench-shop", payer="user:@PAYER@",
                payee="merchant:bench-shop", amount=111_111_111_111, currency="@CUR@", asset=Asset.BANK_CARD,
                status=PaymentStatus.SUCCEEDED, fee=22_222_222_222, created_at_ns=333_333_333_333,
                updated_at_ns=444_444_444_444, version=3, trade_order_id="order-@RID@", description="top-up",
                metadata={"cart": "@RID@"}, card=CardInfo("tok_0123456789abcdef0123", "476173", "0119", "VISA", 12,
                                                           2030),
                channel=CHANNEL, channel_reference="@REF@", attempt=1)
    body = payment_body(p).replace("%", "%%")
    for token, spec in (("@PID@", "%(pid)s"), ("@RID@", "%(rid)s"), ("@PAYER@", "%(payer)s"),
                        ("111111111111", "%(amount)d"), ("@CUR@", "%(cur)s"), ("22222222222", "%(fee)d"),
                        ("333333333333", "%(created)d"), ("444444444444", "%(created)d"), ("@REF@", "%(ref)s"),
                        ('"status":"SUCCEEDED"', '"status":"%(status)s"')):
        assert token in body, token
        body = body.replace(token, spec)
    return body


def generate(folder: Path, n: int, seed: int = 7) -> tuple[Path, Path, Injected, int]:
    """The statement file, the scratch database, what was injected, and `now` for the policy."""
    from dualflow.adapters.iso8583_bank.statement import HEADER_LINE, cmac, statement_key
    from dualflow.core.ledger.sqlite_store import SqliteLedgerStore
    from dualflow.core.payments.records import PAYMENT_SCHEMA
    from dualflow.reconciliation.ours import day_bounds_ns

    rng = random.Random(seed)
    k = max(1, n // 2000)
    start, end = day_bounds_ns(DATE)
    now = end + 72 * HOUR_NS  # three days later: past the SLA of anything without a polling window
    db_path, file_path = folder / f"ledger-{n}.db", folder / f"statement-{n}.txt"

    async def schema() -> None:
        store = SqliteLedgerStore(str(db_path))
        await store.open()
        await store.ensure_schema(PAYMENT_SCHEMA)
        await store.close()

    asyncio.run(schema())
    template = _body_template()
    kinds = (["amount"] * k + ["currency"] * k + ["fee"] * k + ["duplicate"] * k + ["missing_at_channel"] * k
             + ["expected"] * k + ["status_auto"] * k + ["status_human"] * k)
    kinds += ["matched"] * (n - len(kinds))
    rng.shuffle(kinds)
    lines: list[str] = []
    payments: list[tuple[Any, ...]] = []
    polls: list[tuple[Any, ...]] = []
    status_code = {"SUCCEEDED": 3, "FAILED": 4, "UNKNOWN": 5}
    for i, kind in enumerate(kinds):
        pid = f"pay_{i:024x}"
        amount = 100 + rng.randrange(1_000_000)
        created = start + rng.randrange(end - start - 3 * HOUR_NS)
        status = {"status_auto": "UNKNOWN", "status_human": "FAILED", "expected": "UNKNOWN"}.get(kind, "SUCCEEDED")
        ref = f"{i:012d}"
        body = template % {"pid": pid, "rid": f"r{i}", "payer": f"u{i % 5000}", "amount": amount, "cur": "CNY",
                           "fee": (amount * 100 + 5_000) // 10_000, "created": created, "ref": ref, "status": status}
        payments.append((pid, f"r{i}", "bench-shop", 3, status_code[status], created, created, body))
        if kind == "expected":
            polls.append((pid, "pay", now + HOUR_NS, 3, now + HOUR_NS))
        if kind in ("missing_at_channel", "expected"):
            continue
        fee = (amount * FEE_BPS + 5_000) // 10_000
        line = [DATE, f"{pid}-1", ref, "pay", amount, "CNY", "SUCCEEDED", fee]
        if kind == "amount":
            line[4] = amount + 1
        elif kind == "currency":
            line[5] = "USD"
        elif kind == "fee":
            line[7] = fee + 1
        text = ",".join(map(str, line))
        lines.append(text)
        if kind == "duplicate":
            lines.append(text)
    # Lines for payments we never made, to keep the statement at exactly N lines.
    extra = n - len(lines)
    for j in range(extra):
        lines.append(f"{DATE},pay_{'f' * 16}{j:08x}-1,9{j:011d},pay,{500 + j},CNY,SUCCEEDED,"
                     f"{((500 + j) * FEE_BPS + 5_000) // 10_000}")
    rng.shuffle(lines)
    amounts = sum(int(x.split(",")[4]) for x in lines)
    fees = sum(int(x.split(",")[7]) for x in lines)
    head = HEADER_LINE + "".join(x + "\n" for x in lines).encode() + f"TRAILER,{len(lines)},{amounts},{fees},".encode()
    file_path.write_bytes(head + cmac(statement_key(MAC_KEY), head).hex().upper().encode() + b"\n")
    conn = sqlite3.connect(db_path)
    with conn:
        conn.executemany("INSERT INTO payments (payment_id, request_id, merchant_id, asset, status, created_at_ns, "
                         "updated_at_ns, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", payments)
        conn.executemany("INSERT INTO channel_polls (object_id, kind, next_at_ns, attempts, window_ends_ns) "
                         "VALUES (?, ?, ?, ?, ?)", polls)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    injected = Injected(k)
    # The K duplicate payments match with their first line; their second line is the DUPLICATE.
    injected.lines = {"MATCHED": n - 7 * k, "AMOUNT_MISMATCH": k, "CURRENCY_MISMATCH": k, "FEE_MISMATCH": k,
                      "DUPLICATE": k, "STATUS_MISMATCH": 2 * k, "MISSING_INTERNALLY": extra}
    injected.instructions = {"MATCHED": n - 7 * k, "AMOUNT_MISMATCH": k, "CURRENCY_MISMATCH": k, "FEE_MISMATCH": k,
                             "STATUS_MISMATCH": 2 * k, "MISSING_AT_CHANNEL": k, "EXPECTED": k}
    assert extra == k and sum(injected.lines.values()) == n == sum(injected.instructions.values()), injected
    return file_path, db_path, injected, now


# ---------------------------------------------------------------- one case, in its own process

def _peak_rss_kb() -> int:
    """This process's peak resident set since it started (VmHWM). Not ru_maxrss: that keeps the
    high-water mark of the process before its exec, i.e. of the bench's parent holding the data."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _case(case: str, file_path: str, db_path: str, now: int) -> dict[str, Any]:
    from dualflow.adapters.contract import Outcome, StatementLine
    from dualflow.adapters.contract import FeeSchedule
    from dualflow.adapters.iso8583_bank.statement import read_statement, scan, statement_key
    from dualflow.core.ledger.sqlite_store import SqliteLedgerStore
    from dualflow.reconciliation.engine import Tally, reconcile
    from dualflow.reconciliation.model import Policy
    from dualflow.reconciliation.ours import day_bounds_ns, fee_model, read_instructions

    key = statement_key(MAC_KEY)
    start_rss = _rss_kb()
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    with open(file_path, "rb") as f:
        if case == "parse_single_pass":
            status = {"SUCCEEDED": Outcome.SUCCEEDED, "FAILED": Outcome.FAILED}
            count = scan(f, DATE, key, lambda iid, ref, kind, amount, cur, st, fee: StatementLine(
                DATE, iid, ref, kind, amount, cur, status[st], fee))
            out["lines"] = count
        elif case == "parse_statement":
            with read_statement(f, DATE, key) as spool:
                out["lines"] = sum(1 for _ in spool.lines())
        else:
            async def go() -> Tally:
                store = SqliteLedgerStore(db_path)
                await store.open()
                try:
                    with read_statement(f, DATE, key) as spool:
                        tally = Tally()
                        policy = Policy(cutoff_ns=day_bounds_ns(DATE)[1], now_ns=now, sla_ns=24 * HOUR_NS,
                                        fee_for=fee_model({"CNY": FeeSchedule(bps=FEE_BPS)}))
                        others = 0
                        async for _r in reconcile(spool.lines(), read_instructions(store, CHANNEL, DATE), policy,
                                                  tally=tally, emit_matched=False):
                            others += 1
                        out["results_yielded"] = others
                        return tally
                finally:
                    await store.close()

            tally = asyncio.run(go())
            out.update(tally.as_dict())
    out["seconds"] = time.perf_counter() - t0
    out["start_rss_kb"] = start_rss
    out["peak_rss_kb"] = _peak_rss_kb()
    return out


def _run_case(case: str, file_path: Path, db_path: Path, now: int) -> dict[str, Any]:
    from .report import BenchFailure

    proc = subprocess.run([sys.executable, "-m", "dualflow.bench.reconcile", case, str(file_path), str(db_path),
                           str(now)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise BenchFailure(f"case {case} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the bench

async def _bench(n: int, quick: bool, console: Any) -> Any:
    from .report import BenchFailure, Case, load_average, progress_bar, source_version

    CeilingRatio, ReconcileReport = _report_class()
    report = ReconcileReport("reconcile", "sqlite")
    report.machine["load_avg_1m_at_start"] = load_average()
    sizes = [n, max(100, n // 10)]
    folder = Path(tempfile.mkdtemp(prefix="dualflow-bench-"))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        with progress_bar(console) as progress:
            gen = progress.add_task("generate statements and payments", total=len(sizes))
            data = {}
            for size in sizes:
                data[size] = await asyncio.to_thread(generate, folder, size)
                progress.advance(gen)
            cases = [(c, s) for s in sizes for c in ("parse_statement", "parse_single_pass", "reconcile")]
            task = progress.add_task("cases (one process each)", total=len(cases))
            for case, size in cases:
                file_path, db_path, _injected, now = data[size]
                results[(case, size)] = await asyncio.to_thread(_run_case, case, file_path, db_path, now)
                progress.advance(task)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    problems = []
    for size in sizes:
        injected, got = data[size][2], results[("reconcile", size)]
        if got["lines"] != injected.lines or got["instructions"] != injected.instructions:
            problems.append(f"N={size}: classified lines {got['lines']} / instructions {got['instructions']}, "
                            f"injected {injected.lines} / {injected.instructions}")
        for case in ("parse_statement", "parse_single_pass"):
            if results[(case, size)]["lines"] != size:
                problems.append(f"{case} N={size} read {results[(case, size)]['lines']} lines")
    if problems:
        raise BenchFailure("; ".join(problems))
    for (case, size), r in results.items():
        report.cases.append(Case(f"{case}_{size}", size / r["seconds"], None, None, {
            "rows": size, "seconds": round(r["seconds"], 3), "peak_rss_mb": round(r["peak_rss_kb"] / 1024, 1),
            "start_rss_mb": round(r["start_rss_kb"] / 1024, 1),
            "peak_above_start_mb": round((r["peak_rss_kb"] - r["start_rss_kb"]) / 1024, 1)}))
    big, small = sizes
    report.ratios.append(CeilingRatio(
        "reconcile_vs_parse", results[("reconcile", big)]["seconds"] / results[("parse_statement", big)]["seconds"],
        0.0, f"reconcile_{big} seconds", f"parse_statement_{big} seconds", TARGETS["reconcile_vs_parse"]))
    report.ratios.append(CeilingRatio(
        "peak_memory_10x_rows_vs_1x", results[("reconcile", big)]["peak_rss_kb"] /
        results[("reconcile", small)]["peak_rss_kb"], 0.0, f"reconcile_{big} peak RSS",
        f"reconcile_{small} peak RSS", TARGETS["peak_memory_10x_rows_vs_1x"]))
    report.settings.update(rows=n, quick=quick, source=source_version(), business_date=DATE, channel=CHANNEL,
                           injected_per_class=data[big][2].k, fee_bps=FEE_BPS)
    report.machine["load_avg_1m_at_end"] = load_average()
    extra = {"reconcile_vs_single_pass_parse": results[("reconcile", big)]["seconds"] /
             results[("parse_single_pass", big)]["seconds"],
             "parse_memory_10x_rows_vs_1x": results[("parse_statement", big)]["peak_rss_kb"] /
             results[("parse_statement", small)]["peak_rss_kb"]}
    report.notes.append("untargeted: " + ", ".join(f"{k} = {v:.3f}" for k, v in extra.items()))
    report.notes.append(
        f"check after the run: reconcile_N classified exactly what was injected (per class, K = {data[big][2].k} at "
        f"N = {big:,}): lines {results[('reconcile', big)]['lines']}, instructions "
        f"{results[('reconcile', big)]['instructions']}; same at N/10")
    report.notes.append(
        "each case runs in its own process (peak_rss_mb is its VmHWM, the peak resident set since its exec: "
        "ru_maxrss would keep the parent's, start_rss_mb its size after imports; the reconcile case's peak includes "
        "the ledger store's SQLite page cache, capped at 64 MiB by its cache_size); "
        "parse_statement reads the file as fetch_statement does (every line, the trailer and the MAC checked into a "
        "spool, then every line streamed as a StatementLine); reconcile adds our payments read from the scratch "
        "SQLite database through the Database protocol and the engine's partitioned join (plain matches counted, "
        "everything else yielded)")
    if quick:
        report.notes.append("--quick: a reduced run; not a figure to record")
    return report


if __name__ == "__main__":
    print(json.dumps(_case(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
