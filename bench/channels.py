"""`dualflow bench channels`: card payments end to end through the financial gateway and a mock bank.

The real thing is a card payment as a business system makes it over real gRPC
with an API key: `PaymentGateway/CreatePayment` with asset BANK_CARD and a vault
token (from `TokenizeCard`, made before the clock starts), to a server in its
own process (`dualflow serve --config ... --callback-port N`). CreatePayment
answers CREATED at once; the payment gateway then writes PROCESSING durably,
the financial gateway reveals the card from the vault and hands the instruction
to the channel's adapter, which sends it to a mock bank running as its own
process, and the answer is applied (the hold posted, the fee taken). A payment
counts when the caller sees it final: each payment is followed by its own
`WatchPayment` stream, opened as soon as CreatePayment answered, and is done
when that stream shows SUCCEEDED (the documented client pattern; it pushes the
change, so no polling interval is added to the latency). Its latency runs from
sending CreatePayment to receiving the final state, and the rate counts
payments completed per second.

Channels: the mock banks come from `gateway.sandbox.Sandbox` with a clean
profile (no faults, latency 0, no pending answers). Each channel gets its own
server and database, with a config naming only that channel, so the config
alone decides who carries the payments:

- the ISO 8583 card bank (`cardbank`: TCP, length-framed ISO 8583, AES-CMAC,
  many requests in flight on one connection, answered synchronously);
- the PSP (`wallet-psp`: signed HTTP JSON, WeChat Pay v3 conventions; it
  answers SUCCESS at once and also calls back, encrypted and signed, to the
  server's callback listener: the callback finds the payment final already).

Cases:

- `card_iso8583_c64`: 64 payments in flight (closed loop: each worker makes its
  next payment as soon as its previous one is final);
- `card_iso8583_c1`: one payment at a time (latency of one card payment);
- `card_iso8583_offered_<N>`: new payments offered at N per second whatever
  the answers do (open loop, N about half the c64 rate), latency from each
  payment's scheduled send time to its final state;
- `card_psp_c64`: 64 in flight through the PSP, on its own server;
- `empty_rpc_c64`, `empty_rpc_c1`: `grpc.health.v1.Health/Check` on the card
  bank's server and channel, the RPC ceiling.

`card_iso8583_c64` and `empty_rpc_c64` run in alternating rounds and each keeps
its best round (on a shared machine the best run is the least disturbed).

After each server stops (not a timing assertion): every payment the bench made
must be SUCCEEDED in the database and nothing else may be there, the
merchant's settlement and the fee account must hold exactly the amounts and
fees, the channel's receivable must have posted the amounts with nothing left
pending, every currency's debits must equal its credits, and the mock bank's
own book must hold exactly one successful pay per payment (none for anything
else). Anything else fails the bench (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.payments.accounts import Party, fee_account, fee_for, holding_account, receivable_account
from dualflow.core.payments.model import Asset, PaymentStatus

from . import load
from .payments import FEE_BPS, MERCHANT, PaymentsReport, Steps, open_loop, write_config
from .report import (
    add_output_options,
    BenchFailure,
    best_of,
    Case,
    load_average,
    percentile_ms,
    progress_bar,
    Ratio,
    run_and_report,
    source_version,
)
from .scratch import ScratchLedgers
from .server_process import ServerFailed, ServerProcess

CURRENCY = "CNY"
CARDS = 64  # distinct cards tokenized before the clock starts; payment i pays with card i mod CARDS
USERS = 1_000  # payment i comes from user i mod USERS (card payments open no user account)
AMOUNT_MIN, AMOUNT_SPAN = 100, 9_901  # payment i pays AMOUNT_MIN + i % AMOUNT_SPAN minor units
WATCH_TIMEOUT_S = 60.0  # a payment not final this long after CreatePayment fails the bench
OFFERED_FRACTION = 0.5

CREATE_PAYMENT = "/dualflow.v1.PaymentGateway/CreatePayment"
WATCH_PAYMENT = "/dualflow.v1.PaymentGateway/WatchPayment"
TOKENIZE_CARD = "/dualflow.v1.PaymentGateway/TokenizeCard"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

TARGETS = {"card_payments_vs_empty_rpc": 0.25}
# The mock banks' behaviour for every measured case: nothing goes wrong, nothing waits.
CLEAN_PROFILE: dict[str, Any] = {
    "latency_ms": 0, "jitter_ms": 0, "decline_rate": 0.0, "insufficient_funds_rate": 0.0, "timeout_rate": 0.0,
    "lost_reply_rate": 0.0, "late_reply_ms": 0, "pending_rate": 0.0, "duplicate_callback_rate": 0.0,
    "bad_signature_rate": 0.0, "outage": False,
}




@dataclass(frozen=True)
class Plan:
    quick: bool
    case_s: float = 10.0
    c1_s: float = 10.0
    empty_s: float = 5.0
    # card_iso8583_c64 and empty_rpc_c64 run this many times each, alternating; each keeps its best.
    rounds: int = 3
    warm_up: int = 50


FULL = Plan(quick=False)
QUICK = Plan(quick=True, case_s=2.0, c1_s=1.5, empty_s=1.5, rounds=2, warm_up=10)


def add_parser(areas: Any) -> None:
    p = areas.add_parser(
        "channels", help="card payments end to end (gateway, adapter, mock bank) vs an empty RPC",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default=None,
                   help="a new SQLite path (kept; the PSP's server uses a sibling file) or a postgresql:// DSN "
                        "(a scratch database is created on that server and dropped); default: temporary SQLite "
                        "files, removed afterwards")
    add_output_options(p)
    p.set_defaults(bench_run=run)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    return run_and_report("channels", lambda console: _bench(plan, args.db, console), args,
                          (BenchFailure, ServerFailed))


# ---------------------------------------------------------------- the caller's side

def card_number(k: int) -> str:
    """A Luhn-valid 16-digit test card: BIN 411111 (Visa), account digits from k."""
    body = f"411111{k:09d}"
    total = 0
    for pos, ch in enumerate(reversed(body)):  # the check digit will sit right of body
        d = int(ch)
        if pos % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return body + str((10 - total % 10) % 10)


@dataclass
class Api:
    """The raw methods the bench calls on one channel, and the caller's credentials."""

    metadata: tuple[tuple[str, str], ...]
    create_payment: Any
    watch_payment: Any
    tokenize_card: Any
    health: Any

    @classmethod
    def on(cls, ch: grpc.aio.Channel, api_key: str) -> Api:
        from grpc_health.v1 import health_pb2

        from dualflow.v1 import payments_pb2 as pb

        return cls(
            (("authorization", f"Bearer {api_key}"),),
            load.raw_method(ch, CREATE_PAYMENT, pb.Payment.FromString),
            ch.unary_stream(WATCH_PAYMENT, request_serializer=None, response_deserializer=pb.Payment.FromString),
            load.raw_method(ch, TOKENIZE_CARD, pb.CardSummary.FromString),
            load.raw_method(ch, HEALTH_CHECK, health_pb2.HealthCheckResponse.FromString),
        )


class CardPayments:
    """Card payments numbered 0, 1, 2... on one server, each followed until final.

    `pay(request)` is what one closed-loop call does: CreatePayment (with the
    API key), then WatchPayment until the payment is final; it answers the
    final Payment. Request i is a pure function of i and the tokens.
    """

    def __init__(self, api: Api, channel: str) -> None:
        from dualflow.v1 import payments_pb2 as pb

        self.pb = pb
        self.api = api
        self.channel = channel
        self.tokens: list[str] = []
        self.next_index = 0
        self.completed: dict[str, int] = {}  # payment id -> amount, of payments seen SUCCEEDED
        self.amount_total = 0
        self.fee_total = 0
        # Per payment, over the bench's whole life on this server (cases slice them by count):
        self.create_latencies_s: list[float] = []  # CreatePayment sent -> CREATED answered
        self.server_latencies_s: list[float] = []  # created_at_ns -> updated_at_ns of the final state

    async def tokenize(self, cards: int) -> None:
        year = datetime.now(timezone.utc).year + 3
        for k in range(cards):
            request = self.pb.TokenizeCardRequest(card_number=card_number(k), exp_month=12, exp_year=year)
            summary = await self.api.tokenize_card(request.SerializeToString(), metadata=self.api.metadata)
            self.tokens.append(summary.token)

    def request(self, i: int) -> bytes:
        pb = self.pb
        return pb.CreatePaymentRequest(
            request_id=f"card-{i:010d}", merchant_id=MERCHANT, payer=f"user:u{i % USERS}",
            payee=f"merchant:{MERCHANT}", amount=AMOUNT_MIN + i % AMOUNT_SPAN, currency=CURRENCY,
            asset=pb.ASSET_BANK_CARD, method=pb.PaymentMethod(card_token=self.tokens[i % len(self.tokens)]),
            trade_order_id=f"order-{i}",
        ).SerializeToString()

    def new(self) -> Iterator[tuple[bytes, int]]:
        while True:
            i = self.next_index
            self.next_index += 1
            yield self.request(i), 1

    async def pay(self, request: bytes) -> Any:
        pb = self.pb
        sent = time.perf_counter()
        created = await self.api.create_payment(request, metadata=self.api.metadata, timeout=WATCH_TIMEOUT_S)
        self.create_latencies_s.append(time.perf_counter() - sent)
        if created.status not in (pb.PAYMENT_STATUS_CREATED, pb.PAYMENT_STATUS_PROCESSING,
                                  pb.PAYMENT_STATUS_SUCCEEDED):
            raise BenchFailure(f"CreatePayment {created.request_id} answered {pb.PaymentStatus.Name(created.status)} "
                               f"{created.failure_reason}")
        if created.status == pb.PAYMENT_STATUS_SUCCEEDED:
            return created
        watch = self.api.watch_payment(pb.WatchPaymentRequest(payment_id=created.payment_id).SerializeToString(),
                                       metadata=self.api.metadata, timeout=WATCH_TIMEOUT_S)
        try:
            async for change in watch:
                if change.status not in (pb.PAYMENT_STATUS_CREATED, pb.PAYMENT_STATUS_PROCESSING):
                    return change
        except grpc.aio.AioRpcError as exc:
            raise BenchFailure(f"WatchPayment of {created.payment_id}: {exc.code().name} {exc.details()}") from None
        finally:
            watch.cancel()
        raise BenchFailure(f"WatchPayment of {created.payment_id} ended before a final state")

    def check_final(self, payment: Any, items: int) -> None:
        pb = self.pb
        if payment.status != pb.PAYMENT_STATUS_SUCCEEDED:
            raise BenchFailure(f"card payment {payment.request_id} ({payment.payment_id}) ended "
                               f"{pb.PaymentStatus.Name(payment.status)} {payment.failure_reason} "
                               "against a clean mock bank")
        i = int(payment.request_id.removeprefix("card-"))
        amount = AMOUNT_MIN + i % AMOUNT_SPAN
        if payment.amount != amount or payment.fee != fee_for(amount, FEE_BPS) or payment.channel != self.channel:
            raise BenchFailure(f"card payment {payment.request_id}: amount {payment.amount} fee {payment.fee} "
                               f"channel {payment.channel!r}, expected {amount}, {fee_for(amount, FEE_BPS)}, "
                               f"{self.channel!r}")
        if payment.payment_id in self.completed:
            raise BenchFailure(f"card payment {payment.payment_id} completed twice")
        self.completed[payment.payment_id] = payment.amount
        self.amount_total += payment.amount
        self.fee_total += payment.fee
        self.server_latencies_s.append(max(0, payment.updated_at_ns - payment.created_at_ns) / 1e9)


def _check_serving(response: Any, items: int) -> None:
    from grpc_health.v1 import health_pb2

    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise BenchFailure(f"Health/Check answered {response.status}")


def _repeat(request: bytes) -> Iterator[tuple[bytes, int]]:
    while True:
        yield request, 1


# ---------------------------------------------------------------- measuring

def _proc_cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """CPU time of the processes on the measured path: the server, the mock bank, this client."""

    def __init__(self, server: ServerProcess, bank: Any) -> None:
        self.server = server
        self.bank = bank

    def sample(self) -> dict[str, float | None]:
        bank_pid = self.bank.proc.pid if self.bank is not None and self.bank.proc is not None else None
        return {"server": self.server.cpu_seconds(), "mock_bank": _proc_cpu_seconds(bank_pid),
                "client": time.process_time()}

    async def measured(self, run: Callable[[], Awaitable[load.LoadResult]]
                       ) -> tuple[load.LoadResult, dict[str, Any]]:
        """One run, with the CPU each process used during it (percent of one core)."""
        before = self.sample()
        r = await run()
        after = self.sample()
        extra: dict[str, Any] = {}
        if r.elapsed_s > 0:
            for who in ("server", "mock_bank", "client"):
                b, a = before[who], after[who]
                if b is not None and a is not None:
                    extra[f"{who}_cpu_pct"] = round((a - b) / r.elapsed_s * 100)
            b, a = before["server"], after["server"]
            if b is not None and a is not None and r.latencies_s:
                extra["server_cpu_ms_per_call"] = round((a - b) / len(r.latencies_s) * 1000, 3)
        return r, extra






# ---------------------------------------------------------------- the run

async def _bench(plan: Plan, db: str | None, console: Any) -> PaymentsReport:
    from dualflow.gateway.sandbox import NAMES, Sandbox

    scratch = ScratchLedgers(db)
    report = PaymentsReport("channels", scratch.backend)
    report.settings = {
        "quick": plan.quick,
        "merchant_fee_bps": FEE_BPS,
        "cards": CARDS,
        "case_seconds": plan.case_s,
        "c1_seconds": plan.c1_s,
        "empty_seconds": plan.empty_s,
        "rounds": plan.rounds,
        "mock_profile": CLEAN_PROFILE,
        "completion": "WatchPayment per payment, opened when CreatePayment answers, until a final state",
        "source": source_version(),
    }
    report.machine["load_avg_1m_at_start"] = load_average()
    steps_total = (
        1  # mock banks
        + 3  # card bank server: start + tokenize, warm-up, stop + check
        + 2 * plan.rounds  # card c64 vs empty c64, alternating
        + 3  # card c1, offered, empty c1
        + 4  # PSP server: start + tokenize, warm-up, c64, stop + check
    )
    scratch.open()
    try:
        with tempfile.TemporaryDirectory(prefix="dualflow-bench-") as tmp, progress_bar(console) as progress:
            steps = Steps(progress, steps_total)
            steps.start("starting the mock card bank and the mock PSP (sandbox, clean profile)")
            folder = Path(tmp)
            boxes = {kind: Sandbox(folder / f"sandbox-{kind}") for kind in ("iso8583", "psp")}
            try:
                for kind, box in boxes.items():
                    await asyncio.to_thread(box.start, (kind,))
                    for bank in box.banks.values():
                        await asyncio.to_thread(bank.set_profile, **CLEAN_PROFILE)
                steps.finish()
                lines = []
                lines.append(await _channel_phase(
                    plan, report, steps, scratch, folder / "cardbank", boxes["iso8583"], NAMES["iso8583"],
                    main=True))
                lines.append(await _channel_phase(
                    plan, report, steps, scratch, folder / "psp", boxes["psp"], NAMES["psp"], main=False))
            finally:
                for box in boxes.values():
                    await asyncio.to_thread(box.stop)
        for line in lines:
            console.print(f"[green]check passed:[/] {line}", highlight=False)
            report.notes.append(f"check after the run: {line}")
    finally:
        scratch.close()
    report.machine["load_avg_1m_at_end"] = load_average()
    _order_cases(report)
    _ratios(report)
    _notes(plan, report)
    return report


async def _channel_phase(plan: Plan, report: PaymentsReport, steps: Steps, scratch: ScratchLedgers, folder: Path,
                         box: Any, channel: str, *, main: bool) -> str:
    """One server whose config names only `channel`: its cases, then its books and the bank's book."""
    from dualflow.gateway.config import generate_api_key

    folder.mkdir()
    api_key = generate_api_key()
    config = write_config(folder, api_key)
    with config.open("a") as out:
        out.write("\n" + box.channels_toml())
    url = scratch.ledger("main" if main else channel.replace("-", "_"))
    bank = box.banks[channel]
    steps.start(f"starting the server with channel {channel}, tokenizing {CARDS} cards")
    async with ServerProcess(url, config=str(config), serve_args=("--callback-port", str(box.callback_port))
                             ) as server, load.channel(server.address) as ch:
        api = Api.on(ch, api_key)
        workload = CardPayments(api, channel)
        await workload.tokenize(CARDS)
        steps.finish()
        steps.start(f"warm-up: {plan.warm_up} card payments through {channel}")
        source = workload.new()
        for _ in range(plan.warm_up):
            request, items = next(source)
            workload.check_final(await workload.pay(request), items)
        for _ in range(20):
            _check_serving(await api.health(b""), 1)
        steps.finish()
        procs = Processes(server, bank)
        kind = "iso8583" if main else "psp"
        if main:
            pay_runs: list[Case] = []
            empty_runs: list[Case] = []
            for r in range(plan.rounds):
                for what in (("pay", "empty") if r % 2 == 0 else ("empty", "pay")):
                    if what == "pay":
                        pay_runs.append(await _card_case(plan.case_s, kind, procs, workload, 64, steps))
                    else:
                        empty_runs.append(await _empty_case(plan, procs, api, 64, steps))
            best = best_of(pay_runs)
            report.cases.append(best)
            report.cases.append(await _card_case(plan.c1_s, kind, procs, workload, 1, steps))
            report.cases.append(await _offered_case(plan.case_s, _offered_rate(best.rate_per_s), procs, workload,
                                                    steps))
            report.cases.append(best_of(empty_runs))
            report.cases.append(await _empty_case(plan, procs, api, 1, steps))
        else:
            report.cases.append(await _card_case(plan.case_s, kind, procs, workload, 64, steps))
        steps.start(f"stopping the server, checking its books and {channel}'s book")
    report.settings[f"payments_{kind}"] = len(workload.completed)
    line = await _check_books(url, workload, await asyncio.to_thread(bank.book))
    steps.finish()
    return line


async def _card_case(duration_s: float, kind: str, procs: Processes, workload: CardPayments, concurrency: int,
                     steps: Steps) -> Case:
    on = steps.start(f"card payments through {workload.channel} at concurrency {concurrency}")
    first = len(workload.create_latencies_s), len(workload.server_latencies_s)
    r, cpu = await procs.measured(lambda: load.closed_loop(
        workload.pay, workload.new(), concurrency=concurrency, duration_s=duration_s, check=workload.check_final,
        on_progress=on))
    steps.finish()
    created = workload.create_latencies_s[first[0]:]
    server_side = workload.server_latencies_s[first[1]:]
    return Case.from_latencies(
        f"card_{kind}_c{concurrency}", r.items, r.elapsed_s, r.latencies_s, concurrency=concurrency,
        channel=workload.channel, rejected=r.rejected, abandoned=r.abandoned,
        create_p50_ms=_round(percentile_ms(created, 50)), create_p99_ms=_round(percentile_ms(created, 99)),
        server_p50_ms=_round(percentile_ms(server_side, 50)), server_p99_ms=_round(percentile_ms(server_side, 99)),
        **cpu)


async def _offered_case(duration_s: float, offered: int, procs: Processes, workload: CardPayments,
                        steps: Steps) -> Case:
    on = steps.start(f"card payments through {workload.channel} offered at {offered:,}/s (open loop)")
    first = len(workload.create_latencies_s), len(workload.server_latencies_s)
    r, cpu = await procs.measured(lambda: open_loop(workload.pay, workload.new(), rate_per_s=offered,
                                                    duration_s=duration_s, check=workload.check_final,
                                                    on_progress=on))
    steps.finish()
    created = workload.create_latencies_s[first[0]:]
    server_side = workload.server_latencies_s[first[1]:]
    return Case.from_latencies(
        f"card_iso8583_offered_{offered}", r.items, r.elapsed_s, r.latencies_s, offered_per_s=offered,
        channel=workload.channel, create_p50_ms=_round(percentile_ms(created, 50)),
        create_p99_ms=_round(percentile_ms(created, 99)), server_p50_ms=_round(percentile_ms(server_side, 50)),
        server_p99_ms=_round(percentile_ms(server_side, 99)), **cpu)


def _offered_rate(c64_rate: float) -> int:
    """About OFFERED_FRACTION of the saturated rate, rounded to two significant digits (a readable name)."""
    target = max(1.0, c64_rate * OFFERED_FRACTION)
    digits = max(0, int(math.floor(math.log10(target))) - 1)
    return max(1, int(round(target, -digits)))


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


async def _empty_case(plan: Plan, procs: Processes, api: Api, concurrency: int, steps: Steps) -> Case:
    on = steps.start(f"empty RPC (Health/Check) at concurrency {concurrency}")
    r, cpu = await procs.measured(lambda: load.closed_loop(
        lambda request: api.health(request), _repeat(b""), concurrency=concurrency, duration_s=plan.empty_s,
        check=_check_serving, on_progress=on))
    steps.finish()
    cpu.pop("mock_bank_cpu_pct", None)
    return Case.from_latencies(f"empty_rpc_c{concurrency}", r.items, r.elapsed_s, r.latencies_s,
                               concurrency=concurrency, **cpu)


async def _check_books(url: str, workload: CardPayments, book: list[dict[str, Any]]) -> str:
    """After the server stopped: its database and the bank's book hold exactly the payments made, and balance."""
    store = store_from_url(url)
    await store.open()
    settlement = holding_account(Party("merchant", MERCHANT), Asset.BANK_CARD, CURRENCY)
    receivable = receivable_account(workload.channel, CURRENCY)
    try:
        by_status = dict(await store.query("SELECT status, COUNT(*) FROM payments GROUP BY status"))
        totals = await store.currency_totals()
        found = {a.id: a for a in await store.lookup_accounts([settlement.id, fee_account(CURRENCY).id,
                                                               receivable.id])}
    finally:
        await store.close()
    made = len(workload.completed)
    succeeded = int(by_status.pop(int(PaymentStatus.SUCCEEDED), 0))
    problems = []
    if succeeded != made:
        problems.append(f"{succeeded:,} payments are SUCCEEDED in the database, {made:,} were seen SUCCEEDED")
    if by_status:
        problems.append("payments in other states: " + ", ".join(
            f"{PaymentStatus(int(s)).name} {int(n):,}" for s, n in sorted(by_status.items())))
    accounts = [found.get(a.id) for a in (settlement, fee_account(CURRENCY), receivable)]
    if any(a is None for a in accounts):
        problems.append("the merchant's settlement, the fee or the channel's receivable account is missing")
    else:
        s, f, rx = accounts
        assert s is not None and f is not None and rx is not None
        if s.credits_posted - s.debits_posted != workload.amount_total - workload.fee_total:
            problems.append(f"merchant settlement holds {s.credits_posted - s.debits_posted:,}, expected "
                            f"{workload.amount_total - workload.fee_total:,}")
        if f.credits_posted != workload.fee_total:
            problems.append(f"fee account holds {f.credits_posted:,}, expected {workload.fee_total:,}")
        if rx.debits_posted != workload.amount_total or rx.debits_pending != 0:
            problems.append(f"{workload.channel} receivable: {rx.debits_posted:,} posted, {rx.debits_pending:,} "
                            f"pending; expected {workload.amount_total:,} posted, none pending")
    unbalanced = [t for t in totals if not t.balanced]
    if unbalanced:
        problems.append(f"trial balance out of balance: {unbalanced}")
    pays = [e for e in book if e.get("kind") == "pay"]
    per_payment = Counter(str(e["instruction_id"]).split("-", 1)[0] for e in pays)
    twice = [p for p, n in per_payment.items() if n > 1]
    missing = [p for p in workload.completed if p not in per_payment]
    strangers = [p for p in per_payment if p not in workload.completed]
    wrong = [e for e in pays if e.get("status") != "SUCCEEDED"
             or workload.completed.get(str(e["instruction_id"]).split("-", 1)[0]) not in (None, e.get("amount"))]
    if twice or missing or strangers or wrong:
        problems.append(f"{workload.channel}'s book: {len(twice)} payments paid more than once, {len(missing)} "
                        f"missing, {len(strangers)} not made by this bench, {len(wrong)} not SUCCEEDED or with "
                        f"another amount (first: {(twice or missing or strangers or wrong)[0]})")
    if problems:
        raise BenchFailure("the books disagree with the answers: " + "; ".join(problems))
    cny = next((t for t in totals if t.currency == CURRENCY), None)
    posted = f" ({CURRENCY} debits = credits = {cny.debits_posted:,} posted)" if cny is not None else ""
    return (f"{workload.channel}: {made:,} card payments seen SUCCEEDED, {succeeded:,} SUCCEEDED in the database "
            f"and none in any other state; the bank's book holds exactly one successful pay for each; merchant "
            f"settlement, fee and {workload.channel} receivable accounts match; trial balance balanced{posted}")


# ---------------------------------------------------------------- ratios

def _order_cases(report: PaymentsReport) -> None:
    order = ["card_iso8583_c64", "card_iso8583_c1", "card_iso8583_offered_", "card_psp_c64", "empty_rpc_c64",
             "empty_rpc_c1"]
    report.cases.sort(key=lambda c: next((k for k, o in enumerate(order) if c.name.startswith(o)), len(order)))


def _ratios(report: PaymentsReport) -> None:
    value = report.rate_ratio
    report.ratios.append(Ratio("card_payments_vs_empty_rpc", value("card_iso8583_c64", "empty_rpc_c64"),
                               TARGETS["card_payments_vs_empty_rpc"], "card_iso8583_c64", "empty_rpc_c64"))
    report.untargeted.append(Ratio("psp_payments_vs_empty_rpc", value("card_psp_c64", "empty_rpc_c64"), 0.0,
                                   "card_psp_c64", "empty_rpc_c64"))


def _notes(plan: Plan, report: PaymentsReport) -> None:
    report.notes.append(
        "card payments: CreatePayment asset BANK_CARD with a vault token (TokenizeCard, "
        f"{CARDS} cards), authenticated by API key, to one merchant (fee {FEE_BPS} bps); CreatePayment answers "
        "CREATED, then PROCESSING is written, the card revealed from the vault, the instruction sent to the mock "
        "bank and its answer applied; a payment completes when its WatchPayment stream (opened as soon as "
        "CreatePayment answered) shows it SUCCEEDED; rate counts completed payments, latency runs from sending "
        "CreatePayment to receiving the final state")
    report.notes.append(
        "create_p50/p99_ms: CreatePayment alone (sent -> CREATED answered); server_p50/p99_ms: the payment's own "
        "created_at -> final updated_at (server clock); one server per channel, each config naming only that "
        "channel; mock banks from gateway.sandbox with a clean profile (no faults, latency 0)")
    report.notes.append(
        f"card_iso8583_c64 and empty_rpc_c64 are the best of {plan.rounds} alternating runs (every run's rate in "
        f"runs_rate_per_s); card_iso8583_offered_N is an open loop at N/s (about {OFFERED_FRACTION:.0%} of the "
        "best c64 rate) with latency from each payment's scheduled send time; "
        f"each card case runs {plan.case_s:g} s (c1: {plan.c1_s:g} s, empty RPC: "
        f"{plan.empty_s:g} s); cpu_pct figures are percent of one core (server, mock bank and this client process) "
        "during the case")
    if plan.quick:
        report.notes.append("--quick: shorter cases and fewer rounds; not a figure to record")
