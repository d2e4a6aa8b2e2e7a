"""`dualflow bench payments --quick --json` runs end to end and prints the documented JSON shape.

A bench is not a test: nothing here asserts a speed. It checks that the bench
works (a real server process with a config, real gRPC with an API key, every
payment SUCCEEDED, the books checked after the run), that stdout holds exactly
one JSON object with the fields ../shared/BENCH.md documents, and that the
default temporary files are gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = ("payments_wallet_c64", "payments_wallet_c1", "payments_replay_c64", "empty_rpc_c64")


@pytest.mark.timeout(180)
def test_quick_json_has_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "dualflow.gateway.cli", "bench", "payments", "--quick", "--json"],
        capture_output=True, text=True, env=env, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON object

    assert report["bench"] == "payments"
    assert report["backend"] == "sqlite"
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["platform"], str)

    cases = {c["name"]: c for c in report["cases"]}
    assert len(cases) == len(report["cases"]), "case names are unique"
    for case in report["cases"]:
        assert isinstance(case["rate_per_s"], (int, float)) and case["rate_per_s"] > 0, case
        assert isinstance(case["p50_ms"], (int, float)) and isinstance(case["p99_ms"], (int, float)), case
        assert case["p50_ms"] <= case["p99_ms"], case
    for name in CASES:
        assert name in cases, sorted(cases)
    offered = [n for n in cases if n.startswith("payments_offered_")]
    assert len(offered) == 1, sorted(cases)
    assert offered[0] == f"payments_offered_{cases[offered[0]]['offered_per_s']}"

    assert {"payments_vs_empty_rpc", "replay_vs_empty_rpc"} <= set(report["ratios"])
    for name in ("payments_vs_empty_rpc", "replay_vs_empty_rpc"):
        assert isinstance(report["ratios"][name], (int, float)) and report["ratios"][name] > 0, name
    assert report["targets"] == {"payments_vs_empty_rpc": {"min": 0.4}}, "replay_vs_empty_rpc has no target"
    assert report["passed"]["payments_vs_empty_rpc"] in (True, False)
    assert report["settings"]["quick"] is True
    assert report["settings"]["payments_sent"] > 0
    assert any(n.startswith("check after the run:") for n in report["notes"]), report["notes"]

    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("dualflow-bench")]
    assert not leftovers, f"temporary bench files were left behind: {leftovers}"


async def test_the_check_fails_when_the_books_disagree_with_the_answers(tmp_path: Path) -> None:
    """A payment answered SUCCEEDED but missing from the database fails the bench (non-zero exit in `run`)."""
    from dualflow.bench.payments import Payments, _check_books
    from dualflow.bench.report import BenchFailure
    from dualflow.core.ledger.open_store import store_from_url
    from dualflow.core.payments.records import PAYMENT_SCHEMA

    url = str(tmp_path / "ledger.db")
    store = store_from_url(url)
    await store.open()
    await store.ensure_schema(PAYMENT_SCHEMA)
    await store.close()
    workload = Payments(users=10)
    workload.acknowledged.append(0)
    with pytest.raises(BenchFailure, match="1 were acknowledged"):
        await _check_books(url, workload)
