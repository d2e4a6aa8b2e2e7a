"""Router metrics: what an operator charts to see where traffic goes and why.

Counters are updated on each decision. The per-channel gauges (breaker state,
estimated success, samples, configuration version) are read from the live
router at scrape time by a collector, so they are never stale: a breaker turns
half-open by the clock, not by an event, and a gauge set on events would miss it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .breaker import BreakerState

if TYPE_CHECKING:
    from .policy import Router

DECISIONS = Counter(
    "dualflow_routing_decisions_total",
    "Routing decisions by the channel chosen (\"none\" when none was eligible) and why "
    "(SCORE, ONLY_CANDIDATE, PINNED, FALLBACK after NOT_SUBMITTED, NONE_ELIGIBLE)",
    ["channel", "reason"])
EXCLUSIONS = Counter(
    "dualflow_routing_exclusions_total",
    "Channels excluded from a decision, by channel and reason (DISABLED, BREAKER_OPEN, AMOUNT_LIMIT...)",
    ["channel", "reason"])
DECISION_SECONDS = Histogram(
    "dualflow_routing_decision_seconds", "Time to take one routing decision",
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2))
OUTCOMES = Counter(
    "dualflow_routing_outcomes_total",
    "Answers the router learned from, by channel and kind: success, payer_decline (not the channel's "
    "fault), channel_fault; for channel faults, which: timeout, unknown (no trustworthy answer), "
    "not_submitted (refused connection), declined_by_channel (issuer down, 5xx, system error)",
    ["channel", "kind", "fault"])
CONFIG_CHANGES = Counter(
    "dualflow_routing_config_changes_total",
    "Routing configurations offered, by source (file, rpc) and result (applied, rejected, conflict)",
    ["source", "result"])

BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

_routers: weakref.WeakSet[Router] = weakref.WeakSet()


def track(router: Router) -> None:
    """Export this router's live gauges (the process's financial gateway registers its own)."""
    _routers.add(router)


class _RouterCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily("dualflow_routing_breaker_state",
                                  "Circuit breaker per channel: 0 closed, 1 half-open, 2 open", labels=["channel"])
        success = GaugeMetricFamily("dualflow_routing_estimated_success_ratio",
                                    "The router's current success estimate per channel (posterior mean; "
                                    "payer declines count as the channel working)", labels=["channel"])
        samples = GaugeMetricFamily("dualflow_routing_health_samples",
                                    "Recent outcomes behind the estimate, per channel", labels=["channel"])
        enabled = GaugeMetricFamily("dualflow_routing_channel_enabled",
                                    "1 when the channel is enabled by configuration", labels=["channel"])
        version = GaugeMetricFamily("dualflow_routing_config_version", "The routing configuration in effect")
        seen: set[str] = set()
        for router in list(_routers):
            for name in router.capabilities:
                if name in seen:  # two gateways in one process (tests): the first one speaks
                    continue
                seen.add(name)
                view = router.view(name)
                state.add_metric([name], BREAKER_STATE_VALUE[view.breaker])
                success.add_metric([name], view.estimated_success)
                samples.add_metric([name], view.samples)
                enabled.add_metric([name], 1 if view.enabled else 0)
            if not version.samples:
                version.add_metric([], router.config.version)
        yield from (state, success, samples, enabled, version)


REGISTRY.register(_RouterCollector())
