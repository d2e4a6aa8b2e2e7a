"""Prometheus metrics of a channel, labelled by the channel's configured name; never card data,
keys or instruction ids in labels (`flow`, `outcome` and `why` are closed sets).

The names are shared by every channel adapter (`dualflow_channel_*`), so they are created
once per process by whichever adapter module loads first and looked up by the others.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)


def _shared(cls: type[M], name: str, documentation: str, labels: list[str], **kwargs: Any) -> M:
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - prometheus_client has no public lookup
    if existing is not None:
        if not isinstance(existing, cls) or tuple(existing._labelnames) != tuple(labels):  # noqa: SLF001
            raise RuntimeError(f"metric {name} already registered with another type or labels")
        return existing
    return cls(name, documentation, labels, **kwargs)


REQUESTS = _shared(Counter, "dualflow_channel_requests_total",
                   "Requests to a channel by flow (pay, refund, reverse, query, echo, sign_on) and outcome.",
                   ["channel", "flow", "outcome"])
LATENCY = _shared(Histogram, "dualflow_channel_request_seconds",
                  "Time from sending a request to a channel until its answer (or giving up), by flow.",
                  ["channel", "flow"],
                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IN_FLIGHT = _shared(Gauge, "dualflow_channel_in_flight", "Requests written to a channel and not answered yet.",
                    ["channel"])
CONNECTED = _shared(Gauge, "dualflow_channel_connected", "1 while the channel's link is up and signed on.",
                    ["channel"])
RECONNECTS = _shared(Counter, "dualflow_channel_reconnects_total",
                     "Links re-established after the previous one was lost.", ["channel"])
BAD_MACS = _shared(Counter, "dualflow_channel_bad_macs_total",
                   "Replies whose MAC (or signature) did not verify; each is answered UNKNOWN.", ["channel"])
UNMATCHED = _shared(Counter, "dualflow_channel_unmatched_replies_total",
                    "Frames no request was waiting for: late (after a timeout) or unreadable.", ["channel", "why"])
