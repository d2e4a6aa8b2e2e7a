"""`dualflow bench ledger`: being written (see the benchmark helper)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(areas: Any) -> None:
    p = areas.add_parser("ledger", help="ledger CreateTransfers throughput vs storage and RPC ceilings")
    p.add_argument("--db", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(bench_run=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("not yet")
