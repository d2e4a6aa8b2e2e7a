"""The daily reconciliation on SQLite and PostgreSQL, under a test clock: each business day of
each channel once its statements are out, what a restart missed caught up, nothing run twice, a
rejected day tried again after retry_s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY

from dualflow.adapters.contract import Capabilities, Flow, StatementLine, StatementRejected
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.model import Asset
from dualflow.core.payments.records import PAYMENT_SCHEMA
from dualflow.reconciliation.scheduler import DailyReconciliation, ScheduleSettings, due_date
from dualflow.reconciliation.service import ReconciliationService


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("now", "due"), [
    ("2024-03-10 01:59:59", "2024-03-08"),  # before 02:00 the 9th's statements are not out yet
    ("2024-03-10 02:00:00", "2024-03-09"),
    ("2024-03-10 23:59:59", "2024-03-09"),
    ("2024-03-01 00:00:00", "2024-02-28"),  # 2024 is a leap year, but the 29th is not due before 02:00
])
def test_due_date(now: str, due: str) -> None:
    assert due_date(at(now), 2 * 3600).isoformat() == due


class Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.fetched: list[str] = []
        self.broken: set[str] = set()

    def describe(self) -> Capabilities:
        return Capabilities(self.name, frozenset({Asset.BANK_CARD}), frozenset({"CNY"}), frozenset({Flow.STATEMENT}))

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        self.fetched.append(business_date)
        if business_date in self.broken:
            raise StatementRejected("TRUNCATED", 7, "the file ends in the middle of a line")
        for line in ():
            yield line


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[LedgerService]:
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    await ledger.ensure_schema(PAYMENT_SCHEMA)
    try:
        yield ledger
    finally:
        await ledger.stop()


async def test_each_day_once_across_restarts(db: LedgerService) -> None:
    now = [at("2024-03-10 01:00:00")]
    card, psp = Channel("cardbank"), Channel("wallet-psp")
    settings = ScheduleSettings(enabled=True, catch_up_days=3, retry_s=600)

    def scheduler() -> DailyReconciliation:
        service = ReconciliationService(db, {"cardbank": card, "wallet-psp": psp},
                                        clock_ns=lambda: int(now[0] * 10**9))
        return DailyReconciliation(service, settings, clock=lambda: now[0])

    first = scheduler()
    await first.service.start()
    checks = REGISTRY.get_sample_value("dualflow_reconciliation_internal_checks_total") or 0
    # A channel never reconciled starts at the newest due day: the 8th (the 9th is not out before 02:00).
    reports = await first.pass_once()
    assert sorted((r.run.channel, r.run.business_date, r.run.state) for r in reports) == [
        ("cardbank", "2024-03-08", "completed"), ("wallet-psp", "2024-03-08", "completed")]
    assert await first.pass_once() == []
    # The internal check ran once, after the pass that ran the external ones; nothing to find.
    assert REGISTRY.get_sample_value("dualflow_reconciliation_internal_checks_total") == checks + 1
    assert REGISTRY.get_sample_value("dualflow_reconciliation_internal_findings", {"kind": "TRIAL_BALANCE"}) == 0
    now[0] = at("2024-03-10 02:00:01")
    assert [(r.run.channel, r.run.business_date) for r in await first.pass_once()] == [
        ("cardbank", "2024-03-09"), ("wallet-psp", "2024-03-09")]

    # Down for two days; the card bank's statement of the 11th is broken when the process comes back.
    now[0] = at("2024-03-12 09:00:00")
    card.broken.add("2024-03-11")
    restarted = scheduler()
    await restarted.service.start()
    reports = await restarted.pass_once()
    assert sorted((r.run.channel, r.run.business_date, r.run.state) for r in reports) == [
        ("cardbank", "2024-03-10", "completed"), ("cardbank", "2024-03-11", "rejected"),
        ("wallet-psp", "2024-03-10", "completed"), ("wallet-psp", "2024-03-11", "completed")]
    # Not again at once: after retry_s, and once the bank fixed its file the day completes.
    assert await restarted.pass_once() == []
    card.broken.clear()
    now[0] += 601
    assert [(r.run.business_date, r.run.attempt, r.run.state) for r in await restarted.pass_once()] == [
        ("2024-03-11", 2, "completed")]
    assert card.fetched == ["2024-03-08", "2024-03-09", "2024-03-10", "2024-03-11", "2024-03-11"]
    assert psp.fetched == ["2024-03-08", "2024-03-09", "2024-03-10", "2024-03-11"]
    # Every day of both channels has exactly one completed run.
    rows = await db.query("SELECT channel, business_date, COUNT(*) FROM recon_runs WHERE state = 'completed' "
                          "GROUP BY channel, business_date ORDER BY channel, business_date")
    assert [tuple(r) for r in rows] == [(c, f"2024-03-{d:02d}", 1) for c in ("cardbank", "wallet-psp")
                                        for d in (8, 9, 10, 11)]


async def test_the_catch_up_window_bounds_a_long_absence(db: LedgerService) -> None:
    now = [at("2024-03-10 03:00:00")]
    card = Channel("cardbank")
    service = ReconciliationService(db, {"cardbank": card}, clock_ns=lambda: int(now[0] * 10**9))
    await service.start()
    daily = DailyReconciliation(service, ScheduleSettings(enabled=True, catch_up_days=2), clock=lambda: now[0])
    await daily.pass_once()
    now[0] = at("2024-03-20 03:00:00")  # ten days later: the last two days, the rest waits for a person
    assert [r.run.business_date for r in await daily.pass_once()] == ["2024-03-18", "2024-03-19"]
