"""Channel metrics shared by every adapter: requests by flow and outcome, latency, calls in
flight, callbacks by verification result, reversals and polls. One module, because
prometheus_client refuses to register a metric name twice; adapters import from here.
Labels are the channel's configured name, the flow (pay, query, refund, reverse, statement),
the outcome (SUCCEEDED, FAILED, PENDING, UNKNOWN, NOT_SUBMITTED) or the callback result
(ACCEPTED, BAD_SIGNATURE, STALE, ...): no instruction ids, merchants or card data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "dualflow_channel_requests_total",
    "Requests to a channel, by flow and outcome.",
    ["channel", "flow", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "dualflow_channel_request_seconds",
    "Time from sending a request to a channel to having its outcome, by flow.",
    ["channel", "flow"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge(
    "dualflow_channel_in_flight",
    "Requests sent to a channel and not answered yet.",
    ["channel"],
)
CALLBACKS = Counter(
    "dualflow_channel_callbacks_total",
    "Asynchronous notifications from a channel, by verification result (ACCEPTED or the rejection reason).",
    ["channel", "result"],
)
REVERSALS = Counter(
    "dualflow_channel_reversals_total",
    "Reversals of authorizations whose outcome stayed unknown, by outcome.",
    ["channel", "outcome"],
)
POLLS = Counter(
    "dualflow_channel_polls_total",
    "Status queries made to resolve PENDING or UNKNOWN instructions, by outcome.",
    ["channel", "outcome"],
)
