"""`dualflow demo`: a shop's day on the whole platform, end to end over real gRPC and real banks.

This module is the platform's side: it starts the sandbox (the three mock banks of
gateway/sandbox.py as their own processes, seeded: the ISO 8583 card bank, the PSP and the bank
transfer rail), writes a config (two merchants, the shop backend's API key stored only as a
hash, a back-office reader, fresh vault keys, the sandbox's `[[channels]]`), starts a `Platform`
on a temporary SQLite database on loopback with its callback listener where the banks call back,
lets the shop (gateway/demo_shop.py, a plain gRPC client) play its day, and acts as the
sandbox's operator meanwhile: through the mock banks' admin endpoints it gives each top-up its
own trouble (a refused connection, a lost reply, a decline, answers that come later by callback)
and lifts it again. The smart router picks each payment's channel under a routing file written
here (greedy in the morning, so each scripted scene meets its bank); at rush hour the operator
switches it to Thompson sampling through the RoutingAdmin API and cuts the card bank off for one
wave of card payments, and the router steers around the outage and back. One bank transfer gets
every answer lost and its callback dropped, under a polling window of its own (a demo setting):
the shop moves on, polling gives up, and at close of day the back office reconciles each
channel's statement of today (the Reconciliation API), which settles it and posts the channels'
fees. In the evening it reads the books through the Ledger API as the back office, the routing
decisions recorded on each payment, the router's channel health, the channel metrics from the
platform's Prometheus registry, each mock bank's own book and the day's reconciliation runs,
prints it all as tables and stops, mock banks included (also on errors and Ctrl-C). It ends by
itself in under twenty seconds and exits non-zero if a check fails.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import REGISTRY
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dualflow.adapters.dispatcher import object_id_of
from dualflow.core.money import format_minor
from dualflow.core.payments.accounts import Party, channel_fee_account, fee_account, holding_account, \
    receivable_account
from dualflow.core.payments.model import Asset
from dualflow.core.payments.procedures import PollTiming
from dualflow.v1 import ledger_pb2, ledger_pb2_grpc, payments_pb2, reconciliation_pb2, reconciliation_pb2_grpc, \
    routing_pb2, routing_pb2_grpc

from . import demo_clearing, demo_shop
from .config import generate_api_key, hash_api_key
from .demo_shop import (
    CNY,
    CUSTOMERS,
    RUSH,
    RUSH_WAVES,
    STOREFRONTS,
    Day,
    Say,
    TopUp,
    TopUpSpec,
    asset_name,
    status_name,
)
from .sandbox import NAMES, Sandbox
from .server import Platform, ServerConfig

# The mock banks draw every random decision from this seed: the same seed, the same day.
SEED = 7
CARD, PSP, RAIL = NAMES["iso8583"], NAMES["psp"], NAMES["transfer"]
CHANNELS = (CARD, PSP, RAIL)
KINDS = {CARD: "card bank, ISO 8583", PSP: "PSP, signed HTTP", RAIL: "bank transfer rail"}
# The PSP's merchant account is contracted for Visa only (BINs starting with 4): the router never
# offers it another brand, so UnionPay and Mastercard can only go to the card bank.
PSP_BIN_RANGES = (("4", "4"),)
TERMS = {PSP: "Visa cards only (its merchant account's contract)"}
# The router's configuration (routing/config.py), a file the platform watches. Its exploration
# sequence is seeded too (`[routing] seed`). The operator changes it by RPC at rush hour.
ROUTING_SEED = SEED
HEALTH_MAX_AGE_S = 2.0
ROUTING_TOML = f"""\
# Greedy on the estimated success until the operator changes it at rush hour: between two
# equally healthy channels the cheaper one wins, so a Visa payment starts at the card bank.
exploration = 0
fee_weight = 1.0
# A demo setting: the router forgets a channel's outcomes after {HEALTH_MAX_AGE_S:g} s (in production,
# minutes), so that the day's hours pass in seconds.
health_max_age_s = {HEALTH_MAX_AGE_S}
# Opens when 3 of a channel's last 5 outcomes were its faults (with at least 4 seen; the
# morning's two scripted faults at the card bank alone do not), half-open after 1 s with one
# probe at a time, closed again after 2 good probes.
[breaker]
window = 5
min_samples = 4
open_at = 0.6
cool_down_s = 1.0
probes = 1
probes_to_close = 2
"""
# The evening's fee weight (the reserve-fund day): 8 bps between a same-bank and an interbank move
# scores 0.4, more than the health estimates of rails that have seen a couple of outcomes differ.
EVENING_FEE_WEIGHT = 500.0
# Wide enough for the tables when the output is not a terminal (a pipe, a test, CI logs).
PIPE_WIDTH = 160
# Polling, tightened for a short day: the first query a little after a payment went PENDING or
# UNKNOWN (after the PSP's and the rail's callbacks are due, so those resolve by callback), then
# the platform's backoff. The window is long: nothing here should be left to reversal.
POLL_FIRST_NS = 1_000_000_000
POLL_WINDOW_NS = 3600 * 10**9
POLL_TICK_S = 0.05
# The window of the one payment meant to outlast polling (a demo setting for one scene: in
# production an hour); past it the platform stops asking and leaves it to reconciliation.
SHORT_POLL_WINDOW_NS = 1_500_000_000
# What each bank charges per payment, in basis points: what the sandbox's channel config tells the
# platform's fee model (gateway/sandbox.py), so each statement's fees match it.
FEE_BPS = {CARD: 55, PSP: 60, RAIL: 10}

# Every bank answers, correctly and after a short moment (so the shop's watch sees PROCESSING first).
FAIR: dict[str, Any] = {
    "latency_ms": 150, "jitter_ms": 0, "decline_rate": 0.0, "insufficient_funds_rate": 0.0, "timeout_rate": 0.0,
    "lost_reply_rate": 0.0, "late_reply_ms": 0, "pending_rate": 0.0, "duplicate_callback_rate": 0.0,
    "bad_signature_rate": 0.0, "outage": False,
}


def fair_profile(bank: str) -> dict[str, Any]:
    """FAIR for one bank, with its contracted fee; the PSP and the rail also deliver every callback
    (the card bank has none)."""
    return {**FAIR, "fee_bps": FEE_BPS[bank], **({"callback_drop_rate": 0.0} if bank != CARD else {})}


@dataclass(frozen=True, slots=True)
class Fault:
    """Trouble at the banks for one top-up: profile changes per bank, lifted when the top-up has
    ended, or earlier with `lift_once_booked`: as soon as the bank's book shows the payment (the
    bank decided what to do with that message when it arrived; the next one finds the fault gone)."""

    what: str
    banks: Mapping[str, Mapping[str, Any]]
    lift_once_booked: bool = False
    lifted: str = ""  # what to say when it is lifted, if not "back to fair weather"
    # A polling window of its own for this top-up's payment (0: the platform's); the fault stays
    # until that window has closed (polling gave up on it).
    poll_window_ns: int = 0


# By trade order (demo_shop.TOP_UPS): one kind of trouble each.
FAULTS: dict[str, Fault] = {
    "TOPUP-alice": Fault(
        f"{CARD} refuses connections (outage); {PSP} will answer only later, by callback",
        {CARD: {"outage": True}, PSP: {"pending_rate": 1.0, "settle_after_ms": 300}}),
    # Lifted once booked: the platform's first poll may come as soon as the payment is UNKNOWN.
    "TOPUP-bob": Fault(f"{CARD} books the next payment but its reply is lost", {CARD: {"lost_reply_rate": 1.0}},
                       lift_once_booked=True,
                       lifted=f"{CARD} has booked it (its reply stays lost); later messages are answered again"),
    "TOPUP-carol": Fault(f"{CARD} declines the next card", {CARD: {"decline_rate": 1.0}}),
    "TOPUP-carol-2": Fault(f"{RAIL} accepts the transfer and settles it later, by callback",
                           {RAIL: {"pending_rate": 1.0, "settle_after_ms": 300}}),
    "TOPUP-carol-3": Fault(f"{RAIL} settles the transfer, but every answer to the platform is lost and its callback "
                           f"is dropped; the platform polls it for {SHORT_POLL_WINDOW_NS / 1e9:g} s (a demo window)",
                           {RAIL: {"lost_reply_rate": 1.0, "callback_drop_rate": 1.0}},
                           lifted=f"the platform's polling window closed on it (UNKNOWN, left to reconciliation); "
                                  f"{RAIL} answers again",
                           poll_window_ns=SHORT_POLL_WINDOW_NS),
}


@dataclass(frozen=True, slots=True)
class Wave:
    """The banks and the router around one wave of the rush hour."""

    name: str  # as the tables show it
    banks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # profile changes, lifted after the wave
    what: str = ""
    # Wait first until the router has forgotten earlier outcomes (health_max_age_s), so that both
    # card channels start the wave even.
    even_start: bool = False


# By wave (demo_shop.RUSH): fair weather, the card bank cut off for a whole wave, the card bank back.
WAVES: tuple[Wave, ...] = (
    Wave("fair weather", even_start=True),
    Wave(f"{CARD} outage", {CARD: {"outage": True}}, f"{CARD} refuses connections (outage) for the whole wave"),
    Wave(f"{CARD} back", even_start=True),
)
assert len(WAVES) == RUSH_WAVES
# During the outage wave the card bank may be tried (refused, NOT_SUBMITTED, the payment goes to
# its fallback) while the router learns; at most this often before it steers around it.
OUTAGE_TRIES_MAX = 6


def _gauge(name: str, channel: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"channel": channel})


class SandboxOperator:
    """demo_shop.BankWeather over the sandbox: FAULTS through each mock bank's admin endpoint; and
    the platform's back office, which steers the router and reconciles the day."""

    def __init__(self, sandbox: Sandbox, say: Say, platform: Platform | None = None) -> None:
        self.sandbox = sandbox
        self.say = say
        self.platform = platform  # in this process: a scene may give one payment its own polling window
        self._lifted: set[str] = set()
        self._lifting: dict[str, asyncio.Task[None]] = {}
        self._payment_ids: dict[str, str] = {}  # trade order -> payment id, as the shop's watch showed it
        self.admin: routing_pb2_grpc.RoutingAdminStub | None = None
        self.recon: reconciliation_pb2_grpc.ReconciliationStub | None = None
        self._office: tuple[tuple[str, str], ...] = ()
        self.versions: tuple[int, int] = (0, 0)  # the routing configuration before and after rush hour
        self.runs: dict[str, reconciliation_pb2.ReconciliationRun] = {}  # close of day, by channel
        self.discrepancies: list[reconciliation_pb2.ReconciliationDiscrepancy] = []
        self._polls: PollTiming | None = None

    def steer(self, channel: grpc.aio.Channel, office_key: str) -> None:
        """The back office's controls, with its key: RoutingAdmin (routing.manage) and
        Reconciliation (reconciliation.manage)."""
        self.admin = routing_pb2_grpc.RoutingAdminStub(channel)
        self.recon = reconciliation_pb2_grpc.ReconciliationStub(channel)
        self._office = (("authorization", f"Bearer {office_key}"),)

    async def _set(self, bank: str, changes: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self.sandbox.banks[bank].set_profile, **changes)

    async def fair(self) -> None:
        for bank in self.sandbox.banks:
            await self._set(bank, fair_profile(bank))

    async def before(self, top_up: TopUpSpec) -> None:
        fault = FAULTS.get(top_up.trade_order_id)
        if fault is None:
            return
        self.say(f"sandbox: {fault.what}")
        if fault.poll_window_ns and self.platform is not None:
            # Read when the payment moves to PROCESSING, which fixes its window; restored in after().
            self._polls = self.platform.payments.polls
            self.platform.payments.polls = PollTiming(first_ns=self._polls.first_ns, window_ns=fault.poll_window_ns)
        for bank, changes in fault.banks.items():
            await self._set(bank, changes)
            if changes.get("outage") and bank == CARD:
                await self._link_down(bank)

    async def _link_down(self, bank: str, timeout_s: float = 5.0) -> None:
        """Wait until the platform's card link has noticed the cut. A payment written into the
        connection while the bank is cutting it could have arrived: that is UNKNOWN, not the
        refused connection (NOT_SUBMITTED) this fault is about."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while _gauge("dualflow_channel_connected", bank) != 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def seen(self, top_up: TopUpSpec, payment: payments_pb2.Payment) -> None:
        self._payment_ids[top_up.trade_order_id] = payment.payment_id
        fault = FAULTS.get(top_up.trade_order_id)
        if fault is not None and fault.lift_once_booked and top_up.trade_order_id not in self._lifting:
            # In the background: the shop's watch goes on meanwhile.
            self._lifting[top_up.trade_order_id] = asyncio.create_task(
                self._lift_once_booked(top_up, fault, payment.payment_id))

    async def _lift_once_booked(self, top_up: TopUpSpec, fault: Fault, payment_id: str,
                                timeout_s: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            booked = [await asyncio.to_thread(self.sandbox.banks[bank].book) for bank in fault.banks]
            if any(object_id_of(line["instruction_id"]) == payment_id for book in booked for line in book):
                break
            await asyncio.sleep(0.02)
        await self._lift(top_up, fault)

    async def after(self, top_up: TopUpSpec) -> None:
        fault = FAULTS.get(top_up.trade_order_id)
        if fault is None:
            return
        lifting = self._lifting.pop(top_up.trade_order_id, None)
        if lifting is not None:
            lifting.cancel()
            await asyncio.gather(lifting, return_exceptions=True)
        if fault.poll_window_ns and self.platform is not None:
            await self._window_closed(self._payment_ids.get(top_up.trade_order_id, ""))
            if self._polls is not None:
                self.platform.payments.polls, self._polls = self._polls, None
        await self._lift(top_up, fault)

    async def _window_closed(self, payment_id: str, timeout_s: float = 8.0) -> None:
        """Wait until the platform no longer polls the payment (its row in channel_polls is gone)."""
        assert self.platform is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if not await self.platform.ledger.query("SELECT 1 FROM channel_polls WHERE object_id = ?", (payment_id,)):
                return
            await asyncio.sleep(0.05)

    async def close_of_day(self) -> None:
        """The back office reconciles each channel's statement of today (RunReconciliation), then
        asks what is left for a person (ListDiscrepancies)."""
        assert self.recon is not None
        today = datetime.now(timezone.utc).date().isoformat()
        self.say(f"back office: each channel's statement of today ({today}) against our payments "
                 "(Reconciliation.RunReconciliation)")
        for name in CHANNELS:
            run = await self.recon.RunReconciliation(reconciliation_pb2.RunReconciliationRequest(
                channel=name, business_date=today), metadata=self._office, timeout=60)
            self.runs[name] = run
            counts = ", ".join(f"{_class_name(c.match_class)} {c.lines}" for c in run.counts if c.lines)
            resolved = f"; {run.auto_resolved} payment settled by it" if run.auto_resolved else ""
            self.say(f"{name}: {reconciliation_pb2.RunState.Name(run.state).removeprefix('RUN_STATE_').lower()}, "
                     f"{run.lines} statement lines ({counts or 'none'}){resolved}")
        found = await self.recon.ListDiscrepancies(reconciliation_pb2.ListDiscrepanciesRequest(),
                                                   metadata=self._office, timeout=10)
        self.discrepancies = list(found.discrepancies)
        self.say(f"{len(self.discrepancies)} discrepancies left for a person (ListDiscrepancies)")

    async def before_wave(self, wave: int) -> None:
        if wave == 0:
            await self._explore()
        spec = WAVES[wave]
        if spec.even_start:
            await self._even_start()
        if spec.what:
            self.say(f"sandbox: {spec.what}")
        for bank, changes in spec.banks.items():
            await self._set(bank, changes)
            if changes.get("outage") and bank == CARD:
                await self._link_down(bank)

    async def after_wave(self, wave: int) -> None:
        spec = WAVES[wave]
        for bank, changes in spec.banks.items():
            await self._set(bank, {k: v for k, v in fair_profile(bank).items() if k in changes})
        if spec.banks:
            self.say(f"sandbox: {', '.join(spec.banks)} back to fair weather")

    async def _explore(self) -> None:
        """The operator's hot change: Thompson sampling for the rush, so that both card channels
        carry a share while they look healthy and a recovered one wins traffic back."""
        assert self.admin is not None
        current = await self.admin.GetRoutingConfig(routing_pb2.GetRoutingConfigRequest(), metadata=self._office,
                                                    timeout=10)
        wanted = routing_pb2.RoutingConfig()
        wanted.CopyFrom(current.config)
        wanted.exploration = 1.0
        applied = await self.admin.ReplaceRoutingConfig(routing_pb2.ReplaceRoutingConfigRequest(
            config=wanted, expected_version=current.version), metadata=self._office, timeout=10)
        self.versions = (current.version, applied.version)
        self.say(f"operator: exploration {current.config.exploration:g} → {applied.config.exploration:g} (Thompson "
                 f"sampling) by RoutingAdmin.ReplaceRoutingConfig at version {current.version}: now version "
                 f"{applied.version} ({applied.source})")

    async def greedy(self, channel: grpc.aio.Channel) -> None:
        """Evening: back to greedy routing (exploration 0), with fees weighing more than the few
        outcomes the wallet day's fresh rails have seen (a rail's first PENDING answer would
        otherwise outweigh a fee difference of a few basis points), so that the same-bank fees decide
        where each top-up lands and where the payout leaves from."""
        admin = routing_pb2_grpc.RoutingAdminStub(channel)
        current = await admin.GetRoutingConfig(routing_pb2.GetRoutingConfigRequest(), metadata=self._office,
                                               timeout=10)
        wanted = routing_pb2.RoutingConfig()
        wanted.CopyFrom(current.config)
        wanted.exploration = 0.0
        wanted.fee_weight = EVENING_FEE_WEIGHT
        applied = await admin.ReplaceRoutingConfig(routing_pb2.ReplaceRoutingConfigRequest(
            config=wanted, expected_version=current.version), metadata=self._office, timeout=10)
        self.say(f"operator: exploration back to {applied.config.exploration:g} (greedy) and fee_weight "
                 f"{applied.config.fee_weight:g} for the evening, version {applied.version}")

    async def _even_start(self, timeout_s: float = 2 * HEALTH_MAX_AGE_S + 1) -> None:
        """Wait until the router holds no recent outcome of either card channel (ListChannelHealth)."""
        assert self.admin is not None
        loop = asyncio.get_running_loop()
        since = loop.time()
        deadline = since + timeout_s
        while True:
            health = await self.admin.ListChannelHealth(routing_pb2.ListChannelHealthRequest(),
                                                        metadata=self._office, timeout=10)
            cards = {h.channel: h for h in health.channels if h.channel in (CARD, PSP)}
            if all(h.samples == 0 for h in cards.values()) or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        breakers = ", ".join(f"{name} {_breaker_name(h.breaker)}" for name, h in sorted(cards.items()))
        self.say(f"operator: a quiet {loop.time() - since:.1f} s, until the router holds no outcome younger than "
                 f"{HEALTH_MAX_AGE_S:g} s (ListChannelHealth); breakers: {breakers}")

    async def _lift(self, top_up: TopUpSpec, fault: Fault) -> None:
        if top_up.trade_order_id in self._lifted:
            return
        self._lifted.add(top_up.trade_order_id)
        for bank, changes in fault.banks.items():
            await self._set(bank, {k: v for k, v in fair_profile(bank).items() if k in changes})
        self.say(f"sandbox: {fault.lifted or ', '.join(fault.banks) + ' back to fair weather'}")


def _class_name(cls: int) -> str:
    return reconciliation_pb2.ReconciliationClass.Name(cls).removeprefix("RECONCILIATION_CLASS_")


def _breaker_name(state: int) -> str:
    return routing_pb2.BreakerState.Name(state).removeprefix("BREAKER_").lower().replace("_", "-")


def _key32() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def write_config(path: Path, shop_key: str, office_key: str, channels_toml: str, routing_file: Path,
                 wallet_key: str, pool_channels_toml: str) -> None:
    """The platform's TOML: keys are fresh for every run and only the API keys' hashes are written;
    the channels name key files, never key material; the router reads `routing_file`."""
    merchants = "\n".join(
        f'[[merchants]]\nid = "{s.merchant_id}"\nname = "{s.name}"\ncurrencies = ["{CNY}"]\nfee_bps = {s.fee_bps}\n'
        for s in STOREFRONTS)
    ids = ", ".join(f'"{s.merchant_id}"' for s in STOREFRONTS)
    path.write_text(f"""\
[routing]
file = "{routing_file}"
seed = {ROUTING_SEED}

[vault]
active = "k1"
fingerprint_key = "{_key32()}"
[vault.keys]
k1 = "{_key32()}"

{merchants}
[[callers]]
name = "shop-backend"
api_key_sha256 = "{hash_api_key(shop_key)}"
merchants = [{ids}]
permissions = ["payments.write", "payments.read", "events.read", "cards.tokenize"]

# The business's back office reads the ledger (settlement, fees), steers the router (which
# channels may carry payments, and how) and reconciles the channels' statements; it cannot move
# money itself (reconciliation settles only what a statement proves).
[[callers]]
name = "back-office"
api_key_sha256 = "{hash_api_key(office_key)}"
merchants = ["*"]
permissions = ["ledger.read", "payments.read", "routing.read", "routing.manage", "reconciliation.read",
               "reconciliation.manage", "clearing.read", "clearing.manage"]

# The wallet app (the reserve-fund day, gateway/demo_clearing.py): top-ups, wallet transfers, payouts.
[[merchants]]
id = "{demo_clearing.MERCHANT}"
name = "Wallet"
currencies = ["{CNY}"]
fee_bps = 0

[[callers]]
name = "wallet-app"
api_key_sha256 = "{hash_api_key(wallet_key)}"
merchants = ["{demo_clearing.MERCHANT}"]
permissions = ["payments.write", "payments.read", "events.read"]

{demo_clearing.clearing_toml()}
{channels_toml}
{pool_channels_toml}
""")
    path.chmod(0o600)  # vault keys


@dataclass(frozen=True, slots=True)
class LedgerLine:
    name: str
    account: ledger_pb2.Account


def ledger_accounts(channel_names: Sequence[str]) -> list[tuple[str, int]]:
    """Every account the day can have touched, named for people. Ids are derived from names
    (core/payments/accounts.py), so the back office needs no lookup table to find them."""
    named = []
    for c in CUSTOMERS:
        user = Party("user", c.user_id)
        named.append((f"{c.user_id} wallet", holding_account(user, Asset.WALLET, CNY).id))
        named.append((f"{c.user_id} points", holding_account(user, Asset.POINTS, CNY).id))
    for s in STOREFRONTS:
        merchant = Party("merchant", s.merchant_id)
        named.append((f"{s.merchant_id} settlement", holding_account(merchant, Asset.WALLET, CNY).id))
        named.append((f"{s.merchant_id} points issued", holding_account(merchant, Asset.POINTS, CNY).id))
    named.append(("platform fees", fee_account(CNY).id))
    for name in channel_names:
        named.append((f"receivable from {name}", receivable_account(name, CNY).id))
    for name in channel_names:
        named.append((f"fees charged by {name}", channel_fee_account(name, CNY).id))
    return named


async def read_ledger(channel: grpc.aio.Channel, office_key: str, channel_names: Sequence[str]) -> list[LedgerLine]:
    stub = ledger_pb2_grpc.LedgerStub(channel)
    named = ledger_accounts(channel_names)
    reply = await stub.LookupAccounts(ledger_pb2.LookupAccountsRequest(ids=[i for _, i in named]),
                                      metadata=(("authorization", f"Bearer {office_key}"),), timeout=10)
    by_id = {a.id: a for a in reply.accounts}
    return [LedgerLine(name, by_id[i]) for name, i in named if i in by_id]


# ---- the channels, as the platform counted them and as the banks booked them

def channel_metrics() -> Counter[tuple[str, str, str]]:
    """(metric, channel, outcome or result) -> count, from the platform's Prometheus registry (it
    lives in this process): pay requests by outcome, polls by outcome, callbacks by result."""
    wanted = {"dualflow_channel_requests_total": "outcome", "dualflow_channel_polls_total": "outcome",
              "dualflow_channel_callbacks_total": "result"}
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in REGISTRY.collect():
        for sample in family.samples:
            label = wanted.get(sample.name)
            if label is None or sample.labels.get("flow", "pay") != "pay":
                continue
            counts[(sample.name, sample.labels["channel"], sample.labels[label])] += int(sample.value)
    return counts


@dataclass(slots=True)
class ChannelRow:
    name: str
    payments: int = 0
    succeeded: int = 0
    failed: int = 0
    unknown_resolved: int = 0  # WatchPayment showed UNKNOWN, then a final state
    never_sent: int = 0  # pay requests answered NOT_SUBMITTED (the payment moved to the next channel)
    answered_final: int = 0  # pay requests answered SUCCEEDED or FAILED at once
    answered_pending: int = 0  # pay requests accepted, final later (PENDING)
    answered_unknown: int = 0  # pay requests without a trustworthy answer (UNKNOWN)
    polls: int = 0
    polls_final: int = 0  # polls answered SUCCEEDED or FAILED
    callbacks: int = 0  # accepted (verified)
    callbacks_rejected: int = 0


def channel_rows(day: Day, metrics: Counter[tuple[str, str, str]]) -> list[ChannelRow]:
    rows = {name: ChannelRow(name) for name in CHANNELS}
    for p in day.payments:
        row = rows.get(p.channel)
        if row is None:
            continue
        row.payments += 1
        row.succeeded += p.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED
        row.failed += p.status == payments_pb2.PAYMENT_STATUS_FAILED
    for t in day.top_ups:
        statuses = [c.status for c in t.timeline]
        if t.channel in rows and "UNKNOWN" in statuses and statuses[-1] in ("SUCCEEDED", "FAILED"):
            rows[t.channel].unknown_resolved += 1
    for (metric, channel, what), n in metrics.items():
        row = rows.get(channel)
        if row is None:
            continue
        final = what in ("SUCCEEDED", "FAILED")
        if metric == "dualflow_channel_requests_total":
            if what == "NOT_SUBMITTED":
                row.never_sent += n
            elif what == "PENDING":
                row.answered_pending += n
            elif what == "UNKNOWN":
                row.answered_unknown += n
            elif final:
                row.answered_final += n
        elif metric == "dualflow_channel_polls_total":
            row.polls += n
            row.polls_final += n if final else 0
        elif metric == "dualflow_channel_callbacks_total":
            if what == "ACCEPTED":
                row.callbacks += n
            else:
                row.callbacks_rejected += n
    return list(rows.values())


@dataclass(slots=True)
class BookCheck:
    """One bank's book (GET /book) against our payments and refunds through that bank."""

    bank: str
    book_pay: Counter[str] = field(default_factory=Counter)  # status -> pay lines
    book_refunds: int = 0
    ours_pay: Counter[str] = field(default_factory=Counter)  # status -> our payments
    ours_refunds: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems


def check_book(bank: str, book: Sequence[Mapping[str, Any]], day: Day) -> BookCheck:
    """Instruction by instruction: each of our payments through `bank` has exactly one pay line
    there, for its amount, in its final state; the bank has no pay line we do not know; the same
    for refunds. Instruction ids are our payment (or refund) id, "-", the attempt."""
    check = BookCheck(bank)
    ours = {p.payment_id: p for p in day.payments if p.channel == bank}
    our_refunds = {r.refund_id: r for r in day.refunds if r.payment_id in ours}
    lines: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for line in book:
        if line["kind"] not in ("pay", "refund"):
            continue
        lines.setdefault((line["kind"], object_id_of(line["instruction_id"])), []).append(line)
        if line["kind"] == "pay":
            check.book_pay[line["status"]] += 1
        else:
            check.book_refunds += 1
    wanted: list[tuple[str, str, str, int, str]] = [
        ("pay", pid, p.trade_order_id, p.amount, status_name(p.status)) for pid, p in ours.items()]
    wanted += [("refund", rid, rid, r.amount, payments_pb2.RefundStatus.Name(r.status).removeprefix("REFUND_STATUS_"))
               for rid, r in our_refunds.items()]
    for kind, object_id, label, amount, status in wanted:
        if kind == "pay":
            check.ours_pay[status] += 1
        else:
            check.ours_refunds += 1
        found = lines.pop((kind, object_id), [])
        if len(found) != 1:
            check.problems.append(f"{label}: {len(found)} {kind} lines at {bank}")
        elif (found[0]["amount"], found[0]["status"]) != (amount, status):
            theirs = f"{found[0]['status']} {found[0]['amount']}"
            check.problems.append(f"{label}: ours {status} {amount}, {bank}'s {theirs}")
    for (kind, object_id), found in lines.items():
        check.problems.append(f"{object_id}: {len(found)} {kind} lines at {bank} we have no record of")
    return check


# ---- the rush hour, as each payment's routing decision recorded it, and the router's own view

@dataclass(slots=True)
class WaveRow:
    wave: str
    channel: str
    chosen: int = 0  # the router's first choice (routing.chosen)
    never_reached: int = 0  # chosen, but refused (NOT_SUBMITTED): the payment went on (routing.rerouted_from)
    carried: int = 0
    succeeded: int = 0
    breaker_open: int = 0  # left out of the decision by its circuit breaker (routing.excluded)
    estimates: list[float] = field(default_factory=list)  # its sampled success in each decision it was in


def rush_by_wave(day: Day) -> list[list[payments_pb2.Payment]]:
    """The rush hour's payments by wave, as ListPayments has them in the evening."""
    wave_of = {o.trade_order_id: o.wave for o in RUSH}
    waves: list[list[payments_pb2.Payment]] = [[] for _ in WAVES]
    for p in day.payments:
        if p.trade_order_id in wave_of:
            waves[wave_of[p.trade_order_id]].append(p)
    return waves


def wave_rows(day: Day) -> list[WaveRow]:
    rows = []
    for i, (wave, paid) in enumerate(zip(WAVES, rush_by_wave(day), strict=True)):
        for name in (CARD, PSP):
            row = WaveRow(f"{i + 1} {wave.name}", name)
            for p in paid:
                r = p.routing
                row.chosen += r.chosen == name
                row.never_reached += name in r.rerouted_from
                row.carried += p.channel == name
                row.succeeded += p.channel == name and p.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED
                row.breaker_open += any(e.channel == name and e.reason == "BREAKER_OPEN" for e in r.excluded)
                row.estimates += [c.estimated_success for c in r.candidates if c.channel == name]
            rows.append(row)
    return rows


def routing_counts() -> Counter[tuple[str, str, str]]:
    """(decisions | exclusions, channel, reason) -> count, from the platform's Prometheus registry."""
    wanted = {"dualflow_routing_decisions_total": "decisions", "dualflow_routing_exclusions_total": "exclusions"}
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name in wanted:
                counts[(wanted[sample.name], sample.labels["channel"], sample.labels["reason"])] += int(sample.value)
    return counts


def _by_reason(counts: Counter[tuple[str, str, str]], kind: str, channel: str) -> str:
    found = sorted(((reason, n) for (k, c, reason), n in counts.items() if (k, c) == (kind, channel) and n),
                   key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason} {n}" for reason, n in found)


def _rush_succeeded(day: Day) -> bool:
    paid = [p for wave in rush_by_wave(day) for p in wave]
    return len(paid) == len(RUSH) and all(p.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED for p in paid)


def _outage_tries(day: Day) -> tuple[int, int]:
    """(payments the card bank carried, times it was tried) in the outage wave."""
    outage = next(i for i, w in enumerate(WAVES) if w.banks.get(CARD, {}).get("outage"))
    paid = rush_by_wave(day)[outage]
    return sum(p.channel == CARD for p in paid), sum(CARD in p.routing.rerouted_from for p in paid)


def _healthy_shared(day: Day) -> bool:
    """Both card channels carried some of the first wave (fair weather, Thompson sampling from an
    even start: the seeded draws give each a share)."""
    carried = Counter(p.channel for p in rush_by_wave(day)[0])
    return carried[CARD] > 0 and carried[PSP] > 0


def _hot_change(day: Day, versions: tuple[int, int]) -> bool:
    before, after = versions
    rush_ids = {o.trade_order_id for o in RUSH}
    top_ups = [p for p in day.payments if p.trade_order_id.startswith("TOPUP-")]
    rush = [p for p in day.payments if p.trade_order_id in rush_ids]
    return (after == before + 1 and bool(top_ups) and all(p.routing.config_version == before for p in top_ups)
            and bool(rush) and all(p.routing.config_version == after for p in rush))


# ---- printing

def _customer(p: payments_pb2.Payment) -> str:
    """The user a payment order is about: its payer, or for points granted and top-ups its payee."""
    for party in (p.payer, p.payee):
        if party.startswith("user:"):
            return party.removeprefix("user:").split(":")[0]
    return ""


def _amount(v: int) -> str:
    return format_minor(v, CNY, with_code=False)


def _console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


def _states(t: TopUp) -> str:
    """The first state is CreatePayment's own answer; the rest came over WatchPayment. A change of
    channel shows where the payment went."""
    parts = []
    for i, c in enumerate(t.timeline):
        text = c.status + (f" ({c.reason})" if c.reason else "")
        if i and c.channel != t.timeline[i - 1].channel:
            text += f" via {c.channel}"
        parts.append(text + (f" {c.at_s:.2f}s" if i else ""))
    return " → ".join(parts)


def _ok_failed(counts: Counter[str]) -> str:
    return f"{counts['SUCCEEDED']}/{counts['FAILED']}" + (f" +{counts['PENDING']} pending" if counts["PENDING"] else "")


def _print_router(console: Console, rows: list[WaveRow], health: routing_pb2.ListChannelHealthResponse,
                  counts: Counter[tuple[str, str, str]]) -> None:
    table = Table(title="Rush hour: routing decisions by wave and card channel (Payment.routing, ListPayments)",
                  caption="chosen: the router's first choice · never reached: refused the connection (NOT_SUBMITTED),\n"
                          "so the payment went on to its fallback · breaker open: left out of the decision by the\n"
                          "channel's circuit breaker · estimate: its sampled success, mean over the wave's decisions")
    for col in ("wave", "channel", "chosen", "never reached", "carried", "succeeded", "breaker open", "estimate"):
        table.add_column(col, justify="left" if col in ("wave", "channel") else "right")
    for i, r in enumerate(rows):
        estimate = f"{sum(r.estimates) / len(r.estimates):.2f}" if r.estimates else ""
        table.add_row(r.wave, r.channel, *map(str, (r.chosen, r.never_reached, r.carried, r.succeeded,
                                                    r.breaker_open)), estimate,
                      end_section=i % 2 == 1 and i < len(rows) - 1)
    console.print(table)

    table = Table(title=f"The router in the evening (ListChannelHealth, config version {health.config_version}) "
                        f"and its decisions all day (dualflow_routing_*_total)",
                  caption=f"estimated success: the posterior mean over the last {HEALTH_MAX_AGE_S:g} s of outcomes "
                          f"(samples)\nFALLBACK: the payment's first choice never received it")
    for col in ("channel", "breaker", "estimated success", "samples", "decisions", "excluded from decisions"):
        table.add_column(col, justify="right" if col in ("estimated success", "samples") else "left")
    for h in sorted(health.channels, key=lambda h: CHANNELS.index(h.channel) if h.channel in CHANNELS else 99):
        table.add_row(h.channel, _breaker_name(h.breaker), f"{h.estimated_success:.2f}", str(h.samples),
                      _by_reason(counts, "decisions", h.channel), _by_reason(counts, "exclusions", h.channel))
    none = _by_reason(counts, "decisions", "none")
    if none:
        table.add_row("(none)", "", "", "", none, "")
    console.print(table)


def _print_tables(console: Console, day: Day, ledger: list[LedgerLine], attempts: Mapping[str, int],
                  channels: list[ChannelRow], books: list[BookCheck], rush: list[WaveRow],
                  health: routing_pb2.ListChannelHealthResponse,
                  routing: Counter[tuple[str, str, str]]) -> dict[str, bool]:
    """Print the evening's tables; returns the trial balance verdict per currency."""
    top_ups = Table(title="Top-ups, as WatchPayment showed them (seconds since the request)",
                    caption="attempt: the platform's record (a new attempt only after a provably unsent one)")
    for col in ("customer", "paid with", "amount", "channel", "attempt", "states"):
        top_ups.add_column(col, justify="right" if col in ("amount", "attempt") else "left")
    for t in day.top_ups:
        top_ups.add_row(t.user_id, t.paid_with, _amount(t.amount), t.channel, str(attempts.get(t.payment_id, "")),
                        _states(t))
    console.print(top_ups)
    _print_router(console, rush, health, routing)

    table = Table(title="Channels: our payments by the channel that carried them (ListPayments, WatchPayment); "
                        "how each channel answered (the platform's metrics)",
                    caption="sent: how the channel answered each payment sent to it (never sent: the connection "
                            "was refused, the payment went to the next channel)")
    for col in ("channel", "payments", "succeeded", "failed", "unknown→resolved", "sent: final", "pending", "unknown",
                "never sent", "polls", "polls: final", "callbacks"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for r in channels:
        callbacks = str(r.callbacks) + (f" (+{r.callbacks_rejected} rejected)" if r.callbacks_rejected else "")
        table.add_row(r.name, *map(str, (r.payments, r.succeeded, r.failed, r.unknown_resolved, r.answered_final,
                                         r.answered_pending, r.answered_unknown, r.never_sent, r.polls,
                                         r.polls_final)), callbacks)
    console.print(table)

    table = Table(title="The banks' own books (GET /book) against our payments through them "
                        "(succeeded/failed)")
    for col in ("bank", "book: pay", "book: ok/failed", "book: refunds", "ours: payments", "ours: ok/failed",
                "ours: refunds", "per instruction"):
        table.add_column(col, justify="left" if col in ("bank", "per instruction") else "right")
    for b in books:
        table.add_row(b.bank, str(sum(b.book_pay.values())), _ok_failed(b.book_pay), str(b.book_refunds),
                      str(sum(b.ours_pay.values())), _ok_failed(b.ours_pay), str(b.ours_refunds),
                      "[green]agree[/green]" if b.agrees else f"[red]{escape('; '.join(b.problems))}[/red]")
    console.print(table)

    rush_ids = {o.trade_order_id for o in RUSH}
    orders = Table(title="Payment orders (ListPayments), oldest first",
                   caption=f"(and the rush hour's {sum(p.trade_order_id in rush_ids for p in day.payments)} card "
                           f"payments at the counter, in the rush-hour table)")
    for col in ("trade order", "customer", "merchant", "asset", "amount", "fee", "refunded", "status", "reason"):
        orders.add_column(col, justify="right" if col in ("amount", "fee", "refunded") else "left", no_wrap=True)
    for p in day.payments:
        if p.trade_order_id in rush_ids:
            continue
        # A payment records the fee it would take even when it failed; only a success charges it.
        fee = p.fee if p.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED else 0
        orders.add_row(p.trade_order_id, _customer(p), p.merchant_id, asset_name(p.asset),
                       format_minor(p.amount, p.currency), _amount(fee) if fee else "",
                       _amount(p.refunded_amount) if p.refunded_amount else "", status_name(p.status),
                       p.failure_reason)
    console.print(orders)

    balances = Table(title="Balances (GetBalance)")
    for col in ("user", "wallet", "points"):
        balances.add_column(col, justify="left" if col == "user" else "right")
    for user_id, by_asset in day.balances.items():
        balances.add_row(user_id, format_minor(by_asset["WALLET"].available, CNY),
                         format_minor(by_asset["POINTS"].available, CNY))
    console.print(balances)

    books_table = Table(title=f"The books (Ledger API, back-office key), {CNY}")
    for col in ("account", "debits", "credits", "pending", "credits - debits"):
        books_table.add_column(col, justify="left" if col == "account" else "right")
    sums: dict[str, list[int]] = {}
    for line in ledger:
        a = line.account
        row = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
        total = sums.setdefault(a.currency, [0, 0, 0, 0])
        for i, v in enumerate(row):
            total[i] += v
        pending = f"-{_amount(a.debits_pending)} +{_amount(a.credits_pending)}" \
            if a.debits_pending or a.credits_pending else ""
        books_table.add_row(line.name, _amount(a.debits_posted), _amount(a.credits_posted), pending,
                            _amount(a.credits_posted - a.debits_posted))
    console.print(books_table)

    counts = Table(title="Events received (SubscribeEvents from 0)")
    counts.add_column("type")
    merchant_ids = [s.merchant_id for s in STOREFRONTS]
    for m in (*merchant_ids, "total"):
        counts.add_column(m, justify="right")
    by_type = Counter((e.type, e.merchant_id) for e in day.events)
    for type_ in sorted({t for t, _ in by_type}):
        row = [by_type[(type_, m)] for m in merchant_ids]
        counts.add_row(type_, *map(str, row), str(sum(row)))
    counts.add_row("[bold]all[/bold]", *(str(sum(1 for e in day.events if e.merchant_id == m)) for m in merchant_ids),
                   str(len(day.events)))
    console.print(counts)

    verdicts = {}
    for currency, (d_pending, d_posted, c_pending, c_posted) in sorted(sums.items()):
        balanced = d_pending == c_pending and d_posted == c_posted
        verdicts[currency] = balanced
        verdict = "[green]debits = credits[/green]" if balanced else "[red]OUT OF BALANCE[/red]"
        console.print(f"Trial balance {currency} over {len(ledger)} accounts: debits "
                      f"{format_minor(d_posted + d_pending, currency)}, credits "
                      f"{format_minor(c_posted + c_pending, currency)}: {verdict}")
    return verdicts


def _print_reconciliation(console: Console, operator: SandboxOperator) -> None:
    table = Table(title="Close of day: each channel's statement against our payments (RunReconciliation, "
                        "back-office key)",
                  caption="lines: the statement's · ours: our payments and refunds on the channel that day\n"
                          "settled: payments still open (UNKNOWN, PROCESSING) that the statement proved final, moved "
                          "through the state machine\nfees: what the channel charged (lines posted from its "
                          "receivable to its fee expense) · open: discrepancies left for a person")
    for col in ("channel", "run", "state", "lines", "ours", "classes", "settled", "fees (posted)", "open"):
        table.add_column(col, justify="right" if col in ("lines", "ours", "settled", "open") else "left")
    open_by_channel = Counter(d.channel for d in operator.discrepancies)
    for name, run in operator.runs.items():
        classes = ", ".join(f"{_class_name(c.match_class)} {c.lines or c.instructions}" for c in run.counts)
        fees = "; ".join(f"{format_minor(f.fee_minor, f.currency)} ({f.posted_now}/{f.lines})" for f in run.fees)
        table.add_row(name, run.run_id, reconciliation_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_"),
                      str(run.lines), str(run.instructions), classes, str(run.auto_resolved), fees,
                      str(open_by_channel[name]))
    console.print(table)


def _resolved_by_reconciliation(day: Day, operator: SandboxOperator) -> bool:
    t = _top_up(day, "TOPUP-carol-3")
    run = operator.runs.get(RAIL)
    paid = next((p for p in day.payments if t is not None and p.payment_id == t.payment_id), None)
    return (t is not None and run is not None and paid is not None and t.channel == RAIL
            and [c.status for c in t.timeline][-2:] == ["UNKNOWN", "SUCCEEDED"]
            and paid.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED and run.auto_resolved == 1
            and paid.metadata.get("status_note") == f"resolved by reconciliation {run.run_id}")


def _reconciled_clean(operator: SandboxOperator) -> bool:
    runs = operator.runs
    if set(runs) != set(CHANNELS) or operator.discrepancies:
        return False
    for name, run in runs.items():
        classes = {_class_name(c.match_class): c.lines for c in run.counts}
        settled = {"STATUS_MISMATCH": run.auto_resolved} if run.auto_resolved else {}
        if run.state != reconciliation_pb2.RUN_STATE_COMPLETED or set(classes) - {"MATCHED"} != set(settled) \
                or any(classes[k] != v for k, v in settled.items()):
            return False
        if any(f.posted_now != f.lines for f in run.fees):
            return False
    return True


def _top_up(day: Day, trade_order_id: str) -> TopUp | None:
    return next((t for t in day.top_ups if t.trade_order_id == trade_order_id), None)


def _rerouted_to_psp(day: Day, attempts: Mapping[str, int]) -> bool:
    t = _top_up(day, "TOPUP-alice")
    return t is not None and t.status == "SUCCEEDED" and t.channel == PSP and attempts.get(t.payment_id) == 2


def _lost_reply_resolved(day: Day, channels: list[ChannelRow]) -> bool:
    t = _top_up(day, "TOPUP-bob")
    card = next(r for r in channels if r.name == CARD)
    return (t is not None and t.channel == CARD and [c.status for c in t.timeline][-2:] == ["UNKNOWN", "SUCCEEDED"]
            and card.answered_unknown > 0 and card.polls_final > 0)


def _callbacks_resolved(day: Day, channels: list[ChannelRow]) -> bool:
    by_name = {r.name: r for r in channels}
    ended = [_top_up(day, "TOPUP-alice"), _top_up(day, "TOPUP-carol-2")]
    # Each channel answered PENDING, no poll heard a final answer: the callback brought it.
    return (all(t is not None and t.status == "SUCCEEDED" and "UNKNOWN" not in [c.status for c in t.timeline]
                for t in ended)
            and all(by_name[n].answered_pending > 0 and by_name[n].polls_final == 0 and by_name[n].callbacks > 0
                    for n in (PSP, RAIL)))


async def run_demo(console: Console | None = None) -> int:
    console = console or _console()
    started = time.monotonic()

    def say(text: str, *, heading: bool = False) -> None:
        if heading:
            console.print(f"\n[bold]{escape(text)}[/bold]")
        else:
            console.print(f"  {time.monotonic() - started:5.2f}s  {escape(text)}")

    with tempfile.TemporaryDirectory(prefix="dualflow-demo-") as tmp:
        sandbox = Sandbox(Path(tmp) / "banks", seed=SEED)
        routing_file = Path(tmp) / "routing.toml"
        routing_file.write_text(ROUTING_TOML + "\n" + demo_clearing.routing_rules([s.merchant_id for s in STOREFRONTS]))
        # The mock banks run in their own sessions (a Ctrl-C in the terminal does not reach them):
        # whatever ends this process stops them, and atexit is the last resort.
        atexit.register(sandbox.stop)
        try:
            try:
                sandbox.start(psp_bin_ranges=PSP_BIN_RANGES)
                interbank, interbank_key = sandbox.start_other_rail("interbank")
            except RuntimeError as exc:
                console.print(f"[bold red]dualflow demo FAILED[/bold red]: the mock banks did not start: "
                              f"{escape(str(exc))}")
                return 1
            operator = SandboxOperator(sandbox, say)
            await operator.fair()
            db, config = Path(tmp) / "dualflow.db", Path(tmp) / "dualflow.toml"
            shop_key, office_key, wallet_key = generate_api_key(), generate_api_key(), generate_api_key()
            write_config(config, shop_key, office_key, sandbox.channels_toml(), routing_file, wallet_key,
                         demo_clearing.channels_toml(interbank.port, str(interbank_key), sandbox.callback_base))
            platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(db), config_path=str(config),
                                             callback_port=sandbox.callback_port, grace_s=2))
            platform.payments.polls = PollTiming(first_ns=POLL_FIRST_NS, window_ns=POLL_WINDOW_NS)
            platform.payments.poll_tick_s = POLL_TICK_S
            operator.platform = platform
            metrics_before, routing_before = channel_metrics(), routing_counts()
            await platform.start()
            try:
                console.print(
                    f"[bold]dualflow demo[/bold]: the platform on {platform.address}, SQLite in {tmp}\n"
                    f"{len(STOREFRONTS)} merchants; the shop calls with a fresh API key (the config holds only "
                    f"its SHA-256)\nthe mock banks, each its own process, seeded with {SEED}:")
                for name, bank in sandbox.banks.items():
                    line = f"  {name:<11} {KINDS[name]:<20} 127.0.0.1:{bank.port}  {TERMS.get(name, '')}"
                    console.print(line.rstrip())
                console.print(f"  their callbacks to the platform's listener, {sandbox.callback_base}/<channel>")
                console.print(
                    f"the router, {routing_file.name}, seeded with {ROUTING_SEED}: exploration 0 (greedy); "
                    f"health_max_age_s {HEALTH_MAX_AGE_S:g}, a demo setting (outcomes forgotten after seconds, not "
                    f"minutes);\n  a breaker per channel, open at 3 faults in its last 5 outcomes, half-open after 1 s")
                async with grpc.aio.insecure_channel(platform.address) as channel:
                    operator.steer(channel, office_key)
                    day = await demo_shop.play_day(channel, shop_key, say, operator)
                    ledger = await read_ledger(channel, office_key, CHANNELS)
                    health = await routing_pb2_grpc.RoutingAdminStub(channel).ListChannelHealth(
                        routing_pb2.ListChannelHealthRequest(), metadata=(("authorization", f"Bearer {office_key}"),),
                        timeout=10)
                attempts = {t.payment_id: (await platform.payments.get_payment(t.payment_id)).attempt
                            for t in day.top_ups}
                metrics_after, routing_after = channel_metrics(), routing_counts()
                metrics_after.subtract(metrics_before)
                routing_after.subtract(routing_before)
                channels = channel_rows(day, metrics_after)
                books = [check_book(name, await asyncio.to_thread(sandbox.banks[name].book), day)
                         for name in CHANNELS]
                async with grpc.aio.insecure_channel(platform.address) as channel:
                    await operator.greedy(channel)
                    assert platform.pool_bank_check is not None  # the demo's [clearing] names a rail
                    wallets = await demo_clearing.play(platform, channel, wallet_key, office_key, interbank, say,
                                                       platform.pool_bank_check.check)
            finally:
                await platform.stop()
        finally:
            sandbox.stop()
            atexit.unregister(sandbox.stop)

    console.print()
    verdicts = _print_tables(console, day, ledger, attempts, channels, books, wave_rows(day), health, routing_after)
    _print_reconciliation(console, operator)
    demo_clearing.print_day(console, wallets)
    decided: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for (kind, name, reason), n in routing_after.items():
        if kind == "decisions":
            decided[name] += n
            fallbacks[name] += n if reason == "FALLBACK" else 0
    console.print("Routing decisions all day (dualflow_routing_decisions_total): " + "; ".join(
        f"{c} {decided[c]}" + (f" ({fallbacks[c]} as the fallback)" if fallbacks[c] else "")
        for c in (*CHANNELS, "none") if decided[c] or c != "none"))
    carried_in_outage, tried_in_outage = _outage_tries(day)
    tried = {0: "never", 1: "once", 2: "twice"}.get(tried_in_outage, f"{tried_in_outage} times")
    checks = {
        "a payment the card bank never received went to the PSP (attempt 2) and succeeded": _rerouted_to_psp(
            day, attempts),
        "a lost card-bank reply: UNKNOWN, then SUCCEEDED by polling": _lost_reply_resolved(day, channels),
        "answers left pending at the PSP and the rail came by callback": _callbacks_resolved(day, channels),
        f"rush hour: all {len(RUSH)} card payments succeeded, through the outage too": _rush_succeeded(day),
        f"the operator's change (version {operator.versions[0]} → {operator.versions[1]}) decided every rush-hour "
        f"payment, none before": _hot_change(day, operator.versions),
        "fair weather, Thompson sampling: both card channels carried some of the first wave": _healthy_shared(day),
        f"the {CARD} outage: it carried none of the wave; tried {tried} (at most {OUTAGE_TRIES_MAX}) before the "
        f"router steered around it": carried_in_outage == 0 and tried_in_outage <= OUTAGE_TRIES_MAX,
        "the banks' books agree with our payments, instruction by instruction": all(b.agrees for b in books),
        f"an UNKNOWN past its polling window (carol's second transfer): SUCCEEDED by {RAIL}'s statement, "
        "resolved by reconciliation": _resolved_by_reconciliation(day, operator),
        "close of day: every statement line MATCHED or settled by reconciliation, each fee as contracted and "
        "posted, nothing left for a person": _reconciled_clean(operator),
        "a retried order returned the same payment (idempotency)": day.idempotent_ok,
        "a refund above what is left was refused (REFUND_EXCEEDS_CAPTURED)": day.over_refund_refused,
        "every final state and refund arrived as an event": day.events_complete,
        "resuming the event stream from a cursor gave the same events": day.resumed_ok,
        **demo_clearing.checks(wallets),
        **{f"trial balance {c}: debits = credits": ok for c, ok in verdicts.items()},
    }
    for what, ok in checks.items():
        console.print(f"  {'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {what}")
    elapsed = time.monotonic() - started
    if all(checks.values()) and verdicts:
        console.print(f"[bold green]dualflow demo finished[/bold green] in {elapsed:.1f} s: "
                      f"{len(day.payments)} payment orders through {len(CHANNELS)} mock banks, "
                      f"{len(day.refunds)} refund, {len(day.events)} events, the books balance.")
        return 0
    console.print(f"[bold red]dualflow demo FAILED[/bold red] after {elapsed:.1f} s: "
                  f"{', '.join(w for w, ok in checks.items() if not ok) or 'no ledger accounts read'}")
    return 1


async def _run_until_signalled() -> int:
    """SIGTERM ends the demo like Ctrl-C does: the day is cancelled, the platform and the mock
    banks are stopped on the way out."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        pass
    return await run_demo()


def main() -> int:
    # The demo tells of refused connections, lost replies and reconnects as it arranges them;
    # the adapters' own warnings about them would only repeat it on stderr.
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("dualflow.adapters").setLevel(logging.ERROR)
        # Likewise the payment service's note that polling gave one payment up to reconciliation.
        logging.getLogger("dualflow.core.payments.service").setLevel(logging.ERROR)
    try:
        return asyncio.run(_run_until_signalled())
    except KeyboardInterrupt:
        print("dualflow demo interrupted; the platform and the mock banks were stopped", flush=True)
        return 130
    except asyncio.CancelledError:
        print("dualflow demo terminated; the platform and the mock banks were stopped", flush=True)
        return 143
