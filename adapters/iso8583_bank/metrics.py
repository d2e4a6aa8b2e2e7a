"""Prometheus metrics of the card channel, labelled by the channel's configured name; never card
data, keys or instruction ids in labels (`flow`, `outcome` and `why` are closed sets).

Requests, latency, in-flight, reversals and polls are the metrics every adapter shares
(`dualflow.adapters.metrics`). The financial gateway counts requests, latency, polls and
reversals around every call of the contract's flows; this adapter adds what only it sees:
requests and latency of `echo`, `sign_on` and `statement`, messages in flight on the link, and
the link's own metrics (connected, reconnects, bad MACs, unmatched replies), defined here and
looked up instead of created when a module loaded earlier already registered the name
(prometheus_client refuses a name twice).
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from dualflow.adapters.metrics import IN_FLIGHT, REQUEST_SECONDS, REQUESTS

__all__ = ["BAD_MACS", "CONNECTED", "IN_FLIGHT", "LATENCY", "RECONNECTS", "REQUESTS", "UNMATCHED"]

LATENCY = REQUEST_SECONDS

M = TypeVar("M", Counter, Gauge, Histogram)


def _shared(cls: type[M], name: str, documentation: str, labels: list[str], **kwargs: Any) -> M:
    existing = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - prometheus_client has no public lookup
    if existing is not None:
        if not isinstance(existing, cls) or tuple(existing._labelnames) != tuple(labels):  # noqa: SLF001
            raise RuntimeError(f"metric {name} already registered with another type or labels")
        return existing
    return cls(name, documentation, labels, **kwargs)


CONNECTED = _shared(Gauge, "dualflow_channel_connected", "1 while the channel's link is up and signed on.",
                    ["channel"])
RECONNECTS = _shared(Counter, "dualflow_channel_reconnects_total",
                     "Links re-established after the previous one was lost.", ["channel"])
BAD_MACS = _shared(Counter, "dualflow_channel_bad_macs_total",
                   "Replies whose MAC (or signature) did not verify; each is answered UNKNOWN.", ["channel"])
UNMATCHED = _shared(Counter, "dualflow_channel_unmatched_replies_total",
                    "Frames no request was waiting for: late (after a timeout) or unreadable.", ["channel", "why"])
