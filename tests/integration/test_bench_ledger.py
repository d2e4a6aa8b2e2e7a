"""`dualflow bench ledger --quick --json` runs end to end and prints the documented JSON shape.

A bench is not a test: nothing here asserts a speed. It checks that the bench
works (a real server process, real gRPC, every transfer OK), that stdout holds
exactly one JSON object with the fields ../shared/BENCH.md documents, and that
the default temporary SQLite files are gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RATIOS = {
    "batched_vs_storage_ceiling": 0.5,
    "unary_vs_empty_rpc": 0.6,
    "accounts_1m_vs_10k": 0.9,
}


@pytest.mark.timeout(180)
def test_quick_json_has_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "dualflow.gateway.cli", "bench", "ledger", "--quick", "--json"],
        capture_output=True, text=True, env=env, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON object

    assert report["bench"] == "ledger"
    assert report["backend"] == "sqlite"
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["platform"], str)

    cases = {c["name"]: c for c in report["cases"]}
    assert len(cases) == len(report["cases"]), "case names are unique"
    for case in report["cases"]:
        assert isinstance(case["rate_per_s"], (int, float)) and case["rate_per_s"] > 0, case
        for key in ("p50_ms", "p99_ms"):
            assert case[key] is None or isinstance(case[key], (int, float)), case
    for name in ("storage_ceiling", "empty_rpc_c64", "grpc_batch_1_c64", "grpc_batch_8000_c1"):
        assert name in cases, sorted(cases)
        assert cases[name]["p50_ms"] <= cases[name]["p99_ms"]
    assert any(n.startswith("accounts_10k_batch_8000_") for n in cases), sorted(cases)

    assert set(report["ratios"]) == set(RATIOS), "pg_batched_vs_pgbench is for PostgreSQL only"
    for name, minimum in RATIOS.items():
        assert isinstance(report["ratios"][name], (int, float)), name
        assert report["targets"][name] == {"min": minimum}
    assert report["settings"]["quick"] is True

    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("dualflow-bench")]
    assert not leftovers, f"temporary bench files were left behind: {leftovers}"
