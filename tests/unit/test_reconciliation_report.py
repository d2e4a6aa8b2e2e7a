"""The report writers (reconciliation/report.py) on protobuf messages built by hand: one CSV row
per result, formula-like cells quoted, amounts in the currency's digits; the HTML escapes every
value and fetches nothing."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from dualflow.reconciliation import report
from dualflow.v1 import reconciliation_pb2 as pb

HOSTILE = '"><img src=x onerror=alert(1)>'


def test_csv_rows_one_per_result() -> None:
    out = io.StringIO()
    writer = report.CsvWriter(out, pb)
    writer.write([
        pb.RunResult(position=1, match_class=pb.RECONCILIATION_CLASS_MATCHED, action="NONE", instruction_id="pay_1-1",
                     channel_reference="R1", kind="pay", has_ours=True, our_amount_minor=1_050, our_currency="CNY",
                     our_status="SUCCEEDED", has_theirs=True, their_amount_minor=1_050, their_currency="CNY",
                     their_status="SUCCEEDED", their_fee_minor=3, line_count=1),
        pb.RunResult(position=2, match_class=pb.RECONCILIATION_CLASS_MISSING_INTERNALLY, action="OPEN_DISCREPANCY",
                     instruction_id=HOSTILE, channel_reference="=1+1", kind="pay", has_theirs=True,
                     their_amount_minor=-5, their_currency="JPY", their_status="SUCCEEDED", discrepancy_id="dsc_x"),
    ])
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert writer.rows == len(rows) == 2
    assert (rows[0]["class"], rows[0]["our_amount"], rows[0]["their_fee"]) == ("MATCHED", "10.50", "0.03")
    assert (rows[1]["our_amount"], rows[1]["their_amount"], rows[1]["channel_reference"], rows[1]["instruction_id"]) \
        == ("", "-5", "'=1+1", HOSTILE)


def test_html_escapes_every_value_and_is_self_contained(tmp_path: Path) -> None:
    run = pb.ReconciliationRun(
        run_id="rcn_x_2024-01-02_1", channel=HOSTILE, business_date="2024-01-02", attempt=1,
        state=pb.RUN_STATE_COMPLETED, started_at_ns=1, finished_at_ns=2, lines=3, instructions=2, detail=HOSTILE,
        counts=[pb.ClassCount(match_class=pb.RECONCILIATION_CLASS_MATCHED, lines=1, instructions=1,
                              amount_minor={"CNY": 1_050}),
                pb.ClassCount(match_class=pb.RECONCILIATION_CLASS_DUPLICATE, lines=2, instructions=0,
                              amount_minor={HOSTILE: 7})],
        fees=[pb.FeeTotal(currency="CNY", lines=1, fee_minor=3, posted_now=1)])
    found = [pb.ReconciliationDiscrepancy(discrepancy_id="dsc_1", match_class=pb.RECONCILIATION_CLASS_DUPLICATE,
                                          instruction_id=HOSTILE, status=pb.DISCREPANCY_STATUS_OPEN, detail=HOSTILE)]
    text = report.html_summary(pb, run, found, "recon.csv", 2)
    assert "<img" not in text and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    assert '>MATCHED</td><td class="n">1</td><td class="n">1</td><td class="n">10.50 CNY</td>' in text
    assert '>DUPLICATE</td><td class="n">2</td><td class="n">0</td>' in text
    assert not re.search(r"(src|href)=|@import|url\(|<script", text.replace("src=x", ""))
    csv_path, html_path = report.paths(tmp_path, "../evil", "2024-01-02")
    assert (csv_path.parent, csv_path.name, html_path.name) == (
        tmp_path, "recon-.._evil-2024-01-02.csv", "recon-.._evil-2024-01-02.html")
    report.write_html(html_path, text)
    assert html_path.read_text() == text and not list(tmp_path.glob("*.tmp"))
