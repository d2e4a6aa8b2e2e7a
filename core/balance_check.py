"""The periodic check an operator pages on: do the books balance, and what is stuck open.

`BalanceCheck` owns one background task that, every `interval_s` (15 s by default,
`DUALFLOW_BALANCE_CHECK_INTERVAL_S` overrides it), reads the ledger's per-currency totals
and exports debits minus credits as `dualflow_ledger_trial_balance_difference{currency,balance}`
(pending and posted apart, in minor units: 0 when healthy), how long the check took and when
it last succeeded. The writer asserts double entry before every commit, so a non-zero value
means the stored books were changed around it (a bad migration, a hand-made UPDATE, a
corrupted restore): that pages at once. A check that keeps failing shows as a stale
last-success timestamp.

In the same pass, because it is the same kind of question (what does the database say,
beyond what this process saw), it counts the payments still open from the payments table
with one query over its partial index `payments_open`: by state and time in that state
(`dualflow_payments_open{status,age_bucket}`), and those left with no polling window
(`dualflow_payments_past_poll_window{status}`: past their window, being reversed, or waiting
for reconciliation). These are database-wide, unlike `dualflow_payments_awaiting_channel`,
which counts what this process is driving now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from dualflow.core.ledger.store import CurrencyTotals
from dualflow.core.payments.model import PaymentStatus

log = logging.getLogger(__name__)

INTERVAL_ENV = "DUALFLOW_BALANCE_CHECK_INTERVAL_S"
INTERVAL_DEFAULT_S = 15.0
NS = 1_000_000_000

# Open payments by time in their state: label value -> upper bound in seconds (None: no bound).
# 1 h is the default polling window, 1 d a payment nobody has looked at.
AGE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("0-1m", 60), ("1m-5m", 300), ("5m-1h", 3600), ("1h-1d", 86400), ("1d+", None))
OPEN_STATUSES: tuple[PaymentStatus, ...] = (PaymentStatus.CREATED, PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN)
# Literal, matching the partial index payments_open (core/payments/records.py): a bound
# parameter would keep the planner from proving the index applies.
_OPEN_IN = ", ".join(str(int(s)) for s in OPEN_STATUSES)
POLLED_STATUSES: tuple[PaymentStatus, ...] = (PaymentStatus.PROCESSING, PaymentStatus.UNKNOWN)
_POLLED_IN = ", ".join(str(int(s)) for s in POLLED_STATUSES)

TRIAL_BALANCE_DIFFERENCE = Gauge(
    "dualflow_ledger_trial_balance_difference",
    "Debits minus credits over every account of a currency, in minor units, for pending and posted "
    "balances apart (balance label); 0 when the books balance.",
    ["currency", "balance"],
)
CHECK_SECONDS = Histogram(
    "dualflow_ledger_balance_check_seconds",
    "Time for one balance check: the trial balance and the open-payment counts.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAST_SUCCESS = Gauge(
    "dualflow_ledger_balance_check_last_success_timestamp_seconds",
    "Unix time at which the last trial balance was read (0 before the first).",
)
CHECK_FAILURES = Counter(
    "dualflow_ledger_balance_check_failures_total",
    "Balance checks that raised (the database did not answer); the gauges keep their last values.",
)
PAYMENTS_OPEN = Gauge(
    "dualflow_payments_open",
    "Payments not final in the database, by state (CREATED, PROCESSING, UNKNOWN) and time since "
    "their last change (age_bucket).",
    ["status", "age_bucket"],
)
PAST_POLL_WINDOW = Gauge(
    "dualflow_payments_past_poll_window",
    "PROCESSING or UNKNOWN payments no longer polled within their window: past it, being reversed, "
    "or left to reconciliation.",
    ["status"],
)


class BooksSource(Protocol):
    """What the check reads: LedgerService is one."""

    async def currency_totals(self) -> list[CurrencyTotals]: ...
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    differences: dict[tuple[str, str], int]  # (currency, "posted" | "pending") -> debits - credits
    open_payments: dict[tuple[str, str], int] | None  # (status, age bucket) -> count; None: no payments table
    past_poll_window: dict[str, int] | None

    @property
    def balanced(self) -> bool:
        return not any(self.differences.values())


def interval_from_env(default_s: float = INTERVAL_DEFAULT_S) -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return default_s
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        log.warning("%s=%r is not a positive number of seconds; using %s", INTERVAL_ENV, raw, default_s)
        return default_s
    return value


class BalanceCheck:
    def __init__(self, books: BooksSource, *, interval_s: float | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.books = books
        self.interval_s = interval_from_env() if interval_s is None else interval_s
        assert self.interval_s > 0, "the balance check needs a positive interval"
        self.clock_ns = clock_ns
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._warned_no_payments = False

    async def start(self) -> None:
        """Check at once (in the background: a large ledger must not delay serving), then every interval."""
        assert self._task is None, "balance check already started"
        self._stopping = False
        self._task = asyncio.create_task(self._run_forever(), name="balance-check")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check_once(self) -> CheckResult:
        """Read the books, set the gauges, answer what was read. Raises when the ledger does not answer."""
        started = time.perf_counter()
        try:
            totals = await self.books.currency_totals()
        except asyncio.CancelledError:
            raise
        except Exception:
            CHECK_FAILURES.inc()
            raise
        differences: dict[tuple[str, str], int] = {}
        for t in totals:
            differences[(t.currency, "posted")] = t.debits_posted - t.credits_posted
            differences[(t.currency, "pending")] = t.debits_pending - t.credits_pending
        for (currency, balance), difference in differences.items():
            TRIAL_BALANCE_DIFFERENCE.labels(currency, balance).set(difference)
        if any(differences.values()):
            log.error("trial balance out of balance (debits - credits, minor units): %s",
                      {f"{c} {b}": d for (c, b), d in differences.items() if d})
        LAST_SUCCESS.set(self.clock_ns() / NS)
        open_payments, past_window = await self._open_payments()
        CHECK_SECONDS.observe(time.perf_counter() - started)
        return CheckResult(differences, open_payments, past_window)

    async def _open_payments(self) -> tuple[dict[tuple[str, str], int] | None, dict[str, int] | None]:
        now_ns = self.clock_ns()
        # Cumulative: how many have been in their state at least each bound; the buckets are differences.
        bounds = [b for _, b in AGE_BUCKETS if b is not None]
        older = ", ".join("SUM(CASE WHEN updated_at_ns <= ? THEN 1 ELSE 0 END)" for _ in bounds)
        try:
            rows = await self.books.query(
                f"SELECT status, COUNT(*), {older} FROM payments WHERE status IN ({_OPEN_IN}) GROUP BY status",
                [now_ns - b * NS for b in bounds])
            past = await self.books.query(
                f"SELECT p.status, COUNT(*) FROM payments p WHERE p.status IN ({_OPEN_IN}) "
                f"AND p.status IN ({_POLLED_IN}) AND NOT EXISTS (SELECT 1 FROM channel_polls c "
                "WHERE c.object_id = p.payment_id AND c.kind = 'pay' AND c.window_ends_ns > ?) GROUP BY p.status",
                (now_ns,))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a ledger without the payment tables (ledger-only use)
            if not self._warned_no_payments:
                log.info("balance check: no payment tables to count open payments in", exc_info=True)
                self._warned_no_payments = True
            return None, None
        counts: dict[tuple[str, str], int] = {(s.name, label): 0 for s in OPEN_STATUSES for label, _ in AGE_BUCKETS}
        for status, total, *at_least in rows:
            name = PaymentStatus(int(status)).name
            cumulative = [int(total), *(int(n or 0) for n in at_least)]
            for i, (label, _) in enumerate(AGE_BUCKETS):
                counts[(name, label)] = cumulative[i] - (cumulative[i + 1] if i + 1 < len(cumulative) else 0)
        past_window = {s.name: 0 for s in POLLED_STATUSES}
        for status, n in past:
            past_window[PaymentStatus(int(status)).name] = int(n)
        for (status_name, label), n in counts.items():
            PAYMENTS_OPEN.labels(status_name, label).set(n)
        for status_name, n in past_window.items():
            PAST_POLL_WINDOW.labels(status_name).set(n)
        return counts, past_window

    async def _run_forever(self) -> None:
        # `_stopping` as well as cancellation: 3.11 can swallow a cancellation inside a library.
        while not self._stopping:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the check must outlive a bad moment; the counter shows it
                log.warning("balance check failed; trying again in %s s", self.interval_s, exc_info=True)
            await asyncio.sleep(self.interval_s)
