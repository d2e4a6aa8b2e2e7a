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
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dualflow.adapters.contract import ChannelAdapter, StatementRejected
from dualflow.core.database import Database

from .engine import Tally, reconcile
from .model import Action, Instruction, Policy, Result
from .ours import day_bounds_ns, fee_model, lookup_instructions, read_instructions
from .store import ReconciliationStore, Run

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


@dataclass(frozen=True, slots=True)
class RunReport:
    run: Run
    counts: dict[str, dict[str, int]]
    applied: int  # automatic resolutions the Resolver applied
    refused: int  # ... it declined (moved meanwhile)


class Reconciler:
    def __init__(self, db: Database, *, resolver: Resolver | None = None, sla_ns: int = DAY_NS,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self.store = ReconciliationStore(db, clock_ns)
        self.resolver = resolver
        self.sla_ns = sla_ns
        self.clock_ns = clock_ns

    async def open(self) -> None:
        await self.store.open()

    async def run(self, adapter: ChannelAdapter, business_date: str, *, cutoff_ns: int | None = None,
                  on_progress: Callable[[int], Any] | None = None) -> RunReport:
        channel = adapter.name
        run = await self.store.start_run(channel, business_date)
        _start, end = day_bounds_ns(business_date)
        policy = Policy(cutoff_ns=end if cutoff_ns is None else cutoff_ns, now_ns=self.clock_ns(), sla_ns=self.sla_ns,
                        fee_for=fee_model(adapter.describe().fees))
        tally = Tally()
        automatic: list[Result] = []
        pending: list[Result] = []
        try:
            async for r in reconcile(adapter.fetch_statement(business_date),
                                     self._ours(channel, business_date), policy,
                                     lookup=lambda ids: lookup_instructions(self.db, channel, ids), tally=tally,
                                     emit_matched=False):
                pending.append(r)
                if r.action.automatic:
                    automatic.append(r)
                if len(pending) >= 500:
                    await self.store.record(run, pending, policy)
                    pending = []
                if on_progress is not None:
                    on_progress(1)
            await self.store.record(run, pending, policy)
        except StatementRejected as exc:
            done = await self.store.finish_run(run, "rejected", error_reason=exc.reason, error_line=exc.line_number,
                                               detail=str(exc))
            return RunReport(done, {}, 0, 0)
        except Exception as exc:
            await self.store.finish_run(run, "failed", detail=f"{exc.__class__.__name__}: {exc}")
            raise
        done = await self.store.finish_run(run, "completed", tally, lines=sum(tally.lines.values()),
                                           instructions=sum(tally.instructions.values()))
        applied = refused = 0
        if self.resolver is not None:
            for r in automatic:
                assert r.instruction is not None
                ok = await self.resolver.resolve(done.run_id, r.instruction.object_id, r.instruction.kind, r.action, r)
                await self.store.action_done(done.run_id, r.instruction.object_id, "applied" if ok else "refused")
                applied, refused = applied + ok, refused + (not ok)
        return RunReport(done, await self.store.counts(done.run_id), applied, refused)

    async def _ours(self, channel: str, business_date: str) -> AsyncIterator[Instruction]:
        async for ins in read_instructions(self.db, channel, business_date):
            yield ins
        carried: Sequence[str] = await self.store.expected(channel, business_date)
        for n in range(0, len(carried), 500):
            found = await lookup_instructions(self.db, channel, carried[n:n + 500])
            for ins in found.values():
                yield ins
