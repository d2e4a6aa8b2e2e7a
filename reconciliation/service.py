"""The reconciliation service a server runs: which channels, runs on request (idempotent per
channel and business day), the discrepancy workflow, page tokens, the open-discrepancy gauge.

What the gRPC servicer (gateway/reconciliation_servicer.py) and the daily scheduler call. Input
is validated here, before anything is written: a bad request raises InvalidRequest naming each
field and changes nothing.

Idempotency: a pair (channel, business day) with a completed run answers that run (`replayed`)
unless forced; a second request for a pair whose run is in progress in this process waits for
that run instead of starting another. A rejected or failed pair, or one left `running` by a
process that stopped, runs again as its next attempt (runs of a pair are numbered).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from typing import Final

from dualflow.adapters.contract import ChannelAdapter
from dualflow.core.database import Database
from dualflow.core.errors import FieldViolation, InvalidRequest, Unavailable

from . import metrics
from .internal import InternalCheck, InternalReport
from .model import Class, FeeFor
from .runner import DAY_NS, FeePoster, InstructionSource, Reconciler, Resolver, RunReport
from .store import RESOLUTION_ACTIONS, Discrepancy, DiscrepancyService, ResultRow, Run

log = logging.getLogger(__name__)

PAGE_MAX: Final = 1000
PAGE_DEFAULT: Final = 100
RESULTS_PAGE_MAX: Final = 5000
RESULTS_PAGE_DEFAULT: Final = 1000
ASSIGNEE_MAX: Final = 128
REASON_MAX: Final = 500
STATUSES: Final = ("open", "assigned", "resolved")
NS: Final = 10**9


def _invalid(*violations: FieldViolation) -> InvalidRequest:
    first = violations[0]
    return InvalidRequest(f"the request is invalid: {first.field} {first.description}",
                          reason="RECONCILIATION_INVALID", violations=tuple(violations))


def _token(*parts: object) -> str:
    return base64.urlsafe_b64encode("\x1f".join(str(p) for p in parts).encode()).decode()


def _untoken(token: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("\x1f")
        if len(parts) != n or not parts[0].lstrip("-").isdigit():
            raise ValueError(token)
        return parts
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("page_token is not one this service issued", reason="PAGE_TOKEN_INVALID",
                             violations=(FieldViolation("page_token", "must be a token from a previous page"),)
                             ) from None


def _page_size(value: int) -> int:
    if value < 0 or value > PAGE_MAX:
        raise _invalid(FieldViolation("page_size", f"must be 0..{PAGE_MAX} (0 means {PAGE_DEFAULT})"))
    return value or PAGE_DEFAULT


def today_utc(clock_ns: Callable[[], int] = time.time_ns) -> date:
    return datetime.fromtimestamp(clock_ns() / NS, timezone.utc).date()


class ReconciliationService:
    def __init__(self, db: Database, adapters: Mapping[str, ChannelAdapter], *, resolver: Resolver | None = None,
                 fees: FeePoster | None = None, fee_for: Callable[[str], FeeFor | None] | None = None,
                 sla_ns: int = DAY_NS, clock_ns: Callable[[], int] = time.time_ns,
                 pooled_channels: frozenset[str] = frozenset(), no_drift: frozenset[str] = frozenset(),
                 sources: Mapping[str, InstructionSource] | None = None) -> None:
        self.adapters = dict(adapters)
        # `sources`: a channel's instructions that are not payments (runner.InstructionSource: the
        # clearing center's settlement transfers over its rail), reconciled with its payments.
        self.reconciler = Reconciler(db, resolver=resolver, fees=fees, sla_ns=sla_ns, clock_ns=clock_ns,
                                     keep_results=True, sources=sources)
        self.store = self.reconciler.store
        self.discrepancies = DiscrepancyService(db, clock_ns)
        self.fee_for = fee_for
        self.clock_ns = clock_ns
        self._running: dict[tuple[str, str], asyncio.Task[RunReport]] = {}
        self.internal = InternalCheck(db, clock_ns=clock_ns, adapters=self.adapters, pooled_channels=pooled_channels,
                                      no_drift=no_drift)

    async def start(self) -> None:
        await self.reconciler.open()
        await self.refresh_gauge()

    # ---- runs
    def check_run_request(self, channel: str, business_date: str) -> None:
        bad = []
        if channel not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none configured"
            bad.append(FieldViolation("channel", f"must name a configured channel ({known})"))
        try:
            day = date.fromisoformat(business_date) if len(business_date) == 10 else None
        except ValueError:
            day = None
        if day is None:
            bad.append(FieldViolation("business_date", "must be a date, YYYY-MM-DD"))
        elif day > today_utc(self.clock_ns):
            bad.append(FieldViolation("business_date", "must not be after today (UTC)"))
        if bad:
            raise _invalid(*bad)

    async def run(self, channel: str, business_date: str, *, force: bool = False) -> RunReport:
        self.check_run_request(channel, business_date)
        key = (channel, business_date)
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        if not force:
            latest = await self.store.latest_run(channel, business_date)
            if latest is not None and latest.state == "completed":
                report = await self.report(latest)
                return RunReport(report.run, report.counts, report.applied, report.refused, report.fees, True,
                                 report.results)
        task = asyncio.ensure_future(self._run(channel, business_date))
        self._running[key] = task
        task.add_done_callback(lambda _t: self._running.pop(key, None))
        return await asyncio.shield(task)

    async def _run(self, channel: str, business_date: str) -> RunReport:
        adapter = self.adapters[channel]
        try:
            report = await self.reconciler.run(adapter, business_date,
                                               fee_for=self.fee_for(channel) if self.fee_for else None)
        except InvalidRequest:
            raise
        except Exception as exc:
            # The statement could not be fetched (or an error of ours): the run is recorded as
            # failed with its detail; the caller may try again.
            log.warning("reconciliation of %s for %s failed: %s", channel, business_date, exc)
            raise Unavailable(f"reconciliation of {channel} for {business_date} failed: "
                              f"{exc.__class__.__name__}: {exc}", reason="STATEMENT_UNAVAILABLE",
                              metadata={"channel": channel, "business_date": business_date}) from exc
        finally:
            await self.refresh_gauge()
        return report

    async def report(self, run: Run) -> RunReport:
        actions = await self.store.action_counts(run.run_id)
        return RunReport(run, await self.store.counts(run.run_id), actions.get("applied", 0),
                         actions.get("refused", 0), await self.store.fees(run.run_id),
                         results=await self.store.result_count(run.run_id))

    async def get_run(self, run_id: str) -> RunReport:
        if not run_id or len(run_id) > 200:
            raise _invalid(FieldViolation("run_id", "must name a run (rcn_...)"))
        return await self.report(await self.store.get_run(run_id))

    async def list_runs(self, *, channel: str = "", business_date: str = "", page_size: int = 0,
                        page_token: str = "") -> tuple[list[RunReport], str]:
        bad = []
        if channel and channel not in self.adapters:
            bad.append(FieldViolation("channel", "must be empty or name a configured channel"))
        if business_date:
            try:
                date.fromisoformat(business_date)
            except ValueError:
                bad.append(FieldViolation("business_date", "must be empty or a date, YYYY-MM-DD"))
        if bad:
            raise _invalid(*bad)
        size = _page_size(page_size)
        before = None
        if page_token:
            started, run_id = _untoken(page_token, 2)
            before = (int(started), run_id)
        runs = await self.store.runs(channel=channel, business_date=business_date, limit=size, before=before)
        token = _token(runs[-1].started_at_ns, runs[-1].run_id) if len(runs) == size else ""
        return [await self.report(r) for r in runs], token

    async def list_results(self, run_id: str, *, page_size: int = 0,
                           page_token: str = "") -> tuple[list[ResultRow], str, int]:
        """A page of a run's results in the order classified, the next page's token, and the total."""
        bad = []
        if not run_id or len(run_id) > 200:
            bad.append(FieldViolation("run_id", "must name a run (rcn_...)"))
        if page_size < 0 or page_size > RESULTS_PAGE_MAX:
            bad.append(FieldViolation("page_size", f"must be 0..{RESULTS_PAGE_MAX} (0 means {RESULTS_PAGE_DEFAULT})"))
        if bad:
            raise _invalid(*bad)
        size = page_size or RESULTS_PAGE_DEFAULT
        after = 0
        if page_token:
            position, of_run = _untoken(page_token, 2)
            if of_run != run_id:
                raise InvalidRequest("page_token is of another run", reason="PAGE_TOKEN_INVALID",
                                     violations=(FieldViolation("page_token", "must be a token of this run"),))
            after = int(position)
        await self.store.get_run(run_id)  # NotFound for a run that does not exist
        rows = await self.store.results(run_id, after=after, limit=size)
        token = _token(rows[-1].position, run_id) if len(rows) == size else ""
        return rows, token, await self.store.result_count(run_id)

    async def internal_check(self, findings_max: int = 0) -> InternalReport:
        """Internal reconciliation (reconciliation/internal.py): read-only, findings by kind."""
        if findings_max < 0 or findings_max > 10_000:
            raise _invalid(FieldViolation("findings_max", "must be 0..10000 (0 means 1000)"))
        report = await self.internal.run()
        del report.findings[findings_max or 1000:]
        return report

    # ---- discrepancies
    async def list_discrepancies(self, *, status: str = "", cls: str = "", channel: str = "", min_age_s: int = 0,
                                 page_size: int = 0, page_token: str = "") -> tuple[list[Discrepancy], str]:
        bad = []
        if status and status not in STATUSES:
            bad.append(FieldViolation("status", f"must be one of {', '.join(STATUSES)} (or unset: not resolved)"))
        if cls and cls not in Class.__members__:
            bad.append(FieldViolation("match_class", "must be a reconciliation class"))
        if min_age_s < 0 or min_age_s > 100 * 365 * 86_400:
            bad.append(FieldViolation("min_age_s", "must be 0..100 years of seconds"))
        if channel and len(channel) > 64:
            bad.append(FieldViolation("channel", "must be at most 64 characters"))
        if bad:
            raise _invalid(*bad)
        size = _page_size(page_size)
        after = None
        if page_token:
            opened, did = _untoken(page_token, 2)
            after = (int(opened), did)
        found = await self.discrepancies.list(
            status=status or None, unresolved=not status, cls=Class(cls) if cls else None, channel=channel or None,
            opened_before_ns=self.clock_ns() - min_age_s * NS if min_age_s else None, limit=size, after=after)
        token = _token(found[-1].opened_at_ns, found[-1].discrepancy_id) if len(found) == size else ""
        return found, token

    @staticmethod
    def _check_id(discrepancy_id: str) -> list[FieldViolation]:
        if not discrepancy_id or len(discrepancy_id) > 64 or not discrepancy_id.isascii():
            return [FieldViolation("discrepancy_id", "must name a discrepancy (dsc_...)")]
        return []

    async def assign(self, discrepancy_id: str, assignee: str, actor: str) -> Discrepancy:
        bad = self._check_id(discrepancy_id)
        if not assignee.strip() or len(assignee) > ASSIGNEE_MAX or not assignee.isprintable():
            bad.append(FieldViolation("assignee", f"must be 1..{ASSIGNEE_MAX} printable characters"))
        if bad:
            raise _invalid(*bad)
        try:
            return await self.discrepancies.assign(discrepancy_id, assignee, actor)
        finally:
            await self.refresh_gauge()

    async def resolve(self, discrepancy_id: str, action: str, reason: str, actor: str) -> Discrepancy:
        bad = self._check_id(discrepancy_id)
        if action not in RESOLUTION_ACTIONS:
            bad.append(FieldViolation("action", "must be REFUND, MANUAL_POSTING or WRITE_OFF"))
        if not reason.strip() or len(reason) > REASON_MAX:
            bad.append(FieldViolation("reason", f"must say why, in 1..{REASON_MAX} characters"))
        if bad:
            raise _invalid(*bad)
        try:
            return await self.discrepancies.resolve(discrepancy_id, action, reason, actor)
        finally:
            await self.refresh_gauge()

    async def history(self, discrepancy_id: str) -> tuple[Discrepancy, list[tuple[int, int, str, str, str]]]:
        bad = self._check_id(discrepancy_id)
        if bad:
            raise _invalid(*bad)
        found = await self.discrepancies.get(discrepancy_id)
        return found, await self.discrepancies.history(discrepancy_id)

    async def refresh_gauge(self) -> None:
        """dualflow_reconciliation_discrepancies_open{class, age_bucket} from the database."""
        try:
            ages = await self.discrepancies.open_ages()
        except Exception:  # noqa: BLE001 - a missed sample is fine
            log.debug("open discrepancy gauge not refreshed", exc_info=True)
            return
        now = self.clock_ns()
        counts: dict[tuple[str, str], int] = {(c.value, label): 0 for c in Class for label, _ in metrics.AGE_BUCKETS
                                              if c not in (Class.MATCHED, Class.EXPECTED)}
        for cls, opened in ages:
            key = (cls, metrics.age_bucket((now - opened) / NS))
            counts[key] = counts.get(key, 0) + 1
        for (cls, label), n in counts.items():
            metrics.DISCREPANCIES_OPEN.labels(cls, label).set(n)

