"""The report of one reconciliation run a finance person reads: a CSV of every result and a
self-contained HTML summary (counts and amounts per class, fees, discrepancies, the run's id and
times), written by `dualflow reconcile --report DIR` from what the Reconciliation service
answers (GetRun, ListRunResults, ListDiscrepancies), never from the database.

The writers take the service's protobuf messages and plain files: no gRPC here. The HTML has no
external asset (inline CSS, no script) and every value in it is escaped; CSV cells that a
spreadsheet would read as a formula are prefixed with a quote.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

CSV_COLUMNS = ("position", "class", "instruction_id", "channel_reference", "kind", "object_id",
               "our_amount", "our_currency", "our_status", "their_amount", "their_currency", "their_status",
               "their_fee", "action", "discrepancy_id", "detail")


def paths(directory: Path, channel: str, business_date: str) -> tuple[Path, Path]:
    stem = f"recon-{_safe(channel)}-{_safe(business_date)}"
    return directory / f"{stem}.csv", directory / f"{stem}.html"


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "_"


def class_name(pb: Any, value: int) -> str:
    return str(pb.ReconciliationClass.Name(value)).removeprefix("RECONCILIATION_CLASS_")


def amount(minor: int, currency: str) -> str:
    """Minor units as a decimal with the currency's digits (what a spreadsheet sums); minor units
    as they are for a currency we do not know (a statement may name one)."""
    from dualflow.core.money import UnknownCurrency, format_minor

    try:
        return format_minor(minor, currency, with_code=False) if currency else str(minor)
    except UnknownCurrency:
        return str(minor)


def _cell(value: object) -> str:
    text = str(value)
    # A cell starting like a formula is text to a person, code to a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


class CsvWriter:
    """One row per result, in the order the run classified them."""

    def __init__(self, out: TextIO, pb: Any) -> None:
        self.pb = pb
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(CSV_COLUMNS)
        self.rows = 0

    def write(self, results: Iterable[Any]) -> None:
        for r in results:
            self.writer.writerow([_cell(v) for v in (
                r.position, class_name(self.pb, r.match_class), r.instruction_id, r.channel_reference, r.kind,
                r.object_id,
                amount(r.our_amount_minor, r.our_currency) if r.has_ours else "", r.our_currency, r.our_status,
                amount(r.their_amount_minor, r.their_currency) if r.has_theirs else "", r.their_currency,
                r.their_status, amount(r.their_fee_minor, r.their_currency) if r.has_theirs else "", r.action,
                r.discrepancy_id, r.detail)])
            self.rows += 1


def _time(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left}td.n{text-align:right}th{background:#eee}
.bad{color:#a00}.ok{color:#070}"""


def html_summary(pb: Any, run: Any, discrepancies: Sequence[Any], csv_name: str, rows: int) -> str:
    """The self-contained HTML page of a run; every value escaped."""
    e = html.escape
    state = str(pb.RunState.Name(run.state)).removeprefix("RUN_STATE_")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Reconciliation {e(run.channel)} {e(run.business_date)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Reconciliation of {e(run.channel)} on {e(run.business_date)}</h1>",
           "<table><tbody>"]
    for label, value in (("run", run.run_id), ("attempt", str(run.attempt)), ("state", state),
                         ("started", _time(run.started_at_ns)), ("finished", _time(run.finished_at_ns)),
                         ("statement lines", str(run.lines)), ("our instructions", str(run.instructions)),
                         ("results (rows of the CSV)", str(rows)), ("resolved by this run", str(run.auto_resolved)),
                         ("proposed but moved meanwhile", str(run.auto_refused)), ("lines file", csv_name)):
        out.append(f"<tr><th>{e(label)}</th><td>{e(value)}</td></tr>")
    if run.error_reason:
        out.append(f'<tr><th>rejected</th><td class="bad">{e(run.error_reason)} at line {run.error_line}: '
                   f"{e(run.detail)}</td></tr>")
    elif run.detail:
        out.append(f"<tr><th>detail</th><td>{e(run.detail)}</td></tr>")
    out.append("</tbody></table>")
    out.append("<h2>Counts and amounts by class</h2><table><thead><tr><th>class</th><th>statement lines</th>"
               "<th>our instructions</th><th>amount</th></tr></thead><tbody>")
    for c in run.counts:
        name = class_name(pb, c.match_class)
        amounts = "<br>".join(f"{e(amount(v, k))} {e(k)}" for k, v in sorted(c.amount_minor.items())) or "-"
        mark = "ok" if name == "MATCHED" else ("" if name == "EXPECTED" else "bad")
        out.append(f'<tr><td class="{mark}">{e(name)}</td><td class="n">{c.lines}</td>'
                   f'<td class="n">{c.instructions}</td><td class="n">{amounts}</td></tr>')
    out.append("</tbody></table>")
    out.append("<h2>The channel's fees</h2>")
    if run.fees:
        out.append("<table><thead><tr><th>currency</th><th>lines with a fee</th><th>fees</th>"
                   "<th>posted by this run</th></tr></thead><tbody>")
        for f in run.fees:
            out.append(f'<tr><td>{e(f.currency)}</td><td class="n">{f.lines}</td>'
                       f'<td class="n">{e(amount(f.fee_minor, f.currency))}</td><td class="n">{f.posted_now}</td></tr>')
        out.append("</tbody></table>")
    else:
        out.append("<p>No fees on the statement.</p>")
    out.append(f"<h2>Discrepancies of that day waiting for a person ({len(discrepancies)})</h2>")
    if discrepancies:
        out.append("<table><thead><tr><th>discrepancy</th><th>class</th><th>instruction</th><th>status</th>"
                   "<th>assignee</th><th>opened</th><th>detail</th></tr></thead><tbody>")
        for d in discrepancies:
            status = str(pb.DiscrepancyStatus.Name(d.status)).removeprefix("DISCREPANCY_STATUS_").lower()
            out.append(f"<tr><td>{e(d.discrepancy_id)}</td><td>{e(class_name(pb, d.match_class))}</td>"
                       f"<td>{e(d.instruction_id)}</td><td>{e(status)}</td><td>{e(d.assignee)}</td>"
                       f"<td>{e(_time(d.opened_at_ns))}</td><td>{e(d.detail)}</td></tr>")
        out.append("</tbody></table>")
    else:
        out.append("<p>None.</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_html(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
