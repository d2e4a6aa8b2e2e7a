"""`dualflow bench channels --quick --json` runs end to end and prints the documented JSON shape.

A bench is not a test: nothing here asserts a speed. It checks that the bench
works (mock banks as their own processes, a real server process per channel
with a config and `--callback-port`, card payments over real gRPC with an API
key followed until SUCCEEDED, the books and the banks' books checked after the
run), that stdout holds exactly one JSON object with the fields
../shared/BENCH.md documents, and that the default temporary files are gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = ("card_iso8583_c64", "card_iso8583_c1", "card_psp_c64", "empty_rpc_c64", "empty_rpc_c1")


@pytest.mark.timeout(180)
def test_quick_json_has_the_documented_shape(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "dualflow.gateway.cli", "bench", "channels", "--quick", "--json"],
        capture_output=True, text=True, env=env, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON object

    assert report["bench"] == "channels"
    assert report["backend"] == "sqlite"
    machine = report["machine"]
    assert isinstance(machine["cpus"], int) and machine["cpus"] >= 1
    assert isinstance(machine["python"], str) and isinstance(machine["platform"], str)

    cases = {c["name"]: c for c in report["cases"]}
    assert len(cases) == len(report["cases"]), "case names are unique"
    offered = [n for n in cases if n.startswith("card_iso8583_offered_")]
    assert len(offered) == 1, sorted(cases)
    assert offered[0] == f"card_iso8583_offered_{cases[offered[0]]['offered_per_s']}"
    assert set(cases) == {*CASES, offered[0]}, sorted(cases)
    for case in report["cases"]:
        assert isinstance(case["rate_per_s"], (int, float)) and case["rate_per_s"] > 0, case
        assert isinstance(case["p50_ms"], (int, float)) and isinstance(case["p99_ms"], (int, float)), case
        assert case["p50_ms"] <= case["p99_ms"], case
    assert cases["card_iso8583_c64"]["channel"] == "cardbank"
    assert cases["card_iso8583_c1"]["channel"] == "cardbank"
    assert cases["card_psp_c64"]["channel"] == "wallet-psp"
    for name in ("card_iso8583_c64", "card_iso8583_c1", "card_psp_c64", offered[0]):
        assert cases[name]["create_p50_ms"] <= cases[name]["create_p99_ms"], cases[name]

    assert {"card_payments_vs_empty_rpc", "psp_payments_vs_empty_rpc"} <= set(report["ratios"])
    for name in ("card_payments_vs_empty_rpc", "psp_payments_vs_empty_rpc"):
        assert isinstance(report["ratios"][name], (int, float)) and report["ratios"][name] > 0, name
    assert report["targets"] == {"card_payments_vs_empty_rpc": {"min": 0.25}}, "the PSP ratio has no target"
    assert report["passed"]["card_payments_vs_empty_rpc"] in (True, False)
    assert report["settings"]["quick"] is True
    assert report["settings"]["payments_iso8583"] > 0 and report["settings"]["payments_psp"] > 0
    checks = [n for n in report["notes"] if n.startswith("check after the run:")]
    assert len(checks) == 2, report["notes"]

    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("dualflow-bench")]
    assert not leftovers, f"temporary bench files were left behind: {leftovers}"


async def test_the_check_fails_when_the_bank_paid_twice(tmp_path: Path) -> None:
    """A payment the bank's book shows paid twice fails the bench (non-zero exit in `run`)."""
    from dualflow.bench.channels import CardPayments, _check_books
    from dualflow.bench.report import BenchFailure
    from dualflow.core.ledger.open_store import store_from_url
    from dualflow.core.payments.records import PAYMENT_SCHEMA

    url = str(tmp_path / "ledger.db")
    store = store_from_url(url)
    await store.open()
    await store.ensure_schema(PAYMENT_SCHEMA)
    await store.close()
    workload = CardPayments(api=None, channel="cardbank")  # type: ignore[arg-type]
    book = [{"instruction_id": "pay_x-1", "kind": "pay", "amount": 100, "status": "SUCCEEDED"},
            {"instruction_id": "pay_x-2", "kind": "pay", "amount": 100, "status": "SUCCEEDED"}]
    with pytest.raises(BenchFailure, match="1 payments paid more than once"):
        await _check_books(url, workload, book)
