"""Run records and the discrepancy workflow, in tables beside the payments' (core/database.py).

Portable SQL (SQLite and PostgreSQL, `?` placeholders, BIGINT and TEXT only), created with
`ensure_schema` like the payment tables. Writes go through the Database's `write` (one durable
transaction each); no row counts come back, so conditional updates are read back.

- `recon_runs`: one row per run of (channel, business day); runs of a pair are numbered, so a
  pair can be run again (the latest run is the pair's answer).
- `recon_results`: per run, class and currency: lines, instructions and amounts (minor units).
- `recon_discrepancies`: what a person must decide, one row per finding (its id is a digest of
  channel, class and what it is about, so a re-run finds the same row instead of a second one):
  status open -> assigned -> resolved, assignee, resolution action (refund, manual_posting,
  write_off) and reason.
- `recon_discrepancy_events`: the audit trail of each (opened, seen again, assigned, resolved),
  actor and time.
- `recon_actions`: the automatic resolutions a run proposed, and what became of them
  (proposed -> applied | refused), for "resolved by reconciliation <run id>".
- `recon_expected`: instructions a run found EXPECTED, carried to later runs of the channel.
- `recon_fees`: per run and currency, the statement's fees and how many were posted now.
- `recon_lines`: per run, every result in the order classified (ours and the channel's side,
  class, action, discrepancy): what the report a finance person reads is made of. Kept by the
  service's runs (`Reconciler(keep_results=True)`), not by the benchmark's.

Errors (core.errors types, so the servicer maps them without a table of its own):

    DiscrepancyNotFound (NotFound)          no such discrepancy
    DiscrepancyClosed (PreconditionFailed)  it is resolved already; or someone else changed it first
    BadResolution (InvalidRequest)          unknown action, or no reason given, or no assignee
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from dualflow.core.database import Database, Statement
from dualflow.core.errors import InvalidRequest, NotFound, PreconditionFailed

from .engine import Tally
from .model import Action, Class, Policy, Result

RECON_SCHEMA: Final[list[str]] = [
    """CREATE TABLE IF NOT EXISTS recon_runs (
        run_id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        business_date TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        state TEXT NOT NULL,
        started_at_ns BIGINT NOT NULL,
        finished_at_ns BIGINT NOT NULL,
        lines BIGINT NOT NULL,
        instructions BIGINT NOT NULL,
        error_reason TEXT NOT NULL,
        error_line BIGINT NOT NULL,
        detail TEXT NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS recon_runs_by_pair ON recon_runs (channel, business_date, attempt)",
    """CREATE TABLE IF NOT EXISTS recon_results (
        run_id TEXT NOT NULL,
        class TEXT NOT NULL,
        currency TEXT NOT NULL,
        lines BIGINT NOT NULL,
        instructions BIGINT NOT NULL,
        amount_minor BIGINT NOT NULL,
        PRIMARY KEY (run_id, class, currency)
    )""",
    """CREATE TABLE IF NOT EXISTS recon_discrepancies (
        discrepancy_id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        business_date TEXT NOT NULL,
        class TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        object_id TEXT NOT NULL,
        first_run_id TEXT NOT NULL,
        last_run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        assignee TEXT NOT NULL,
        resolution_action TEXT NOT NULL,
        resolution_reason TEXT NOT NULL,
        opened_at_ns BIGINT NOT NULL,
        updated_at_ns BIGINT NOT NULL,
        version BIGINT NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS recon_discrepancies_by_status ON recon_discrepancies (status, class, opened_at_ns)",
    """CREATE TABLE IF NOT EXISTS recon_discrepancy_events (
        discrepancy_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        at_ns BIGINT NOT NULL,
        actor TEXT NOT NULL,
        event TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (discrepancy_id, version, event)
    )""",
    """CREATE TABLE IF NOT EXISTS recon_actions (
        run_id TEXT NOT NULL,
        object_id TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        class TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        updated_at_ns BIGINT NOT NULL,
        PRIMARY KEY (run_id, object_id)
    )""",
    # Per run and currency: the statement's lines with a fee, their fees, and the fee transfers
    # the run posted (a re-run finds them posted already).
    """CREATE TABLE IF NOT EXISTS recon_fees (
        run_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        lines BIGINT NOT NULL,
        fee_minor BIGINT NOT NULL,
        posted_now BIGINT NOT NULL,
        PRIMARY KEY (run_id, currency)
    )""",
    "CREATE INDEX IF NOT EXISTS recon_runs_by_start ON recon_runs (started_at_ns, run_id)",
    """CREATE TABLE IF NOT EXISTS recon_expected (
        channel TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        business_date TEXT NOT NULL,
        deadline_ns BIGINT NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (channel, instruction_id)
    )""",
    """CREATE TABLE IF NOT EXISTS recon_lines (
        run_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        class TEXT NOT NULL,
        action TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        channel_reference TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        has_ours BIGINT NOT NULL,
        our_amount_minor BIGINT NOT NULL,
        our_currency TEXT NOT NULL,
        our_status TEXT NOT NULL,
        has_theirs BIGINT NOT NULL,
        their_amount_minor BIGINT NOT NULL,
        their_currency TEXT NOT NULL,
        their_status TEXT NOT NULL,
        their_fee_minor BIGINT NOT NULL,
        line_count BIGINT NOT NULL,
        discrepancy_id TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (run_id, position)
    )""",
]

RESOLUTION_ACTIONS: Final = ("refund", "manual_posting", "write_off")
STATUSES: Final = ("open", "assigned", "resolved")
WRITE_BATCH = 500


class DiscrepancyNotFound(NotFound):
    reason = "DISCREPANCY_NOT_FOUND"


class DiscrepancyClosed(PreconditionFailed):
    reason = "DISCREPANCY_CLOSED"


class BadResolution(InvalidRequest):
    reason = "BAD_RESOLUTION"


class SchemaDatabase(Database, Protocol):
    async def ensure_schema(self, statements: Sequence[str]) -> None: ...


async def ensure_schema(db: Any) -> None:
    """Create the reconciliation tables (idempotent): the store's own `ensure_schema` where the
    Database has one (the ledger's stores), else plain CREATE ... IF NOT EXISTS writes."""
    if hasattr(db, "ensure_schema"):
        await db.ensure_schema(RECON_SCHEMA)
    else:
        await db.write([(sql, ()) for sql in RECON_SCHEMA])


@dataclass(frozen=True, slots=True)
class Discrepancy:
    discrepancy_id: str
    channel: str
    business_date: str
    cls: Class
    instruction_id: str
    object_id: str
    first_run_id: str
    last_run_id: str
    status: str
    assignee: str
    resolution_action: str
    resolution_reason: str
    opened_at_ns: int
    updated_at_ns: int
    version: int
    body: dict[str, Any]  # what was found: ours and the channel's lines, the detail

    @property
    def age_ns(self) -> int:
        return time.time_ns() - self.opened_at_ns


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One kept result of a run (`recon_lines`)."""

    position: int
    cls: str
    action: str
    instruction_id: str
    channel_reference: str
    kind: str
    object_id: str
    has_ours: bool
    our_amount_minor: int
    our_currency: str
    our_status: str
    has_theirs: bool
    their_amount_minor: int
    their_currency: str
    their_status: str
    their_fee_minor: int
    line_count: int
    discrepancy_id: str
    detail: str


_LINE_COLUMNS = ("position, class, action, instruction_id, channel_reference, kind, object_id, has_ours, "
                 "our_amount_minor, our_currency, our_status, has_theirs, their_amount_minor, their_currency, "
                 "their_status, their_fee_minor, line_count, discrepancy_id, detail")


def result_row(channel: str, position: int, r: Result) -> tuple[Any, ...]:
    """The `recon_lines` values (after run_id) of one result."""
    ins = r.instruction
    line = r.lines[0] if r.lines else None
    return (position, r.cls.value, r.action.value,
            ins.instruction_id if ins else (line.instruction_id if line else ""),
            line.channel_reference if line else (ins.channel_reference if ins else ""),
            line.kind if line else (ins.kind if ins else ""), ins.object_id if ins else "",
            int(ins is not None), ins.amount if ins else 0, ins.currency if ins else "", ins.status if ins else "",
            int(line is not None), line.amount if line else 0, line.currency if line else "",
            line.status if line else "", line.fee if line else 0, len(r.lines),
            discrepancy_id(channel, r) if r.action is Action.OPEN_DISCREPANCY else "", r.detail)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    channel: str
    business_date: str
    attempt: int
    state: str  # running | completed | rejected | failed
    started_at_ns: int
    finished_at_ns: int
    lines: int
    instructions: int
    error_reason: str
    error_line: int
    detail: str


_DISCREPANCY_COLUMNS = ("discrepancy_id, channel, business_date, class, instruction_id, object_id, first_run_id, "
                        "last_run_id, status, assignee, resolution_action, resolution_reason, opened_at_ns, "
                        "updated_at_ns, version, body")
_RUN_COLUMNS = ("run_id, channel, business_date, attempt, state, started_at_ns, finished_at_ns, lines, instructions, "
                "error_reason, error_line, detail")


def discrepancy_id(channel: str, result: Result) -> str:
    """Stable across re-runs: the same finding about the same thing is the same discrepancy."""
    about = result.instruction.instruction_id if result.instruction is not None else \
        "|".join(f"{x.instruction_id}/{x.channel_reference}/{x.kind}/{x.amount}" for x in result.lines)
    return "dsc_" + hashlib.sha256(f"{channel}\n{result.cls.value}\n{about}".encode()).hexdigest()[:24]


def result_body(result: Result) -> dict[str, Any]:
    return {"detail": result.detail, "action": result.action.value,
            "ours": result.instruction._asdict() if result.instruction is not None else None,
            "lines": [x._asdict() for x in result.lines]}


class ReconciliationStore:
    """Runs, their counts, proposed actions and the discrepancy workflow."""

    def __init__(self, db: Database, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self.clock_ns = clock_ns

    async def open(self) -> None:
        await ensure_schema(self.db)

    # ---- runs
    async def start_run(self, channel: str, business_date: str) -> Run:
        rows = await self.db.query("SELECT MAX(attempt) FROM recon_runs WHERE channel = ? AND business_date = ?",
                                   (channel, business_date))
        attempt = int(rows[0][0] or 0) + 1 if rows else 1
        run = Run(f"rcn_{channel}_{business_date}_{attempt}", channel, business_date, attempt, "running",
                  self.clock_ns(), 0, 0, 0, "", 0, "")
        await self.db.write([(f"INSERT INTO recon_runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                              _run_params(run))])
        return run

    async def finish_run(self, run: Run, state: str, tally: Tally | None = None, *, lines: int = 0,
                         instructions: int = 0, error_reason: str = "", error_line: int = 0,
                         detail: str = "") -> Run:
        statements: list[Statement] = [(
            "UPDATE recon_runs SET state = ?, finished_at_ns = ?, lines = ?, instructions = ?, error_reason = ?, "
            "error_line = ?, detail = ? WHERE run_id = ?",
            (state, self.clock_ns(), lines, instructions, error_reason, error_line, detail, run.run_id))]
        if tally is not None:
            # One row per class with its counts (currency ""), one per class and currency with its amount.
            for cls in sorted({*tally.lines, *tally.instructions}):
                statements.append(("INSERT INTO recon_results (run_id, class, currency, lines, instructions, "
                                   "amount_minor) VALUES (?, ?, '', ?, ?, 0)",
                                   (run.run_id, cls.value, tally.lines.get(cls, 0), tally.instructions.get(cls, 0))))
            for (cls, currency), amount in sorted(tally.amounts.items()):
                statements.append(("INSERT INTO recon_results (run_id, class, currency, lines, instructions, "
                                   "amount_minor) VALUES (?, ?, ?, 0, 0, ?)", (run.run_id, cls.value, currency, amount)))
        await self.db.write(statements)
        return await self.get_run(run.run_id)

    async def get_run(self, run_id: str) -> Run:
        rows = await self.db.query(f"SELECT {_RUN_COLUMNS} FROM recon_runs WHERE run_id = ?", (run_id,))
        if not rows:
            raise NotFound(f"no reconciliation run {run_id!r}", reason="RUN_NOT_FOUND")
        return _run(rows[0])

    async def latest_run(self, channel: str, business_date: str) -> Run | None:
        rows = await self.db.query(f"SELECT {_RUN_COLUMNS} FROM recon_runs WHERE channel = ? AND business_date = ? "
                                   "ORDER BY attempt DESC LIMIT 1", (channel, business_date))
        return _run(rows[0]) if rows else None

    async def counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """{class: {lines, instructions, amount_minor:<currency>...}} of a run."""
        rows = await self.db.query("SELECT class, currency, lines, instructions, amount_minor FROM recon_results "
                                   "WHERE run_id = ?", (run_id,))
        out: dict[str, dict[str, int]] = {}
        for cls, currency, n_lines, n_ins, amount in rows:
            entry = out.setdefault(cls, {"lines": 0, "instructions": 0})
            entry["lines"] += int(n_lines)
            entry["instructions"] += int(n_ins)
            if currency:
                entry[f"amount_minor:{currency}"] = int(amount)
        return out

    async def runs(self, *, channel: str = "", business_date: str = "", limit: int = 100,
                   before: tuple[int, str] | None = None) -> list[Run]:
        """Newest first; `before` is the (started_at_ns, run_id) of the last run of the previous page."""
        where, params = ["1 = 1"], []
        for column, value in (("channel", channel), ("business_date", business_date)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("(started_at_ns < ? OR (started_at_ns = ? AND run_id < ?))")
            params += [before[0], before[0], before[1]]
        rows = await self.db.query(f"SELECT {_RUN_COLUMNS} FROM recon_runs WHERE {' AND '.join(where)} "
                                   "ORDER BY started_at_ns DESC, run_id DESC LIMIT ?", (*params, limit))
        return [_run(r) for r in rows]

    async def first_date(self, channel: str) -> str | None:
        """The oldest business day the channel has a run of (any state): where the scheduler starts."""
        rows = await self.db.query("SELECT MIN(business_date) FROM recon_runs WHERE channel = ?", (channel,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def completed_dates(self, channel: str, since_date: str) -> set[str]:
        rows = await self.db.query("SELECT DISTINCT business_date FROM recon_runs WHERE channel = ? AND state = ? "
                                   "AND business_date >= ?", (channel, "completed", since_date))
        return {str(r[0]) for r in rows}

    async def action_counts(self, run_id: str) -> dict[str, int]:
        """{proposed|applied|refused: n} of a run's automatic resolutions."""
        rows = await self.db.query("SELECT state, COUNT(*) FROM recon_actions WHERE run_id = ? GROUP BY state",
                                   (run_id,))
        return {str(s): int(n) for s, n in rows}

    async def record_fees(self, run_id: str, fees: dict[str, tuple[int, int, int]]) -> None:
        """{currency: (lines with a fee, fee total, fee transfers posted now)} of a run."""
        if fees:
            await self.db.write([("INSERT INTO recon_fees (run_id, currency, lines, fee_minor, posted_now) "
                                  "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, currency) DO UPDATE SET "
                                  "lines = excluded.lines, fee_minor = excluded.fee_minor, "
                                  "posted_now = excluded.posted_now", (run_id, c, *v))
                                 for c, v in sorted(fees.items())])

    async def fees(self, run_id: str) -> dict[str, tuple[int, int, int]]:
        rows = await self.db.query("SELECT currency, lines, fee_minor, posted_now FROM recon_fees WHERE run_id = ? "
                                   "ORDER BY currency", (run_id,))
        return {str(c): (int(n), int(f), int(p)) for c, n, f, p in rows}

    # ---- what a run found
    async def record(self, run: Run, results: Iterable[Result], policy: Policy | None = None) -> None:
        """Discrepancies (opened, or seen again), proposed automatic actions and EXPECTED items of
        a run, in batches of WRITE_BATCH statements."""
        now = self.clock_ns()
        batch: list[Statement] = []
        for r in results:
            batch.extend(self._statements(run, r, now, policy))
            if len(batch) >= WRITE_BATCH:
                await self.db.write(batch)
                batch = []
        if batch:
            await self.db.write(batch)

    def _statements(self, run: Run, r: Result, now: int, policy: Policy | None = None) -> list[Statement]:
        ins = r.instruction
        if r.action is Action.OPEN_DISCREPANCY:
            did = discrepancy_id(run.channel, r)
            body = json.dumps(result_body(r), separators=(",", ":"), sort_keys=True)
            iid = ins.instruction_id if ins else (r.lines[0].instruction_id if r.lines else "")
            return [
                (f"INSERT INTO recon_discrepancies ({_DISCREPANCY_COLUMNS}) VALUES ({', '.join('?' * 16)}) "
                 "ON CONFLICT (discrepancy_id) DO UPDATE SET last_run_id = excluded.last_run_id",
                 (did, run.channel, run.business_date, r.cls.value, iid, ins.object_id if ins else "", run.run_id,
                  run.run_id, "open", "", "", "", now, now, 1, body)),
                ("INSERT INTO recon_discrepancy_events (discrepancy_id, version, at_ns, actor, event, detail) "
                 "VALUES (?, 1, ?, ?, 'opened', ?) ON CONFLICT (discrepancy_id, version, event) DO NOTHING",
                 (did, now, f"reconciliation {run.run_id}", r.detail)),
            ]
        if r.action.automatic and ins is not None:
            return [("INSERT INTO recon_actions (run_id, object_id, instruction_id, kind, action, class, state, "
                     "detail, updated_at_ns) VALUES (?, ?, ?, ?, ?, ?, 'proposed', ?, ?) "
                     "ON CONFLICT (run_id, object_id) DO NOTHING",
                     (run.run_id, ins.object_id, ins.instruction_id, ins.kind, r.action.value, r.cls.value, r.detail,
                      now))]
        if r.cls is Class.EXPECTED and ins is not None:
            return [("INSERT INTO recon_expected (channel, instruction_id, business_date, deadline_ns, run_id) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel, instruction_id) DO UPDATE SET "
                     "run_id = excluded.run_id", (run.channel, ins.instruction_id, run.business_date,
                                                  policy.deadline_ns(ins) if policy else 0, run.run_id))]
        if ins is not None and r.lines:  # settled on this statement: no longer carried
            return [("DELETE FROM recon_expected WHERE channel = ? AND instruction_id = ?",
                     (run.channel, ins.instruction_id))]
        return []

    async def record_results(self, run: Run, rows: Sequence[tuple[Any, ...]]) -> None:
        """Keep results of a run (`result_row` values), one transaction."""
        if rows:
            await self.db.write([(f"INSERT INTO recon_lines (run_id, {_LINE_COLUMNS}) VALUES "
                                  f"({', '.join('?' * 20)}) ON CONFLICT (run_id, position) DO NOTHING",
                                  (run.run_id, *row)) for row in rows])

    async def results(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[ResultRow]:
        """A run's kept results with a position after `after`, in order."""
        rows = await self.db.query(f"SELECT {_LINE_COLUMNS} FROM recon_lines WHERE run_id = ? AND position > ? "
                                   "ORDER BY position LIMIT ?", (run_id, after, limit))
        return [ResultRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), bool(r[7]),
                          int(r[8]), str(r[9]), str(r[10]), bool(r[11]), int(r[12]), str(r[13]), str(r[14]),
                          int(r[15]), int(r[16]), str(r[17]), str(r[18])) for r in rows]

    async def result_count(self, run_id: str) -> int:
        rows = await self.db.query("SELECT COUNT(*) FROM recon_lines WHERE run_id = ?", (run_id,))
        return int(rows[0][0]) if rows else 0

    async def expected(self, channel: str, before_date: str) -> list[str]:
        """Instruction ids still EXPECTED from runs of earlier business days (carried forward)."""
        rows = await self.db.query("SELECT instruction_id FROM recon_expected WHERE channel = ? AND business_date < ? "
                                   "ORDER BY instruction_id", (channel, before_date))
        return [r[0] for r in rows]

    async def actions(self, run_id: str, state: str = "proposed") -> list[tuple[str, str, str, str]]:
        """(object_id, instruction_id, kind, action) of a run's automatic resolutions in a state."""
        rows = await self.db.query("SELECT object_id, instruction_id, kind, action FROM recon_actions "
                                   "WHERE run_id = ? AND state = ? ORDER BY object_id", (run_id, state))
        return [tuple(r) for r in rows]  # type: ignore[misc]

    async def action_done(self, run_id: str, object_id: str, state: str, detail: str = "") -> None:
        assert state in ("applied", "refused"), state
        await self.db.write([("UPDATE recon_actions SET state = ?, detail = ?, updated_at_ns = ? "
                              "WHERE run_id = ? AND object_id = ?", (state, detail, self.clock_ns(), run_id,
                                                                      object_id))])


class DiscrepancyService:
    """The workflow a finance person drives: list, assign, resolve with a reason and an action."""

    def __init__(self, db: Database, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self.clock_ns = clock_ns

    async def get(self, discrepancy_id: str) -> Discrepancy:
        rows = await self.db.query(f"SELECT {_DISCREPANCY_COLUMNS} FROM recon_discrepancies WHERE discrepancy_id = ?",
                                   (discrepancy_id,))
        if not rows:
            raise DiscrepancyNotFound(f"no discrepancy {discrepancy_id!r}")
        return _discrepancy(rows[0])

    async def list(self, *, status: str | None = None, cls: Class | None = None, channel: str | None = None,
                   opened_before_ns: int | None = None, limit: int = 100,
                   after: tuple[int, str] | None = None, unresolved: bool = False) -> list[Discrepancy]:
        """Oldest first (the age queue); `opened_before_ns` keeps those older than a point in time;
        `after` is the (opened_at_ns, id) of the last one of the previous page; `unresolved`
        keeps the open and the assigned ones."""
        where, params = ["1 = 1"], []
        if unresolved:
            where.append("status <> 'resolved'")
        for column, value in (("status", status), ("class", cls.value if cls else None), ("channel", channel)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if opened_before_ns is not None:
            where.append("opened_at_ns < ?")
            params.append(opened_before_ns)
        if after is not None:
            where.append("(opened_at_ns > ? OR (opened_at_ns = ? AND discrepancy_id > ?))")
            params += [after[0], after[0], after[1]]
        rows = await self.db.query(f"SELECT {_DISCREPANCY_COLUMNS} FROM recon_discrepancies WHERE "
                                   f"{' AND '.join(where)} ORDER BY opened_at_ns, discrepancy_id LIMIT ?",
                                   (*params, limit))
        return [_discrepancy(r) for r in rows]

    async def count_open_by_class(self) -> dict[str, int]:
        rows = await self.db.query("SELECT class, COUNT(*) FROM recon_discrepancies WHERE status <> 'resolved' "
                                   "GROUP BY class")
        return {str(c): int(n) for c, n in rows}

    async def open_ages(self) -> list[tuple[str, int]]:
        """(class, opened_at_ns) of every discrepancy not resolved yet (for the age gauge)."""
        rows = await self.db.query("SELECT class, opened_at_ns FROM recon_discrepancies WHERE status <> 'resolved'")
        return [(str(c), int(t)) for c, t in rows]

    async def open(self, channel: str, business_date: str, run_id: str, result: Result) -> Discrepancy:
        """Open one by hand (a run opens its own through ReconciliationStore.record); idempotent."""
        run = Run(run_id, channel, business_date, 0, "", 0, 0, 0, 0, "", 0, "")
        await self.db.write(ReconciliationStore(self.db, self.clock_ns)._statements(
            run, result._replace(action=Action.OPEN_DISCREPANCY), self.clock_ns()))
        return await self.get(discrepancy_id(channel, result))

    async def assign(self, discrepancy_id: str, assignee: str, actor: str) -> Discrepancy:
        if not assignee.strip():
            raise BadResolution("an assignee is required")
        d = await self.get(discrepancy_id)
        if d.status == "resolved":
            raise DiscrepancyClosed(f"discrepancy {discrepancy_id} is resolved")
        return await self._change(d, actor, "assigned", assignee, "SET status = 'assigned', assignee = ?",
                                  (assignee,))

    async def resolve(self, discrepancy_id: str, action: str, reason: str, actor: str) -> Discrepancy:
        """Close it with what was done about it: refund, manual_posting or write_off (to the
        suspense account), and why. The action itself (the refund, the posting) is the payment
        service's; this records the decision."""
        if action not in RESOLUTION_ACTIONS:
            raise BadResolution(f"action must be one of {RESOLUTION_ACTIONS}")
        if not reason.strip():
            raise BadResolution("a reason is required")
        d = await self.get(discrepancy_id)
        if d.status == "resolved":
            raise DiscrepancyClosed(f"discrepancy {discrepancy_id} is resolved already")
        return await self._change(d, actor, "resolved", f"{action}: {reason}",
                                  "SET status = 'resolved', resolution_action = ?, resolution_reason = ?",
                                  (action, reason))

    async def history(self, discrepancy_id: str) -> list[tuple[int, int, str, str, str]]:
        """The audit trail: (version, at_ns, actor, event, detail), oldest first."""
        rows = await self.db.query("SELECT version, at_ns, actor, event, detail FROM recon_discrepancy_events "
                                   "WHERE discrepancy_id = ? ORDER BY version, at_ns", (discrepancy_id,))
        return [(int(v), int(t), str(a), str(e), str(x)) for v, t, a, e, x in rows]

    async def _change(self, d: Discrepancy, actor: str, event: str, detail: str, set_sql: str,
                      params: tuple[Any, ...]) -> Discrepancy:
        now = self.clock_ns()
        version = d.version + 1
        # Optimistic: only if nobody changed it since we read it; the event row's key makes a
        # second writer of the same version fail the whole transaction.
        await self.db.write([
            (f"UPDATE recon_discrepancies {set_sql}, updated_at_ns = ?, version = ? "
             "WHERE discrepancy_id = ? AND version = ?", (*params, now, version, d.discrepancy_id, d.version)),
            ("INSERT INTO recon_discrepancy_events (discrepancy_id, version, at_ns, actor, event, detail) "
             "VALUES (?, ?, ?, ?, ?, ?)", (d.discrepancy_id, version, now, actor, event, detail)),
        ])
        after = await self.get(d.discrepancy_id)
        if after.version != version or after.status != event:
            raise DiscrepancyClosed(f"discrepancy {d.discrepancy_id} was changed by someone else")
        return after


def _run_params(run: Run) -> tuple[Any, ...]:
    return (run.run_id, run.channel, run.business_date, run.attempt, run.state, run.started_at_ns,
            run.finished_at_ns, run.lines, run.instructions, run.error_reason, run.error_line, run.detail)


def _run(row: Sequence[Any]) -> Run:
    return Run(str(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]), int(row[5]), int(row[6]),
               int(row[7]), int(row[8]), str(row[9]), int(row[10]), str(row[11]))


def _discrepancy(row: Sequence[Any]) -> Discrepancy:
    return Discrepancy(str(row[0]), str(row[1]), str(row[2]), Class(row[3]), str(row[4]), str(row[5]), str(row[6]),
                       str(row[7]), str(row[8]), str(row[9]), str(row[10]), str(row[11]), int(row[12]),
                       int(row[13]), int(row[14]), json.loads(row[15]))
