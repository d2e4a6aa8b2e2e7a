"""The clearing center as a service: the center in memory, every change stored before it is answered.

`ClearingService` owns a `ClearingCenter` (center.py) and its tables
(store.py). Each change (an obligation recorded, a cut-off, a settlement answer,
a retry, a finished window) is made to the center synchronously, between two
awaits, so changes never interleave; its rows are then written by one ledger
Extension in the group commit, and the caller is answered only once that commit
is durable. Writes do not wait for each other (many obligations share one
commit), and they are chained (store.py), so if one fails none after it lands;
the service then rebuilds the center from the tables before the next change.
A restart rebuilds it the same way. Reads wait for the writes before them, so
they never show a change that is not stored yet.

Around the center it adds what a running system needs: validation of requests
against the configured pools and currencies (INVALID_ARGUMENT with field
violations, nothing changed), idempotent recording by obligation id across
windows (finished windows are answered from the store), cut-off by the clock
(settings.py), the settlement driver (settlement.py: sends each instruction of
a settling window through a `SettlementExecutor`, applies its answer with the
ledger posting between the pool accounts, retries failures or carries them on,
finishes the window), the pool balances and invariant (pools.py), and metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from dualflow.core.errors import FieldViolation, InvalidRequest, PreconditionFailed, Unavailable
from dualflow.core.ledger.model import Account, Transfer
from dualflow.core.money import AMOUNT_MAX
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelOutcome

from . import metrics
from .caps import Admission, CapPolicy, PoolPosition, PositionBook, Submission
from .center import ClearingCenter
from .errors import IllegalTransition, NetDebitCapExceeded, ObligationConflict, UnknownInstruction, UnknownWindow
from .netting import NettingOptions, Obligation
from .pools import PoolBalance, PoolInvariant, invariant, open_pool_accounts, pool_account, pool_balances, \
    settlement_transfer
from .settings import ClearingSettings
from .settlement import EXECUTOR_ERROR, SettlementExecutor, SettlementOrder, next_state
from .store import PAGE_SIZE_MAX, ClearingStore, ClearingWrite
from .window import InstructionState, SettlementInstruction, SettlementWindow, WindowState

log = logging.getLogger(__name__)

T = TypeVar("T")
CURRENT: Final = "current"
# Caller-given obligation ids: no "/", which the service's own ids use (carried failures are
# "<window>/<index>/carry"), so a caller can never take one of them.
_OBLIGATION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
SEND_CONCURRENCY: Final = 16


@dataclass(frozen=True, slots=True)
class Recorded:
    """What RecordObligation answers: the obligation as stored and where it stands."""

    obligation: Obligation
    window_id: str
    status: Admission  # ADMITTED or QUEUED
    replayed: bool = False  # the same obligation was recorded before; nothing changed now
    released: tuple[str, ...] = ()  # queued obligations this admission let through


@dataclass(frozen=True, slots=True)
class PositionView:
    """One pool's live position in one currency, with its cap and what waits behind it."""

    position: PoolPosition
    cap_minor: int | None
    queued_count: int
    queued_minor: int


@dataclass(frozen=True, slots=True)
class PoolReport:
    balances: list[PoolBalance]
    invariant: list[PoolInvariant]


_Change = tuple[T, Iterable[SettlementWindow], Sequence[Account], Sequence[Transfer]]


class ClearingService:
    def __init__(self, ledger: Any, settings: ClearingSettings = ClearingSettings(), *,
                 executor: SettlementExecutor | None = None, clock_ns: Callable[[], int] = time.time_ns,
                 netting_options: NettingOptions = NettingOptions(), tick_s: float = 1.0) -> None:
        self.ledger = ledger  # LedgerService: run(Extension), query, ensure_schema, accounts
        self.settings = settings
        self.executor = executor
        self.clock_ns = clock_ns
        self.netting_options = netting_options
        self.tick_s = tick_s  # the cut-off watch's longest sleep
        self.store = ClearingStore(ledger)
        self._center: ClearingCenter | None = None
        self._seq = 0  # the last write submitted
        self._last_write: asyncio.Future[Any] | None = None
        self._broken = False
        self._rebuild_lock = asyncio.Lock()
        self._drive_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pools = frozenset(settings.pools)
        self._gauges: dict[tuple[str, str], tuple[Any, ...]] = {}  # label children, resolved once
        self._currencies = frozenset(settings.currencies)
        # Each pool's ledger balance against its bank's record (bank_check.py), run with the
        # invariant when the wiring gives one (it needs the rail: clearing imports no adapter).
        self.bank_check: Any = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.store.ensure_schema()
        await open_pool_accounts(self.ledger, self.settings.pools, self.settings.currencies)
        await self._rebuild()
        if self.settings.window_s > 0:
            self._tasks.append(asyncio.create_task(self._watch_cutoff(), name="clearing-cutoff"))
        if self.executor is not None and self.settings.settle_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._settle_forever(), name="clearing-settlement"))
        if self.settings.invariant_interval_s > 0 and self.settings.currencies:
            self._tasks.append(asyncio.create_task(self._check_pools_forever(), name="clearing-invariant"))

    async def stop(self) -> None:
        """Stop the background work (a settlement in flight resumes at the next start) and wait for
        the writes already submitted."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._last_write is not None:
            await asyncio.gather(self._last_write, return_exceptions=True)

    @property
    def center(self) -> ClearingCenter:
        if self._center is None:
            raise Unavailable("the clearing service is not started", reason="CLEARING_NOT_STARTED")
        return self._center

    # ---------------------------------------------------------------- obligations

    async def record(self, obligation_id: str, debtor_pool: str, creditor_pool: str, amount_minor: int,
                     currency: str, *, fact: bool = False) -> Recorded:
        """Record an obligation in the open window (caps apply); idempotent by obligation id.

        `fact`: the movement behind it has happened already (clearing/feed.py), so a cap cannot
        refuse it any more: under the REFUSE policy it is admitted whatever the cap says (the
        movement was refused, or not, before it happened: clearing/gate.py); under QUEUE it
        queues like any other."""
        obligation = self._validate(obligation_id, debtor_pool, creditor_pool, amount_minor, currency)
        while True:
            await self._ready()
            looked_up = False
            if self.center.locate(obligation_id) is None:
                stored = await self.store.find_obligation(obligation_id)
                if stored is not None:  # a finished window's (live ones are all in memory)
                    known, window_id, _ = stored
                    self._check_same(known, obligation)
                    metrics.OBLIGATIONS.labels("replayed").inc()
                    return Recorded(known, window_id, Admission.ADMITTED, replayed=True)
                looked_up = True

            def change() -> _Change[Recorded | None]:
                center = self.center
                if not looked_up and center.locate(obligation_id) is None:
                    return None, (), (), ()  # its window finished meanwhile: look in the store
                submission = center.record(obligation, force=fact and self.settings.cap_policy is CapPolicy.REFUSE)
                if submission.admission is Admission.EXISTS:
                    located = center.locate(obligation_id)
                    assert located is not None
                    metrics.OBLIGATIONS.labels("replayed").inc()
                    return Recorded(located[0], located[1], located[2], replayed=True), (), (), ()
                self._count(submission, obligation)
                return Recorded(obligation, center.current.window_id, submission.admission,
                                released=tuple(o.obligation_id for o in submission.released)), \
                    [center.current], (), ()

            try:
                recorded = await self._change(change)
            except NetDebitCapExceeded as refused:
                metrics.OBLIGATIONS.labels("refused").inc()
                metrics.CAPS_HIT.labels(refused.pool, refused.currency, "refused").inc()
                raise
            if recorded is not None:
                return recorded

    def _count(self, submission: Submission, obligation: Obligation) -> None:
        """Metrics of one obligation offered (set as the change is made: the gauges follow memory,
        which a failed write rebuilds)."""
        if submission.admission is Admission.QUEUED:
            metrics.OBLIGATIONS.labels("queued").inc()
            metrics.CAPS_HIT.labels(obligation.debtor_pool, obligation.currency, "queued").inc()
        else:
            metrics.OBLIGATIONS.labels("admitted").inc()
        if submission.released:
            metrics.OBLIGATIONS.labels("released").inc(len(submission.released))
        self._export_positions(submission.admitted or (obligation,))

    def _validate(self, obligation_id: str, debtor_pool: str, creditor_pool: str, amount_minor: int,
                  currency: str) -> Obligation:
        if not self._pools:
            raise PreconditionFailed("no clearing pools are configured ([clearing] pools)",
                                     reason="CLEARING_NOT_CONFIGURED")
        bad = []
        if not _OBLIGATION_ID.fullmatch(obligation_id):
            bad.append(FieldViolation("obligation.obligation_id",
                                      "must be 1-128 letters, digits and _.:- starting with a letter or digit"))
        for name, pool in (("debtor_pool", debtor_pool), ("creditor_pool", creditor_pool)):
            if pool not in self._pools:
                bad.append(FieldViolation(f"obligation.{name}",
                                          f"must be a configured pool: {', '.join(sorted(self._pools))}"))
        if debtor_pool == creditor_pool and debtor_pool:
            bad.append(FieldViolation("obligation.creditor_pool", "must differ from debtor_pool"))
        if not 0 < amount_minor <= AMOUNT_MAX:
            bad.append(FieldViolation("obligation.amount_minor", f"must be 1 .. {AMOUNT_MAX} minor units"))
        if currency not in self._currencies:
            bad.append(FieldViolation("obligation.currency",
                                      f"must be a configured currency: {', '.join(sorted(self._currencies))}"))
        if bad:
            raise InvalidRequest("the obligation is invalid; nothing was recorded", reason="INVALID_OBLIGATION",
                                 violations=tuple(bad))
        return Obligation(obligation_id, debtor_pool, creditor_pool, amount_minor, currency)

    @staticmethod
    def _check_same(known: Obligation, offered: Obligation) -> None:
        if known != offered:
            raise ObligationConflict(f"obligation {offered.obligation_id} exists with other fields",
                                     metadata={"obligation_id": offered.obligation_id})

    async def positions(self, currency: str = "") -> tuple[str, list[PositionView]]:
        """The open window's id and every configured pool's live position, by (currency, pool)."""
        await self._settled()
        return self.center.current.window_id, self._views(self.center.current, currency)

    def _views(self, window: SettlementWindow, currency: str = "") -> list[PositionView]:
        live = window.state is WindowState.OPEN
        book = window.book if live else PositionBook.restore(window.caps, window.policy, window.obligations, ())
        waiting: dict[tuple[str, str], list[int]] = {}
        for o in (window.queued if live else ()):
            entry = waiting.setdefault((o.debtor_pool, o.currency), [0, 0])
            entry[0] += 1
            entry[1] += o.amount_minor
        keys = {(p.pool, p.currency) for p in book.positions()}
        if live:
            keys |= {(p, c) for p in self.settings.pools for c in self.settings.currencies}
        out = []
        for pool, cur in sorted(keys, key=lambda k: (k[1], k[0])):
            if currency and cur != currency:
                continue
            count, amount = waiting.get((pool, cur), (0, 0))
            out.append(PositionView(book.position(pool, cur), self.settings.caps.cap(pool, cur) if live else None,
                                    count, amount))
        return out

    def positions_of(self, window: SettlementWindow) -> list[PositionView]:
        """A window's positions: live while open, as netted once closed."""
        return self._views(window)

    # ---------------------------------------------------------------- windows

    async def close_window(self, window_id: str = "") -> SettlementWindow:
        """Cut-off now: net the open window, fix its instructions, open the next. Given a window id,
        closes that window only if it is the open one, and otherwise answers it as it is, so a
        repeated request never closes a second window."""
        wanted = "" if window_id == CURRENT else window_id
        await self._ready()

        def change() -> _Change[SettlementWindow | None]:
            center = self.center
            if wanted and center.current.window_id != wanted:
                return None, (), (), ()
            started = time.perf_counter()
            closing, _ = center.close()
            metrics.NETTING_SECONDS.observe(time.perf_counter() - started)
            now = self.clock_ns()
            closing.closed_at_ns = now
            center.current.opened_at_ns = now
            if not closing.instructions:  # nothing to move: settled at once, executor or not
                center.begin_settlement(closing.window_id)
                center.finish(closing.window_id)
                closing.finished_at_ns = now
            return closing, [closing, center.current], (), ()

        closed = await self._change(change)
        if closed is None:
            return await self.window(wanted)
        metrics.WINDOWS.labels("closed").inc()
        if closed.state.final:
            self._finished(closed)
        self._export_positions(None)
        self._kick.set()
        return closed

    async def window(self, window_id: str = "") -> SettlementWindow:
        """A window by id (live or finished); "" or "current" for the open one."""
        await self._settled()
        center = self.center
        if window_id in ("", CURRENT):
            return center.current
        if window_id in center.windows:
            return center.windows[window_id]
        found = await self.store.load_window(window_id, self.settings.caps, self.settings.cap_policy)
        if found is None:
            raise UnknownWindow(f"no window {window_id}", metadata={"window_id": window_id[:64]})
        return found

    def next_cutoff_ns(self) -> int | None:
        return self.settings.next_cutoff_ns(self.center.current.opened_at_ns)

    async def settlements(self, *, window_id: str = "", states: Sequence[InstructionState] = (),
                          page_size: int = 0, page_token: str = "") -> tuple[list[SettlementInstruction], str]:
        """Settlement instructions (all windows, or one), oldest first, a page at a time."""
        if not 0 <= page_size <= PAGE_SIZE_MAX:
            raise InvalidRequest(f"page_size must be 0 .. {PAGE_SIZE_MAX}", reason="PAGE_SIZE_INVALID",
                                 violations=(FieldViolation("page_size", f"must be 0 .. {PAGE_SIZE_MAX}"),))
        await self._settled()
        if window_id == CURRENT:
            window_id = self.center.current.window_id
        return await self.store.instructions(window_id=window_id, states=states, page_size=page_size,
                                             page_token=page_token)

    # ---------------------------------------------------------------- pools

    async def pool_report(self, currency: str = "") -> PoolReport:
        """Every configured pool's ledger balance and, per currency, the invariant's two sides."""
        currencies = [c for c in self.settings.currencies if not currency or c == currency]
        if currency and not currencies:
            raise InvalidRequest(f"currency {currency!r} is not a clearing currency", reason="CURRENCY_INVALID",
                                 violations=(FieldViolation("currency", "must be a configured clearing currency"),))
        balances = await pool_balances(self.ledger, self.settings.pools, currencies)
        checked = await invariant(self.ledger, currencies)
        for b in balances:
            metrics.POOL_BALANCE.labels(b.pool, b.currency).set(b.balance_minor)
        for inv in checked:
            metrics.POOL_INVARIANT_DIFFERENCE.labels(inv.currency).set(inv.difference_minor)
        return PoolReport(balances, checked)

    # ---------------------------------------------------------------- settlement

    async def drive(self) -> None:
        """One pass of the settlement driver (the background task calls it; tests call it directly):
        start settling closed windows, retry failures with retries left, send every instruction
        without a final answer, apply the answers, and finish the windows that are done."""
        if self.executor is None:
            raise PreconditionFailed("no settlement executor is configured", reason="SETTLEMENT_NOT_CONFIGURED")
        async with self._drive_lock:
            await self._ready()
            for window_id in [w.window_id for w in self.center.windows.values() if w.state is WindowState.CLOSED]:
                await self._change(lambda wid=window_id: self._begin(wid))
            for window_id in [w.window_id for w in self.center.windows.values() if w.state is WindowState.SETTLING]:
                await self._drive_window(window_id)

    def _begin(self, window_id: str) -> _Change[None]:
        window = self.center.window(window_id)
        window.begin_settlement()
        return None, [window], (), ()

    async def _drive_window(self, window_id: str) -> None:
        window = self.center.window(window_id)
        for inst in list(window.instructions):
            if self._should_retry(window, inst):
                await self._change(lambda iid=inst.instruction_id: self._retry(window_id, iid))
                metrics.SETTLEMENT_TRANSFERS.labels("retried").inc()
        window = self.center.window(window_id)
        todo = [i for i in window.instructions if not i.state.final]
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(inst: SettlementInstruction) -> None:
            async with limit:
                inst.attempts += 1  # kept in memory; written with the next change of the instruction
                order = SettlementOrder.of(inst, inst.attempts)
                metrics.SETTLEMENT_SENDS.inc()
                try:
                    assert self.executor is not None
                    answer = await self.executor.send(order)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - "may have been sent": UNKNOWN, sent again later
                    log.warning("settlement executor raised for %s; treating it as UNKNOWN", order.instruction_id,
                                exc_info=True)
                    answer = EXECUTOR_ERROR
            try:
                moved = await self._change(lambda: self._answer(window_id, inst.instruction_id, answer))
            except IllegalTransition:
                # A final answer contradicting the recorded one (the rail said SUCCEEDED, then FAILED):
                # nothing is changed; a person must look (reconciliation finds it in the statement).
                log.error("settlement answer %s for %s contradicts its final state; left as it is",
                          answer.outcome.value, inst.instruction_id)
                metrics.SETTLEMENT_TRANSFERS.labels("contradicted").inc()
                return
            if moved is not None:
                metrics.SETTLEMENT_TRANSFERS.labels(moved.value).inc()

        results = await asyncio.gather(*(send(i) for i in todo), return_exceptions=True)
        for failure in results:
            if isinstance(failure, BaseException):
                raise failure  # the next pass sends again whatever this one could not record
        window = self.center.window(window_id)
        if all(i.state.final for i in window.instructions) and \
                not any(self._should_retry(window, i) for i in window.instructions):
            finished = await self._change(lambda: self._finish(window_id))
            metrics.SETTLEMENT_TRANSFERS.labels("carried").inc(len(finished.failed_instruction_ids))
            metrics.OBLIGATIONS.labels("carried").inc(len(finished.failed_instruction_ids))
            self._finished(finished)

    def _finished(self, window: SettlementWindow) -> None:
        """A finished window is stored: it leaves memory (its ids are answered from the store)."""
        metrics.WINDOWS.labels(window.state.value).inc()
        if window.window_id in self.center.windows:  # not if a rebuild came between
            self.center.evict(window.window_id)
        self.store.forget(window.window_id)
        self._export_positions(None)

    def _should_retry(self, window: SettlementWindow, inst: SettlementInstruction) -> bool:
        if inst.state is not InstructionState.FAILED or inst.retried_by is not None or inst.carried_as is not None:
            return False
        depth, at = 0, inst
        while at.retry_of is not None:
            depth += 1
            at = window.instruction(at.retry_of)
        return depth < self.settings.settlement_retries

    def _retry(self, window_id: str, instruction_id: str) -> _Change[None]:
        window = self.center.window(window_id)
        again = window.retry(instruction_id)
        now = self.clock_ns()
        window.instruction(instruction_id).updated_at_ns = now
        again.updated_at_ns = now
        return None, [window], (), ()

    def _answer(self, window_id: str, instruction_id: str, answer: ChannelAnswer) -> _Change[
            InstructionState | None]:
        """The executor's answer for an instruction, through the window's state machine; a confirmed
        transfer is posted between the two pool accounts in the same commit."""
        window = self.center.window(window_id)
        inst = window.instruction(instruction_id)
        state = next_state(inst.state, answer)
        if state is None or not window.report(instruction_id, state, answer.reason):
            return None, (), (), ()
        inst.updated_at_ns = self.clock_ns()
        if answer.channel_reference:
            inst.reference = answer.channel_reference
        if state is not InstructionState.SUCCEEDED:
            return state, [window], (), ()
        accounts = (pool_account(inst.payer_pool, inst.currency), pool_account(inst.payee_pool, inst.currency))
        posting = settlement_transfer(inst.instruction_id, inst.payer_pool, inst.payee_pool, inst.amount_minor,
                                      inst.currency)
        return state, [window], accounts, (posting,)

    def _finish(self, window_id: str) -> _Change[SettlementWindow]:
        center = self.center
        window = center.finish(window_id)
        window.finished_at_ns = self.clock_ns()
        for inst in window.instructions:
            if inst.carried_as is not None:
                inst.updated_at_ns = window.finished_at_ns
        return window, [window, center.current], (), ()

    # ---------------------------------------------------------------- reconciliation

    async def sent_instructions(self, start_ns: int, end_ns: int) -> list[tuple[SettlementInstruction, int]]:
        """The settlement instructions created in [start_ns, end_ns) and sent at least once, each
        with its creation time (store.py `created_between`): what the rail's statement of that
        day, or of a later one, must show. Read from the store (durable states only); a live
        window's send count from memory, since the driver writes it only with a change."""
        await self._settled()
        return [(inst, created) for inst, created in self._with_live_attempts(
            await self.store.created_between(start_ns, end_ns)) if inst.attempts > 0]

    async def instructions_by_id(self, instruction_ids: Sequence[str]) -> list[tuple[SettlementInstruction, int]]:
        """Settlement instructions by id, sent or not (a statement line proves a send), each with its
        creation time."""
        await self._settled()
        return self._with_live_attempts(await self.store.by_ids(instruction_ids))

    def _with_live_attempts(self, found: list[tuple[SettlementInstruction, int]]) -> list[
            tuple[SettlementInstruction, int]]:
        windows = self._center.windows if self._center is not None else {}
        out = []
        for inst, created in found:
            window = windows.get(inst.window_id)
            if window is not None:
                try:
                    live = window.instruction(inst.instruction_id).attempts
                except UnknownInstruction:
                    live = 0
                if live > inst.attempts:
                    inst = dataclasses.replace(inst, attempts=live)
            out.append((inst, created))
        return out

    async def apply_statement_answer(self, instruction_id: str, succeeded: bool, *, reason: str = "",
                                     channel_reference: str = "") -> bool:
        """The rail's statement on a settlement instruction that is still open (PENDING, UNKNOWN):
        settled or rejected, applied like the executor's answer (`_answer`: the window's state
        machine, and a SUCCEEDED one's pool-to-pool posting in the same commit), so whichever of
        the two comes first moves it and the posting happens once. True when it moved it; False
        when it had that state already, when its window is not settling (a finished window's are
        all final), and when the statement contradicts a final state: that is left as it is (a
        discrepancy for a person, which reconciliation opens), logged and counted."""
        window_id = instruction_id.rpartition("/")[0]
        answer = ChannelAnswer(ChannelOutcome.SUCCEEDED if succeeded else ChannelOutcome.FAILED, reason,
                               channel_reference)
        await self._ready()
        window = self.center.windows.get(window_id)
        if window is None or window.state is not WindowState.SETTLING:
            return False
        try:
            moved = await self._change(lambda: self._answer(window_id, instruction_id, answer))
        except (UnknownWindow, UnknownInstruction):
            return False
        except IllegalTransition:
            log.error("the statement's %s for settlement %s contradicts its final state; left as it is",
                      answer.outcome.value, instruction_id)
            metrics.SETTLEMENT_TRANSFERS.labels("contradicted").inc()
            return False
        if moved is None:
            return False
        metrics.SETTLEMENT_TRANSFERS.labels(moved.value).inc()
        self._kick.set()  # the driver retries a failure, or finishes the window
        return True

    # ---------------------------------------------------------------- background

    async def _settle_forever(self) -> None:
        while True:
            try:
                await self.drive()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the driver must outlive a bad moment
                log.exception("settlement pass failed; trying again")
            try:
                await asyncio.wait_for(self._kick.wait(), self.settings.settle_interval_s)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()

    async def _watch_cutoff(self) -> None:
        while True:
            try:
                await self._ready()
                current = self.center.current
                cutoff = self.settings.next_cutoff_ns(current.opened_at_ns)
                assert cutoff is not None
                wait_ns = cutoff - self.clock_ns()
                if wait_ns <= 0:
                    await self.close_window(current.window_id)
                    continue
                await asyncio.sleep(min(wait_ns / 1e9, self.tick_s))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("cut-off failed; trying again")
                await asyncio.sleep(self.tick_s)

    async def in_flight(self, pool: str, currency: str) -> tuple[int, int]:
        """Settlement transfers sent and not answered for good yet (PENDING or UNKNOWN after a
        send), into and out of `pool`: the bank may have moved them already, the ledger has not
        (it posts a settlement transfer when the rail confirms it). PoolBankCheck's band."""
        moving_in = moving_out = 0
        if self._center is None:
            return 0, 0
        for window in self._center.windows.values():
            for inst in window.instructions:
                if inst.currency != currency or inst.attempts == 0 or inst.state not in (
                        InstructionState.PENDING, InstructionState.UNKNOWN):
                    continue
                if inst.payee_pool == pool:
                    moving_in += inst.amount_minor
                if inst.payer_pool == pool:
                    moving_out += inst.amount_minor
        return moving_in, moving_out

    async def _check_pools_forever(self) -> None:
        while True:
            try:
                await self.pool_report()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a missed sample is fine
                log.warning("pool invariant check failed", exc_info=True)
            if self.bank_check is not None:
                try:
                    await self.bank_check.check()  # sets the pool-against-bank gauges
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001
                    log.warning("pool bank check failed", exc_info=True)
            await asyncio.sleep(self.settings.invariant_interval_s)

    # ---------------------------------------------------------------- changes and their writes

    async def _change(self, change: Callable[[], _Change[T]]) -> T:
        """Apply `change` to the center (synchronously) and store what it touched; answers its value
        once durable. Domain errors it raises changed nothing."""
        while self._broken:
            await self._recover()
        value, windows, accounts, transfers = change()
        statements = self.store.changes(windows, self.clock_ns())
        if not statements and not transfers:
            await self._settled()
            return value
        self._seq += 1
        write = ClearingWrite(self._seq, tuple(statements), tuple(accounts), tuple(transfers))
        future = asyncio.ensure_future(self.ledger.run(write))
        self._last_write = future
        try:
            stored = await asyncio.shield(future)
        except Exception as exc:
            self._broken = True
            raise Unavailable("the clearing change was not stored; it may be retried",
                              reason="CLEARING_WRITE_FAILED") from exc
        if not stored:
            self._broken = True
            raise Unavailable("the clearing change was not stored (an earlier one failed); it may be retried",
                              reason="CLEARING_WRITE_FAILED")
        return value

    async def _settled(self) -> None:
        """Wait for the writes submitted so far (a read must not show what is not stored)."""
        if self._last_write is not None and not self._last_write.done():
            await asyncio.gather(asyncio.shield(self._last_write), return_exceptions=True)
        await self._ready()

    async def _ready(self) -> None:
        while self._broken:
            await self._recover()
        _ = self.center

    async def _recover(self) -> None:
        async with self._rebuild_lock:
            if not self._broken:
                return
            if self._last_write is not None:
                await asyncio.gather(self._last_write, return_exceptions=True)
            log.warning("a clearing write failed: rebuilding the clearing center from its tables")
            await self._rebuild()
            self._broken = False

    async def _rebuild(self) -> None:
        settings = self.settings
        loaded = await self.store.load(settings.caps, settings.cap_policy)
        self._seq = loaded.seq
        if not loaded.windows:  # the first start on this database
            center = ClearingCenter(settings.caps, settings.cap_policy, netting_options=self.netting_options)
            center.current.opened_at_ns = self.clock_ns()
            self._center = center
            self._seq += 1
            stored = await self.ledger.run(ClearingWrite(self._seq, tuple(self.store.changes(
                [center.current], self.clock_ns()))))
            if not stored:
                raise Unavailable("another process is writing the clearing tables", reason="CLEARING_WRITE_FAILED")
        else:
            self._center = ClearingCenter.restore(loaded.windows, loaded.last_window_seq, settings.caps,
                                                  settings.cap_policy, netting_options=self.netting_options)
        self._export_positions(None)

    # ---------------------------------------------------------------- metrics

    def _export_positions(self, moved: Iterable[Obligation] | None) -> None:
        """Set the open window's gauges: for the pools `moved` touched, or all (None)."""
        window = self.center.current
        if moved is None:
            keys = {(p, c) for p in self.settings.pools for c in self.settings.currencies}
        else:
            keys = {(p, o.currency) for o in moved for p in (o.debtor_pool, o.creditor_pool)}
        queued: dict[tuple[str, str], int] = {}
        for o in window.queued:
            queued[(o.debtor_pool, o.currency)] = queued.get((o.debtor_pool, o.currency), 0) + o.amount_minor
        book = window.book
        for key in keys:
            gauges = self._gauges.get(key)
            if gauges is None:
                if key[0] not in self._pools:
                    continue
                pool, currency = key
                gauges = self._gauges[key] = (
                    metrics.OPEN_GROSS.labels(pool, currency, "owes"),
                    metrics.OPEN_GROSS.labels(pool, currency, "owed"),
                    metrics.OPEN_NET.labels(pool, currency), metrics.OPEN_QUEUED.labels(pool, currency))
            p = book.position(*key)
            owes, owed, net_position, waiting = gauges
            owes.set(p.debits_minor)
            owed.set(p.credits_minor)
            net_position.set(p.net_minor)
            waiting.set(queued.get(key, 0))
