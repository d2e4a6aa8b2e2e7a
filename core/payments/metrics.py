"""Payment metrics an operator charts: outcomes by asset and reason, time spent per state,
outbox lag, idempotent replays, discrepancies, balance cache hits. No merchant ids or
card data in labels: reasons are the closed set of failure codes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PAYMENTS = Counter(
    "dualflow_payments_total",
    "Payments reaching a state, by asset, state and (for FAILED) reason.",
    ["asset", "status", "reason"],
)
TRANSITION_SECONDS = Histogram(
    "dualflow_payment_transition_seconds",
    "Time a payment spent in a state before moving on, by move.",
    ["from_status", "to_status"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 3600),
)
REQUESTS_REPLAYED = Counter(
    "dualflow_payment_requests_replayed_total",
    "Requests whose request_id was seen before: replayed (same parameters) or reused (other parameters).",
    ["kind", "result"],
)
DISCREPANCIES = Counter(
    "dualflow_payment_discrepancies_total",
    "Channel answers that contradicted a final state (recorded for a person).",
)
REFUNDS = Counter("dualflow_refunds_total", "Refunds reaching a state.", ["asset", "status", "reason"])
CHANNEL_ANSWERS = Counter(
    "dualflow_payment_channel_answers_total",
    "Answers from the financial gateway, by source (submit, poll, callback; reconciliation: a statement) and outcome.",
    ["source", "outcome"],
)
OPEN_EXTERNAL = Gauge(
    "dualflow_payments_awaiting_channel",
    "External payments this process is driving (submitting or polling) now.",
)
OUTBOX_HEAD = Gauge("dualflow_outbox_head_sequence", "The newest outbox sequence this process has seen.")
OUTBOX_LAG_SECONDS = Gauge(
    "dualflow_outbox_lag_seconds",
    "Age of the oldest outbox event a consumer has not read yet (0 when caught up).",
    ["consumer"],
)
BALANCE_CACHE = Counter("dualflow_balance_cache_total", "GetBalance answers by cache result.", ["result"])
POLLS = Counter("dualflow_payment_polls_total", "Queries sent to channels for payments and refunds not yet final.")
POLL_WINDOWS_CLOSED = Counter(
    "dualflow_payment_poll_windows_closed_total",
    "Payments or refunds left to reconciliation: no final answer within the polling window.",
    ["kind"],
)
REVERSALS = Counter(
    "dualflow_payment_reversals_total",
    "Reversals of authorizations that stayed UNKNOWN: sent, reversed, refused.",
    ["result"],
)
