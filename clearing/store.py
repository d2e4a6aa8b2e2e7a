"""Clearing's tables: windows, obligations (the id index), queues, settlement instructions.

They live beside the ledger's in the same database (core/database.py: portable
SQL, BIGINT and TEXT only), and every write rides the ledger's group commit as
one `ClearingWrite` Extension, so a change and the ledger posting that goes with
it (a confirmed settlement transfer between two pool accounts) commit together
or not at all.

What is stored mirrors the plain fields of `SettlementWindow` (window.py):

* `clearing_windows`: one row per window (its state, clock marks, netting
  summaries as JSON, the instructions carried on at finish);
* `clearing_obligations`: one row per obligation id ever recorded, the
  idempotency index: its fields, the window that admitted it (or, while it
  waits, the window whose queue holds it) and its admission index there (-1
  while queued);
* `clearing_queued`: a window's `queued` list in order: while the window is open
  the obligations waiting for a cap, after its close those it handed on;
* `clearing_instructions`: every settlement instruction with its state.

`changes()` turns the difference between a window and what was last written of
it into statements (windows only grow obligations, so that is cheap); `load()`
reads the live windows back for `ClearingCenter.restore`.

Writes are chained: `clearing_meta.seq` counts them, and write n applies only if
the stored count is n - 1. The service submits writes without waiting for each
other (they share group commits), so if one fails every later one refuses too,
and the service rebuilds its memory from these tables instead of running ahead
of them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from dualflow.core.database import Statement
from dualflow.core.errors import InvalidRequest
from dualflow.core.ledger.batch import Context, Operation
from dualflow.core.ledger.model import Account, Transfer
from dualflow.core.ledger.state_machine import A_EXISTS, A_OK, T_EXISTS, T_OK

from .caps import CapPolicy, NetDebitCaps
from .netting import Obligation
from .window import CurrencySummary, InstructionState, SettlementInstruction, SettlementWindow, WindowState

CLEARING_SCHEMA: Final[list[str]] = [
    """CREATE TABLE IF NOT EXISTS clearing_meta (
        id BIGINT PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
    "INSERT INTO clearing_meta (id, seq) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS clearing_windows (
        window_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        state TEXT NOT NULL,
        opened_at_ns BIGINT NOT NULL,
        closed_at_ns BIGINT NOT NULL,
        finished_at_ns BIGINT NOT NULL,
        summaries TEXT NOT NULL,
        failed_instruction_ids TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS clearing_obligations (
        obligation_id TEXT PRIMARY KEY,
        debtor_pool TEXT NOT NULL,
        creditor_pool TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        window_id TEXT NOT NULL,
        admitted_index BIGINT NOT NULL,
        recorded_at_ns BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS clearing_obligations_by_window ON clearing_obligations (window_id, admitted_index)",
    """CREATE TABLE IF NOT EXISTS clearing_queued (
        window_id TEXT NOT NULL,
        obligation_id TEXT NOT NULL,
        ordinal BIGINT NOT NULL,
        PRIMARY KEY (window_id, obligation_id)
    )""",
    """CREATE TABLE IF NOT EXISTS clearing_instructions (
        instruction_id TEXT PRIMARY KEY,
        window_id TEXT NOT NULL,
        window_seq BIGINT NOT NULL,
        idx BIGINT NOT NULL,
        payer_pool TEXT NOT NULL,
        payee_pool TEXT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        reference TEXT NOT NULL,
        retry_of TEXT NOT NULL,
        retried_by TEXT NOT NULL,
        carried_as TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        updated_at_ns BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS clearing_instructions_order ON clearing_instructions (window_seq, idx)",
]

SELECT_SEQ: Final = "SELECT seq FROM clearing_meta WHERE id = 1"
UPDATE_SEQ: Final = "UPDATE clearing_meta SET seq = ? WHERE id = 1"
UPSERT_WINDOW: Final = (
    "INSERT INTO clearing_windows (window_id, seq, state, opened_at_ns, closed_at_ns, finished_at_ns, summaries, "
    "failed_instruction_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (window_id) DO UPDATE SET "
    "state = excluded.state, opened_at_ns = excluded.opened_at_ns, closed_at_ns = excluded.closed_at_ns, "
    "finished_at_ns = excluded.finished_at_ns, summaries = excluded.summaries, "
    "failed_instruction_ids = excluded.failed_instruction_ids")
UPSERT_OBLIGATION: Final = (
    "INSERT INTO clearing_obligations (obligation_id, debtor_pool, creditor_pool, amount_minor, currency, window_id, "
    "admitted_index, recorded_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (obligation_id) DO UPDATE SET "
    "window_id = excluded.window_id, admitted_index = excluded.admitted_index")
INSERT_QUEUED: Final = "INSERT INTO clearing_queued (window_id, obligation_id, ordinal) VALUES (?, ?, ?)"
DELETE_QUEUED: Final = "DELETE FROM clearing_queued WHERE window_id = ? AND obligation_id = ?"
UPSERT_INSTRUCTION: Final = (
    "INSERT INTO clearing_instructions (instruction_id, window_id, window_seq, idx, payer_pool, payee_pool, "
    "amount_minor, currency, state, reason, reference, retry_of, retried_by, carried_as, attempts, updated_at_ns) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instruction_id) DO UPDATE SET "
    "state = excluded.state, reason = excluded.reason, reference = excluded.reference, "
    "retried_by = excluded.retried_by, carried_as = excluded.carried_as, attempts = excluded.attempts, "
    "updated_at_ns = excluded.updated_at_ns")

_WINDOW_COLUMNS: Final = ("window_id, seq, state, opened_at_ns, closed_at_ns, finished_at_ns, summaries, "
                          "failed_instruction_ids")
_OBLIGATION_COLUMNS: Final = "obligation_id, debtor_pool, creditor_pool, amount_minor, currency"
_INSTRUCTION_COLUMNS: Final = ("instruction_id, window_id, idx, payer_pool, payee_pool, amount_minor, currency, "
                               "state, reason, reference, retry_of, retried_by, carried_as, attempts, "
                               "updated_at_ns, window_seq")
_FINAL_STATES: Final = (WindowState.SETTLED.value, WindowState.PARTIALLY_SETTLED.value)

PAGE_SIZE_DEFAULT: Final = 100
PAGE_SIZE_MAX: Final = 1000


# ------------------------------------------------------------------ the write


@dataclass(slots=True)
class ClearingWrite:
    """One clearing change in a group commit: its statements, the ledger accounts it opens and
    transfers it posts, all or nothing. Answers False (writing nothing) when write `seq - 1` is
    not the last one stored (see the module docstring)."""

    seq: int
    statements: tuple[Statement, ...]
    accounts: tuple[Account, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    max_items: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_items = len(self.accounts) + len(self.transfers)

    @property
    def prefetch(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(SELECT_SEQ, ())]

    def run(self, ctx: Context) -> Generator[Operation, Any, bool]:
        stored = ctx.memo.get("clearing_seq")  # an earlier clearing write of this batch
        if stored is None:
            rows = ctx.prefetched[0] if ctx.prefetched else (yield from ctx.query(SELECT_SEQ))
            assert rows, "clearing_meta has no row: ensure_schema was not run"
            stored = int(rows[0][0])
        if stored != self.seq - 1:
            return False
        if self.accounts:
            opened = yield from ctx.create_accounts(self.accounts)
            assert all(r in (A_OK, A_EXISTS) for r in opened), f"opening pool accounts failed: {opened}"
        if self.transfers:
            posted = yield from ctx.create_transfers(self.transfers)
            assert all(r in (T_OK, T_EXISTS) for r in posted), f"posting a settlement transfer failed: {posted}"
        for sql, params in self.statements:
            yield from ctx.execute(sql, params)
        yield from ctx.execute(UPDATE_SEQ, (self.seq,))
        ctx.memo["clearing_seq"] = self.seq
        return True


# ------------------------------------------------------------------ rows


def _summaries_json(summaries: Sequence[CurrencySummary]) -> str:
    return json.dumps([asdict(s) for s in summaries], separators=(",", ":"), sort_keys=True)


def _obligation(row: Sequence[Any]) -> Obligation:
    return Obligation(row[0], row[1], row[2], int(row[3]), row[4])


def _instruction(row: Sequence[Any]) -> SettlementInstruction:
    (iid, window_id, idx, payer, payee, amount, currency, state, reason, reference, retry_of, retried_by,
     carried_as, attempts, updated_at_ns) = row[:15]
    return SettlementInstruction(iid, window_id, int(idx), payer, payee, int(amount), currency,
                                 InstructionState(state), reason, reference, retry_of or None, retried_by or None,
                                 carried_as or None, int(attempts), int(updated_at_ns))


def _header(w: SettlementWindow) -> tuple[Any, ...]:
    """A window row's columns after window_id and seq."""
    return (w.state.value, w.opened_at_ns, w.closed_at_ns, w.finished_at_ns, _summaries_json(w.summaries),
            json.dumps(w.failed_instruction_ids))


def _instruction_key(i: SettlementInstruction) -> tuple[Any, ...]:
    """What changes about an instruction. `attempts` is not in it: a re-send that learns nothing
    new is not worth a commit (it is written with the next real change)."""
    return (i.state, i.reason, i.reference, i.retried_by, i.carried_as, i.updated_at_ns)


@dataclass(slots=True)
class _Image:
    """What was last written of one window."""

    seq: int
    header: tuple[Any, ...] | None = None
    obligations: int = 0
    queued: list[str] = field(default_factory=list)
    ordinal: int = 0
    instructions: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Loaded:
    seq: int  # writes stored so far
    last_window_seq: int  # 0: no window was ever opened
    windows: list[SettlementWindow]  # the live ones, in opening order


class ClearingStore:
    """`db` is the ledger service (core/database.py's `query`, plus `ensure_schema`); writes are
    made by the caller, who runs `ClearingWrite`s built from `changes()`."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._images: dict[str, _Image] = {}
        self.last_window_seq = 0

    async def ensure_schema(self) -> None:
        await self.db.ensure_schema(CLEARING_SCHEMA)

    # ---------------------------------------------------------------- changes -> statements

    def changes(self, windows: Iterable[SettlementWindow], now_ns: int) -> list[Statement]:
        """Statements that make the stored windows equal `windows`; remembers them as written
        (if the write then fails, the service calls `load` again, which resets this)."""
        out: list[Statement] = []
        for w in windows:
            image = self._images.get(w.window_id)
            if image is None:
                self.last_window_seq += 1
                image = self._images[w.window_id] = _Image(self.last_window_seq)
            header = _header(w)
            if header != image.header:
                out.append((UPSERT_WINDOW, (w.window_id, image.seq, *header)))
                image.header = header
            for index in range(image.obligations, len(w.obligations)):
                o = w.obligations[index]
                out.append((UPSERT_OBLIGATION, (o.obligation_id, o.debtor_pool, o.creditor_pool, o.amount_minor,
                                                o.currency, w.window_id, index, now_ns)))
            image.obligations = len(w.obligations)
            queued = [o.obligation_id for o in w.queued]
            if queued != image.queued:
                now_waiting = set(queued)
                before = set(image.queued)
                out.extend((DELETE_QUEUED, (w.window_id, oid)) for oid in image.queued if oid not in now_waiting)
                for o in w.queued:
                    if o.obligation_id not in before:
                        image.ordinal += 1
                        out.append((UPSERT_OBLIGATION, (o.obligation_id, o.debtor_pool, o.creditor_pool,
                                                        o.amount_minor, o.currency, w.window_id, -1, now_ns)))
                        out.append((INSERT_QUEUED, (w.window_id, o.obligation_id, image.ordinal)))
                image.queued = queued
            for k, inst in enumerate(w.instructions):
                key = _instruction_key(inst)
                if k < len(image.instructions) and image.instructions[k] == key:
                    continue
                out.append((UPSERT_INSTRUCTION, (
                    inst.instruction_id, inst.window_id, image.seq, inst.index, inst.payer_pool, inst.payee_pool,
                    inst.amount_minor, inst.currency, inst.state.value, inst.reason, inst.reference,
                    inst.retry_of or "", inst.retried_by or "", inst.carried_as or "", inst.attempts,
                    inst.updated_at_ns)))
                if k < len(image.instructions):
                    image.instructions[k] = key
                else:
                    assert k == len(image.instructions), (w.window_id, k)
                    image.instructions.append(key)
        return out

    def forget(self, window_id: str) -> None:
        """A finished window left memory; nothing more will be written of it."""
        self._images.pop(window_id, None)

    # ---------------------------------------------------------------- reads

    async def load(self, caps: NetDebitCaps, policy: CapPolicy) -> Loaded:
        """The live windows as stored (and the images of them as written)."""
        self._images.clear()
        seq_rows = await self.db.query(SELECT_SEQ)
        assert seq_rows, "clearing_meta has no row: ensure_schema was not run"
        last = await self.db.query("SELECT MAX(seq) FROM clearing_windows")
        self.last_window_seq = int(last[0][0]) if last and last[0][0] is not None else 0
        rows = await self.db.query(
            f"SELECT {_WINDOW_COLUMNS} FROM clearing_windows WHERE state NOT IN (?, ?) ORDER BY seq", _FINAL_STATES)
        windows = []
        for row in rows:
            w, ordinal = await self._window(row, caps, policy)
            windows.append(w)
            self._track(w, int(row[1]), ordinal)
        return Loaded(int(seq_rows[0][0]), self.last_window_seq, windows)

    async def load_window(self, window_id: str, caps: NetDebitCaps, policy: CapPolicy) -> SettlementWindow | None:
        """Any window, live or finished, as stored (without touching the images)."""
        rows = await self.db.query(f"SELECT {_WINDOW_COLUMNS} FROM clearing_windows WHERE window_id = ?",
                                   (window_id,))
        return (await self._window(rows[0], caps, policy))[0] if rows else None

    async def find_obligation(self, obligation_id: str) -> tuple[Obligation, str, bool] | None:
        """A stored obligation, the window holding it, and whether it is admitted there."""
        rows = await self.db.query(
            f"SELECT {_OBLIGATION_COLUMNS}, window_id, admitted_index FROM clearing_obligations "
            "WHERE obligation_id = ?", (obligation_id,))
        if not rows:
            return None
        return _obligation(rows[0]), rows[0][5], int(rows[0][6]) >= 0

    async def instructions(self, *, window_id: str = "", states: Sequence[InstructionState] = (),
                           page_size: int = 0, page_token: str = "") -> tuple[list[SettlementInstruction], str]:
        """Settlement instructions in window then index order, filtered; a page and the next token."""
        limit = page_size or PAGE_SIZE_DEFAULT
        assert 0 < limit <= PAGE_SIZE_MAX, limit
        where, params = [], []
        if window_id:
            where.append("window_id = ?")
            params.append(window_id)
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(s.value for s in states)
        if page_token:
            after_seq, after_idx = decode_page_token(page_token)
            where.append("(window_seq > ? OR (window_seq = ? AND idx > ?))")
            params.extend((after_seq, after_seq, after_idx))
        sql = f"SELECT {_INSTRUCTION_COLUMNS} FROM clearing_instructions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.db.query(sql + " ORDER BY window_seq, idx LIMIT ?", (*params, limit + 1))
        page = rows[:limit]
        token = encode_page_token(int(page[-1][15]), int(page[-1][2])) if len(rows) > limit else ""
        return [_instruction(r) for r in page], token

    async def created_between(self, start_ns: int, end_ns: int) -> list[tuple[SettlementInstruction, int]]:
        """Instructions created in [start_ns, end_ns), each with its creation time, whatever their
        state (the caller decides which were sent: `attempts` is written only with a change).
        Created: a window's own at its close (`closed_at_ns`), a retry when the instruction it
        repeats was retried (that one's `updated_at_ns`, set then and never again: it is final
        and retried, so neither an answer nor the window's finish touches it). Never after the
        first send, so the rail's booking of it is on that day's statement or a later one."""
        return await self._with_created("created >= ? AND created < ?", (start_ns, end_ns))

    async def by_ids(self, instruction_ids: Sequence[str]) -> list[tuple[SettlementInstruction, int]]:
        """Instructions by id, each with its creation time (see `created_between`)."""
        out: list[tuple[SettlementInstruction, int]] = []
        ids = sorted(set(instruction_ids))
        for n in range(0, len(ids), 500):
            chunk = ids[n:n + 500]
            out += await self._with_created(f"instruction_id IN ({', '.join('?' for _ in chunk)})", tuple(chunk))
        return out

    async def _with_created(self, where: str, params: tuple[Any, ...]) -> list[tuple[SettlementInstruction, int]]:
        columns = ", ".join(f"i.{c.strip()}" for c in _INSTRUCTION_COLUMNS.split(","))
        rows = await self.db.query(
            f"SELECT * FROM (SELECT {columns}, CASE WHEN i.retry_of = '' THEN w.closed_at_ns "
            "ELSE r.updated_at_ns END AS created FROM clearing_instructions i "
            "JOIN clearing_windows w ON w.window_id = i.window_id "
            "LEFT JOIN clearing_instructions r ON r.instruction_id = i.retry_of) x "
            f"WHERE {where} ORDER BY window_seq, idx", params)
        return [(_instruction(r), int(r[16] or 0)) for r in rows]

    async def _window(self, row: Sequence[Any], caps: NetDebitCaps, policy: CapPolicy) -> tuple[
            SettlementWindow, int]:
        """A window from its row and its other tables; and the last queue ordinal it used."""
        window_id = row[0]
        obligations = await self.db.query(
            f"SELECT {_OBLIGATION_COLUMNS} FROM clearing_obligations WHERE window_id = ? AND admitted_index >= 0 "
            "ORDER BY admitted_index", (window_id,))
        queued = await self.db.query(
            "SELECT o.obligation_id, o.debtor_pool, o.creditor_pool, o.amount_minor, o.currency, q.ordinal "
            "FROM clearing_queued q JOIN clearing_obligations o ON o.obligation_id = q.obligation_id "
            "WHERE q.window_id = ? ORDER BY q.ordinal", (window_id,))
        instructions = await self.db.query(
            f"SELECT {_INSTRUCTION_COLUMNS} FROM clearing_instructions WHERE window_id = ? ORDER BY idx",
            (window_id,))
        w = SettlementWindow(
            window_id, caps, policy, state=WindowState(row[2]),
            obligations=[_obligation(r) for r in obligations], queued=[_obligation(r) for r in queued],
            instructions=[_instruction(r) for r in instructions],
            summaries=[CurrencySummary(**s) for s in json.loads(row[6])],
            failed_instruction_ids=list(json.loads(row[7])),
            opened_at_ns=int(row[3]), closed_at_ns=int(row[4]), finished_at_ns=int(row[5]))
        assert [i.index for i in w.instructions] == list(range(len(w.instructions))), window_id
        return w, int(queued[-1][5]) if queued else 0

    def _track(self, w: SettlementWindow, seq: int, ordinal: int) -> None:
        self._images[w.window_id] = _Image(
            seq, _header(w), len(w.obligations), [o.obligation_id for o in w.queued], ordinal,
            [_instruction_key(i) for i in w.instructions])


def encode_page_token(window_seq: int, index: int) -> str:
    return base64.urlsafe_b64encode(f"s1:{window_seq}:{index}".encode()).decode()


def decode_page_token(token: str) -> tuple[int, int]:
    try:
        tag, seq, index = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        assert tag == "s1"
        return int(seq), int(index)
    except Exception:
        raise InvalidRequest("page_token is not a token this service issued", reason="PAGE_TOKEN_INVALID") from None
