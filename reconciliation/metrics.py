"""Reconciliation metrics an operator charts and alerts on. Labels are closed sets: channel names
(from the config), classes, results, age buckets; never an instruction, payment or run id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter(
    "dualflow_reconciliation_runs_total",
    "Reconciliation runs by channel and how they ended: completed, rejected (the statement did not verify), "
    "failed (an error of ours).",
    ["channel", "result"],
)
LINES = Counter(
    "dualflow_reconciliation_lines_total",
    "Statement lines classified, by channel and class (MATCHED, STATUS_MISMATCH, ...).",
    ["channel", "class"],
)
INSTRUCTIONS = Counter(
    "dualflow_reconciliation_instructions_total",
    "Our payments and refunds classified, by channel and class.",
    ["channel", "class"],
)
AUTO_RESOLUTIONS = Counter(
    "dualflow_reconciliation_auto_resolutions_total",
    "Open payments and refunds a statement settled (action MARK_SUCCEEDED or MARK_FAILED), by channel, action "
    "and result: applied, or refused (it had moved meanwhile).",
    ["channel", "action", "result"],
)
DISCREPANCIES_OPEN = Gauge(
    "dualflow_reconciliation_discrepancies_open",
    "Discrepancies not resolved yet (open or assigned), by class and age since opened.",
    ["class", "age_bucket"],
)
RUN_SECONDS = Histogram(
    "dualflow_reconciliation_run_seconds",
    "Reconciliation run duration, statement download to the last resolution, by channel.",
    ["channel"],
    buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
FEES_POSTED = Counter(
    "dualflow_reconciliation_fee_postings_total",
    "Statement lines whose fee was posted to the channel's fee expense, by channel and currency.",
    ["channel", "currency"],
)

INTERNAL_FINDINGS = Gauge(
    "dualflow_reconciliation_internal_findings",
    "Findings of the last internal reconciliation (ours vs ours) by kind: 0 when the books agree.",
    ["kind"],
)
INTERNAL_CHECKS = Counter(
    "dualflow_reconciliation_internal_checks_total",
    "Internal reconciliation checks run.",
)
BALANCE_DRIFT = Gauge(
    "dualflow_reconciliation_balance_drift_minor",
    "The balance a channel reports for us minus our receivable for it (posted), minor units, at the last "
    "internal check; items in flight make it move (reconciliation/drift.py).",
    ["channel", "currency"],
)
BALANCE_UNEXPLAINED = Gauge(
    "dualflow_reconciliation_balance_unexplained_minor",
    "The part of the balance drift that our payments and refunds in flight do not explain, minor units: 0 "
    "when the books agree; not 0 is a BALANCE_DRIFT finding.",
    ["channel", "currency"],
)

# Ages of an unresolved discrepancy: (label, upper bound in seconds).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("0-1d", 86_400), ("1d-3d", 3 * 86_400), ("3d-7d", 7 * 86_400), ("7d+", float("inf")))


def age_bucket(age_s: float) -> str:
    for label, upper in AGE_BUCKETS:
        if age_s < upper:
            return label
    return AGE_BUCKETS[-1][0]
