"""The matching engine: a statement against our instructions in memory flat in their number.

How (a Grace hash join, on disk): both sides are hash-partitioned by instruction id into
PARTITIONS runs in one temporary spool file per side (marshal records; an index of offsets per
partition), then each partition is joined in memory, one at a time. A partition that is still
too big (more than PARTITION_ITEMS_MAX items) is split again with another hash, so memory is
bounded whatever N is. Then two small passes over what is left: lines and instructions paired by
the channel's reference, and lines looked up by instruction id among our other business days
(`lookup`); what is still unpaired is missing on one side.

Why hashing rather than sorting both sides (an external merge sort, or ORDER BY in the
database and a merge join): it is O(N) with dict lookups in C instead of O(N log N) string
comparisons in Python's heapq.merge, and it does not depend on the database's order. A merge
join needs our side in exactly the order Python compares strings; PostgreSQL's ORDER BY follows
the database's collation (en_US.UTF-8 here, not byte order), so the two sides would disagree.

Our side is read while the statement is consumed (the database works on its own thread), but
nothing is classified before the whole statement was consumed: a statement that raises
StatementRejected on its last line has had nothing applied (and our side's reading is
cancelled). Nothing here writes anywhere: the caller gets `Result`s (and a `Tally` of every
class) and decides.
"""

from __future__ import annotations

import asyncio
import marshal
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, Any

from dualflow.adapters.contract import Outcome, StatementLine

from .model import MOVED, NOT_MOVED, Action, Class, Instruction, Line, Policy, Result, classify, unanswered

PARTITIONS = 256
FLUSH_ITEMS = 16_384  # items buffered across all partitions before they go to disk
PARTITION_ITEMS_MAX = 65_536  # both sides of one partition; above it the partition is split again
SPLIT_FANOUT = 16
LOOKUP_BATCH = 512
YIELD_EVERY = 4_096  # let the event loop run this often during long CPU phases

# Our side's rows are an Instruction's fields in order, optionally followed by the payment's bank
# code (ours.py); an Instruction is such a row without it.
Lookup = Callable[[Sequence[str]], Awaitable[Mapping[str, "Instruction | tuple[Any, ...]"]]]
FIELDS = len(Instruction._fields)


def _instruction(row: tuple[Any, ...]) -> Instruction:
    return row if type(row) is Instruction else Instruction._make(row[:FIELDS])


def _policy_of(policy: Policy, row: tuple[Any, ...]) -> Policy:
    """The policy for one instruction: when its row names the payment's bank, the fee model is
    asked with it (a channel prices a payment at its home bank with its same-bank schedule)."""
    bank_code = row[FIELDS] if len(row) > FIELDS else ""
    fee_for: Any = policy.fee_for
    if not bank_code or fee_for is None:
        return policy
    return replace(policy, fee_for=lambda kind, currency, amount: fee_for(kind, currency, amount, bank_code))


@dataclass
class Tally:
    """Counts of every class: lines, instructions and amounts (minor units, per currency; the
    line's amount where there is a line, else the instruction's), and actions proposed."""

    lines: dict[Class, int] = field(default_factory=dict)
    instructions: dict[Class, int] = field(default_factory=dict)
    amounts: dict[tuple[Class, str], int] = field(default_factory=dict)
    actions: dict[Action, int] = field(default_factory=dict)

    def add(self, r: Result) -> None:
        cls = r.cls
        if r.lines:
            self.lines[cls] = self.lines.get(cls, 0) + len(r.lines)
            amount, currency = r.lines[0].amount, r.lines[0].currency
        else:
            assert r.instruction is not None
            amount, currency = r.instruction.amount, r.instruction.currency
        if r.instruction is not None:
            self.instructions[cls] = self.instructions.get(cls, 0) + 1
        key = (cls, currency)
        self.amounts[key] = self.amounts.get(key, 0) + amount
        self.actions[r.action] = self.actions.get(r.action, 0) + 1

    def add_matched(self, lines: int, per_currency: Mapping[str, tuple[int, int]]) -> None:
        """Simple matches counted in bulk: one line and one instruction each."""
        n = sum(count for count, _ in per_currency.values())
        self.lines[Class.MATCHED] = self.lines.get(Class.MATCHED, 0) + lines
        self.instructions[Class.MATCHED] = self.instructions.get(Class.MATCHED, 0) + n
        self.actions[Action.NONE] = self.actions.get(Action.NONE, 0) + n
        for currency, (_count, amount) in per_currency.items():
            key = (Class.MATCHED, currency)
            self.amounts[key] = self.amounts.get(key, 0) + amount

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"lines": {c.value: n for c, n in sorted(self.lines.items())},
                "instructions": {c.value: n for c, n in sorted(self.instructions.items())}}


class Partitioned:
    """Items hashed to partitions, spooled to one temporary file: `add` them, then read each
    partition back with `items(p)`. Memory: FLUSH_ITEMS buffered items plus an offset index."""

    def __init__(self, partitions: int | None = None, salt: int = 0) -> None:
        partitions = partitions or PARTITIONS
        assert partitions & (partitions - 1) == 0, "a power of two"
        self.partitions = partitions
        self.mask = partitions - 1
        self.salt = salt
        self.counts = [0] * partitions
        self._buffers: list[list[Any]] = [[] for _ in range(partitions)]
        self._buffered = 0
        self._offsets: list[list[int]] = [[] for _ in range(partitions)]
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="dualflow-recon-")

    def partition_of(self, key: str) -> int:
        return (hash(key) if not self.salt else hash((self.salt, key))) & self.mask

    def add(self, key: str, item: Any) -> None:
        p = self.partition_of(key)
        self._buffers[p].append(item)
        self.counts[p] += 1
        self._buffered += 1
        if self._buffered >= FLUSH_ITEMS:
            self.flush()

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """`add(row[0], row)` for each row, in one tight loop (the hot path: a page at a time)."""
        buffers, counts, mask, salt = self._buffers, self.counts, self.mask, self.salt
        for row in rows:
            p = (hash(row[0]) if not salt else hash((salt, row[0]))) & mask
            buffers[p].append(row)
            counts[p] += 1
        self._buffered += len(rows)
        if self._buffered >= FLUSH_ITEMS:
            self.flush()

    def flush(self) -> None:
        f = self._file
        f.seek(0, 2)  # a reader may have left the position anywhere
        for p, buf in enumerate(self._buffers):
            if buf:
                # Length-prefixed: marshal.load on a file reads it a few bytes at a time (slow).
                data = marshal.dumps(buf)
                self._offsets[p].append(f.tell())
                f.write(len(data).to_bytes(8, "little"))
                f.write(data)
                self._buffers[p] = []
        self._buffered = 0

    def items(self, p: int) -> Iterator[Any]:
        self.flush()
        f = self._file
        for offset in self._offsets[p]:
            f.seek(offset)
            size = int.from_bytes(f.read(8), "little")
            yield from marshal.loads(f.read(size))

    def close(self) -> None:
        self._file.close()
        self._buffers = [[] for _ in self._buffers]


async def _consume(source: AsyncIterable[Any] | Iterable[Any], take: Callable[[Any], None]) -> None:
    if isinstance(source, AsyncIterable):
        async for item in source:
            take(item)
        return
    for n, item in enumerate(source):
        take(item)
        if n % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)  # a long sync source must not starve the event loop


LINE_BATCH = 4_096
_SUCCEEDED, _FAILED = Outcome.SUCCEEDED, Outcome.FAILED


async def _consume_lines(source: AsyncIterable[StatementLine] | Iterable[StatementLine],
                         route: Callable[[list[tuple[Any, ...]]], None]) -> None:
    """Statement lines as the engine's rows (numbered in the order they came), LINE_BATCH at a time.
    Written out for each kind of source: this runs once per line."""
    batch: list[tuple[Any, ...]] = []
    add = batch.append
    position = 0
    if isinstance(source, AsyncIterable):
        async for sl in source:
            position += 1
            st = sl.status
            add((sl.instruction_id, sl.channel_reference, sl.kind, sl.amount, sl.currency,
                 "SUCCEEDED" if st is _SUCCEEDED else "FAILED" if st is _FAILED else st.value, sl.fee, position))
            if len(batch) >= LINE_BATCH:
                route(batch)
                batch.clear()
    else:
        for sl in source:
            position += 1
            st = sl.status
            add((sl.instruction_id, sl.channel_reference, sl.kind, sl.amount, sl.currency,
                 "SUCCEEDED" if st is _SUCCEEDED else "FAILED" if st is _FAILED else st.value, sl.fee, position))
            if len(batch) >= LINE_BATCH:
                route(batch)
                batch.clear()
                await asyncio.sleep(0)  # a long sync source must not starve the event loop
    route(batch)


async def reconcile(lines: AsyncIterable[StatementLine] | Iterable[StatementLine],
                    instructions: AsyncIterable[Instruction] | Iterable[Instruction], policy: Policy, *,
                    lookup: Lookup | None = None, tally: Tally | None = None,
                    emit_matched: bool = True) -> AsyncIterator[Result]:
    """Classify every statement line and every instruction; yield their Results.

    `lines`: the channel's statement for the day (`adapter.fetch_statement`), consumed whole
    first. `instructions`: ours for the channel and day (`ours.read_instructions`), any order.
    `lookup`: finds instructions (or rows, see `Lookup`) by id outside `instructions` (other
    business days: a payment created just before midnight settles on the next statement). `tally` counts every result;
    with `emit_matched=False` plain MATCHED results are only counted, not yielded (a run stores
    counts of those and keeps what needs acting on)."""
    tally = tally if tally is not None else Tally()
    ours, theirs = Partitioned(), Partitioned()
    ref_lines, ref_ours = Partitioned(), Partitioned()  # pass 2: by the channel's reference
    to_lookup = Partitioned(1)  # pass 3: line groups nobody of this day claims
    try:
        def route(rows: list[tuple[Any, ...]]) -> None:
            keyed = [row for row in rows if row[0]]
            theirs.add_rows(keyed)
            if len(keyed) < len(rows):
                for row in rows:
                    if row[0]:
                        continue
                    if row[1]:  # a line without our id: by its reference only, on its own
                        ref_lines.add(row[1], (row[1], [row]))
                    else:
                        to_lookup.add("", [row])

        async def our_side() -> None:
            pages = getattr(instructions, "pages", None)
            if pages is not None:  # rows in Instruction's field order, a page at a time (ours.InstructionReader)
                async for page in pages():
                    ours.add_rows(page)
            else:
                await _consume(instructions, lambda ins: ours.add(ins.instruction_id, tuple(ins)))

        # Both sides at once: our side is mostly waiting for the database (on its reader thread),
        # the statement mostly this thread's work. Nothing is joined before both are whole.
        reading = asyncio.ensure_future(our_side())
        try:
            await _consume_lines(lines, route)
        except BaseException:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            raise
        await reading
        # Pass 1: by instruction id.
        sides = _Sides(ref_lines, ref_ours, to_lookup)
        for p in range(ours.partitions):
            for r in _join(ours, theirs, p, policy, tally, sides, emit_matched, 0):
                yield r
            await asyncio.sleep(0)
        ours.close()
        theirs.close()
        # Pass 2: by the channel's reference, what is left on both sides.
        for p in range(ref_ours.partitions):
            claims: dict[str, list[tuple[Any, ...]]] = {}
            for row in ref_ours.items(p):
                claims.setdefault(row[4], []).append(tuple(row))
            refs: dict[str, tuple[Any, ...]] = {}
            for ref, claimed in claims.items():
                if len(claimed) == 1:
                    refs[ref] = claimed[0]
                else:  # several of ours claim one reference: it pairs none of them
                    for ins_row in claimed:
                        for r in _classified([unanswered(_instruction(ins_row), policy)], tally, emit_matched):
                            yield r
            paired: dict[str, list[Line]] = {}
            for ref, group in ref_lines.items(p):
                if ref in refs:  # the lines that bear the reference go with it; the rest of the group on
                    bearing = [x for x in group if x[1] == ref]
                    paired.setdefault(ref, []).extend(Line._make(x) for x in bearing)
                    if len(bearing) < len(group):
                        to_lookup.add("", [x for x in group if x[1] != ref])
                else:
                    to_lookup.add("", group)
            for ref, ins_row in refs.items():
                for r in _classified(classify(_instruction(ins_row), paired.get(ref, ()), _policy_of(policy, ins_row)),
                                     tally, emit_matched):
                    yield r
            await asyncio.sleep(0)
        # Pass 3: lines of instructions from other business days, or of none of ours.
        batch: list[Any] = []
        for group in to_lookup.items(0):
            batch.append(group)
            if len(batch) >= LOOKUP_BATCH:
                async for r in _looked_up(batch, lookup, policy, tally, emit_matched):
                    yield r
                batch = []
        async for r in _looked_up(batch, lookup, policy, tally, emit_matched):
            yield r
    finally:
        for spool in (ours, theirs, ref_lines, ref_ours, to_lookup):
            spool.close()


@dataclass
class _Sides:
    """Where pass 1 puts what it could not pair by instruction id."""

    ref_lines: Partitioned
    ref_ours: Partitioned
    to_lookup: Partitioned


def _classified(results: list[Result], tally: Tally, emit_matched: bool) -> Iterator[Result]:
    for r in results:
        tally.add(r)
        if emit_matched or r.cls is not Class.MATCHED or r.action is not Action.NONE:
            yield r


def _join(ours: Partitioned, theirs: Partitioned, p: int, policy: Policy, tally: Tally, sides: _Sides,
          emit_matched: bool, depth: int) -> Iterator[Result]:
    if ours.counts[p] + theirs.counts[p] > PARTITION_ITEMS_MAX and depth < 4:
        # Still too big for memory: split both sides of this partition again with another hash.
        sub_ours, sub_theirs = Partitioned(SPLIT_FANOUT, depth + 1), Partitioned(SPLIT_FANOUT, depth + 1)
        try:
            for row in ours.items(p):
                sub_ours.add(row[0], row)
            for row in theirs.items(p):
                sub_theirs.add(row[0], row)
            for q in range(SPLIT_FANOUT):
                yield from _join(sub_ours, sub_theirs, q, policy, tally, sides, emit_matched, depth + 1)
        finally:
            sub_ours.close()
            sub_theirs.close()
        return
    mine: dict[str, tuple[Any, ...]] = {row[0]: row for row in ours.items(p)}
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for row in theirs.items(p):
        g = groups.get(row[0])
        if g is None:
            groups[row[0]] = [row]
        else:
            g.append(row)
    fee_for: Any = policy.fee_for
    matched: dict[str, tuple[int, int]] = {}
    matched_lines = 0
    for iid, rows in groups.items():
        ins_row = mine.pop(iid, None)
        if ins_row is None:
            ref = min((r[1] for r in rows if r[1]), default="")
            if ref:
                sides.ref_lines.add(ref, (ref, rows))
            else:
                sides.to_lookup.add("", rows)
            continue
        if len(rows) == 1:
            # The common case, decided without building objects: one line that agrees entirely.
            _iid, _ref, kind, amount, currency, status, fee, _pos = rows[0]
            if kind == ins_row[1] and amount == ins_row[5] and currency == ins_row[6]:
                ours_status = ins_row[7]
                if status == "SUCCEEDED" and ours_status in MOVED:
                    if fee_for is None:
                        expected = None
                    elif len(ins_row) > FIELDS and ins_row[FIELDS]:  # the payment's bank: same-bank fees
                        expected = fee_for(kind, currency, amount, ins_row[FIELDS])
                    else:
                        expected = fee_for(kind, currency, amount)
                    ok = expected is None or expected == fee
                elif status == "FAILED" and ours_status in NOT_MOVED:
                    ok = fee == 0
                else:
                    ok = False
                if ok and not emit_matched:
                    count, total = matched.get(currency, (0, 0))
                    matched[currency] = (count + 1, total + amount)
                    matched_lines += 1
                    continue
        yield from _classified(classify(_instruction(ins_row), [Line._make(r) for r in rows],
                                        _policy_of(policy, ins_row)), tally, emit_matched)
    if matched:
        tally.add_matched(matched_lines, matched)
    for ins_row in mine.values():
        if ins_row[4]:
            sides.ref_ours.add(ins_row[4], ins_row)
        else:
            yield from _classified([unanswered(_instruction(ins_row), policy)], tally, emit_matched)


async def _looked_up(groups: list[Any], lookup: Lookup | None, policy: Policy, tally: Tally,
                     emit_matched: bool) -> AsyncIterator[Result]:
    """Line groups nobody of this day claims: ours from another business day, or missing internally."""
    for start in range(0, len(groups), LOOKUP_BATCH):
        batch = groups[start:start + LOOKUP_BATCH]
        ids = sorted({g[0][0] for g in batch if g[0][0]})
        found = await lookup(ids) if lookup is not None and ids else {}
        for g in batch:
            row = found.get(g[0][0]) if g[0][0] else None
            ins = _instruction(row) if row is not None else None
            for r in _classified(classify(ins, [Line._make(x) for x in g],
                                          _policy_of(policy, row) if row is not None else policy),
                                 tally, emit_matched):
                yield r
