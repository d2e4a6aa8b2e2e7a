"""`dualflow bench payments`: internal-asset payments over real gRPC, against an empty call.

The real thing is `PaymentGateway/CreatePayment` with asset WALLET: validated,
authenticated (`authorization: Bearer <key>` against the caller table of a
`--config` file) and settled synchronously inside the ledger, where the payment
row, its idempotency key, its linked pay + fee transfers and its outbox events
commit in one group commit. It runs over real gRPC to a server in its own
process, on a ledger whose users' wallets were funded first through the Ledger
API (CreateAccounts + CreateTransfers). Payment i comes from user i mod
`users`, so concurrent payments debit different wallets; each has its own
request_id and pays the one configured merchant (fee 60 bps).

Cases:

- `payments_wallet_c64`: new payments, 64 calls in flight (closed loop);
- `payments_wallet_c1`: new payments, one at a time (latency);
- `payments_offered_<N>`: new payments offered at N per second whatever the
  answers do (open loop, N about half the c64 rate), latency from each
  payment's scheduled send time;
- `payments_replay_c64`: CreatePayment again with the exact request of a
  payment already made: the idempotent read path, answered from the stored
  payment;
- `empty_rpc_c64`, `empty_rpc_c1`: the standard `grpc.health.v1.Health/Check`
  on the same server and channel, the RPC ceiling.

`payments_wallet_c64` and `empty_rpc_c64` run in alternating rounds and each
keeps its best round: on a shared machine the best run is the least disturbed.

After the run (not a timing assertion) the server is stopped and its database
read: every payment acknowledged SUCCEEDED must be there as SUCCEEDED, nothing
else may be, the merchant's settlement and fee accounts must hold exactly the
acknowledged amounts and fees, and every currency's debits must equal its
credits. Anything else fails the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dualflow.core.ledger.model import AccountCode, AccountFlags
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.state_machine import A_OK, T_OK
from dualflow.core.payments.accounts import Party, account_id, fee_account, fee_for, holding_account
from dualflow.core.payments.model import Asset, PaymentStatus

from . import load
from .report import (
    add_output_options,
    BenchFailure,
    best_of,
    Case,
    load_average,
    progress_bar,
    Ratio,
    Report,
    run_and_report,
    source_version,
)
from .scratch import ScratchLedgers
from .server_process import ServerFailed, ServerProcess

CURRENCY = "CNY"
MERCHANT = "bench-shop"
FEE_BPS = 60
CALLER = "bench-client"
# What each user's wallet is funded with: no payment of this bench can exhaust it.
FUNDING_MINOR = 10**12
FUNDING_CODE = 9
FUNDING_BATCH = 8000
AMOUNT_MIN, AMOUNT_SPAN = 100, 9_901  # payment i pays AMOUNT_MIN + i % AMOUNT_SPAN minor units
OFFERED_FRACTION = 0.5

CREATE_PAYMENT = "/dualflow.v1.PaymentGateway/CreatePayment"
CREATE_ACCOUNTS = "/dualflow.v1.Ledger/CreateAccounts"
CREATE_TRANSFERS = "/dualflow.v1.Ledger/CreateTransfers"
LOOKUP_ACCOUNTS = "/dualflow.v1.Ledger/LookupAccounts"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

TARGETS = {"payments_vs_empty_rpc": 0.4}




@dataclass(frozen=True)
class Plan:
    quick: bool
    users: int = 10_000
    case_s: float = 10.0
    empty_s: float = 5.0
    # payments_wallet_c64 and empty_rpc_c64 run this many times each, alternating; each keeps its best.
    rounds: int = 3


FULL = Plan(quick=False)
QUICK = Plan(quick=True, case_s=1.5, empty_s=1.5, rounds=2)


def add_parser(areas: Any) -> None:
    p = areas.add_parser(
        "payments", help="CreatePayment (internal wallet) throughput and latency vs an empty RPC",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default=None,
                   help="a new SQLite path (kept) or a postgresql:// DSN (a scratch database is created on that "
                        "server and dropped); default: a temporary SQLite file, removed afterwards")
    add_output_options(p)
    p.set_defaults(bench_run=run)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    return run_and_report("payments", lambda console: _bench(plan, args.db, console), args,
                          (BenchFailure, ServerFailed))


# ---------------------------------------------------------------- report

@dataclass
class PaymentsReport(Report):
    """A Report with ratios that have no target (shown and exported, never passed or failed)."""

    untargeted: list[Ratio] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for r in self.untargeted:
            out["ratios"][r.name] = None if r.value is None else round(r.value, 3)
            out["ratio_definitions"][r.name] = f"{r.numerator} / {r.denominator}"
        return out

    def render(self, console: Any) -> None:
        from rich.table import Table

        notes, self.notes = self.notes, []
        try:
            super().render(console)
        finally:
            self.notes = notes
        if self.untargeted:
            table = Table(title="ratios without a target")
            table.add_column("ratio")
            table.add_column("value", justify="right")
            table.add_column("definition")
            for r in self.untargeted:
                table.add_row(r.name, "n/a" if r.value is None else f"{r.value:.3f}",
                              f"{r.numerator} / {r.denominator}")
            console.print(table)
        for note in self.notes:
            console.print(f"- {note}", highlight=False)


# ---------------------------------------------------------------- the platform under test

def write_config(directory: Path, api_key: str) -> Path:
    """A complete platform config: one merchant, one admin caller without a rate limit, fresh vault keys."""
    from dualflow.gateway.config import hash_api_key

    def key32() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    path = directory / "dualflow-bench-payments.toml"
    path.write_text(f"""\
[vault]
active = "bench"
fingerprint_key = "{key32()}"

[vault.keys]
bench = "{key32()}"

[[merchants]]
id = "{MERCHANT}"
name = "Bench shop"
currencies = ["{CURRENCY}"]
fee_bps = {FEE_BPS}

[[callers]]
name = "{CALLER}"
api_key_sha256 = "{hash_api_key(api_key)}"
merchants = ["{MERCHANT}"]
permissions = ["admin"]
rate_per_s = 0
""")
    return path


def user_wallet(user: int) -> Any:
    return holding_account(Party("user", f"u{user}"), Asset.WALLET, CURRENCY)


def settlement_account() -> Any:
    return holding_account(Party("merchant", MERCHANT), Asset.WALLET, CURRENCY)


EQUITY_ID = account_id("bench:payments:equity")


async def fund_users(api: Api, users: int, on_progress: Callable[[float], None]) -> None:
    """Every user's wallet opened and funded through the Ledger API, in batches."""
    from dualflow.v1 import ledger_pb2 as pb

    wallets = [user_wallet(u) for u in range(users)]
    accounts = [pb.Account(id=EQUITY_ID, currency=CURRENCY, code=int(AccountCode.EQUITY))]  # type: ignore[arg-type]
    accounts += [pb.Account(id=w.id, currency=CURRENCY, code=int(w.code), flags=int(w.flags))  # type: ignore[arg-type]
                 for w in wallets]
    steps = math.ceil(len(accounts) / FUNDING_BATCH) + math.ceil(users / FUNDING_BATCH)
    done = 0
    for start in range(0, len(accounts), FUNDING_BATCH):
        chunk = accounts[start:start + FUNDING_BATCH]
        reply = await api.create_accounts(pb.CreateAccountsRequest(accounts=chunk).SerializeToString(),
                                          metadata=api.metadata)
        bad = [r for r in reply.results if r != A_OK]
        if len(reply.results) != len(chunk) or bad:
            raise BenchFailure(f"CreateAccounts: {len(bad)} of {len(chunk)} failed (first result "
                               f"{pb.CreateAccountResult.Name(bad[0]) if bad else 'missing'})")
        done += 1
        on_progress(done / steps)
    for start in range(0, users, FUNDING_BATCH):
        chunk = wallets[start:start + FUNDING_BATCH]
        request = pb.CreateTransfersRequest(transfers=[
            pb.Transfer(id=account_id(f"bench:payments:funding:{w.id}"), debit_account_id=EQUITY_ID,
                        credit_account_id=w.id, amount=FUNDING_MINOR, currency=CURRENCY, code=FUNDING_CODE)
            for w in chunk])
        reply = await api.create_transfers(request.SerializeToString(), metadata=api.metadata)
        bad = [r for r in reply.results if r != T_OK]
        if len(reply.results) != len(chunk) or bad:
            raise BenchFailure(f"CreateTransfers (funding): {len(bad)} of {len(chunk)} failed (first result "
                               f"{pb.CreateTransferResult.Name(bad[0]) if bad else 'missing'})")
        done += 1
        on_progress(done / steps)


@dataclass
class Api:
    """The raw methods the bench calls on one channel, and the caller's credentials."""

    metadata: tuple[tuple[str, str], ...]
    create_payment: Any
    create_accounts: Any
    create_transfers: Any
    lookup_accounts: Any
    health: Any

    @classmethod
    def on(cls, ch: grpc.aio.Channel, api_key: str) -> Api:
        from grpc_health.v1 import health_pb2

        from dualflow.v1 import ledger_pb2 as lpb
        from dualflow.v1 import payments_pb2 as ppb

        return cls(
            (("authorization", f"Bearer {api_key}"),),
            load.raw_method(ch, CREATE_PAYMENT, ppb.Payment.FromString),
            load.raw_method(ch, CREATE_ACCOUNTS, lpb.CreateAccountsResponse.FromString),
            load.raw_method(ch, CREATE_TRANSFERS, lpb.CreateTransfersResponse.FromString),
            load.raw_method(ch, LOOKUP_ACCOUNTS, lpb.LookupAccountsResponse.FromString),
            load.raw_method(ch, HEALTH_CHECK, health_pb2.HealthCheckResponse.FromString),
        )

    def pay(self, request: bytes) -> Awaitable[Any]:
        """CreatePayment as a caller sends it: with its API key (auth is part of the measured path)."""
        return self.create_payment(request, metadata=self.metadata)


# ---------------------------------------------------------------- workload

class Payments:
    """CreatePayment requests numbered 0, 1, 2...; request i is a pure function of i (so it can be replayed)."""

    def __init__(self, users: int) -> None:
        from dualflow.v1 import payments_pb2 as pb

        self.pb = pb
        self.users = users
        self.next_index = 0
        self.acknowledged: list[int] = []  # indexes of payments answered SUCCEEDED, in answer order
        self._acknowledged: set[str] = set()  # their request ids
        self.amount_total = 0
        self.fee_total = 0
        self.replays = 0

    def request(self, i: int) -> bytes:
        pb = self.pb
        return pb.CreatePaymentRequest(
            request_id=f"bench-{i:010d}", merchant_id=MERCHANT, payer=f"user:u{i % self.users}",
            payee=f"merchant:{MERCHANT}", amount=AMOUNT_MIN + i % AMOUNT_SPAN, currency=CURRENCY,
            asset=pb.ASSET_WALLET, trade_order_id=f"order-{i}",
        ).SerializeToString()

    def new(self) -> Iterator[tuple[bytes, int]]:
        """Endless new payments; build cost (~10 us) is on demand, as a business system would pay it."""
        while True:
            i = self.next_index
            self.next_index += 1
            yield self.request(i), 1

    def check_new(self, response: Any, items: int) -> None:
        if response.status != self.pb.PAYMENT_STATUS_SUCCEEDED:
            raise BenchFailure(f"CreatePayment {response.request_id} answered "
                               f"{self.pb.PaymentStatus.Name(response.status)} {response.failure_reason} "
                               "for a funded wallet")
        i = int(response.request_id.removeprefix("bench-"))
        expected_fee = fee_for(AMOUNT_MIN + i % AMOUNT_SPAN, FEE_BPS)
        if response.amount != AMOUNT_MIN + i % AMOUNT_SPAN or response.fee != expected_fee:
            raise BenchFailure(f"CreatePayment {response.request_id}: amount {response.amount} fee {response.fee}, "
                               f"expected fee {expected_fee}")
        if response.request_id in self._acknowledged:
            raise BenchFailure(f"CreatePayment {response.request_id} was acknowledged twice as a new payment")
        self._acknowledged.add(response.request_id)
        self.acknowledged.append(i)
        self.amount_total += response.amount
        self.fee_total += response.fee

    def replay(self, seed: int) -> Iterator[tuple[bytes, int]]:
        """Endless replays of payments already made, drawn uniformly from those acknowledged so far."""
        rng = random.Random(seed)
        made = list(self.acknowledged)
        if not made:
            raise BenchFailure("no payment to replay")
        while True:
            yield self.request(made[int(rng.random() * len(made))]), 1

    def check_replay(self, response: Any, items: int) -> None:
        if response.status != self.pb.PAYMENT_STATUS_SUCCEEDED or response.request_id not in self._acknowledged:
            raise BenchFailure(f"a replay of {response.request_id} answered "
                               f"{self.pb.PaymentStatus.Name(response.status)} (a payment not made by this run?)")
        self.replays += items


def _check_serving(response: Any, items: int) -> None:
    from grpc_health.v1 import health_pb2

    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise BenchFailure(f"Health/Check answered {response.status}")


def _repeat(request: bytes) -> Iterator[tuple[bytes, int]]:
    while True:
        yield request, 1


# ---------------------------------------------------------------- load

async def open_loop(
    call: Callable[[Any], Awaitable[Any]],
    requests: Iterable[tuple[Any, int]],
    *,
    rate_per_s: float,
    duration_s: float,
    check: Callable[[Any, int], None],
    on_progress: Callable[[float], None] | None = None,
) -> load.LoadResult:
    """Send one request every 1/rate_per_s seconds whatever the answers do (open loop).

    Each call's latency runs from its scheduled send time, so a client that
    falls behind its schedule shows up in the latency instead of silently
    lowering the offered load. Any error fails the run: at a load below
    saturation nothing should be refused.
    """
    source = iter(requests)
    result = load.LoadResult()
    count = max(1, int(rate_per_s * duration_s))
    interval_s = 1.0 / rate_per_s
    started = time.perf_counter()
    finished = started

    async def one(request: Any, items: int, scheduled: float) -> None:
        nonlocal finished
        response = await call(request)
        done = time.perf_counter()
        check(response, items)
        result.latencies_s.append(done - scheduled)
        result.items += items
        finished = max(finished, done)

    tasks: list[asyncio.Task[None]] = []
    try:
        for k in range(count):
            scheduled = started + k * interval_s
            delay_s = scheduled - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            request, items = next(source)
            tasks.append(asyncio.create_task(one(request, items, scheduled)))
            if on_progress is not None and k % 64 == 0:
                on_progress(k / count)
            failed = next((t for t in tasks[-64:] if t.done() and t.exception() is not None), None)
            if failed is not None:
                failed.result()  # raises
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result.elapsed_s = finished - started
    return result


async def _measured(server: ServerProcess, run: Callable[[], Awaitable[load.LoadResult]]
                    ) -> tuple[load.LoadResult, dict[str, Any]]:
    """One run, with the CPU both processes used during it (percent of one core)."""
    server_before, client_before = server.cpu_seconds(), time.process_time()
    r = await run()
    server_after, client_after = server.cpu_seconds(), time.process_time()
    extra: dict[str, Any] = {}
    if r.elapsed_s > 0:
        if server_before is not None and server_after is not None:
            extra["server_cpu_pct"] = round((server_after - server_before) / r.elapsed_s * 100)
            if r.latencies_s:
                extra["server_cpu_ms_per_call"] = round((server_after - server_before) / len(r.latencies_s) * 1000,
                                                        3)
        extra["client_cpu_pct"] = round((client_after - client_before) / r.elapsed_s * 100)
    return r, extra


class Steps:
    """Progress on stderr: one bar over the run's steps, described as they go."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("payments bench", total=total)
        self.done = 0

    def start(self, what: str) -> Callable[[float], None]:
        self.progress.update(self.task, description=what, completed=self.done)

        def on_progress(fraction: float) -> None:
            self.progress.update(self.task, completed=self.done + min(1.0, fraction))

        return on_progress

    def finish(self) -> None:
        self.done += 1
        self.progress.update(self.task, completed=self.done)




def _offered_rate(c64_rate: float) -> int:
    """About OFFERED_FRACTION of the saturated rate, rounded to two significant digits (a readable name)."""
    target = max(1.0, c64_rate * OFFERED_FRACTION)
    digits = max(0, int(math.floor(math.log10(target))) - 1)
    return max(1, int(round(target, -digits)))




# ---------------------------------------------------------------- the run

async def _bench(plan: Plan, db: str | None, console: Any) -> PaymentsReport:
    scratch = ScratchLedgers(db)
    report = PaymentsReport("payments", scratch.backend)
    report.settings = {
        "quick": plan.quick,
        "users": plan.users,
        "merchant_fee_bps": FEE_BPS,
        "case_seconds": plan.case_s,
        "empty_seconds": plan.empty_s,
        "rounds": plan.rounds,
        "offered_fraction_of_c64": OFFERED_FRACTION,
        "source": source_version(),
    }
    report.machine["load_avg_1m_at_start"] = load_average()
    steps_total = (
        3  # funding, warm-up, stopping + check
        + 2 * plan.rounds  # c64 payments vs empty, alternating
        + 4  # c1 payments, c1 empty, offered, replay
    )
    scratch.open()
    try:
        url = scratch.ledger("main")
        with tempfile.TemporaryDirectory(prefix="dualflow-bench-") as tmp, progress_bar(console) as progress:
            from dualflow.gateway.config import generate_api_key

            api_key = generate_api_key()
            config = write_config(Path(tmp), api_key)
            steps = Steps(progress, steps_total)
            steps.start("starting the server")
            workload = Payments(plan.users)
            async with ServerProcess(url, config=str(config)) as server, load.channel(server.address) as ch:
                api = Api.on(ch, api_key)
                await fund_users(api, plan.users, steps.start(f"funding {plan.users:,} users' wallets (Ledger API)"))
                await asyncio.to_thread(scratch.settle, url)
                steps.finish()
                await _warm_up(api, workload)
                steps.finish()
                await _cases(plan, server, api, workload, report, steps)
                steps.start("stopping the server, checking the books")
            report.settings["payments_sent"] = len(workload.acknowledged)
            report.settings["replays_sent"] = workload.replays
            line = await _check_books(url, workload)
            steps.finish()
        console.print(f"[green]check passed:[/] {line}", highlight=False)
        report.notes.append(f"check after the run: {line}")
    finally:
        scratch.close()
    report.machine["load_avg_1m_at_end"] = load_average()
    _ratios(report)
    _notes(plan, report)
    return report


async def _warm_up(api: Api, workload: Payments) -> None:
    """A few calls of each kind so the first measured call pays no connection or cache setup."""
    source = workload.new()
    for _ in range(50):
        request, items = next(source)
        workload.check_new(await api.pay(request), items)
    for _ in range(20):
        _check_serving(await api.health(b""), 1)


async def _cases(plan: Plan, server: ServerProcess, api: Api, workload: Payments, report: PaymentsReport,
                 steps: Steps) -> None:
    pay_runs: list[Case] = []
    empty_runs: list[Case] = []
    for r in range(plan.rounds):
        for kind in (("pay", "empty") if r % 2 == 0 else ("empty", "pay")):
            if kind == "pay":
                pay_runs.append(await _payments_case(plan, server, api, workload, 64, steps))
            else:
                empty_runs.append(await _empty_case(plan, server, api, 64, steps))
    best_pay = best_of(pay_runs)
    report.cases += [best_pay]
    report.cases.append(await _payments_case(plan, server, api, workload, 1, steps))

    offered = _offered_rate(best_pay.rate_per_s)
    on = steps.start(f"CreatePayment offered at {offered:,}/s (open loop)")
    r, cpu = await _measured(server, lambda: open_loop(api.pay, workload.new(), rate_per_s=offered,
                                                       duration_s=plan.case_s, check=workload.check_new,
                                                       on_progress=on))
    steps.finish()
    report.cases.append(Case.from_latencies(f"payments_offered_{offered}", r.items, r.elapsed_s, r.latencies_s,
                                            offered_per_s=offered, **cpu))

    on = steps.start("CreatePayment replays of existing request_ids at concurrency 64")
    r, cpu = await _measured(server, lambda: load.closed_loop(api.pay, workload.replay(seed=7), concurrency=64,
                                                              duration_s=plan.case_s, check=workload.check_replay,
                                                              on_progress=on))
    steps.finish()
    report.cases.append(Case.from_latencies("payments_replay_c64", r.items, r.elapsed_s, r.latencies_s,
                                            concurrency=64, rejected=r.rejected, abandoned=r.abandoned, **cpu))
    report.cases.append(best_of(empty_runs))
    report.cases.append(await _empty_case(plan, server, api, 1, steps))


async def _payments_case(plan: Plan, server: ServerProcess, api: Api, workload: Payments, concurrency: int,
                         steps: Steps) -> Case:
    on = steps.start(f"CreatePayment (wallet) at concurrency {concurrency}")
    r, cpu = await _measured(server, lambda: load.closed_loop(api.pay, workload.new(), concurrency=concurrency,
                                                              duration_s=plan.case_s, check=workload.check_new,
                                                              on_progress=on))
    steps.finish()
    return Case.from_latencies(f"payments_wallet_c{concurrency}", r.items, r.elapsed_s, r.latencies_s,
                               concurrency=concurrency, rejected=r.rejected, abandoned=r.abandoned, **cpu)


async def _empty_case(plan: Plan, server: ServerProcess, api: Api, concurrency: int, steps: Steps) -> Case:
    on = steps.start(f"empty RPC (Health/Check) at concurrency {concurrency}")
    r, cpu = await _measured(server, lambda: load.closed_loop(api.health, _repeat(b""), concurrency=concurrency,
                                                              duration_s=plan.empty_s, check=_check_serving,
                                                              on_progress=on))
    steps.finish()
    return Case.from_latencies(f"empty_rpc_c{concurrency}", r.items, r.elapsed_s, r.latencies_s,
                               concurrency=concurrency, **cpu)


async def _check_books(url: str, workload: Payments) -> str:
    """After the server stopped: the database holds exactly what was acknowledged, and balances."""
    store = store_from_url(url)
    await store.open()
    try:
        by_status = dict(await store.query("SELECT status, COUNT(*) FROM payments GROUP BY status"))
        totals = await store.currency_totals()
        found = {a.id: a for a in await store.lookup_accounts([settlement_account().id, fee_account(CURRENCY).id])}
    finally:
        await store.close()
    sent = len(workload.acknowledged)
    succeeded = int(by_status.pop(int(PaymentStatus.SUCCEEDED), 0))
    problems = []
    if succeeded != sent:
        problems.append(f"{succeeded:,} payments are SUCCEEDED in the database, {sent:,} were acknowledged")
    if by_status:
        problems.append("payments in other states: " + ", ".join(
            f"{PaymentStatus(int(s)).name} {int(n):,}" for s, n in sorted(by_status.items())))
    settlement, fees = found.get(settlement_account().id), found.get(fee_account(CURRENCY).id)
    if settlement is None or fees is None:
        problems.append("the merchant's settlement or the fee account is missing")
    else:
        net = settlement.credits_posted - settlement.debits_posted
        if net != workload.amount_total - workload.fee_total:
            problems.append(f"merchant settlement holds {net:,}, expected {workload.amount_total - workload.fee_total:,}")
        if fees.credits_posted != workload.fee_total:
            problems.append(f"fee account holds {fees.credits_posted:,}, expected {workload.fee_total:,}")
    unbalanced = [t for t in totals if not t.balanced]
    if unbalanced:
        problems.append(f"trial balance out of balance: {unbalanced}")
    if problems:
        raise BenchFailure("the books disagree with the answers: " + "; ".join(problems))
    cny = next((t for t in totals if t.currency == CURRENCY), None)
    posted = f" ({CURRENCY} debits = credits = {cny.debits_posted:,} posted)" if cny is not None else ""
    return (f"{sent:,} payments acknowledged, {succeeded:,} SUCCEEDED in the database and none in any other "
            f"state; merchant settlement and fee accounts match the acknowledged amounts and fees; "
            f"trial balance balanced{posted}")


# ---------------------------------------------------------------- ratios

def _ratios(report: PaymentsReport) -> None:
    value = report.rate_ratio
    report.ratios.append(Ratio("payments_vs_empty_rpc", value("payments_wallet_c64", "empty_rpc_c64"),
                               TARGETS["payments_vs_empty_rpc"], "payments_wallet_c64", "empty_rpc_c64"))
    report.untargeted.append(Ratio("replay_vs_empty_rpc", value("payments_replay_c64", "empty_rpc_c64"), 0.0,
                                   "payments_replay_c64", "empty_rpc_c64"))


def _notes(plan: Plan, report: PaymentsReport) -> None:
    report.notes.append(
        f"payments: CreatePayment asset WALLET, authenticated by API key, from {plan.users:,} funded users (payment "
        f"i from user i mod {plan.users:,}) to one merchant (fee {FEE_BPS} bps); each settles inside one group "
        "commit (payment row, idempotency key, linked pay + fee transfers, outbox events); rate counts payments")
    report.notes.append(
        f"payments_wallet_c64 and empty_rpc_c64 are the best of {plan.rounds} alternating runs (every run's rate in "
        "runs_rate_per_s); payments_offered_N is an open loop at N/s (about "
        f"{OFFERED_FRACTION:.0%} of the best c64 rate) with latency from each payment's scheduled send time; "
        "payments_replay_c64 resends requests of payments already made (same request_id and fields)")
    report.notes.append(
        f"each case runs for {plan.case_s:g} s (empty RPC: {plan.empty_s:g} s); 'rejected' counts RESOURCE_EXHAUSTED "
        "answers the load generator backed off and resent; cpu_pct figures are percent of one core (server "
        "process, and this client process) during the case")
    if plan.quick:
        report.notes.append("--quick: shorter cases and fewer rounds; not a figure to record")
