"""Every dualflow_* metric follows Prometheus's naming conventions, and every metric the README,
the dashboard and the alert rules name exists.

All modules of every dualflow package are imported first, so each metric registers itself in
prometheus_client's REGISTRY (a new module with metrics is checked without being listed here).
The conventions (https://prometheus.io/docs/practices/naming/):
- snake_case names under the `dualflow_` prefix, with help text;
- counters exposed with `_total`, and nothing else ending in `_total` or in a suffix Prometheus
  reserves for histograms and summaries (`_count`, `_sum`, `_bucket`);
- base units: time in seconds (`_seconds`; a point in time `_timestamp_seconds`), never ms,
  minutes or percent; histograms name what they count (`_seconds`, `_bytes`, `_items`...);
- low-cardinality labels: none named like an identifier or a secret (payment, card, token, key,
  pan, user...), since each label value is a time series.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dualflow.core", "dualflow.gateway", "dualflow.adapters", "dualflow.routing", "dualflow.reconciliation",
            "dualflow.clearing", "dualflow.mock_banks", "dualflow.bench")

NAME = re.compile(r"dualflow_[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Units that are not Prometheus base units, as name tokens.
NOT_BASE_UNITS = {"ms", "msec", "millis", "milliseconds", "us", "usec", "micros", "microseconds", "ns", "nanos",
                  "nanoseconds", "minutes", "hours", "days", "percent", "pct", "kb", "mb", "gb", "kib", "mib",
                  "kilobytes", "megabytes", "gigabytes"}
# What a histogram may measure: time in seconds, bytes, or a count of named things per event.
HISTOGRAM_UNITS = ("_seconds", "_bytes", "_items", "_requests", "_ratio", "_minor")
TIME_WORDS = re.compile(r"\b(time|times|latency|duration|how long|took|elapsed)\b", re.I)
# Label name tokens that mean a per-object or secret value: unbounded series, or data that must
# never leave the process.
FORBIDDEN_LABEL_TOKENS = {"id", "ids", "uuid", "payment", "refund", "instruction", "request", "event", "delivery",
                          "card", "pan", "bin", "last4", "cvv", "cvc", "expiry", "token", "key", "secret",
                          "password", "pin", "signature", "nonce", "iban", "account", "user", "payer", "payee",
                          "email", "phone", "name", "reference", "url"}
RESERVED_LABELS = {"le", "quantile"}


@dataclass
class Family:
    name: str  # as prometheus_client keeps it: a counter without `_total`
    type: str
    documentation: str
    labels: set[str]
    exposed: set[str]  # sample names in the text exposition


def _import_everything() -> None:
    failures = []
    for top in PACKAGES:
        package = importlib.import_module(top)
        for module in pkgutil.walk_packages(package.__path__, f"{top}."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # noqa: BLE001 - reported below, all at once
                failures.append(f"{module.name}: {exc!r}")
    assert not failures, "modules that do not import:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
    _import_everything()
    declared: dict[str, set[str]] = {}
    for collector, names in list(REGISTRY._collector_to_names.items()):  # noqa: SLF001 - no public API
        labelnames = set(getattr(collector, "_labelnames", ()))
        for name in names:
            declared.setdefault(name, set()).update(labelnames)
    out: dict[str, Family] = {}
    for metric in REGISTRY.collect():
        if not metric.name.startswith("dualflow"):
            continue
        labels = set(getattr(metric, "_labelnames", ())) | {k for s in metric.samples for k in s.labels}
        labels |= declared.get(metric.name, set()) | declared.get(f"{metric.name}_total", set())
        out[metric.name] = Family(metric.name, metric.type, metric.documentation, labels - RESERVED_LABELS,
                                  {s.name for s in metric.samples})
    return out


def exposition_types() -> dict[str, str]:
    """Family name -> type, as the text exposition Prometheus scrapes declares them."""
    text = generate_latest(REGISTRY).decode()
    return dict(re.findall(r"^# TYPE (dualflow_\S+) (\S+)$", text, flags=re.M))


def test_the_metric_modules_register_what_the_readme_promises(families: dict[str, Family]) -> None:
    # A sample of each module: the import walk reached them all.
    for name in ("dualflow_grpc_server_handled", "dualflow_ledger_commit_seconds", "dualflow_payments",
                 "dualflow_channel_requests", "dualflow_routing_breaker_state", "dualflow_webhook_deliveries",
                 "dualflow_rate_limited", "dualflow_ledger_trial_balance_difference", "dualflow_payments_open"):
        assert name in families, name
    assert len(families) >= 50


def test_names_are_snake_case_with_the_prefix_and_help(families: dict[str, Family]) -> None:
    bad = [f.name for f in families.values() if not NAME.fullmatch(f.name)]
    assert not bad, bad
    undocumented = [f.name for f in families.values() if not f.documentation.strip()]
    assert not undocumented, undocumented


def test_counters_end_in_total_and_nothing_else_does(families: dict[str, Family]) -> None:
    types = exposition_types()
    counters = {n for n, t in types.items() if t == "counter"}
    assert counters, "no counter exposed"
    assert not [n for n in counters if not n.endswith("_total")], "counters exposed without _total"
    others = [n for n, t in types.items() if t != "counter" and n.endswith("_total")]
    assert not others, f"only counters end in _total: {others}"
    assert not [f.name for f in families.values() if f.name.endswith("_total")], \
        "a counter declared as x_total_total"
    reserved = [f.name for f in families.values() if re.search(r"_(count|sum|bucket)$", f.name)]
    assert not reserved, f"suffixes reserved for histograms and summaries: {reserved}"


def test_units_are_base_units(families: dict[str, Family]) -> None:
    problems = []
    for f in families.values():
        tokens = set(f.name.split("_"))
        if tokens & NOT_BASE_UNITS:
            problems.append(f"{f.name}: not a base unit ({', '.join(sorted(tokens & NOT_BASE_UNITS))})")
        if "seconds" in tokens and not f.name.endswith("_seconds"):
            problems.append(f"{f.name}: the unit goes last")
        if f.type in ("histogram", "summary"):
            if TIME_WORDS.search(f.documentation) and not f.name.endswith("_seconds"):
                problems.append(f"{f.name}: a {f.type} of time is named _seconds")
            if not f.name.endswith(HISTOGRAM_UNITS):
                problems.append(f"{f.name}: a {f.type} ends in its unit, one of {HISTOGRAM_UNITS}")
        if f.type == "gauge" and re.search(r"\b(unix time|timestamp)\b", f.documentation, re.I) \
                and not f.name.endswith("_timestamp_seconds"):
            problems.append(f"{f.name}: a point in time is _timestamp_seconds")
    assert not problems, "\n".join(problems)


def test_no_label_is_an_identifier_or_a_secret(families: dict[str, Family]) -> None:
    problems = []
    for f in families.values():
        for label in sorted(f.labels):
            tokens = set(label.split("_"))
            if tokens & FORBIDDEN_LABEL_TOKENS:
                problems.append(f"{f.name}{{{label}}}")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", label):
                problems.append(f"{f.name}{{{label}}}: not snake_case")
    assert not problems, "labels that are identifiers or secrets (a series per object, or data that must " \
                         "not leave the process):\n" + "\n".join(problems)


def _exposed_names(families: dict[str, Family]) -> set[str]:
    names = set()
    for f in families.values():
        names |= f.exposed | {f.name}
        if f.type == "counter":
            names.add(f"{f.name}_total")
        if f.type == "histogram":
            names |= {f"{f.name}_bucket", f"{f.name}_sum", f"{f.name}_count"}
    return names


def _dashboard_expressions() -> list[str]:
    board = json.loads((ROOT / "deploy" / "grafana" / "dualflow.json").read_text())
    stack, exprs = list(board["panels"]), []
    while stack:
        panel = stack.pop()
        stack += panel.get("panels", [])
        exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


@pytest.mark.parametrize("source", ["README.md", "deploy/grafana/dualflow.json", "deploy/prometheus/alerts.yml",
                                    "deploy/prometheus/alerts_test.yml"])
def test_every_metric_named_in_docs_dashboard_and_alerts_exists(families: dict[str, Family], source: str) -> None:
    text = "\n".join(_dashboard_expressions()) if source.endswith(".json") else (ROOT / source).read_text()
    named = set(re.findall(r"\b(dualflow_[a-z0-9_]*[a-z0-9])\b", text))
    assert named, f"{source} names no metric"
    missing = sorted(named - _exposed_names(families))
    assert not missing, f"{source} names metrics that no module registers: {missing}"
