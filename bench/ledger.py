"""`dualflow bench ledger`: CreateTransfers throughput against its storage and RPC ceilings.

The real thing is `Ledger/CreateTransfers` over real gRPC, to a server in its own
process, with batches of 1, 100 and 8,000 transfers at 1, 16 and 64 calls in
flight. Beside it, in the same run and on the same machine:

- the storage ceiling: the same SQL on the same schema through the store's own
  `run_procedure`, in process, with no gRPC and no validation: a procedure that
  yields the operations `group_commit` yields (ReserveTimestamps, LoadTransfers,
  LoadAccounts, WriteChanges) for 8,000-transfer batches whose rows are built
  directly, without the state machine;
- the RPC ceiling: the standard `grpc.health.v1.Health/Check`, an empty call on
  the same server and channel;
- on PostgreSQL, `pgbench -b tpcb-like` against the same server;
- the same batched load on a ledger of 10k accounts and on one of 1M.

The cases each ratio compares run in alternating rounds and each side keeps
its best round: on a shared machine the best run is the least disturbed one.

Every transfer is valid and must answer OK (random pairs of accounts without
limit flags, unique ids); anything else stops the run with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dualflow.core.ledger.batch import (
    BatchResult,
    CreateAccounts,
    LoadAccounts,
    LoadTransfers,
    Procedure,
    ReserveTimestamps,
    WriteChanges,
)
from dualflow.core.ledger.model import AccountCode, Account, Transfer
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.state_machine import A_OK, T_OK, Snapshot
from dualflow.core.ledger.store import LedgerStore

from . import load, pgbench
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

CURRENCY = "USD"
TRANSFER_CODE = 1
ACCOUNTS_CHUNK = 50_000
BIG_BATCH = 8000
# Requests for batches this large are built before the clock starts: building
# one costs the client tens of milliseconds, which would otherwise sit inside
# every measured call. Smaller ones are built on demand (microseconds).
PREBUILD_FROM = 1000
CREATE_TRANSFERS = "/dualflow.v1.Ledger/CreateTransfers"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

TARGETS = {
    "batched_vs_storage_ceiling": 0.5,
    "unary_vs_empty_rpc": 0.6,
    "pg_batched_vs_pgbench": 5.0,
    "accounts_1m_vs_10k": 0.9,
}




@dataclass(frozen=True)
class Plan:
    quick: bool
    accounts: int = 10_000
    large_accounts: int = 1_000_000
    matrix: tuple[tuple[int, int], ...] = ()
    case_s: float = 10.0
    # An upper bound on the transfers one case sends (8000 x 64 would otherwise take minutes).
    case_transfers_max: int = 512_000
    empty_concurrency: tuple[int, ...] = (1, 16, 64)
    empty_s: float = 5.0
    # Two runs of the ceiling (before and after the 8,000-transfer cases); the better one counts.
    ceiling_batches: int = 20
    accounts_concurrency: int = 16
    accounts_batches: int = 32
    # The cases a ratio compares run this many times, alternating; each side's best run counts,
    # because on a shared machine the best run is the least disturbed one.
    rounds: int = 3
    # Each batch of the 10k-vs-1M comparison draws its pairs from this many accounts sampled
    # uniformly from the whole ledger, so both ledgers touch as many rows per batch and only
    # the ledger's size differs (uniform pairs over 10k accounts would repeat accounts).
    accounts_pool: int = 4000
    pgbench_scale: int = 8
    pgbench_clients: int = 8
    pgbench_s: int = 15


FULL = Plan(
    quick=False,
    matrix=tuple((b, c) for b in (BIG_BATCH, 100, 1) for c in (1, 16, 64)),
)
QUICK = Plan(
    quick=True,
    large_accounts=100_000,
    matrix=((BIG_BATCH, 1), (BIG_BATCH, 4), (100, 16), (1, 1), (1, 64)),
    empty_concurrency=(1, 64),
    case_s=1.5,
    case_transfers_max=48_000,
    empty_s=1.5,
    ceiling_batches=3,
    accounts_concurrency=4,
    accounts_batches=4,
    rounds=2,
    pgbench_scale=4,
    pgbench_clients=4,
    pgbench_s=5,
)


def add_parser(areas: Any) -> None:
    p = areas.add_parser(
        "ledger", help="ledger CreateTransfers throughput vs storage and RPC ceilings",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", default=None,
                   help="a new SQLite path (kept) or a postgresql:// DSN (a scratch database is created on that "
                        "server and dropped); default: temporary SQLite files, removed afterwards")
    add_output_options(p, 'a reduced run (under a minute on SQLite)')
    p.set_defaults(bench_run=run)


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    return run_and_report("ledger", lambda console: _bench(plan, args.db, console), args,
                          (BenchFailure, ServerFailed, pgbench.PgbenchFailed))


# ---------------------------------------------------------------- workloads

def _label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


class Workload:
    """Valid transfers between random pairs of accounts 1..accounts, with ids unique in one ledger."""

    def __init__(self, accounts: int, *, seed: int, pool: int = 0, first_id: int = 1) -> None:
        assert accounts >= 2
        self.accounts = accounts
        self.pool = min(pool, accounts) if pool else 0
        self.rng = random.Random(seed)
        self.next_id = first_id

    def _take(self, n: int) -> int:
        first = self.next_id
        self.next_id += n
        return first

    def pairs(self, n: int) -> list[tuple[int, int]]:
        rnd = self.rng.random
        if self.pool:
            ids = self.rng.sample(range(1, self.accounts + 1), self.pool)
            k = len(ids)
            out = []
            for _ in range(n):
                d = int(rnd() * k)
                c = int(rnd() * (k - 1))
                out.append((ids[d], ids[c + (c >= d)]))
            return out
        n_acc = self.accounts
        out = []
        for _ in range(n):
            d = int(rnd() * n_acc)
            c = int(rnd() * (n_acc - 1))
            out.append((d + 1, c + (c >= d) + 1))
        return out

    def request(self, n: int) -> bytes:
        """A serialized CreateTransfersRequest of `n` new transfers."""
        from dualflow.v1 import ledger_pb2 as pb

        first = self._take(n)
        req = pb.CreateTransfersRequest()
        add = req.transfers.add
        for i, (d, c) in enumerate(self.pairs(n)):
            tid = first + i
            add(id=tid, debit_account_id=d, credit_account_id=c, amount=1 + tid % 1000,
                currency=CURRENCY, code=TRANSFER_CODE)
        return req.SerializeToString()

    def requests(self, batch: int, count: int) -> Iterator[tuple[bytes, int]]:
        for _ in range(count):
            yield self.request(batch), batch

    def transfers(self, n: int) -> list[Transfer]:
        first = self._take(n)
        return [
            Transfer(first + i, d, c, 1 + (first + i) % 1000, 0, CURRENCY, TRANSFER_CODE)
            for i, (d, c) in enumerate(self.pairs(n))
        ]


# ------------------------------------------------------------ storage ceiling

@dataclass
class PreparedBatch:
    """One batch for the storage ceiling, with everything but the SQL done in advance."""

    transfers: list[Transfer]
    transfer_ids: frozenset[int]
    account_ids: frozenset[int]
    deltas: dict[int, list[int]] = field(default_factory=dict)  # account -> [debits, credits]

    @classmethod
    def of(cls, transfers: list[Transfer]) -> PreparedBatch:
        deltas: dict[int, list[int]] = {}
        for t in transfers:
            deltas.setdefault(t.debit_account_id, [0, 0])[0] += t.amount
            deltas.setdefault(t.credit_account_id, [0, 0])[1] += t.amount
        return cls(transfers, frozenset(t.id for t in transfers), frozenset(deltas), deltas)


def storage_only_commit(batch: PreparedBatch, now_ns: int) -> Procedure:
    """The storage operations `group_commit` issues for this batch, with rows built without the state machine."""
    n = len(batch.transfers)
    last_timestamp: int = yield ReserveTimestamps(n, now_ns)
    first = last_timestamp - n + 1
    existing = yield LoadTransfers(batch.transfer_ids)
    if existing:
        raise BenchFailure(f"storage ceiling: {len(existing)} transfer ids already exist")
    accounts: dict[int, Account] = yield LoadAccounts(batch.account_ids)
    if len(accounts) != len(batch.account_ids):
        raise BenchFailure("storage ceiling: some accounts do not exist")
    for account_id, (debits, credits) in batch.deltas.items():
        a = accounts[account_id]
        a.debits_posted += debits
        a.credits_posted += credits
    for i, t in enumerate(batch.transfers):
        t.timestamp = first + i
    snap = Snapshot(accounts, {}, now_ns)
    snap.new_transfers = batch.transfers
    snap.changed_account_ids = set(batch.account_ids)
    yield WriteChanges(snap)
    return [BatchResult([T_OK] * n, list(range(first, first + n)))]


async def storage_ceiling(store: LedgerStore, workload: Workload, batches: int,
                          on_progress: Callable[[float], None]) -> Case:
    prepared = [PreparedBatch.of(workload.transfers(BIG_BATCH)) for _ in range(batches)]
    latencies_s: list[float] = []
    items = 0
    cpu_before = time.process_time()
    started = time.perf_counter()
    for i, batch in enumerate(prepared):
        sent = time.perf_counter()
        await store.run_procedure(storage_only_commit(batch, time.time_ns()))
        latencies_s.append(time.perf_counter() - sent)
        items += len(batch.transfers)
        on_progress((i + 1) / len(prepared))
    elapsed_s = time.perf_counter() - started
    cpu_pct = round((time.process_time() - cpu_before) / elapsed_s * 100)
    return Case.from_latencies("storage_ceiling", items, elapsed_s, latencies_s, batch=BIG_BATCH, concurrency=1,
                               client_cpu_pct=cpu_pct)


# ---------------------------------------------------------------- helpers

async def create_accounts(store: LedgerStore, n: int, on_progress: Callable[[float], None]) -> None:
    """Accounts 1..n without limit flags, through the store's real group commit, in large chunks."""
    code = int(AccountCode.WALLET)
    for start in range(1, n + 1, ACCOUNTS_CHUNK):
        chunk = [Account(i, CURRENCY, code) for i in range(start, min(n + 1, start + ACCOUNTS_CHUNK))]
        [result] = await store.commit([CreateAccounts(chunk)], time.time_ns())
        bad = [r for r in result.results if r != A_OK]
        if bad:
            raise BenchFailure(f"creating accounts: {len(bad)} of {len(chunk)} failed (first result {bad[0]})")
        on_progress(min(1.0, (start + len(chunk) - 1) / n))


def _check_transfers(response: Any, items: int) -> None:
    results = list(response.results)
    if len(results) != items or results.count(T_OK) != items:
        from dualflow.v1 import ledger_pb2 as pb

        bad = next((r for r in results if r != T_OK), None)
        name = pb.CreateTransferResult.Name(bad) if bad is not None else "missing results"
        raise BenchFailure(f"CreateTransfers answered {name} for a valid transfer ({len(results)} results "
                           f"for {items} transfers)")


def _check_serving(response: Any, items: int) -> None:
    from grpc_health.v1 import health_pb2

    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise BenchFailure(f"Health/Check answered {response.status}")


async def _check_balanced(store: LedgerStore, what: str) -> None:
    unbalanced = [t for t in await store.currency_totals() if not t.balanced]
    if unbalanced:
        raise BenchFailure(f"the {what} ledger is out of balance after the run: {unbalanced}")


async def _load(server: ServerProcess, call: Any, requests: Any, *, concurrency: int, duration_s: float,
                check: Callable[[Any, int], None], on_progress: Callable[[float], None]
                ) -> tuple[load.LoadResult, dict[str, Any]]:
    """One closed-loop run, with the CPU both processes used during it (percent of one core)."""
    server_before, client_before = server.cpu_seconds(), time.process_time()
    r = await load.closed_loop(call, requests, concurrency=concurrency, duration_s=duration_s, check=check,
                               on_progress=on_progress)
    server_after, client_after = server.cpu_seconds(), time.process_time()
    extra: dict[str, Any] = {}
    if r.elapsed_s > 0:
        if server_before is not None and server_after is not None:
            extra["server_cpu_pct"] = round((server_after - server_before) / r.elapsed_s * 100)
        extra["client_cpu_pct"] = round((client_after - client_before) / r.elapsed_s * 100)
    return r, extra




class Steps:
    """Progress on stderr: one bar over the run's steps, described as they go."""

    def __init__(self, progress: Any, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("ledger bench", total=total)
        self.done = 0

    def start(self, what: str) -> Callable[[float], None]:
        self.progress.update(self.task, description=what, completed=self.done)

        def on_progress(fraction: float) -> None:
            self.progress.update(self.task, completed=self.done + fraction)

        return on_progress

    def finish(self) -> None:
        self.done += 1
        self.progress.update(self.task, completed=self.done)


# ---------------------------------------------------------------- the run

async def _bench(plan: Plan, db: str | None, console: Any) -> Report:
    scratch = ScratchLedgers(db)
    report = Report("ledger", scratch.backend)
    postgres = scratch.backend == "postgres"
    run_pgbench = postgres and pgbench.available() is not None
    unary = (1, 64)
    steps_total = (
        3  # accounts on both ledgers, servers
        + 4 * plan.rounds  # 10k vs large, unary vs empty
        + 2  # storage ceiling runs
        + len([m for m in plan.matrix if m != unary])
        + len([c for c in plan.empty_concurrency if c != 64])
        + 1  # stopping
        + (1 if run_pgbench else 0)
    )
    report.settings = {
        "quick": plan.quick,
        "accounts": plan.accounts,
        "large_accounts": plan.large_accounts,
        "case_seconds_max": plan.case_s,
        "case_transfers_max": plan.case_transfers_max,
        "accounts_pool_per_batch": plan.accounts_pool,
        "rounds": plan.rounds,
        "source": source_version(),
    }
    report.machine["load_avg_1m_at_start"] = load_average()
    scratch.open()
    try:
        with progress_bar(console) as progress:
            steps = Steps(progress, steps_total)
            await _ledgers(plan, scratch, report, steps)
            if run_pgbench:
                on = steps.start(f"pgbench tpcb-like, scale {plan.pgbench_scale}, {plan.pgbench_clients} clients, "
                                 f"{plan.pgbench_s} s")
                on(0.0)
                r = await pgbench.tpcb_like(scratch.database_dsn, scale=plan.pgbench_scale,
                                            clients=plan.pgbench_clients, threads=min(2, plan.pgbench_clients),
                                            duration_s=plan.pgbench_s)
                case = Case.from_latencies("pgbench_tpcb_like", r.transactions, float(r.duration_s), r.latencies_s,
                                           clients=r.clients, scale=r.scale)
                case.rate_per_s = r.tps  # pgbench's own figure (without connection time)
                report.cases.append(case)
                steps.finish()
    finally:
        scratch.close()
    report.machine["load_avg_1m_at_end"] = load_average()
    report.cases.sort(key=_case_order)
    _ratios(plan, report, postgres, run_pgbench)
    return report


async def _ledgers(plan: Plan, scratch: ScratchLedgers, report: Report, steps: Steps) -> None:
    """Both ledgers, a server on each, and every case but pgbench."""
    main_url, large_url = scratch.ledger("main"), scratch.ledger("large")
    main_store, large_store = store_from_url(main_url), store_from_url(large_url)
    await main_store.open()
    try:
        await large_store.open()
        try:
            await create_accounts(main_store, plan.accounts, steps.start(f"creating {plan.accounts:,} accounts"))
            steps.finish()
            started = time.perf_counter()
            await create_accounts(large_store, plan.large_accounts,
                                  steps.start(f"creating {plan.large_accounts:,} accounts"))
            report.settings["large_accounts_create_s"] = round(time.perf_counter() - started, 2)
            for url in (main_url, large_url):
                await asyncio.to_thread(scratch.settle, url)
            steps.finish()
            steps.start("starting a server on each ledger")
            async with ServerProcess(main_url) as main_server, ServerProcess(large_url) as large_server, \
                    load.channel(main_server.address) as main_ch, load.channel(large_server.address) as large_ch:
                main = _Target(plan.accounts, main_server, load.raw_method(main_ch, CREATE_TRANSFERS,
                                                                            _transfers_response()))
                large = _Target(plan.large_accounts, large_server, load.raw_method(large_ch, CREATE_TRANSFERS,
                                                                                    _transfers_response()))
                await _warm_up(main)
                await _warm_up(large)
                steps.finish()
                await _cases(plan, main_store, main, large, load.raw_method(main_ch, HEALTH_CHECK,
                                                                           _health_response()), report, steps)
                steps.start("stopping the servers")
            steps.finish()
            await _check_balanced(main_store, "10k-account")
            await _check_balanced(large_store, "large")
        finally:
            await large_store.close()
    finally:
        await main_store.close()


@dataclass
class _Target:
    """A ledger under test: its size, its server process and its CreateTransfers method."""

    accounts: int
    server: ServerProcess
    transfers: Any


async def _cases(plan: Plan, main_store: LedgerStore, main: _Target, large: _Target, health: Any, report: Report,
                 steps: Steps) -> None:
    # Transfer id ranges per purpose, so ids stay unique in each ledger.
    accounts_workloads = {t.accounts: Workload(t.accounts, seed=3, pool=plan.accounts_pool) for t in (main, large)}
    ceiling_workload = Workload(plan.accounts, seed=1, first_id=1 << 40)
    matrix_workload = Workload(plan.accounts, seed=2, first_id=1 << 41)

    # 10k vs large, alternating, on ledgers that hold nothing but their accounts yet.
    runs: dict[int, list[Case]] = {main.accounts: [], large.accounts: []}
    for r in range(plan.rounds):
        for target in ((main, large) if r % 2 == 0 else (large, main)):
            runs[target.accounts].append(
                await _accounts_case(plan, target, accounts_workloads[target.accounts], steps))
    report.cases += [best_of(runs[main.accounts]), best_of(runs[large.accounts])]

    ceilings = []
    on = steps.start(f"storage ceiling: {plan.ceiling_batches} x {BIG_BATCH:,} transfers, in process")
    ceilings.append(await storage_ceiling(main_store, ceiling_workload, plan.ceiling_batches, on))
    steps.finish()
    unary = (1, 64)
    last_batched = [m for m in plan.matrix if m[0] == BIG_BATCH][-1:]
    for batch, concurrency in plan.matrix:
        if (batch, concurrency) == unary:
            continue  # measured beside the empty RPC below
        report.cases.append(await _transfers_case(plan, main, matrix_workload, batch, concurrency, steps))
        if [(batch, concurrency)] == last_batched:
            # The second ceiling run sees the table as the last batched case left it.
            on = steps.start(f"storage ceiling again: {plan.ceiling_batches} x {BIG_BATCH:,} transfers")
            ceilings.append(await storage_ceiling(main_store, ceiling_workload, plan.ceiling_batches, on))
            steps.finish()
    report.cases.append(best_of(ceilings))

    # Unary vs empty RPC at concurrency 64, alternating.
    unary_runs: list[Case] = []
    empty_runs: list[Case] = []
    for r in range(plan.rounds):
        for kind in (("unary", "empty") if r % 2 == 0 else ("empty", "unary")):
            if kind == "unary":
                unary_runs.append(await _transfers_case(plan, main, matrix_workload, *unary, steps))
            else:
                empty_runs.append(await _empty_case(plan, main, health, 64, steps))
    report.cases += [best_of(unary_runs), best_of(empty_runs)]
    for concurrency in plan.empty_concurrency:
        if concurrency != 64:
            report.cases.append(await _empty_case(plan, main, health, concurrency, steps))


async def _warm_up(target: _Target) -> None:
    """A few calls of each size so the first measured call pays no connection or cache setup."""
    workload = Workload(target.accounts, seed=0, first_id=1 << 42)
    for batch, count in ((1, 20), (100, 5), (BIG_BATCH, 1)):
        for request, items in workload.requests(batch, count):
            _check_transfers(await target.transfers(request), items)


async def _accounts_case(plan: Plan, target: _Target, workload: Workload, steps: Steps) -> Case:
    c = plan.accounts_concurrency
    label = _label(target.accounts)
    on = steps.start(f"building {plan.accounts_batches} requests of {BIG_BATCH:,} transfers")
    requests = []
    for request in workload.requests(BIG_BATCH, plan.accounts_batches):
        requests.append(request)
        on(len(requests) / plan.accounts_batches)
    on = steps.start(f"{label} accounts: {BIG_BATCH:,}-transfer batches at concurrency {c}")
    r, cpu = await _load(target.server, target.transfers, requests, concurrency=c, duration_s=plan.case_s,
                         check=_check_transfers, on_progress=on)
    steps.finish()
    return Case.from_latencies(f"accounts_{label}_batch_{BIG_BATCH}_c{c}", r.items, r.elapsed_s, r.latencies_s,
                               accounts=target.accounts, batch=BIG_BATCH, concurrency=c, rejected=r.rejected,
                               abandoned=r.abandoned, **cpu)


async def _transfers_case(plan: Plan, target: _Target, workload: Workload, batch: int, concurrency: int,
                          steps: Steps) -> Case:
    count = max(1, plan.case_transfers_max // batch)
    requests: list[tuple[bytes, int]] | Iterator[tuple[bytes, int]]
    if batch >= PREBUILD_FROM:
        on = steps.start(f"building {count} requests of {batch:,} transfers")
        built = []
        for request in workload.requests(batch, count):
            built.append(request)
            on(len(built) / count)
        requests = built
    else:
        requests = workload.requests(batch, count)
    on = steps.start(f"CreateTransfers: batches of {batch:,} at concurrency {concurrency}")
    r, cpu = await _load(target.server, target.transfers, requests, concurrency=concurrency,
                         duration_s=plan.case_s, check=_check_transfers, on_progress=on)
    steps.finish()
    return Case.from_latencies(f"grpc_batch_{batch}_c{concurrency}", r.items, r.elapsed_s, r.latencies_s,
                               batch=batch, concurrency=concurrency, rejected=r.rejected, abandoned=r.abandoned,
                               **cpu)


async def _empty_case(plan: Plan, target: _Target, health: Any, concurrency: int, steps: Steps) -> Case:
    on = steps.start(f"empty RPC (Health/Check) at concurrency {concurrency}")
    r, cpu = await _load(target.server, health, _repeat(b"", 1), concurrency=concurrency, duration_s=plan.empty_s,
                         check=_check_serving, on_progress=on)
    steps.finish()
    return Case.from_latencies(f"empty_rpc_c{concurrency}", r.items, r.elapsed_s, r.latencies_s,
                               concurrency=concurrency, **cpu)


def _case_order(case: Case) -> tuple[int, int, int]:
    """Table order: the gRPC matrix (largest batches first), its ceilings, then the comparisons."""
    size = -int(case.extra.get("batch", 0)) if case.name.startswith("grpc_") else int(case.extra.get("accounts", 0))
    concurrency = int(case.extra.get("concurrency", 0))
    for rank, prefix in enumerate(("grpc_batch_", "storage_ceiling", "empty_rpc_", "accounts_", "pgbench")):
        if case.name.startswith(prefix):
            return rank, size, concurrency
    return 9, 0, 0




def _repeat(request: bytes, items: int) -> Iterator[tuple[bytes, int]]:
    while True:
        yield request, items


def _transfers_response() -> Callable[[bytes], Any]:
    from dualflow.v1 import ledger_pb2 as pb

    return pb.CreateTransfersResponse.FromString


def _health_response() -> Callable[[bytes], Any]:
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckResponse.FromString


# ---------------------------------------------------------------- ratios

def _ratios(plan: Plan, report: Report, postgres: bool, ran_pgbench: bool) -> None:
    def rate(name: str) -> float | None:
        c = report.case(name)
        return c.rate_per_s if c is not None and c.rate_per_s > 0 else None

    def ratio(name: str, num: str | None, den: str | None) -> None:
        a = rate(num) if num else None
        b = rate(den) if den else None
        report.ratios.append(Ratio(name, a / b if a is not None and b is not None else None, TARGETS[name],
                                   num or "(not measured)", den or "(not measured)"))

    batched = [c for c in report.cases if c.name.startswith(f"grpc_batch_{BIG_BATCH}_c")]
    best = max(batched, key=lambda c: c.rate_per_s).name if batched else None
    ratio("batched_vs_storage_ceiling", best, "storage_ceiling")
    ratio("unary_vs_empty_rpc", "grpc_batch_1_c64", "empty_rpc_c64")
    if postgres:
        ratio("pg_batched_vs_pgbench", best, "pgbench_tpcb_like" if ran_pgbench else None)
        if not ran_pgbench:
            report.notes.append("pgbench is not installed: pg_batched_vs_pgbench was not measured")
    c = plan.accounts_concurrency
    ratio("accounts_1m_vs_10k", f"accounts_{_label(plan.large_accounts)}_batch_{BIG_BATCH}_c{c}",
          f"accounts_{_label(plan.accounts)}_batch_{BIG_BATCH}_c{c}")
    if plan.quick:
        report.notes.append(
            f"--quick: the large ledger holds {plan.large_accounts:,} accounts, not 1,000,000 "
            "(accounts_1m_vs_10k compares that ledger with the 10k one); cases are shorter and the "
            "concurrency matrix is reduced")
    report.notes.append(
        f"accounts cases: each {BIG_BATCH:,}-transfer batch draws its pairs from {plan.accounts_pool:,} accounts "
        "sampled uniformly from the whole ledger, so both ledgers touch as many rows per batch; after the bulk "
        "load both ledgers are settled before any case (PostgreSQL: VACUUM ANALYZE; SQLite: WAL checkpoint)")
    report.notes.append(
        f"storage_ceiling, accounts_*, grpc_batch_1_c64 and empty_rpc_c64 are the best of {plan.rounds} "
        "alternating runs (storage_ceiling: of 2, before and after the 8,000-transfer cases); every run's rate "
        "is in runs_rate_per_s")
    report.notes.append(
        f"each case runs for at most {plan.case_s:g} s or {plan.case_transfers_max:,} transfers, whichever "
        "comes first; 'rejected' counts RESOURCE_EXHAUSTED answers the load generator backed off and resent, "
        "'abandoned' the requests still refused when the time was up; cpu_pct figures are percent of one core "
        "(server process, and this client process) during the case")
