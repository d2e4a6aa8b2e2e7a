"""`dualflow bench reconcile --quick --json` runs and prints the documented JSON shape.

A bench is not a test: nothing here asserts a speed or a memory figure. It checks that the bench
works (statement file and scratch database generated, each case in its own process, the class
counts checked against what was injected), that stdout is exactly one JSON object with the
fields ../shared/BENCH.md documents plus the two ceilings of issue 6, and that no temporary files
are left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_quick_json_has_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dualflow.gateway.cli", "bench", "reconcile", "--quick", "--json",
                           "--rows", "6000"], capture_output=True, text=True, env=env, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report["bench"] == "reconcile" and report["backend"] == "sqlite"
    assert isinstance(report["machine"]["cpus"], int) and isinstance(report["machine"]["python"], str)
    names = [c["name"] for c in report["cases"]]
    assert names == [f"{case}_{n}" for n in (6000, 600) for case in ("parse_statement", "parse_single_pass",
                                                                      "reconcile")]
    for case in report["cases"]:
        assert case["rate_per_s"] > 0 and case["seconds"] > 0 and case["peak_rss_mb"] > 0, case
        assert case["p50_ms"] is None and case["p99_ms"] is None
    assert set(report["ratios"]) == {"reconcile_vs_parse", "peak_memory_10x_rows_vs_1x"}
    assert all(isinstance(v, (int, float)) and v > 0 for v in report["ratios"].values())
    assert report["targets"] == {"reconcile_vs_parse": {"max": 3.0}, "peak_memory_10x_rows_vs_1x": {"max": 1.5}}
    assert all(v in (True, False) for v in report["passed"].values())
    assert report["settings"]["quick"] is True and report["settings"]["rows"] == 6000
    assert any(n.startswith("check after the run:") for n in report["notes"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("dualflow-")], "temporary files left"
