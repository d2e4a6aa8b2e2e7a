"""Clearing metrics: what an operator charts to watch a day's obligations and their settlement.

Labels stay few: `pool` takes only configured pool names (bounded, set by the
operator) and `currency` only configured currencies. The open window's gauges
are set by the service after each change that moves them (recording an
obligation, a cut-off, a carried failure), not read at scrape time: the
scrape runs on another thread and the window changes on the event loop.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OPEN_GROSS = Gauge(
    "dualflow_clearing_open_window_gross_minor",
    "The open window's admitted obligations touching a pool, gross, in minor units: "
    "direction=\"owes\" what the pool owes, \"owed\" what it is owed",
    ["pool", "currency", "direction"])
OPEN_NET = Gauge(
    "dualflow_clearing_open_window_net_minor",
    "The open window's net position of a pool in minor units (owed minus owing; negative: net debtor)",
    ["pool", "currency"])
OPEN_QUEUED = Gauge(
    "dualflow_clearing_open_window_queued_minor",
    "Obligations a pool owes that wait in its queue for its net debit cap to allow them, in minor units",
    ["pool", "currency"])
OBLIGATIONS = Counter(
    "dualflow_clearing_obligations_total",
    "Obligations offered, by result: admitted, queued (by a cap), released (from a queue), refused (by a cap), "
    "replayed (same id and fields again), carried (a failed settlement transfer into the next window)",
    ["result"])
CAPS_HIT = Counter(
    "dualflow_clearing_caps_hit_total",
    "Obligations a net debit cap stopped, by debtor pool and action (refused, queued)",
    ["pool", "currency", "action"])
SETTLEMENT_TRANSFERS = Counter(
    "dualflow_clearing_settlement_transfers_total",
    "Settlement transfer answers applied and what became of failures, by outcome: succeeded, failed, "
    "unknown, retried, carried",
    ["outcome"])
SETTLEMENT_SENDS = Counter(
    "dualflow_clearing_settlement_sends_total",
    "Settlement instructions handed to the executor (first sends and the re-sends that poll them)")
WINDOWS = Counter(
    "dualflow_clearing_windows_total",
    "Windows reaching a state: closed, settled, partially_settled",
    ["state"])
NETTING_SECONDS = Histogram(
    "dualflow_clearing_netting_seconds", "Time to net a window at cut-off",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
POOL_INVARIANT_DIFFERENCE = Gauge(
    "dualflow_clearing_pool_invariant_difference_minor",
    "Per currency: pools plus money in transit to them, minus wallets, merchants and our own funds "
    "(0 when the reserve funds cover everything; see clearing/pools.py)",
    ["currency"])
POOL_BALANCE = Gauge(
    "dualflow_clearing_pool_balance_minor", "A pool account's posted ledger balance in minor units",
    ["pool", "currency"])
POOL_BANK_DIFFERENCE = Gauge(
    "dualflow_clearing_pool_bank_difference_minor",
    "The balance a pool's bank reports for its account minus the pool's posted ledger balance, minor units, "
    "at the last pool bank check; transfers in flight make it move (clearing/bank_check.py)",
    ["pool", "currency"])
POOL_BANK_UNEXPLAINED = Gauge(
    "dualflow_clearing_pool_bank_unexplained_minor",
    "The part of a pool's bank difference that transfers in flight do not explain, minor units: 0 when the "
    "bank and the ledger agree (what to alert on)",
    ["pool", "currency"])
GATE_RESERVED = Gauge(
    "dualflow_clearing_gate_reserved_minor",
    "Movements the cap gate admitted whose obligation the clearing feed has not recorded yet, by debtor pool, "
    "in minor units: counted against the pool's net debit cap with its position (clearing/gate.py)",
    ["pool", "currency"])
