"""The Reconciliation service over real gRPC, on SQLite and PostgreSQL.

A Platform serves on 127.0.0.1:0 with API keys written by the test and the scripted channel
answering its payments; the channel's statement is given by the test. Refusals are checked for
their status, ErrorInfo and BadRequest details, and for having changed nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow, Outcome, StatementLine
from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus
from dualflow.gateway.config import hash_api_key
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import reconciliation_pb2 as pb
from dualflow.v1 import reconciliation_pb2_grpc

OPS_KEY = "dfk_recon-ops-key-0123456789abcdef"
READER_KEY = "dfk_recon-reader-key-0123456789abc"
OTHER_KEY = "dfk_payments-only-key-0123456789ab"
TODAY = datetime.now(timezone.utc).date().isoformat()
CHANNEL = "scripted"

CONFIG = f"""
[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 0

[[callers]]
name = "finance-lead"
api_key_sha256 = "{hash_api_key(OPS_KEY)}"
merchants = ["*"]
permissions = ["reconciliation.manage", "reconciliation.read"]

[[callers]]
name = "auditor"
api_key_sha256 = "{hash_api_key(READER_KEY)}"
merchants = ["*"]
permissions = ["reconciliation.read"]

[[callers]]
name = "shop"
api_key_sha256 = "{hash_api_key(OTHER_KEY)}"
merchants = ["shop"]
permissions = ["payments.write", "payments.read"]
"""


class Statement:
    name = CHANNEL

    def __init__(self) -> None:
        self.lines: list[StatementLine] = []

    def describe(self) -> Capabilities:
        return Capabilities(CHANNEL, frozenset({Asset.BANK_TRANSFER}), frozenset({"CNY"}), frozenset({Flow.STATEMENT}),
                            fees={"CNY": FeeSchedule(bps=0)})

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        for line in self.lines:
            yield line


@dataclass
class Running:
    platform: Platform
    stub: reconciliation_pb2_grpc.ReconciliationStub
    statement: Statement

    async def call(self, method: str, request: Any, key: str = OPS_KEY) -> Any:
        rpc: Callable[..., Awaitable[Any]] = getattr(self.stub, method)
        return await rpc(request, metadata=(("authorization", f"Bearer {key}"),), timeout=30)


@pytest.fixture
async def running(db_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    config = tmp_path / "dualflow.toml"
    config.write_text(CONFIG)
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, config_path=str(config), expiry_interval_s=0,
                                     channel="scripted"))
    statement = Statement()
    platform.reconciliation.adapters[CHANNEL] = statement  # type: ignore[assignment]
    await platform.start()
    channel = grpc.aio.insecure_channel(platform.address)
    try:
        yield Running(platform, reconciliation_pb2_grpc.ReconciliationStub(channel), statement)
    finally:
        await channel.close()
        await platform.stop()


def details(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """Code, ErrorInfo reason, and the BadRequest's fields."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            d.Unpack(info)
        elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            d.Unpack(bad)
    assert info.domain == "dualflow.v1.Reconciliation"
    return err.code(), info.reason, [v.field for v in bad.field_violations]


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details(caught.value)


async def test_runs_discrepancies_and_refusals(running: Running) -> None:
    r = running
    paid = await r.platform.payments.create_payment(PaymentRequest(
        request_id="p1", merchant_id="shop", payer="user:alice", payee="merchant:shop", amount=5_000, currency="CNY",
        asset=Asset.BANK_TRANSFER, bank_account=BankAccount("ICBC", "1234", "Alice")))
    for _ in range(500):
        if (await r.platform.payments.get_payment(paid.payment_id)).status is PaymentStatus.SUCCEEDED:
            break
        await asyncio.sleep(0.01)
    r.statement.lines = [
        StatementLine(TODAY, f"{paid.payment_id}-1", "R1", "pay", 5_000, "CNY", Outcome.SUCCEEDED, 0),
        StatementLine(TODAY, "pay_nobody-1", "R2", "pay", 777, "CNY", Outcome.SUCCEEDED, 0),  # not ours
        StatementLine(TODAY, f"{paid.payment_id}-1", "R3", "pay", 5_000, "CNY", Outcome.SUCCEEDED, 0),  # twice
    ]

    # Who may: reconciliation.manage runs and resolves; reconciliation.read reads; others neither.
    request = pb.RunReconciliationRequest(channel=CHANNEL, business_date=TODAY)
    assert (await refused(r.call("RunReconciliation", request, READER_KEY)))[0] is grpc.StatusCode.PERMISSION_DENIED
    assert (await refused(r.call("ListRuns", pb.ListRunsRequest(), OTHER_KEY)))[0] is grpc.StatusCode.PERMISSION_DENIED
    # Bad input: every field named, nothing run.
    assert await refused(r.call("RunReconciliation", pb.RunReconciliationRequest(channel="nope",
                                                                                business_date="2024-02-30"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["channel", "business_date"])
    assert await refused(r.call("RunReconciliation", pb.RunReconciliationRequest(
        channel=CHANNEL, business_date="2999-01-01"))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["business_date"])
    assert list((await r.call("ListRuns", pb.ListRunsRequest(), READER_KEY)).runs) == []

    run = await r.call("RunReconciliation", request)
    assert (run.state, run.attempt, run.lines, run.instructions, run.replayed) == (
        pb.RUN_STATE_COMPLETED, 1, 3, 1, False)
    counts = {pb.ReconciliationClass.Name(c.match_class).removeprefix("RECONCILIATION_CLASS_"): (c.lines,
                                                                                                c.instructions)
              for c in run.counts}
    assert counts == {"MATCHED": (1, 1), "MISSING_INTERNALLY": (1, 0), "DUPLICATE": (1, 0)}
    assert dict(next(c for c in run.counts if c.match_class == pb.RECONCILIATION_CLASS_MISSING_INTERNALLY)
                .amount_minor) == {"CNY": 777}
    again = await r.call("RunReconciliation", request)
    assert again.replayed and again.run_id == run.run_id
    assert (await r.call("GetRun", pb.GetRunRequest(run_id=run.run_id), READER_KEY)).counts == run.counts
    forced = await r.call("RunReconciliation", pb.RunReconciliationRequest(channel=CHANNEL, business_date=TODAY,
                                                                           force=True))
    assert (forced.attempt, forced.replayed) == (2, False)
    runs = await r.call("ListRuns", pb.ListRunsRequest(channel=CHANNEL, page_size=1), READER_KEY)
    assert [x.run_id for x in runs.runs] == [forced.run_id] and runs.next_page_token
    rest = await r.call("ListRuns", pb.ListRunsRequest(channel=CHANNEL, page_size=1,
                                                       page_token=runs.next_page_token), READER_KEY)
    assert [x.run_id for x in rest.runs] == [run.run_id]
    assert (await refused(r.call("GetRun", pb.GetRunRequest(run_id="rcn_nope"))))[:2] == (
        grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")

    # The work queue: two findings (re-runs found the same ones again), a page at a time.
    page = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(page_size=1), READER_KEY)
    assert len(page.discrepancies) == 1 and page.next_page_token
    rest2 = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(page_size=1,
                                                                          page_token=page.next_page_token), READER_KEY)
    found = [*page.discrepancies, *rest2.discrepancies]
    assert sorted(pb.ReconciliationClass.Name(d.match_class) for d in found) == [
        "RECONCILIATION_CLASS_DUPLICATE", "RECONCILIATION_CLASS_MISSING_INTERNALLY"]
    orphan = next(d for d in found if d.match_class == pb.RECONCILIATION_CLASS_MISSING_INTERNALLY)
    assert (orphan.first_run_id, orphan.last_run_id, orphan.status) == (
        run.run_id, forced.run_id, pb.DISCREPANCY_STATUS_OPEN)
    only = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(
        match_class=pb.RECONCILIATION_CLASS_MISSING_INTERNALLY), READER_KEY)
    assert [d.discrepancy_id for d in only.discrepancies] == [orphan.discrepancy_id]
    old = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(min_age_s=3600), READER_KEY)
    assert list(old.discrepancies) == []
    assert await refused(r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(page_token="not-ours"),
                                READER_KEY)) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", ["page_token"])
    assert await refused(r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(match_class=99), READER_KEY)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["match_class"])

    # The workflow: assigned, resolved with an action and a reason, closed for good, audited.
    did = orphan.discrepancy_id
    assert await refused(r.call("AssignDiscrepancy", pb.AssignDiscrepancyRequest(discrepancy_id=did,
                                                                                assignee=" "))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["assignee"])
    assigned = await r.call("AssignDiscrepancy", pb.AssignDiscrepancyRequest(discrepancy_id=did, assignee="mei"))
    assert (assigned.status, assigned.assignee, assigned.version) == (pb.DISCREPANCY_STATUS_ASSIGNED, "mei", 2)
    assert await refused(r.call("ResolveDiscrepancy", pb.ResolveDiscrepancyRequest(discrepancy_id=did))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["action", "reason"])
    assert (await r.call("GetDiscrepancyHistory", pb.GetDiscrepancyHistoryRequest(discrepancy_id=did),
                         READER_KEY)).discrepancy.version == 2  # the refusal changed nothing
    assert (await refused(r.call("ResolveDiscrepancy", pb.ResolveDiscrepancyRequest(
        discrepancy_id=did, action=pb.RESOLUTION_ACTION_WRITE_OFF, reason="x"), READER_KEY)))[0] \
        is grpc.StatusCode.PERMISSION_DENIED
    resolved = await r.call("ResolveDiscrepancy", pb.ResolveDiscrepancyRequest(
        discrepancy_id=did, action=pb.RESOLUTION_ACTION_WRITE_OFF, reason="the bank's test transaction"))
    assert (resolved.status, resolved.resolution_action, resolved.resolution_reason) == (
        pb.DISCREPANCY_STATUS_RESOLVED, pb.RESOLUTION_ACTION_WRITE_OFF, "the bank's test transaction")
    assert await refused(r.call("ResolveDiscrepancy", pb.ResolveDiscrepancyRequest(
        discrepancy_id=did, action=pb.RESOLUTION_ACTION_REFUND, reason="again"))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "DISCREPANCY_CLOSED", [])
    assert (await refused(r.call("AssignDiscrepancy", pb.AssignDiscrepancyRequest(
        discrepancy_id="dsc_nope", assignee="mei"))))[:2] == (grpc.StatusCode.NOT_FOUND, "DISCREPANCY_NOT_FOUND")
    history = await r.call("GetDiscrepancyHistory", pb.GetDiscrepancyHistoryRequest(discrepancy_id=did), READER_KEY)
    assert [(e.version, e.actor, e.event) for e in history.events] == [
        (1, f"reconciliation {run.run_id}", "opened"), (2, "finance-lead", "assigned"),
        (3, "finance-lead", "resolved")]
    assert history.events[2].detail == "write_off: the bank's test transaction"
    left = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(), READER_KEY)
    assert [pb.ReconciliationClass.Name(d.match_class) for d in left.discrepancies] == [
        "RECONCILIATION_CLASS_DUPLICATE"]
    closed = await r.call("ListDiscrepancies", pb.ListDiscrepanciesRequest(status=pb.DISCREPANCY_STATUS_RESOLVED),
                          READER_KEY)
    assert [d.discrepancy_id for d in closed.discrepancies] == [did]


async def test_the_cli_prints_counts_and_discrepancies(running: Running, tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    running.statement.lines = [StatementLine(TODAY, "pay_nobody-1", "R2", "pay", 777, "CNY", Outcome.SUCCEEDED, 3)]
    args = [sys.executable, "-m", "dualflow.gateway.cli", "reconcile", "--channel", CHANNEL, "--date", TODAY,
            "--target", running.platform.address, "--report", str(tmp_path / "reports")]
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    done = await asyncio.to_thread(subprocess.run, [*args, "--api-key", OPS_KEY], capture_output=True, text=True,
                                   timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"run rcn_{CHANNEL}_{TODAY}_1 COMPLETED: 1 statement lines, 0 of our instructions" in out, out
    assert re.search(r"MISSING_INTERNALLY +│ 1 +│ 0 +│ 7\.77 CNY", out), out
    assert re.search(r"│ CNY +│ 1 +│ 0\.03 +│ 1 +│", out), out  # the fee, posted now
    assert "channel SUCCEEDED; we have no such instruction" in out and "pay_nobody-1" in out, out
    again = await asyncio.to_thread(subprocess.run, [*args, "--api-key", OPS_KEY], capture_output=True, text=True,
                                    timeout=60, env=env)
    assert "COMPLETED (an earlier run: --force runs it again)" in again.stdout, again.stdout
    refused = await asyncio.to_thread(subprocess.run, [*args, "--api-key", READER_KEY], capture_output=True,
                                      text=True, timeout=60, env=env)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr


async def test_the_cli_writes_the_report_from_the_service(running: Running, tmp_path: Path) -> None:
    """`--report DIR`: a CSV with one row per result the run kept (ListRunResults, several pages)
    and a self-contained HTML summary with each class's count, every value escaped."""
    import csv
    import re
    import subprocess
    import sys

    r = running
    paid = await r.platform.payments.create_payment(PaymentRequest(
        request_id="p-report", merchant_id="shop", payer="user:alice", payee="merchant:shop", amount=5_000,
        currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=BankAccount("ICBC", "1234", "Alice")))
    for _ in range(500):
        if (await r.platform.payments.get_payment(paid.payment_id)).status is PaymentStatus.SUCCEEDED:
            break
        await asyncio.sleep(0.01)
    hostile = '<script>alert("x")</script>&'
    orphans = [StatementLine(TODAY, f"pay_other{n}-1", f"O{n}", "pay", 100 + n, "CNY", Outcome.SUCCEEDED, 0)
               for n in range(7)]
    r.statement.lines = [
        StatementLine(TODAY, f"{paid.payment_id}-1", "R1", "pay", 5_000, "CNY", Outcome.SUCCEEDED, 0),
        *orphans,
        StatementLine(TODAY, hostile, "=HYPERLINK(1)", "pay", 777, "CNY", Outcome.SUCCEEDED, 0),
        StatementLine(TODAY, hostile, "R9", "pay", 778, "CNY", Outcome.SUCCEEDED, 0),  # a second one: DUPLICATE
    ]
    reports = tmp_path / "out"
    args = [sys.executable, "-m", "dualflow.gateway.cli", "reconcile", "--channel", CHANNEL, "--date", TODAY,
            "--target", r.platform.address, "--api-key", OPS_KEY, "--report", str(reports)]
    done = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60,
                                   env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    csv_path, html_path = reports / f"recon-{CHANNEL}-{TODAY}.csv", reports / f"recon-{CHANNEL}-{TODAY}.html"
    assert f"report: {csv_path}" in done.stdout.replace("\n", ""), done.stdout

    run = (await r.call("ListRuns", pb.ListRunsRequest(channel=CHANNEL), READER_KEY)).runs[0]
    # One result per instruction (1) and per line no instruction claims (7 + 2).
    assert run.results == 1 + 7 + 2 == run.instructions + sum(c.lines for c in run.counts
                                                              if c.match_class != pb.RECONCILIATION_CLASS_MATCHED)
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == run.results
    assert [int(x["position"]) for x in rows] == list(range(1, run.results + 1))
    matched = next(x for x in rows if x["class"] == "MATCHED")
    assert (matched["instruction_id"], matched["channel_reference"], matched["our_amount"], matched["our_status"],
            matched["their_amount"], matched["their_status"], matched["action"]) == (
        f"{paid.payment_id}-1", "R1", "50.00", "SUCCEEDED", "50.00", "SUCCEEDED", "NONE")
    theirs = [x for x in rows if x["instruction_id"] == hostile]
    assert sorted(x["class"] for x in theirs) == ["DUPLICATE", "MISSING_INTERNALLY"]
    assert all(x["discrepancy_id"].startswith("dsc_") and x["our_amount"] == "" for x in theirs)
    assert "'=HYPERLINK(1)" in {x["channel_reference"] for x in theirs}  # text, not a formula

    # The pages themselves: a token per page, all of them, in order.
    page = await r.call("ListRunResults", pb.ListRunResultsRequest(run_id=run.run_id, page_size=4), READER_KEY)
    seen = list(page.results)
    while page.next_page_token:
        page = await r.call("ListRunResults", pb.ListRunResultsRequest(
            run_id=run.run_id, page_size=4, page_token=page.next_page_token), READER_KEY)
        seen += page.results
    assert [x.position for x in seen] == list(range(1, run.results + 1)) and page.total == run.results
    assert (await refused(r.call("ListRunResults", pb.ListRunResultsRequest(run_id="rcn_nope"), READER_KEY)))[:2] \
        == (grpc.StatusCode.NOT_FOUND, "RUN_NOT_FOUND")
    assert await refused(r.call("ListRunResults", pb.ListRunResultsRequest(
        run_id=run.run_id, page_size=4, page_token="bad"), READER_KEY)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID", ["page_token"])
    assert (await refused(r.call("ListRunResults", pb.ListRunResultsRequest(run_id=run.run_id),
                                 OTHER_KEY)))[0] is grpc.StatusCode.PERMISSION_DENIED

    page_html = html_path.read_text()
    for c in run.counts:
        name = pb.ReconciliationClass.Name(c.match_class).removeprefix("RECONCILIATION_CLASS_")
        assert re.search(rf'>{name}</td><td class="n">{c.lines}</td><td class="n">{c.instructions}</td>',
                         page_html), name
    assert ">MISSING_INTERNALLY</td><td class=\"n\">8</td>" in page_html  # 7 + the hostile one
    assert run.run_id in page_html
    assert "<script" not in page_html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page_html
    assert not re.search(r'(src|href)=|@import|url\(', page_html)  # nothing fetched from elsewhere


async def test_the_internal_check_finds_each_broken_row_by_kind(running: Running) -> None:
    """RunInternalCheck: a clean platform has no finding; rows changed around the ledger's writer
    (a posting removed, extra ones added, a pending one past its timeout, an account's total
    bumped) are each found by their kind, and the gauge says so."""
    from prometheus_client import REGISTRY

    from dualflow.core.payments.accounts import transfer_id

    r = running
    paid = await r.platform.payments.create_payment(PaymentRequest(
        request_id="p-internal", merchant_id="shop", payer="user:alice", payee="merchant:shop", amount=4_200,
        currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=BankAccount("ICBC", "1234", "Alice")))
    for _ in range(500):
        if (await r.platform.payments.get_payment(paid.payment_id)).status is PaymentStatus.SUCCEEDED:
            break
        await asyncio.sleep(0.01)
    clean = await r.call("RunInternalCheck", pb.RunInternalCheckRequest(), READER_KEY)
    assert dict(clean.counts) == dict.fromkeys(("TRIAL_BALANCE", "PAYMENT_POSTINGS", "REFUND_POSTINGS",
                                                "ORPHAN_POSTING", "STALE_PENDING", "OUTBOX_UNDELIVERED",
                                                "OUTBOX_CURSOR_AHEAD"), 0), list(clean.findings)
    assert clean.payments_checked == 1 and clean.transfers_scanned >= 1 and not clean.truncated
    assert (await refused(r.call("RunInternalCheck", pb.RunInternalCheckRequest(), OTHER_KEY)))[0] \
        is grpc.StatusCode.PERMISSION_DENIED

    db = r.platform.ledger
    post = transfer_id(paid.payment_id, "post.1")
    columns = ("id, debit_account_id, credit_account_id, amount, pending_id, currency, code, flags, user_data, "
               "timeout_s, timestamp, pending_status, expires_at")
    insert = f"INSERT INTO transfers ({columns}) VALUES (?, 11, 12, ?, 0, 'CNY', ?, 0, 0, ?, 1, ?, ?)"
    await db.write([
        ("DELETE FROM transfers WHERE id = ?", (post,)),                                 # a posting removed
        (insert, (transfer_id(paid.payment_id, "void.1"), 4_200, 4, 0, 0, 0)),           # one it must not have
        (insert, (transfer_id("pay_ghost", "pay"), 99, 1, 0, 0, 0)),                     # nobody's
        (insert, (transfer_id("other", "x"), 5, 30, 1, 1, 1_000)),                       # pending, long expired
        ("UPDATE accounts SET debits_posted = debits_posted + 1 WHERE id = (SELECT MIN(id) FROM accounts "
         "WHERE currency = 'CNY')", ()),
    ])
    broken = await r.call("RunInternalCheck", pb.RunInternalCheckRequest(findings_max=2), READER_KEY)
    assert {k: n for k, n in broken.counts.items() if n} == {
        "PAYMENT_POSTINGS": 2, "ORPHAN_POSTING": 1, "STALE_PENDING": 1, "TRIAL_BALANCE": 1}
    assert len(broken.findings) == 2 and broken.truncated
    every = await r.call("RunInternalCheck", pb.RunInternalCheckRequest(), READER_KEY)
    by_kind = {(f.kind, f.subject, f.detail.split(" (")[0]) for f in every.findings}
    assert ("PAYMENT_POSTINGS", paid.payment_id, "missing transfer post.1") in by_kind
    assert ("PAYMENT_POSTINGS", paid.payment_id, "extra transfer void.1") in by_kind
    assert ("ORPHAN_POSTING", str(transfer_id("pay_ghost", "pay"))) in {(k, s) for k, s, _ in by_kind}
    assert ("TRIAL_BALANCE", "CNY") in {(k, s) for k, s, _ in by_kind}
    assert REGISTRY.get_sample_value("dualflow_reconciliation_internal_findings", {"kind": "ORPHAN_POSTING"}) == 1
    assert REGISTRY.get_sample_value("dualflow_reconciliation_internal_findings", {"kind": "REFUND_POSTINGS"}) == 0
    assert await refused(r.call("RunInternalCheck", pb.RunInternalCheckRequest(findings_max=10_001), READER_KEY)) \
        == (grpc.StatusCode.INVALID_ARGUMENT, "RECONCILIATION_INVALID", ["findings_max"])
