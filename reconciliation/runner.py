"""One reconciliation run of a channel and a business day, start to finish, and the `Resolver`
protocol through which the payment service applies what a run may settle on its own.

    reconciler = Reconciler(db, resolver=payment_service_adapter)
    run = await reconciler.run(adapter, "2024-01-02")

The run: record it (`recon_runs`, numbered per pair, so a pair can be run again); fetch the
statement (verified whole by the adapter: a StatementRejected ends the run as `rejected` with
the reason and the line, and nothing else happens); read our instructions of the day plus those
still EXPECTED from earlier days; classify everything (engine.reconcile); store counts per
class, open or touch discrepancies, note EXPECTED items to carry; then hand each automatic
action to the Resolver and record whether it was applied. The engine itself never changes a
payment.

Fees: every line with a fee is noted as the statement streams past (spooled to disk, so memory
stays flat) and, once the run has completed, handed to the `FeePoster` (the payment side's
`ChannelFees`: the channel's fee expense against its receivable, idempotent per line); a
rejected statement posts nothing. The expected fee the engine compares each line with is the
adapter's fee schedule (its same-bank one for a payment at the channel's home bank), or the
`fee_for` a caller passes (the router's, with the operator's overrides).

Other instructions on a channel (`sources`, by channel): a channel may carry money movements
that are not payments, such as the clearing center's settlement transfers over the
bank-transfer rail. An `InstructionSource` gives them as rows of our side (the day's, and any
by id for lines of other days or carried EXPECTED ones); they are classified like payments, and
a run's automatic resolution of one goes to the source, not to the payment Resolver (the source
applies it through its own state machine). This module knows nothing of clearing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from dualflow.adapters.contract import ChannelAdapter, StatementLine, StatementRejected
from dualflow.core.database import Database

from . import metrics
from .engine import Partitioned, Tally, reconcile
from .model import Action, Class, FeeFor, Policy, Result
from .ours import PagedInstructions, day_bounds_ns, fee_model, lookup_rows, read_instructions
from .store import ReconciliationStore, Run, result_row

DAY_NS = 24 * 3600 * 10**9


class Resolver(Protocol):
    """What the payment service implements to apply a run's automatic resolutions.

    `resolve` moves one payment (kind "pay") or refund (kind "refund") named by `object_id`
    from UNKNOWN/PROCESSING to SUCCEEDED (Action.MARK_SUCCEEDED: post its pending transfer) or
    FAILED (Action.MARK_FAILED: void it), through the same state machine and outbox as any
    other transition, with the reason "resolved by reconciliation <run_id>". It must re-check
    the current state inside its own transaction (the payment may have moved since the run read
    it: then it does nothing and answers False) and be idempotent (a re-run proposes the same
    action again). True when it moved the payment."""

    async def resolve(self, run_id: str, object_id: str, kind: str, action: Action, result: Result) -> bool: ...


class InstructionSource(Protocol):
    """Instructions of ours on one channel besides its payments and refunds (the clearing center's
    settlement transfers over its rail: adapters/transfer/settlement.py SettlementInstructions).

    Rows are an Instruction's fields in order (model.py). `day` gives those that belong to the
    business day [start_ns, end_ns) (sent, and created in it); `find` those of the given
    instruction ids it knows, whatever their day (ids not its own are ignored; a statement line
    proves an instruction was sent). `resolve` applies a run's MARK_SUCCEEDED / MARK_FAILED
    proposal for one of them (`object_id`: the row's), like Resolver.resolve: re-checked inside
    its own state machine, idempotent, True when it moved the instruction.

    Optional, `fee_elsewhere(instruction_ids) -> set[str]`: of a statement's lines with a fee, the
    ids of those the source knows whose fee another channel's run posts (a transfer between two of
    our accounts is on both accounts' statements; its fee is posted once, on the debtor's)."""

    async def day(self, start_ns: int, end_ns: int) -> Sequence[tuple[Any, ...]]: ...

    async def find(self, instruction_ids: Sequence[str]) -> Mapping[str, tuple[Any, ...]]: ...

    async def resolve(self, run_id: str, object_id: str, action: Action, result: Result) -> bool: ...


class FeeItem(NamedTuple):
    """A statement line's fee, as the FeePoster needs it."""

    instruction_id: str
    channel_reference: str
    kind: str
    currency: str
    fee: int


class FeePoster(Protocol):
    """What posts a statement's fees to the ledger (core/payments/resolution.py ChannelFees):
    idempotent per line; answers an object with `posted: {currency: transfers posted now}`."""

    async def post(self, channel: str, lines: Iterable[FeeItem]) -> Any: ...


@dataclass(frozen=True, slots=True)
class RunReport:
    run: Run
    counts: dict[str, dict[str, int]]
    applied: int  # automatic resolutions the Resolver applied
    refused: int  # ... it declined (moved meanwhile)
    fees: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # currency: (lines, fee total, posted now)
    replayed: bool = False  # answered from an earlier completed run; nothing ran now
    results: int = 0  # results kept for the report (keep_results)


class _FeeTap:
    """Notes the fee of every line streaming past, on disk (flat memory), with totals per currency."""

    def __init__(self) -> None:
        self.spool = Partitioned(1)
        self.totals: dict[str, list[int]] = {}

    async def lines(self, source: AsyncIterable[StatementLine]) -> AsyncIterator[StatementLine]:
        async for line in source:
            if line.fee > 0:
                self.spool.add("", (line.instruction_id, line.channel_reference, line.kind, line.currency, line.fee))
                total = self.totals.setdefault(line.currency, [0, 0])
                total[0] += 1
                total[1] += line.fee
            yield line

    def items(self) -> Iterator[FeeItem]:
        for row in self.spool.items(0):
            yield FeeItem._make(row)


class Reconciler:
    def __init__(self, db: Database, *, resolver: Resolver | None = None, fees: FeePoster | None = None,
                 sla_ns: int = DAY_NS, clock_ns: Callable[[], int] = time.time_ns, keep_results: bool = False,
                 sources: Mapping[str, InstructionSource] | None = None) -> None:
        self.db = db
        self.sources = dict(sources or {})  # channel -> its instructions that are not payments
        self.keep_results = keep_results  # every result kept in recon_lines, for the report
        self.store = ReconciliationStore(db, clock_ns)
        self.resolver = resolver
        self.fees = fees
        self.sla_ns = sla_ns
        self.clock_ns = clock_ns

    async def open(self) -> None:
        await self.store.open()

    async def run(self, adapter: ChannelAdapter, business_date: str, *, cutoff_ns: int | None = None,
                  on_progress: Callable[[int], Any] | None = None, fee_for: FeeFor | None = None) -> RunReport:
        started = time.perf_counter()
        channel = adapter.name
        try:
            report = await self._run(adapter, business_date, cutoff_ns, on_progress, fee_for)
        except Exception:
            metrics.RUNS.labels(channel, "failed").inc()
            raise
        finally:
            metrics.RUN_SECONDS.labels(channel).observe(time.perf_counter() - started)
        metrics.RUNS.labels(channel, report.run.state).inc()
        for cls, n in report.counts.items():
            if n["lines"]:
                metrics.LINES.labels(channel, cls).inc(n["lines"])
            if n["instructions"]:
                metrics.INSTRUCTIONS.labels(channel, cls).inc(n["instructions"])
        return report

    async def _run(self, adapter: ChannelAdapter, business_date: str, cutoff_ns: int | None,
                   on_progress: Callable[[int], Any] | None, fee_for: FeeFor | None) -> RunReport:
        channel = adapter.name
        run = await self.store.start_run(channel, business_date)
        _start, end = day_bounds_ns(business_date)
        caps = adapter.describe()
        policy = Policy(cutoff_ns=end if cutoff_ns is None else cutoff_ns, now_ns=self.clock_ns(), sla_ns=self.sla_ns,
                        fee_for=fee_for if fee_for is not None else fee_model(caps.fees, caps.same_bank_fees,
                                                                              caps.home_bank))
        tally = Tally()
        kept_before = 0
        automatic: list[Result] = []
        pending: list[Result] = []
        kept: list[tuple[Any, ...]] = []
        keep = self.keep_results
        tap = _FeeTap()
        ours = _Ours(self, channel, business_date)
        try:
            async for r in reconcile(tap.lines(adapter.fetch_statement(business_date)), ours, policy,
                                     lookup=ours.lookup, tally=tally, emit_matched=keep):
                if keep:
                    kept.append(result_row(channel, len(kept) + 1 + kept_before, r))
                    if len(kept) >= 500:
                        await self.store.record_results(run, kept)
                        kept_before += len(kept)
                        kept = []
                    if r.cls is Class.MATCHED and r.action is Action.NONE:
                        continue  # what emit_matched=False would not have yielded: counted, nothing to do
                pending.append(r)
                if r.action.automatic:
                    automatic.append(r)
                if len(pending) >= 500:
                    await self.store.record(run, pending, policy)
                    pending = []
                if on_progress is not None:
                    on_progress(1)
            await self.store.record(run, pending, policy)
            await self.store.record_results(run, kept)
        except StatementRejected as exc:
            tap.spool.close()
            done = await self.store.finish_run(run, "rejected", error_reason=exc.reason, error_line=exc.line_number,
                                               detail=str(exc))
            return RunReport(done, {}, 0, 0)
        except BaseException as exc:
            tap.spool.close()
            await self.store.finish_run(run, "failed", detail=f"{exc.__class__.__name__}: {exc}")
            raise
        # Fees and resolutions before the run counts as completed: a run that stops on the way
        # (an error, a crash) is run again, and both are idempotent.
        applied = refused = 0
        try:
            fees = await self._post_fees(run, tap, ours.source)
            for r in automatic:
                assert r.instruction is not None
                object_id = r.instruction.object_id
                if ours.source is not None and object_id in ours.sourced:
                    ok = await ours.source.resolve(run.run_id, object_id, r.action, r)
                elif self.resolver is not None:
                    ok = await self.resolver.resolve(run.run_id, object_id, r.instruction.kind, r.action, r)
                else:
                    continue
                await self.store.action_done(run.run_id, object_id, "applied" if ok else "refused")
                applied, refused = applied + ok, refused + (not ok)
                metrics.AUTO_RESOLUTIONS.labels(channel, r.action.value, "applied" if ok else "refused").inc()
        except BaseException as exc:
            await self.store.finish_run(run, "failed", detail=f"{exc.__class__.__name__}: {exc}")
            raise
        finally:
            tap.spool.close()
        done = await self.store.finish_run(run, "completed", tally, lines=sum(tally.lines.values()),
                                           instructions=sum(tally.instructions.values()))
        return RunReport(done, await self.store.counts(done.run_id), applied, refused, fees,
                         results=kept_before + len(kept))

    async def _post_fees(self, run: Run, tap: _FeeTap,
                         source: InstructionSource | None) -> dict[str, tuple[int, int, int]]:
        posted: Mapping[str, int] = {}
        elsewhere: set[str] = set()
        ask = getattr(source, "fee_elsewhere", None)
        if self.fees is not None and tap.totals and ask is not None:
            batch: list[str] = []
            for item in tap.items():
                batch.append(item.instruction_id)
                if len(batch) >= 500:
                    elsewhere |= await ask(batch)
                    batch = []
            if batch:
                elsewhere |= await ask(batch)
        if self.fees is not None and tap.totals:
            outcome = await self.fees.post(run.channel, (x for x in tap.items() if x.instruction_id not in elsewhere))
            posted = outcome.posted
            for currency, n in posted.items():
                metrics.FEES_POSTED.labels(run.channel, currency).inc(n)
        # Lines and fee totals are the statement's; "posted now" only this channel's share.
        fees = {c: (n, amount, int(posted.get(c, 0))) for c, (n, amount) in tap.totals.items()}
        await self.store.record_fees(run.run_id, fees)
        return fees



class _Ours(PagedInstructions):
    """Our side of a run: the day's instructions (and the source's, if the channel has one), then
    those still EXPECTED from earlier days; and the lookup of other days' by id. Notes which
    object ids came from the source (their resolutions go to it)."""

    def __init__(self, reconciler: Reconciler, channel: str, business_date: str) -> None:
        self.reconciler, self.channel, self.business_date = reconciler, channel, business_date
        self.source = reconciler.sources.get(channel)
        self.sourced: set[str] = set()

    async def pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        db, store = self.reconciler.db, self.reconciler.store
        async for page in read_instructions(db, self.channel, self.business_date).pages():
            yield page
        if self.source is not None:
            page = [tuple(row) for row in await self.source.day(*day_bounds_ns(self.business_date))]
            self.sourced.update(row[2] for row in page)
            yield page
        carried: Sequence[str] = await store.expected(self.channel, self.business_date)
        for n in range(0, len(carried), 500):
            found = await self.lookup(carried[n:n + 500])
            yield [tuple(row) for row in found.values()]

    async def lookup(self, instruction_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """Instructions by id whatever their day: the source's first (it knows its own ids), then
        the payments' and refunds'."""
        found: dict[str, tuple[Any, ...]] = {}
        rest = instruction_ids
        if self.source is not None and instruction_ids:
            found = {k: tuple(row) for k, row in (await self.source.find(instruction_ids)).items()}
            self.sourced.update(row[2] for row in found.values())
            rest = [i for i in instruction_ids if i not in found]
        if rest:
            found.update(await lookup_rows(self.reconciler.db, self.channel, rest))
        return found
