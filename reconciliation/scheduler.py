"""The daily reconciliation: every channel, for each business day whose statements are out.

A business day D (UTC) is due from `time_utc` on day D+1: the hour the channels' statements of D
are available. Each pass (at start, then every `tick_s`) reconciles, channel by channel, every due
day that has no completed run yet, at most `catch_up_days` back and not before the channel's first
run (a channel never reconciled starts at the newest due day). The runs table is the durable
record, so a restart neither skips a day (what was missed while the process was down is caught
up) nor does one twice (a completed pair is not run again).
A day whose run failed or was rejected is tried again, at most every `retry_s`, until it
completes or falls out of the catch-up window (then it waits for a person: RunReconciliation).

Several processes may run the scheduler over one database: a pair is run twice at worst (the
second run is the pair's next attempt; its resolutions find the payments moved and change nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from .runner import RunReport
from .service import ReconciliationService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    enabled: bool = False
    time_utc_s: int = 2 * 3600  # seconds after midnight UTC when the previous day's statements are out
    sla_s: int = 86_400  # how long after the cut-off a missing instruction may still show up (EXPECTED)
    catch_up_days: int = 3  # how far back a pass looks for days without a completed run
    retry_s: float = 900.0  # a failed or rejected day is tried again after this long
    tick_s: float = 60.0


def due_date(now_s: float, time_utc_s: int) -> date:
    """The newest business day whose statements are out at `now_s`."""
    moment = datetime.fromtimestamp(now_s, timezone.utc)
    seconds = moment.hour * 3600 + moment.minute * 60 + moment.second
    return moment.date() - timedelta(days=1 if seconds >= time_utc_s else 2)


class DailyReconciliation:
    def __init__(self, service: ReconciliationService, settings: ScheduleSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock
        self._tried: dict[tuple[str, str], float] = {}  # (channel, day) -> when a run last did not complete
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self.settings.enabled and self.service.adapters:
            self._task = asyncio.create_task(self._forever(), name="reconciliation-scheduler")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        while not self._stopping:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the schedule must outlive a bad moment
                log.exception("daily reconciliation pass failed; trying again at the next tick")
            await asyncio.sleep(self.settings.tick_s)

    async def days_to_run(self, channel: str) -> list[str]:
        """The due days of `channel` without a completed run, oldest first: within the catch-up
        window, and not before the channel's first run (a channel never reconciled starts at the
        newest due day)."""
        newest = due_date(self.clock(), self.settings.time_utc_s)
        oldest = newest - timedelta(days=max(self.settings.catch_up_days, 1) - 1)
        first = await self.service.store.first_date(channel)
        start = newest if first is None else max(oldest, min(date.fromisoformat(first), newest))
        done = await self.service.store.completed_dates(channel, start.isoformat())
        days = []
        day = start
        while day <= newest:
            if day.isoformat() not in done:
                days.append(day.isoformat())
            day += timedelta(days=1)
        return days

    async def pass_once(self) -> list[RunReport]:
        """One pass over every channel; the runs it made (completed, rejected)."""
        reports = []
        now = self.clock()
        for channel in sorted(self.service.adapters):
            for day in await self.days_to_run(channel):
                if self._stopping:
                    return reports
                tried = self._tried.get((channel, day))
                if tried is not None and now - tried < self.settings.retry_s:
                    continue
                try:
                    report = await self.service.run(channel, day)
                except Exception as exc:  # noqa: BLE001 - one channel's trouble must not stop the others
                    log.warning("daily reconciliation of %s for %s did not complete: %s", channel, day, exc)
                    self._tried[(channel, day)] = now
                    continue
                reports.append(report)
                if report.run.state == "completed":
                    self._tried.pop((channel, day), None)
                else:
                    log.warning("daily reconciliation of %s for %s: %s %s", channel, day, report.run.state,
                                report.run.detail)
                    self._tried[(channel, day)] = now
        if reports and not self._stopping:
            # After the day's external runs (what they settled is in the books now): ours vs ours.
            try:
                found = await self.service.internal_check()
            except Exception:  # noqa: BLE001 - the external runs stand; the next pass checks again
                log.exception("internal reconciliation failed")
            else:
                if any(found.counts.values()):
                    log.warning("internal reconciliation: %s", {k: n for k, n in found.counts.items() if n})
        return reports
