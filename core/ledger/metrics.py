"""Prometheus metrics the ledger core exports (registered once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

COMMIT_SECONDS = Histogram(
    "dualflow_ledger_commit_seconds",
    "Time for one group commit: read, apply and a durable COMMIT.",
    ["backend"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
BATCH_ITEMS = Histogram(
    "dualflow_ledger_commit_items",
    "Accounts and transfers applied by one group commit.",
    ["backend"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
)
REQUESTS_PER_COMMIT = Histogram(
    "dualflow_ledger_commit_requests",
    "Requests coalesced into one group commit.",
    ["backend"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
WRITER_QUEUE_ITEMS = Gauge(
    "dualflow_ledger_writer_queue_items",
    "Items waiting for the group-commit writer.",
)
REJECTED_OVERLOAD = Counter(
    "dualflow_ledger_writer_rejected_total",
    "Requests refused with RESOURCE_EXHAUSTED because the writer queue was full.",
)
TRANSFER_RESULTS = Counter(
    "dualflow_ledger_transfers_total",
    "Transfers by result (OK, EXISTS, EXCEEDS_CREDITS, ...).",
    ["result"],
)
ACCOUNT_RESULTS = Counter(
    "dualflow_ledger_accounts_total",
    "Account creations by result.",
    ["result"],
)
PENDING_EXPIRED = Counter(
    "dualflow_ledger_pending_expired_total",
    "Pending transfers voided by the ledger when their timeout passed.",
)
COMMIT_FAILURES = Counter(
    "dualflow_ledger_commit_failures_total",
    "Group commits that raised and were rolled back.",
    ["backend"],
)
