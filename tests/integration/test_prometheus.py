"""The dashboard and the alert rules against a real Prometheus scraping a real `dualflow serve`.

Debian's `prometheus` package (2.42; `.ci/run` installs it) provides `prometheus` and `promtool`.
Without them the test skips with the reason, except under CI=true, where it fails.

What is proved, and how:
- `promtool check rules` passes on deploy/prometheus/alerts.yml, `promtool check config` on
  deploy/prometheus/prometheus.yml, and `promtool test rules` on deploy/prometheus/alerts_test.yml
  (each alert on synthetic series: not firing before its `for`, firing after, with its labels
  and annotations).
- A platform runs as a process (`dualflow serve --metrics-port 0`) with the three mock banks as
  processes (gateway/sandbox.py), and a Prometheus (scrape and evaluation every 1 s) scrapes
  it and itself and evaluates the real rules with every `for:` shortened to FOR_S seconds (a
  copy generated from the real file by replacing only the `for:` lines; the test checks that
  nothing else differs). Traffic over gRPC: card top-ups, wallet and points payments, a payment
  without funds, card declines, bank transfers settled by callback and by polling after lost
  replies (UNKNOWN), an idempotent replay, a refund, balance reads, a rate-limited caller, a bad
  key, webhooks to a receiver that accepts and one that answers 410 (dead letters). Then the back
  office: the day's reconciliation of each channel (RunReconciliation; the server runs the daily
  schedule too), with a rail transfer left UNKNOWN that the rail's statement settles, a card
  transaction nobody sent (a MISSING_INTERNALLY discrepancy) and a forced re-run of the rail on a
  truncated statement (REJECTED); and clearing between three pools: obligations (one refused by
  a pool's net debit cap, one replayed), a cut-off (CloseWindow), obligations in the new window.
  The pools have accounts at the rail's bank (`[clearing] rail_accounts`, registered with the mock
  rail's admin API, our own money in each at both ends), so the server settles the closed window
  over the rail (the bank's balances move by the net positions) and checks every pool against
  its bank every second; the succeeded payments go through the clearing feed.
- Every scrape target is up.
- Every PromQL expression of the dashboard (with its variables replaced: job, all instances,
  `$__rate_interval` = 1m) and every alert rule's expression (as Prometheus loaded them, read
  back from /api/v1/rules) is evaluated through /api/v1/query and answers `success`, so it
  parses. For the alerts, which are conditions (empty while healthy), each operand of the
  condition is also queried without its comparison (`a > 0 and b < 1` gives `a` and `b`).
  Every dashboard query and every such operand returns at least one series for the traffic,
  except those listed in MAY_BE_EMPTY, each with the reason (events this test does not cause);
  for those the test checks instead that Prometheus has the metric's metadata from the target,
  i.e. the series is exposed and would show once the event happens.
- The reconciliation alerts fire from the real runs: DualflowReconciliationDiscrepanciesOpen for
  MISSING_INTERNALLY and DualflowReconciliationRunNotCompleted for the rail's rejected run (its
  counter series is born at that run, which increase() alone would not see). The dashboard's
  netting efficiency of the open window equals 1 - net / gross of the obligations recorded in
  it, the formula the clearing service reports for the window it closed.
- The card bank goes down (`outage: True`) while a merchant pinned to it keeps paying by card:
  the breaker opens (a quick breaker from the routing file) and DualflowChannelBreakerOpen for
  the card bank goes pending, then firing FOR_S seconds later (not before, and within a few
  scrape and evaluation intervals after). Then a row of the ledger is changed around the writer
  and DualflowTrialBalanceBroken (no `for`) fires within seconds, from the BalanceCheck gauge
  (its interval set to 1 s through DUALFLOW_BALANCE_CHECK_INTERVAL_S). The changed account is in
  the clearing currency, so DualflowClearingPoolInvariantBroken (the clearing service's gauge,
  every 1 s here) goes pending and pages FOR_S seconds later. At the same moment the rail's bank
  books money into one pool's account that our ledger never saw: DualflowPoolBankMismatch goes
  pending and pages FOR_S seconds later for that pool, stays quiet for the others, and the
  invariant (ledger only) does not see it. Clearing runs in one currency here: a pool's bank
  account holds one, and the pool bank check compares every clearing currency with it.
- Everything started here is stopped, and no process started by the test (or naming its
  temporary folder) is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from serve_process import ServeFactory, ServeProcess, serve_processes  # noqa: F401 - fixture

from dualflow.clearing.pools import CODE_OWN_FUNDS, own_funds_account
from dualflow.core.payments.accounts import account_id, pool_account
from dualflow.gateway.auth import hash_api_key
from dualflow.gateway.sandbox import NAMES, Sandbox, free_port
from dualflow.v1 import clearing_pb2 as cpb
from dualflow.v1 import clearing_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc, reconciliation_pb2_grpc
from dualflow.v1 import reconciliation_pb2 as rpb
from payments_fixtures import vault_toml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dualflow.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

CARD, PSP, RAIL = NAMES["iso8583"], NAMES["psp"], NAMES["transfer"]
VISA = "4111111111111111"
OPS_KEY = "dfk_" + "p" * 24
LIMITED_KEY = "dfk_" + "l" * 24
FOR_S = 5  # every `for:` of the real rules, in the copy Prometheus loads here
STEP_S = 1  # scrape and evaluation interval
# Dashboard variables as Grafana would fill them for "all instances" of the dualflow job.
RATE_INTERVAL = "1m"

# The breaker opens when half of its last 6 outcomes (at least 3) are channel faults and stays
# open 30 s: longer than the alert's shortened `for`.
ROUTING_TOML = """
exploration = 1.0
[breaker]
window = 6
min_samples = 3
open_at = 0.5
cool_down_s = 30.0
probes = 1
probes_to_close = 1
[merchants.pinned]
pinned = "cardbank"
"""

# Clearing between three pools; bank-c may owe at most this much net (a cap that refuses).
POOLS = ("bank-a", "bank-b", "bank-c")
BANK_C_CAP = 50_000
# Each pool's account at the rail's bank (`[clearing] rail_accounts`, the mock rail's accounts);
# our own money in each at the start, at the bank and in the ledger.
POOL_ACCOUNTS = {pool: {"bank_code": f"BK{pool[-1].upper()}", "number": f"622200000000010{i}",
                        "name": f"dualflow reserve {pool}"} for i, pool in enumerate(POOLS, start=1)}
FLOAT = 1_000_000
UNRECORDED = 1_234  # what the bank books into bank-b's account behind our back
PHANTOM = 4_321  # the card bank books a payment of this amount nobody sent
FEE_BPS = {"iso8583": 55, "psp": 60, "transfer": 10}  # by mock bank kind

# Metric (or `metric{matcher}`: only queries selecting by that label matcher) -> why no series
# may exist for it after this test's traffic (the family is still exposed: its metadata is
# checked instead).
MAY_BE_EMPTY = {
    "dualflow_payment_poll_windows_closed_total": "polling windows last 1 h: none closes in a test",
    "dualflow_payment_reversals_total": "reversals follow a closed polling window",
    "dualflow_channel_reversals_total": "reversals follow a closed polling window",
    "dualflow_channel_bad_macs_total": "no MAC fault is injected (on the card bank it would open the breaker early)",
    "dualflow_channel_unmatched_replies_total": "no late reply is injected",
    "dualflow_channel_reconnects_total": "the card link is re-established only if it drops and comes back",
    "dualflow_ledger_commit_failures_total": "no group commit fails here",
    'dualflow_clearing_settlement_transfers_total{outcome=~"failed|contradicted"}': "every settlement transfer "
                                                                                    "succeeds here",
    'dualflow_clearing_windows_total{state="partially_settled"}': "every settlement transfer succeeds: the window "
                                                                  "settles in full",
}


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        reason = ("prometheus and promtool are not on PATH: install Debian's prometheus package "
                  "(apt-get install --no-install-recommends prometheus; .ci/run does)")
        if IN_CI:
            pytest.fail(f"CI=true requires Prometheus: {reason}", pytrace=False)
        pytest.skip(reason)
    return prometheus, promtool


# ---------------------------------------------------------------------- promtool on the shipped files

def test_promtool_checks_the_rules_the_config_and_the_rule_unit_tests(tools: tuple[str, str]) -> None:
    _, promtool = tools
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_YML)],
                 ["test", "rules", str(ALERTS_TEST)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        assert "SUCCESS" in done.stdout, done.stdout


# ---------------------------------------------------------------------- PromQL helpers

def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel, rows' inner panels included,
    with the dashboard's variables filled in as Grafana would for all instances of the job."""
    board = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    out = []
    for panel in walk(board["panels"]):
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$job", "dualflow")
                    .replace("$instance", ".*"))
            assert "$" not in expr, f"{panel['title']}: a variable the test does not fill: {expr}"
            out.append((panel["title"], expr))
    return out



def _top_level(expr: str) -> Iterator[tuple[int, str]]:
    """(index, char) of the characters outside any (), {}, [] or string."""
    depth, quote = 0, ""
    for i, ch in enumerate(expr):
        if quote:
            if ch == quote and expr[i - 1] != "\\":
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif depth == 0:
            yield i, ch


def operands(expr: str) -> list[str]:
    """The parts of a condition without their comparison: `a > 1 and b < 2` -> [a, b]. Label
    matchers (`!=`, `=~`) sit inside braces, so any `=`, `!`, `<`, `>` at the top level starts
    a comparison."""
    text = " ".join(expr.split())
    top = {i for i, _ in _top_level(text)}
    parts, start = [], 0
    for m in re.finditer(r" (and|or|unless) ", text):
        if m.start() in top:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    out = []
    for part in parts:
        cut = next((i for i, ch in _top_level(part) if ch in "=!<>"), len(part))
        out.append(part[:cut].strip())
    return out


def test_operands_of_a_condition() -> None:
    # condition, its operands
    for condition, expected in (
        ('up{job="dualflow"} == 0', ['up{job="dualflow"}']),
        ("time() - x > 120", ["time() - x"]),
        ('max by (c) (abs(d{a!="b"})) > 0', ['max by (c) (abs(d{a!="b"}))']),
        ("(a or 0 * b) / c < 0.9\nand sum by (ch) (increase(d[5m])) >= 10",
         ["(a or 0 * b) / c", "sum by (ch) (increase(d[5m]))"]),
        ('x{a=~"p|q"} >= bool 2', ['x{a=~"p|q"}']),
    ):
        assert operands(condition) == expected, condition


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(dualflow_[a-z0-9_]+)", expr))


def excuses(expr: str) -> set[str]:
    """The MAY_BE_EMPTY entries that cover `expr` being empty: a metric it names, or a metric and a
    label matcher it selects by (`name{label="value"}`)."""
    names = metric_names(expr)
    found = set()
    for key in MAY_BE_EMPTY:
        name, _, matcher = key.partition("{")
        if name in names and matcher.removesuffix("}") in expr:
            found.add(key)
    return found


def test_excuses_name_a_metric_or_a_metric_and_one_label_value() -> None:
    windows = 'dualflow_clearing_windows_total{state="partially_settled"}'
    failed = 'dualflow_clearing_settlement_transfers_total{outcome=~"failed|contradicted"}'
    # expression, the entries that excuse it
    for expr, expected in (
        (f"sum by (outcome) (increase({failed}[1h])) > 0", {failed}),
        ('sum by (outcome) (rate(dualflow_clearing_settlement_transfers_total{job="dualflow"}[1m]))', set()),
        ('sum(rate(dualflow_channel_bad_macs_total{job="dualflow"}[1m]))', {"dualflow_channel_bad_macs_total"}),
        ('sum(increase(dualflow_clearing_windows_total{job="dualflow", state="partially_settled"}[1h]))', {windows}),
        ('sum by (state) (increase(dualflow_clearing_windows_total{job="dualflow"}[1d]))', set()),
        ('sum(dualflow_clearing_open_window_net_minor{state="partially_settled"})', set()),
    ):
        assert excuses(expr) == expected, expr


class PromAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query", query=expr)
        assert body.get("status") == "success", f"query failed: {expr}\n{body}"
        result: list[dict[str, Any]] = body["data"]["result"] if body["data"]["resultType"] == "vector" else \
            [{"value": body["data"]["result"]}]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        body = self.get("/api/v1/alerts")
        assert body["status"] == "success", body
        return list(body["data"]["alerts"])

    def alert_state(self, name: str, **labels: str) -> str:
        for a in self.alerts():
            if a["labels"].get("alertname") == name and all(a["labels"].get(k) == v for k, v in labels.items()):
                return str(a["state"])
        return "inactive"

    def exposed(self, metric: str) -> bool:
        """Prometheus read this metric family's HELP/TYPE from a target (samples or not). Scraped
        as OpenMetrics, a counter's family is named without `_total`."""
        for name in {metric, metric.removesuffix("_total")}:
            body = self.get("/api/v1/targets/metadata", metric=name)
            if body.get("status") == "success" and body["data"]:
                return True
        return False


# ---------------------------------------------------------------------- processes

class Prometheus:
    def __init__(self, binary: str, folder: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.folder = folder
        self.config_path = folder / "prometheus.json"  # JSON is YAML
        config.setdefault("scrape_configs", []).append(
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]})
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = folder / "prometheus.log"
        self.args = [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={folder / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = PromAPI(f"http://127.0.0.1:{self.port}")

    def start(self, timeout_s: float = 20) -> Prometheus:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.api.base}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Receiver:
    """Webhook receivers on loopback: /ok answers 204, /gone answers 410 (a dead letter at once)."""

    def __init__(self) -> None:
        received: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(self.path)
                self.send_response(204 if self.path == "/ok" else 410)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and alive(int(entry.name)):
            found.append(f"{entry.name}: {args}")
    return found


def write_config(folder: Path, sandbox: Sandbox) -> Path:
    (folder / "routing.toml").write_text(ROUTING_TOML)
    accounts = "\n".join(f"{pool} = {{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in a.items()) + " }"
                         for pool, a in POOL_ACCOUNTS.items())
    path = folder / "dualflow.toml"
    path.write_text(f"""
[routing]
file = "{folder / 'routing.toml'}"
seed = 8

{vault_toml()}

[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 100

[[merchants]]
id = "pinned"
name = "Card-bank-only shop"
currencies = ["CNY"]
fee_bps = 100

[[callers]]
name = "ops"
api_key_sha256 = "{hash_api_key(OPS_KEY)}"
merchants = ["*"]
permissions = ["admin"]

[[callers]]
name = "limited"
api_key_sha256 = "{hash_api_key(LIMITED_KEY)}"
merchants = ["shop"]
permissions = ["payments.read"]
rate_per_s = 0.5
burst = 1

[reconciliation]
enabled = true           # the daily schedule: at start, yesterday's statement of every channel
time_utc = "00:00"
catch_up_days = 1
tick_s = 3600

[clearing]
pools = {json.dumps(list(POOLS))}
currencies = ["CNY"]
cap_policy = "refuse"
invariant_interval_s = 1  # the pool invariant and the pools against their bank
settlement_channel = "{RAIL}"

[clearing.rail_accounts]
{accounts}

[clearing.caps.bank-c]
CNY = {BANK_C_CAP}

{sandbox.channels_toml()}
""")
    return path


def shortened_rules(folder: Path) -> tuple[Path, list[str]]:
    """A copy of the real rules with every `for:` set to FOR_S seconds; the alert names."""
    original = ALERTS.read_text().splitlines(keepends=True)
    copy = [re.sub(r"^(\s+for:\s*)\S+(\s*)$", rf"\g<1>{FOR_S}s\g<2>", line) for line in original]
    changed = [(a, b) for a, b in zip(original, copy) if a != b]
    assert changed, "the rules have no `for:` to shorten"
    assert all(re.match(r"^\s+for:\s*\S+\s*$", a) for a, _ in changed), "only `for:` lines may differ"
    path = folder / "alerts.test.yml"
    path.write_text("".join(copy))
    names = re.findall(r"^\s*- alert:\s*(\S+)\s*$", ALERTS.read_text(), flags=re.M)
    return path, names


# ---------------------------------------------------------------------- traffic

class Traffic:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.gateway = payments_pb2_grpc.PaymentGatewayStub(channel)
        self.ledger = ledger_pb2_grpc.LedgerStub(channel)
        self.reconciliation = reconciliation_pb2_grpc.ReconciliationStub(channel)
        self.clearing = clearing_pb2_grpc.ClearingStub(channel)
        self.md = (("authorization", f"Bearer {OPS_KEY}"),)
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    async def pay(self, merchant: str, payer: str, payee: str, amount: int, asset: int,
                  method: pb.PaymentMethod | None = None, request_id: str | None = None) -> pb.Payment:
        request = pb.CreatePaymentRequest(request_id=request_id or self._id("r"), merchant_id=merchant, payer=payer,
                                          payee=payee, amount=amount, currency="CNY", asset=asset, method=method)
        return await self.gateway.CreatePayment(request, metadata=self.md, timeout=10)

    async def settle(self, payment: pb.Payment, *statuses: int, timeout_s: float = 15) -> pb.Payment:
        wanted = statuses or (pb.PAYMENT_STATUS_SUCCEEDED, pb.PAYMENT_STATUS_FAILED)
        deadline = time.monotonic() + timeout_s
        while payment.status not in wanted:
            assert time.monotonic() < deadline, f"{payment.payment_id} stayed {pb.PaymentStatus.Name(payment.status)}"
            await asyncio.sleep(0.05)
            payment = await self.gateway.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id),
                                                    metadata=self.md, timeout=10)
        return payment

    async def card(self, merchant: str, token: str, amount: int, payer: str = "user:alice",
                   payee: str = "user:alice") -> pb.Payment:
        return await self.pay(merchant, payer, payee, amount, pb.ASSET_BANK_CARD, pb.PaymentMethod(card_token=token))

    async def transfer(self, amount: int, user: str = "user:dave") -> pb.Payment:
        account = pb.BankAccountRef(bank_code="ICBC", account_last4="6789", holder_name="Dave")
        return await self.pay("shop", user, user, amount, pb.ASSET_BANK_TRANSFER,
                              pb.PaymentMethod(bank_account=account))


def bank_balances(sandbox: Sandbox) -> dict[str, int]:
    """Each pool's account balance at the rail's bank (its admin API)."""
    numbers = {a["number"]: pool for pool, a in POOL_ACCOUNTS.items()}
    return {numbers[a["number"]]: a["balance"] for a in sandbox.banks[RAIL]._call("GET", "/accounts")
            if a["number"] in numbers}


async def fund_pools(t: Traffic, sandbox: Sandbox) -> None:
    """Our own money into each pool, in the ledger (an own-funds posting, as clearing/pools.py
    `deposit_own_funds` makes) and at the bank."""
    equity = own_funds_account("CNY")
    created = await t.ledger.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=[
        ledger_pb2.Account(id=equity.id, currency="CNY", code=int(equity.code))]), metadata=t.md, timeout=10)
    assert list(created.results) in ([ledger_pb2.CREATE_ACCOUNT_RESULT_OK], [ledger_pb2.CREATE_ACCOUNT_RESULT_EXISTS])
    deposits = [ledger_pb2.Transfer(id=account_id(f"clearing:own-funds:float-{pool}"),
                                    debit_account_id=pool_account(pool, "CNY").id, credit_account_id=equity.id,
                                    amount=FLOAT, currency="CNY", code=CODE_OWN_FUNDS) for pool in POOLS]
    posted = await t.ledger.CreateTransfers(ledger_pb2.CreateTransfersRequest(transfers=deposits), metadata=t.md,
                                            timeout=10)
    assert list(posted.results) == [ledger_pb2.CREATE_TRANSFER_RESULT_OK] * len(POOLS), posted
    sandbox.banks[RAIL]._call("PUT", "/accounts", [{**a, "balance": FLOAT} for a in POOL_ACCOUNTS.values()])


async def ordinary_day(t: Traffic, sandbox: Sandbox, token: str, receiver: Receiver, metrics_url: str) -> None:
    md = t.md
    for path in ("/ok", "/gone"):
        await t.gateway.RegisterWebhook(pb.RegisterWebhookRequest(merchant_id="shop", url=receiver.url + path),
                                        metadata=md, timeout=10)
    # Card top-ups, both card channels (exploration), and the pinned merchant on the card bank.
    topups = [await t.card("shop", token, 20_000 + i) for i in range(6)]
    topups += [await t.card("pinned", token, 5_000 + i, payee="merchant:pinned") for i in range(3)]
    settled = [await t.settle(p) for p in topups]
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in settled), settled
    # Wallet and points: payments, one without funds, an idempotent replay, a refund.
    wallet = [await t.pay("shop", "user:alice", "merchant:shop", 1_000 + i, pb.ASSET_WALLET) for i in range(4)]
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in wallet)
    broke = await t.pay("shop", "user:bob", "merchant:shop", 99_999, pb.ASSET_WALLET)
    assert broke.failure_reason == "INSUFFICIENT_FUNDS"
    again = await t.pay("shop", "user:alice", "merchant:shop", 1_000, pb.ASSET_WALLET, request_id="r-replayed")
    assert (await t.pay("shop", "user:alice", "merchant:shop", 1_000, pb.ASSET_WALLET,
                        request_id="r-replayed")).payment_id == again.payment_id
    await t.pay("shop", "merchant:shop", "user:alice", 500, pb.ASSET_POINTS)
    await t.pay("shop", "user:alice", "merchant:shop", 200, pb.ASSET_POINTS)
    await t.gateway.RefundPayment(pb.RefundPaymentRequest(request_id="f-1", payment_id=wallet[0].payment_id,
                                                          amount=300), metadata=md, timeout=10)
    for _ in range(2):
        await t.gateway.GetBalance(pb.GetBalanceRequest(user_id="alice", asset=pb.ASSET_WALLET, currency="CNY"),
                                   metadata=md, timeout=10)
    # Card declines by the card bank (payer declines: the breaker does not count them).
    sandbox.banks[CARD].set_profile(decline_rate=1.0)
    declined = [await t.settle(await t.card("pinned", token, 777, payee="merchant:pinned")) for _ in range(2)]
    assert all(p.status == pb.PAYMENT_STATUS_FAILED for p in declined), declined
    sandbox.banks[CARD].set_profile(decline_rate=0.0)
    # Bank transfers: accepted, then settled by the rail's callback. Then replies lost and every
    # signature bad: UNKNOWN, callbacks refused, polls answered UNKNOWN; once the rail is sane
    # again, a poll or a redelivered callback settles them.
    sandbox.banks[RAIL].set_profile(pending_rate=1.0, settle_after_ms=200)
    pending = [await t.transfer(30_000 + i) for i in range(3)]
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in [await t.settle(p) for p in pending])
    sandbox.banks[RAIL].set_profile(pending_rate=0.0, lost_reply_rate=1.0, bad_signature_rate=1.0)
    lost = [await t.transfer(40_000 + i) for i in range(2)]
    lost = [await t.settle(p, pb.PAYMENT_STATUS_UNKNOWN) for p in lost]
    deadline = time.monotonic() + 10
    while not scrape_value(metrics_url, f'dualflow_channel_polls_total{{channel="{RAIL}",outcome="UNKNOWN"}}'):
        assert time.monotonic() < deadline, "the UNKNOWN transfers were not polled"
        await asyncio.sleep(0.1)
    sandbox.banks[RAIL].set_profile(lost_reply_rate=0.0, bad_signature_rate=0.0)
    assert all(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in [await t.settle(p) for p in lost])
    # Refused calls: a rate-limited caller and an unknown key.
    limited = (("authorization", f"Bearer {LIMITED_KEY}"),)
    codes = []
    for _ in range(3):
        try:
            await t.gateway.GetBalance(pb.GetBalanceRequest(user_id="alice", asset=pb.ASSET_WALLET, currency="CNY"),
                                       metadata=limited, timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await t.gateway.GetPayment(pb.GetPaymentRequest(payment_id=again.payment_id),
                                   metadata=(("authorization", "Bearer dfk_" + "x" * 24),), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def class_counts(run: rpb.ReconciliationRun) -> dict[str, int]:
    return {rpb.ReconciliationClass.Name(c.match_class).removeprefix("RECONCILIATION_CLASS_"): c.lines
            for c in run.counts}


async def back_office(t: Traffic, sandbox: Sandbox) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Close of day: reconciliation of each channel and clearing between the pools. Answers the
    netting efficiency the open window's obligations make (for the dashboard's panel) and each
    channel's statement lines by class."""
    md, today = t.md, time.strftime("%Y-%m-%d", time.gmtime())
    # The daily schedule reconciles yesterday's statements (empty) of every channel at start.
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
    wanted = sorted((name, rpb.RUN_STATE_COMPLETED) for name in NAMES.values())
    deadline = time.monotonic() + 20
    while True:
        scheduled = (await t.reconciliation.ListRuns(rpb.ListRunsRequest(business_date=yesterday), metadata=md,
                                                     timeout=10)).runs
        if sorted((r.channel, r.state) for r in scheduled) == wanted:
            break
        assert time.monotonic() < deadline, f"the daily schedule's runs of {yesterday}: {scheduled}"
        await asyncio.sleep(0.1)
    # A rail transfer whose reply is lost and whose callback is dropped: UNKNOWN, and polls get
    # no answer either. The card bank books a payment nobody sent.
    sandbox.banks[RAIL].set_profile(lost_reply_rate=1.0, callback_drop_rate=1.0)
    unknown = await t.settle(await t.transfer(45_000), pb.PAYMENT_STATUS_UNKNOWN)
    sandbox.banks[CARD].set_profile(phantom_amount=PHANTOM)
    runs = {name: await t.reconciliation.RunReconciliation(
        rpb.RunReconciliationRequest(channel=name, business_date=today), metadata=md, timeout=60)
        for name in (CARD, PSP, RAIL)}
    sandbox.banks[RAIL].set_profile(lost_reply_rate=0.0, callback_drop_rate=0.0)
    assert {name: run.state for name, run in runs.items()} == dict.fromkeys(runs, rpb.RUN_STATE_COMPLETED), runs
    assert class_counts(runs[CARD]).get("MISSING_INTERNALLY", 0) >= 1, runs[CARD]
    assert class_counts(runs[RAIL]).get("STATUS_MISMATCH", 0) >= 1 and runs[RAIL].auto_resolved >= 1, runs[RAIL]
    settled = await t.gateway.GetPayment(pb.GetPaymentRequest(payment_id=unknown.payment_id), metadata=md, timeout=10)
    assert settled.status == pb.PAYMENT_STATUS_SUCCEEDED, "the rail's statement settles the UNKNOWN transfer"
    open_ = (await t.reconciliation.ListDiscrepancies(rpb.ListDiscrepanciesRequest(channel=CARD), metadata=md,
                                                      timeout=10)).discrepancies
    assert rpb.RECONCILIATION_CLASS_MISSING_INTERNALLY in {d.match_class for d in open_}, open_
    # The rail's statement comes out truncated: the forced re-run is REJECTED, nothing applied.
    sandbox.banks[RAIL].set_profile(statement_fault="truncated")
    broken = await t.reconciliation.RunReconciliation(
        rpb.RunReconciliationRequest(channel=RAIL, business_date=today, force=True), metadata=md, timeout=60)
    sandbox.banks[RAIL].set_profile(statement_fault="")
    assert (broken.state, broken.error_reason) == (rpb.RUN_STATE_REJECTED, "TRUNCATED"), broken

    # Clearing: a owes b, b owes c, c owes a (bank-c's net debit stays under its cap); then c
    # would owe b enough to pass its cap (refused); a replay; the cut-off.
    async def owe(oid: str, debtor: str, creditor: str, amount: int) -> cpb.RecordObligationResponse:
        obligation = cpb.Obligation(obligation_id=oid, debtor_pool=debtor, creditor_pool=creditor,
                                    amount_minor=amount, currency="CNY")
        return await t.clearing.RecordObligation(cpb.RecordObligationRequest(obligation=obligation), metadata=md,
                                                 timeout=10)

    for oid, debtor, creditor, amount in (("o-1", "bank-a", "bank-b", 30_000), ("o-2", "bank-b", "bank-c", 20_000),
                                          ("o-3", "bank-c", "bank-a", 25_000)):
        assert (await owe(oid, debtor, creditor, amount)).status == cpb.OBLIGATION_ADMITTED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await owe("o-4", "bank-c", "bank-b", BANK_C_CAP + 30_000)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert (await owe("o-1", "bank-a", "bank-b", 30_000)).replayed
    closed = await t.clearing.CloseWindow(cpb.CloseWindowRequest(window_id="current"), metadata=md, timeout=10)
    assert closed.state == cpb.WINDOW_CLOSED, closed
    # Positions a -5,000, b +10,000, c -5,000: the settlement moves 10,000 of 75,000 gross.
    (netting,) = closed.netting
    assert (netting.gross_minor, netting.net_minor) == (75_000, 10_000), netting
    assert netting.efficiency == pytest.approx(1 - 10_000 / 75_000)
    # The server settles it over the rail: the bank's balances move by the net positions.
    deadline = time.monotonic() + 10
    while (window := await t.clearing.GetWindow(cpb.GetWindowRequest(window_id=closed.window_id), metadata=md,
                                                timeout=10)).state != cpb.WINDOW_SETTLED:
        assert time.monotonic() < deadline, f"the window was not settled over the rail: {window}"
        await asyncio.sleep(0.1)
    assert bank_balances(sandbox) == {"bank-a": FLOAT - 5_000, "bank-b": FLOAT + 10_000, "bank-c": FLOAT - 5_000}
    # The next window: a -5,000, b -7,000, c +12,000 of 19,000 gross.
    for oid, debtor, creditor, amount in (("o-5", "bank-a", "bank-c", 12_000), ("o-6", "bank-b", "bank-a", 7_000)):
        assert (await owe(oid, debtor, creditor, amount)).status == cpb.OBLIGATION_ADMITTED
    return {"CNY": 1 - 12_000 / 19_000}, {name: class_counts(run) for name, run in runs.items()}


def scrape_value(url: str, sample: str) -> float | None:
    with urllib.request.urlopen(url, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


async def outage_until_the_breaker_alert_fires(t: Traffic, sandbox: Sandbox, token: str, metrics_url: str,
                                               api: PromAPI) -> dict[str, float]:
    """The card bank refuses connections; the pinned merchant keeps paying by card. Answers the
    seconds from the breaker opening (as the server's /metrics shows it) to pending and firing."""
    state = f'dualflow_routing_breaker_state{{channel="{CARD}"}}'
    assert scrape_value(metrics_url, state) == 0, "the card bank's breaker is closed before the outage"
    assert api.alert_state("DualflowChannelBreakerOpen", channel=CARD) == "inactive"
    sandbox.banks[CARD].set_profile(outage=True)
    opened_at = None
    for _ in range(12):
        try:
            await t.settle(await t.card("pinned", token, 900, payee="merchant:pinned"))
        except grpc.aio.AioRpcError as exc:  # NO_CHANNEL once the breaker is open
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
        if scrape_value(metrics_url, state) == 2:
            opened_at = time.monotonic()
            break
    assert opened_at is not None, "the card bank's breaker did not open"
    seen: dict[str, float] = {}
    deadline = opened_at + FOR_S + 20
    while "firing" not in seen:
        assert time.monotonic() < deadline, f"no firing breaker alert {FOR_S + 20}s after the breaker opened: {seen}"
        # Card payments keep coming: the pinned merchant's are refused (NO_CHANNEL), the shop's
        # go to the PSP.
        for merchant, payee in (("pinned", "merchant:pinned"), ("shop", "user:alice")):
            try:
                await t.card(merchant, token, 1_100, payee=payee)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
        state_now = api.alert_state("DualflowChannelBreakerOpen", channel=CARD)
        if state_now != "inactive":
            seen.setdefault(state_now, time.monotonic() - opened_at)
        await asyncio.sleep(0.25)
    assert scrape_value(metrics_url, state) == 2, "still open when the alert fires"
    return seen


# ---------------------------------------------------------------------- the test

@pytest.mark.timeout(180)
async def test_dashboard_and_alerts_against_a_real_prometheus(
        tools: tuple[str, str], tmp_path: Path, serve_processes: ServeFactory,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus_bin, _ = tools
    started = time.monotonic()
    job = re.search(r"^\s*- job_name:\s*(\S+)", PROMETHEUS_YML.read_text(), flags=re.M)
    assert job is not None and job[1] == "dualflow", "the shipped scrape config's first job is dualflow"
    pids: list[int] = []
    sandbox = Sandbox(tmp_path / "sandbox")
    receiver = Receiver()
    prometheus: Prometheus | None = None
    server: ServeProcess | None = None
    try:
        sandbox.start(fee_bps=FEE_BPS)
        for kind, name in NAMES.items():  # the banks charge what their channels' fee schedules say
            sandbox.banks[name].set_profile(fee_bps=FEE_BPS[kind])
        pids += [bank.proc.pid for bank in sandbox.banks.values() if bank.proc is not None]
        # The pools' accounts at the rail's bank, empty until fund_pools (so the server's first
        # checks compare 0 with 0).
        sandbox.banks[RAIL]._call("PUT", "/accounts", [{**a, "balance": 0} for a in POOL_ACCOUNTS.values()])
        monkeypatch.setenv("DUALFLOW_BALANCE_CHECK_INTERVAL_S", "1")
        db = tmp_path / "ledger.db"
        server = serve_processes(str(db), "--config", str(write_config(tmp_path, sandbox)), "--metrics-port", "0",
                                 "--callback-port", str(sandbox.callback_port), "--grace", "2", name="serve")
        pids.append(server.pid)
        assert server.metrics_url is not None
        metrics_url = server.metrics_url
        target = urllib.parse.urlsplit(metrics_url).netloc
        rules, alert_names = shortened_rules(tmp_path)
        prometheus = Prometheus(prometheus_bin, tmp_path, {
            "global": {"scrape_interval": f"{STEP_S}s", "scrape_timeout": f"{STEP_S}s",
                       "evaluation_interval": f"{STEP_S}s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "dualflow", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}],
        }).start()
        assert prometheus.proc is not None
        pids.append(prometheus.proc.pid)
        api = prometheus.api

        # The real rules are loaded, all of them, with the shortened `for`.
        groups = api.get("/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert sorted(loaded) == sorted(alert_names)
        assert all(r["duration"] in (0, FOR_S) for r in loaded.values())

        async with grpc.aio.insecure_channel(server.address) as channel:
            t = Traffic(channel)
            token = (await t.gateway.TokenizeCard(pb.TokenizeCardRequest(card_number=VISA, exp_month=12,
                                                                          exp_year=2031), metadata=t.md)).token
            await fund_pools(t, sandbox)
            await ordinary_day(t, sandbox, token, receiver, metrics_url)
            efficiency, lines_by_class = await back_office(t, sandbox)
            traffic_s = time.monotonic() - started

            # Every target is up (the platform and Prometheus itself).
            deadline = time.monotonic() + 10
            while True:
                targets = api.get("/api/v1/targets")["data"]["activeTargets"]
                if len(targets) == 2 and all(tg["health"] == "up" for tg in targets):
                    break
                assert time.monotonic() < deadline, f"targets not all up: {targets}"
                time.sleep(0.2)
            assert {tg["labels"]["job"] for tg in targets} == {"dualflow", "prometheus"}

            # A bank goes down: the breaker alert goes pending, then fires FOR_S later.
            breaker = await outage_until_the_breaker_alert_fires(t, sandbox, token, metrics_url, api)
            assert "pending" in breaker, f"the alert fired without a pending phase: {breaker}"
            # From the breaker opening: the next scrape (<= 1 step) and evaluation (<= 1 step) make
            # it pending, FOR_S later it fires; a little slack for this loop's own pace.
            assert FOR_S - STEP_S <= breaker["firing"] <= FOR_S + 3 * STEP_S + 2.5, breaker

            # The books changed around the writer: the trial balance alert pages within seconds.
            account = ledger_pb2.Account(id=990_001, currency="CNY", code=ledger_pb2.ACCOUNT_CODE_FEE)
            await t.ledger.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=[account]), metadata=t.md)
        assert api.alert_state("DualflowTrialBalanceBroken", currency="CNY") == "inactive"
        # Until now the reserve funds cover everything, and every pool's bank agrees with its ledger
        # account (the settlement moved both by the same amounts).
        invariant = 'max by (currency) (dualflow_clearing_pool_invariant_difference_minor)'
        assert {r["metric"]["currency"]: r["value"][1] for r in api.query(invariant)} == {"CNY": "0"}
        assert api.alert_state("DualflowClearingPoolInvariantBroken") == "inactive"
        against_bank = {name: f'max by (pool) (dualflow_clearing_pool_bank_{name}_minor{{currency="CNY"}})'
                        for name in ("difference", "unexplained")}
        for expr in against_bank.values():
            assert {r["metric"]["pool"]: r["value"][1] for r in api.query(expr)} == dict.fromkeys(POOLS, "0"), expr
        assert api.alert_state("DualflowPoolBankMismatch") == "inactive"
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("UPDATE accounts SET debits_posted = debits_posted + 7 WHERE id = ?", (990_001,))
        # And the bank books money into bank-b's account that no transfer of ours explains.
        sandbox.banks[RAIL]._call("PUT", "/accounts", [{**POOL_ACCOUNTS["bank-b"],
                                                        "balance": FLOAT + 10_000 + UNRECORDED}])
        tampered = time.monotonic()
        seen: dict[str, float] = {}  # trial balance firing; pool invariant and bank mismatch pending, firing
        while not {"trial balance firing", "invariant firing", "bank mismatch firing"} <= seen.keys():
            assert time.monotonic() - tampered < FOR_S + 10, f"alerts after the change: {seen}"
            if api.alert_state("DualflowTrialBalanceBroken", currency="CNY", balance="posted") == "firing":
                seen.setdefault("trial balance firing", time.monotonic() - tampered)
            for alert, key, labels in (("DualflowClearingPoolInvariantBroken", "invariant", {"currency": "CNY"}),
                                       ("DualflowPoolBankMismatch", "bank mismatch",
                                        {"pool": "bank-b", "currency": "CNY"})):
                state = api.alert_state(alert, **labels)
                if state != "inactive":
                    seen.setdefault(f"{key} {state}", time.monotonic() - tampered)
            time.sleep(0.2)
        trial_s = seen["trial balance firing"]
        assert trial_s < 10, seen
        # Both pool alerts: pending first, firing FOR_S later (the `for` of the copy; 5m in the real rules).
        for key in ("invariant", "bank mismatch"):
            assert f"{key} pending" in seen and seen[f"{key} firing"] - seen[f"{key} pending"] >= FOR_S - 1, seen
        assert api.query('dualflow_ledger_trial_balance_difference{currency="CNY", balance="posted"}')[0]["value"][1] \
            == "7"
        # The invariant sees the ledger's change, not the bank's; the bank check sees the bank's
        # (the fee account is no pool's), in bank-b only.
        assert {r["metric"]["currency"]: r["value"][1] for r in api.query(invariant)} == {"CNY": "7"}
        for expr in against_bank.values():
            assert {r["metric"]["pool"]: r["value"][1] for r in api.query(expr)} == \
                {"bank-a": "0", "bank-b": str(UNRECORDED), "bank-c": "0"}, expr
        for pool in ("bank-a", "bank-c"):
            assert api.alert_state("DualflowPoolBankMismatch", pool=pool) == "inactive", pool

        # The back office's day reached the reconciliation alerts: the phantom card payment is an
        # open discrepancy; the rail's rejected re-run was its counter's first (a series born at 1).
        for name, labels in (("DualflowReconciliationDiscrepanciesOpen", {"class": "MISSING_INTERNALLY"}),
                             ("DualflowReconciliationRunNotCompleted", {"channel": RAIL, "result": "rejected"})):
            assert api.alert_state(name, **labels) == "firing", (name, labels, api.alerts())
        # The dashboard's netting efficiency of the open window is the clearing service's formula.
        (expr,) = [e for title, e in dashboard_queries() if title == "Netting efficiency of the open window"]
        answer = {r["metric"]["currency"]: float(r["value"][1]) for r in api.query(expr)}
        assert answer == pytest.approx(efficiency), (answer, efficiency)

        # The clearing feed read the succeeded payments: every party is homed at the first pool, so
        # none of them moved money between pools.
        feed = {r["metric"]["result"]: float(r["value"][1])
                for r in api.query("sum by (result) (dualflow_clearing_feed_events_total)")}
        assert feed.get("none", 0) >= 10 and "recorded" not in feed, feed

        # Dead letters reached Prometheus (the /gone receiver answered 410).
        assert "/gone" in receiver.received and "/ok" in receiver.received
        assert api.alert_state("DualflowWebhooksDeadLettered") == "firing"

        # Every expression parses and evaluates; dashboard queries and alert operands have data.
        empty: list[str] = []
        excused_empty: set[str] = set()
        checked = 0
        queries = dashboard_queries()
        for name, rule in sorted(loaded.items()):
            api.query(rule["query"])  # the whole condition evaluates
            queries += [(f"alert {name}", operand) for operand in operands(rule["query"])]
        for title, expr in queries:
            checked += 1
            if api.query(expr):
                continue
            excused = excuses(expr)
            if not excused:
                empty.append(f"{title}: {expr}")
                continue
            for key in excused:
                metric = key.partition("{")[0]
                assert api.exposed(metric), f"{metric} is not exposed by the target ({title})"
            excused_empty |= excused
        assert not empty, "queries without data:\n" + "\n".join(empty)
        assert checked >= 100
        print(f"\nprometheus test: traffic {traffic_s:.1f}s, breaker alert {breaker}, trial balance alert "
              f"{trial_s:.1f}s after the change, pool invariant and bank mismatch {seen}, "
              f"statement lines {lines_by_class}, "
              f"{checked} queries checked, empty but exposed: {sorted(excused_empty)}, "
              f"total {time.monotonic() - started:.1f}s")
    finally:
        if prometheus is not None:
            prometheus.stop()
        if server is not None and server.running():
            server.signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                pass
        serve_processes.close_all()
        sandbox.stop()
        receiver.stop()
    assert server is not None and "dualflow stopped" in server.lines, server.diagnostics()
    assert [pid for pid in pids if alive(pid)] == [], "processes left behind"
    assert processes_mentioning(str(tmp_path)) == [], "a process still names the test's folder"
