"""What every `dualflow bench <area>` prints: cases, ratios against targets, and the machine.

A bench measures its cases, derives ratios against baselines measured in the
same run, and hands them to a `Report`. The report renders either a human table
(rich, on stdout) or exactly one JSON object on stdout (see ../shared/BENCH.md
for the shape); progress always goes to stderr so that `--json` output stays
clean for scripts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def source_version() -> str | None:
    """`git describe --always --dirty` of the checkout the bench runs from, if it is one."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of latencies in seconds, in milliseconds."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


@dataclass
class Case:
    """One measured case. `rate_per_s` counts items (transfers, calls...) the case names."""

    name: str
    rate_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_latencies(cls, name: str, items: int, elapsed_s: float, latencies_s: Sequence[float],
                       **extra: Any) -> Case:
        return cls(
            name,
            items / elapsed_s if elapsed_s > 0 else 0.0,
            percentile_ms(latencies_s, 50),
            percentile_ms(latencies_s, 99),
            {"calls": len(latencies_s), "items": items, "seconds": round(elapsed_s, 3), **extra},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "rate_per_s": round(self.rate_per_s, 1)}
        out["p50_ms"] = None if self.p50_ms is None else round(self.p50_ms, 3)
        out["p99_ms"] = None if self.p99_ms is None else round(self.p99_ms, 3)
        out.update(self.extra)
        return out


@dataclass
class Ratio:
    """A figure divided by a baseline from the same run, with its target (a minimum)."""

    name: str
    value: float | None  # None when a side of it could not be measured in this run
    target_min: float
    numerator: str = ""
    denominator: str = ""

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value >= self.target_min


@dataclass
class Report:
    bench: str
    backend: str
    cases: list[Case] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)

    def case(self, name: str) -> Case | None:
        return next((c for c in self.cases if c.name == name), None)

    def rate_ratio(self, numerator: str, denominator: str) -> float | None:
        """Rate of one case over another's; None when either did not run or measured nothing."""
        rates = [c.rate_per_s if c is not None and c.rate_per_s > 0 else None
                 for c in (self.case(numerator), self.case(denominator))]
        return rates[0] / rates[1] if rates[0] is not None and rates[1] is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "backend": self.backend,
            "machine": self.machine,
            "cases": [c.to_json() for c in self.cases],
            "ratios": {r.name: None if r.value is None else round(r.value, 3) for r in self.ratios},
            "targets": {r.name: {"min": r.target_min} for r in self.ratios},
            "passed": {r.name: r.passed for r in self.ratios},
            "ratio_definitions": {r.name: f"{r.numerator} / {r.denominator}" for r in self.ratios},
            "settings": self.settings,
            "notes": self.notes,
        }

    def write_json(self, out: TextIO) -> None:
        out.write(json.dumps(self.to_json(), indent=2) + "\n")
        out.flush()

    def render(self, console: Console) -> None:
        m = self.machine
        cases = Table(title=f"dualflow bench {self.bench} - backend {self.backend} - "
                            f"{m['cpus']} cpus, Python {m['python']}")
        cases.add_column("case")
        cases.add_column("rate/s", justify="right")
        cases.add_column("p50 ms", justify="right")
        cases.add_column("p99 ms", justify="right")
        cases.add_column("calls", justify="right")
        cases.add_column("server cpu %", justify="right")
        cases.add_column("runs (rate/s)", justify="right")
        for c in self.cases:
            runs = c.extra.get("runs_rate_per_s")
            cases.add_row(c.name, f"{c.rate_per_s:,.0f}", _ms(c.p50_ms), _ms(c.p99_ms),
                          str(c.extra.get("calls", "")), str(c.extra.get("server_cpu_pct", "")),
                          " ".join(f"{r:,.0f}" for r in runs) if runs else "")
        console.print(cases)
        loads = [m.get(k) for k in ("load_avg_1m_at_start", "load_avg_1m_at_end")]
        console.print(f"load average (1 min) at start {loads[0]}, at end {loads[1]}; platform {m['platform']}; "
                      f"source {self.settings.get('source') or 'unknown'}", highlight=False)
        ratios = Table(title="ratios (same run, same machine)")
        ratios.add_column("ratio")
        ratios.add_column("value", justify="right")
        ratios.add_column("target", justify="right")
        ratios.add_column("result")
        ratios.add_column("definition")
        for r in self.ratios:
            verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]n/a[/]"}[r.passed]
            ratios.add_row(r.name, "n/a" if r.value is None else f"{r.value:.3f}", f">= {r.target_min:g}",
                           verdict, f"{r.numerator} / {r.denominator}")
        console.print(ratios)
        for note in self.notes:
            console.print(f"- {note}", highlight=False)


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:,.2f}"


def stderr_console() -> Console:
    return Console(stderr=True)


def best_of(runs: list[Case]) -> Case:
    """The best of several runs of one case, with every run's rate alongside."""
    best = max(runs, key=lambda c: c.rate_per_s)
    if len(runs) > 1:
        best.extra["runs_rate_per_s"] = [round(c.rate_per_s, 1) for c in runs]
    return best


def load_average() -> float | None:
    """The 1-minute load average, recorded beside each run (the machine is shared)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class BenchFailure(RuntimeError):
    """The bench could not measure what it claims (a call failed, a server died, a check after
    the run found the books wrong): the bench exits 1 instead of printing a figure."""


def add_output_options(p: Any, quick_help: str = "a reduced run (under a minute)") -> None:
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--save", metavar="PATH", default=None,
                   help="also write the JSON object to PATH (to keep a run's figures beside its table)")


def run_and_report(name: str, measure: Any, args: Any, failures: tuple[type[BaseException], ...]) -> int:
    """Run `measure(console)` (a coroutine function answering a Report), print it as a table or
    JSON per BENCH.md; a failure in `failures` is one red line and exit status 1."""
    import asyncio
    import sys

    console = stderr_console()
    try:
        report = asyncio.run(measure(console))
    except failures as exc:
        console.print(f"[red]bench {name} failed:[/] {exc}", highlight=False)
        return 1
    if args.save:
        with open(args.save, "w") as out:
            report.write_json(out)
    if args.json:
        report.write_json(sys.stdout)
    else:
        report.render(Console())
    return 0


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(), console=console, transient=False,
    )
