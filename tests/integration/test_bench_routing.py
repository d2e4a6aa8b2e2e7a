"""`dualflow bench routing --quick --json` (with and without --simulate) runs and prints the
documented JSON shape.

A bench is not a test: nothing here asserts a speed or a simulation result. It checks that
stdout holds exactly one JSON object with the fields ../shared/BENCH.md documents, the
figures issue 5 names, and a simulation table whose accounting adds up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

LATENCY_CASES = ("decision_10_channels", "decision_10_channels_new_shape", "record_outcome", "betavariate_x10",
                 "empty_call")
POLICIES = ("ours", "oracle", "static_priority", "cheapest_first", "round_robin")


def bench(*options: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "dualflow.gateway.cli", "bench", "routing", "--quick", "--json",
                           *options], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)  # the whole of stdout is one JSON object


def check_common(report: dict[str, Any]) -> None:
    assert report["bench"] == "routing"
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["platform"], str)
    cases = {c["name"]: c for c in report["cases"]}
    assert tuple(cases) == LATENCY_CASES
    for case in report["cases"]:
        assert case["rate_per_s"] > 0 and 0 < case["p50_us"] <= case["p99_us"], case
        assert case["p50_ms"] <= case["p99_ms"] and case["calls"] > 0 and case["rounds_p99_us"], case
    assert report["ratios"]["decision_p99_us"] == pytest.approx(cases["decision_10_channels"]["p99_us"], abs=1e-3)
    assert report["ratios"]["decision_p99_vs_betavariate_x10"] > 0
    assert report["targets"]["decision_p99_us"] == {"max": 50.0}
    assert report["passed"]["decision_p99_us"] in (True, False)
    assert report["settings"]["quick"] is True


@pytest.mark.timeout(120)
def test_quick_json_without_simulate_measures_the_decision_only() -> None:
    report = bench()
    check_common(report)
    assert "simulation" not in report
    assert set(report["targets"]) == {"decision_p99_us"}


@pytest.mark.timeout(120)
def test_quick_json_with_simulate_has_every_figure_of_the_issue() -> None:
    report = bench("--simulate", "--seed", "3")
    check_common(report)
    assert report["targets"] == {"decision_p99_us": {"max": 50.0}, "approval_gap_vs_oracle_pp": {"max": 1.0},
                                 "fees_vs_oracle": {"max": 1.03}, "approval_gap_vs_best_baseline_pp": {"max": 0.0}}
    for name in report["targets"]:
        assert isinstance(report["ratios"][name], (int, float)) and report["passed"][name] in (True, False), name
    sim = report["simulation"]
    assert sim["seed"] == 3 and sim["payments"] >= 10_000 and len(sim["channels"]) >= 4
    rows = {row["policy"]: row for row in sim["policies"]}
    assert tuple(rows) == POLICIES
    for row in rows.values():
        assert row["payments"] == sim["payments"]
        assert row["approved"] + row["payer_declines"] + row["channel_failures"] + row["unrouted"] == row["payments"]
        assert sum(row["sends"].values()) + row["unrouted"] == row["payments"]
        assert row["approval_pct"] == pytest.approx(100 * row["approved"] / row["payments"], abs=1e-3)
        assert isinstance(row["fees_minor"], int) and row["fees_minor"] > 0
    assert rows["oracle"]["approval_gap_vs_oracle_pp"] == 0 and rows["oracle"]["fees_vs_oracle"] == 1
    assert rows["oracle"]["dead_sends"] == 0 and rows["static_priority"]["dead_sends"] > 0
    ours, oracle = rows["ours"], rows["oracle"]
    assert report["ratios"]["approval_gap_vs_oracle_pp"] == pytest.approx(
        oracle["approval_pct"] - ours["approval_pct"], abs=2e-3)
    assert report["ratios"]["fees_vs_oracle"] == pytest.approx(ours["fees_minor"] / oracle["fees_minor"], abs=1e-3)
