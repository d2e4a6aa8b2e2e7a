"""`dualflow bench clearing --quick --json` runs and prints the documented JSON shape.

A bench is not a test: nothing here asserts a speed. It checks that the bench
runs as its own process, that stdout holds exactly one JSON object with the
fields ../shared/BENCH.md documents plus the issue's figure `netting_seconds`
and ratio `transfers_vs_n_minus_1`, and that the settlement figures it reports
are consistent (the bench itself fails, exit 1, if a settlement is wrong).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CASES = ("sum_positions", "netting_random", "netting_clustered", "netting_clustered_greedy")


@pytest.mark.timeout(120)
def test_quick_json_has_the_documented_shape() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dualflow.gateway.cli", "bench", "clearing", "--quick", "--json"],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON object

    assert report["bench"] == "clearing"
    assert report["backend"] == "memory"
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["platform"], str)
    assert report["settings"]["quick"] is True

    cases = {c["name"]: c for c in report["cases"]}
    assert tuple(cases) == CASES
    for case in report["cases"]:
        assert isinstance(case["rate_per_s"], (int, float)) and case["rate_per_s"] > 0, case
        assert case["p50_ms"] <= case["p99_ms"], case
        assert case["seconds"] == min(case["runs_seconds"]), case
    for name in CASES[1:]:
        c = cases[name]
        assert c["netting_seconds"] == c["seconds"] > 0
        assert c["transfers"] <= c["n_minus_1"] == c["pools_nonzero"] - 1
        assert 0 < c["net_minor"] <= c["gross_minor"]
        assert c["efficiency"] == pytest.approx(1 - c["net_minor"] / c["gross_minor"], abs=1e-6)
        assert 0 < c["bilateral_transfers"] <= c["gross_transfers"] == c["obligations"]
    for name in ("netting_clustered", "netting_clustered_greedy"):
        assert 0 < cases[name]["planted_bound"] == cases[name]["pools_nonzero"] - cases[name]["clusters"]

    assert isinstance(report["figures"]["netting_seconds"], float)
    assert report["figures"]["netting_seconds"] == cases["netting_random"]["netting_seconds"]
    ratio = report["ratios"]["transfers_vs_n_minus_1"]
    assert ratio == round(cases["netting_random"]["transfers"] / cases["netting_random"]["n_minus_1"], 4)
    assert report["targets"]["transfers_vs_n_minus_1"] == {"max": 1.0}
    assert report["targets"]["netting_seconds"] == {"max": 1.0}
    assert report["passed"]["transfers_vs_n_minus_1"] is True, "a guarantee, not a speed"
    assert report["passed"]["netting_seconds"] in (True, False)
    assert set(report["ratio_definitions"]) >= {"netting_seconds", "transfers_vs_n_minus_1"}
