"""Our side: the channel instructions we made, read from the payments and refunds tables.

Read-only, through the Database protocol (core/database.py), in pages (keyset pagination on the
primary key), so memory stays flat whatever the day's volume.

An instruction is a payment's current attempt (`{payment_id}-{attempt}` on `payment.channel`: an
earlier attempt went elsewhere only after NOT_SUBMITTED, so it provably never reached a channel;
kind "pay", or "payout" for a payout, which the body says by its top-level `kind` key, absent
for "pay") or a refund (`{refund_id}-1`, on its payment's channel). Internal payments (points,
wallet) have no channel and are left out in SQL by `asset`.

A row is an Instruction's fields in order, then one more: the payment's bank code (its
`bank_account.bank_code`: the payer's bank for a collection, the beneficiary's for a payout; ""
for a card payment and a refund). The fee check needs it: a channel prices a payment at its
home bank with its same-bank schedule (routing/policy.py `Router.fee`), so the expected fee
depends on it (engine.py passes it to the fee model). `Instruction._make(row[:10])` drops it.

Business day: the UTC date of the instruction's creation. The channels we ship book in UTC
(a channel booking in another zone would shift it by its offset); an instruction created just
before midnight and settled just after lands on the next day's statement: it is EXPECTED on its
own day, and the next day's run finds its line through `lookup_instructions`.

Decoding: a body is compact JSON with sorted keys (core/payments/records.py). On SQLite and
PostgreSQL the database decodes the six fields we need itself (its JSON functions, in C, on the
store's reader thread while this thread works on the previous page). Elsewhere a full json.loads
of a payment body would cost about as much as parsing a whole statement line, so they are cut out
of the text (`_payment_fields` by position; refunds by key): a `"key":` outside a string is
always a key (a quote inside a JSON string is escaped), and no object nested before these keys
(bank_account, card) has keys of the same names, so the first occurrence is the top-level one.
Any value with an escape, or any body that does not look as expected, falls back to json.loads,
and so does any body with `"kind":` in it (a payout's, or a metadata key of that name: only the
top-level key may decide),
and every SAMPLE_EVERY-th body is decoded both ways and compared: if the payments' body format
ever changes under this code, the run stops with an assertion instead of reading wrong amounts
(and a payment whose amount, attempt or currency the database cannot find stops it too).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from dualflow.core.database import Database

from .model import Instruction

PAGE_ROWS = 5_000
_INT_VALUE = re.compile(r"-?[0-9]+(?=[,}])")
SAMPLE_EVERY = 997
EXTERNAL_ASSETS = (3, 4)  # Asset.BANK_CARD, Asset.BANK_TRANSFER
PAYMENT_STATUS = {1: "CREATED", 2: "PROCESSING", 3: "SUCCEEDED", 4: "FAILED", 5: "UNKNOWN", 6: "CANCELED"}
REFUND_STATUS = {1: "PROCESSING", 2: "SUCCEEDED", 3: "FAILED", 4: "UNKNOWN"}
NS = 10**9


def day_bounds_ns(business_date: str) -> tuple[int, int]:
    """[start, end) of a UTC business day in nanoseconds."""
    start = datetime.combine(date.fromisoformat(business_date), datetime.min.time(), timezone.utc)
    return int(start.timestamp()) * NS, int((start + timedelta(days=1)).timestamp()) * NS


def _like(channel: str) -> str:
    """A LIKE pattern that keeps only bodies naming the channel (a prefilter: the exact test is in
    Python, since metadata could hold the same text as a nested key)."""
    escaped = channel.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f'%"channel":"{escaped}"%'


class _Decoder:
    """The few fields we need from a body, cut out of the text; checked against json.loads."""

    def __init__(self) -> None:
        self.seen = 0

    @staticmethod
    def _string(body: str, key: str) -> str | None:
        at = body.find(f'"{key}":"')
        if at < 0:
            return None if f'"{key}":' not in body else ""  # null or absent
        start = at + len(key) + 4
        end = body.find('"', start)
        value = body[start:end]
        return None if "\\" in value else value

    @staticmethod
    def _int(body: str, key: str) -> int | None:
        at = body.find(f'"{key}":')
        if at < 0:
            return None
        m = _INT_VALUE.match(body, at + len(key) + 3)
        return int(m.group()) if m else None

    def fields(self, body: str, keys: tuple[tuple[str, type], ...]) -> dict[str, Any]:
        self.seen += 1
        out: dict[str, Any] = {}
        for key, kind in keys:
            value = self._string(body, key) if kind is str else self._int(body, key)
            if value is None:
                return self._full(body, keys)
            out[key] = value
        if self.seen % SAMPLE_EVERY == 0:
            full = self._full(body, keys)
            assert full == out, f"payment body format changed under reconciliation: {full} != {out}"
        return out

    @staticmethod
    def _full(body: str, keys: tuple[tuple[str, type], ...]) -> dict[str, Any]:
        obj = json.loads(body)
        return {key: (obj.get(key) or ("" if kind is str else 0)) for key, kind in keys}


_PAYMENT_KEYS = (("amount", int), ("attempt", int), ("channel", str), ("channel_reference", str), ("currency", str))
INSTRUCTION_FIELDS = 10  # a row's Instruction part; the bank code follows
_REFUND_KEYS = (("amount", int), ("currency", str))
_KIND_KEY = '"kind":'


def _payment_kind(body: str) -> str:
    """A payment body's kind: "pay" unless its top-level `kind` says otherwise. Decoded in full when
    the text holds `"kind":` anywhere, since a metadata key could read the same."""
    if _KIND_KEY not in body:
        return "pay"
    return str(json.loads(body).get("kind") or "pay")


def _payment_fields(body: str) -> tuple[int, int, str, str, str] | None:
    """amount, attempt, channel, channel_reference, currency of a payment body, by position (see
    `_payment_row_fields`); None where the body is not as expected."""
    f = _payment_row_fields(body)
    return None if f is None else (f[0], f[1], f[3], f[4], f[5])


_BANK_NULL = ',"bank_account":null,'
_BANK_OPEN = ',"bank_account":{"account_last4":"'


def _payment_row_fields(body: str) -> tuple[int, int, str, str, str, str] | None:
    """amount, attempt, bank code, channel, channel_reference, currency of a payment body, by
    position. The keys are sorted: `amount` first, `bank_account` right after `attempt` (null, or
    an object whose keys are sorted too: `account_last4` then `bank_code`), and `channel`,
    `channel_reference`, `created_at_ns`, `currency` one right after the other, which pins all
    four to the top level (metadata, the only later object, holds only strings, so it cannot hold
    `"created_at_ns":<int>`); before `channel` only bank_account's holder name is text a person
    wrote, and a quote in it is escaped, so `"channel":"` cannot start inside it. None where the
    body is not as expected (an escape, another shape): the caller decodes it in full."""
    if not body.startswith('{"amount":'):
        return None
    find = body.find
    e = find(",", 10)
    i = find('"attempt":', e)
    j = find(",", i + 10)
    if min(e, i, j) < 0:
        return None
    if body.startswith(_BANK_NULL, j):
        bank = ""
        after = j + len(_BANK_NULL)
    elif body.startswith(_BANK_OPEN, j):
        b0 = find('","bank_code":"', j + len(_BANK_OPEN))
        b1 = find('"', b0 + 15)
        if min(b0, b1) < 0:
            return None
        bank = body[b0 + 15:b1]
        if "\\" in body[j:b1] or '"' in body[j + len(_BANK_OPEN):b0]:
            return None
        after = b1
    else:
        return None
    k0 = find('"channel":"', after)
    k = find('"', k0 + 11)
    if min(k0, k) < 0 or not body.startswith('","channel_reference":"', k):
        return None
    m = find('"', k + 23)
    if m < 0 or not body.startswith('","created_at_ns":', m):
        return None
    c0 = find(",", m + 18)
    n = find('"', c0 + 13)
    if min(c0, n) < 0 or not body.startswith(',"currency":"', c0):
        return None
    channel, reference, currency = body[k0 + 11:k], body[k + 23:m], body[c0 + 13:n]
    if "\\" in channel or "\\" in reference or "\\" in currency:
        return None
    try:
        return int(body[10:e]), int(body[i + 10:j]), bank, channel, reference, currency
    except ValueError:
        return None


def _payment_row_fields_full(body: str) -> tuple[int, int, str, str, str, str]:
    """What `_payment_row_fields` answers, by json.loads (its check, and its fallback)."""
    obj = json.loads(body)
    account = obj.get("bank_account") or {}
    return (obj.get("amount") or 0, obj.get("attempt") or 0, account.get("bank_code") or "", obj.get("channel") or "",
            obj.get("channel_reference") or "", obj.get("currency") or "")


class PagedInstructions:
    """Our side as `pages()`: lists of rows in Instruction's field order, a database page at a
    time (the engine's fast path: no object per row); `async for` gives Instructions."""

    def pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Instruction]:
        return self._each()

    async def _each(self) -> AsyncIterator[Instruction]:
        async for page in self.pages():
            for row in page:
                yield Instruction._make(row[:INSTRUCTION_FIELDS])


class InstructionReader(PagedInstructions):
    """Our instructions on a channel created on a business day (UTC): payments, then refunds."""

    def __init__(self, db: Database, channel: str, business_date: str, page_rows: int = PAGE_ROWS) -> None:
        self.db, self.channel, self.page_rows = db, channel, page_rows
        self.bounds = day_bounds_ns(business_date)

    async def pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        async for page in _payment_rows(self.db, self.channel, "p.created_at_ns >= ? AND p.created_at_ns < ?",
                                        self.bounds, self.page_rows):
            yield page
        async for page in _refund_rows(self.db, self.channel, "r.created_at_ns >= ? AND r.created_at_ns < ?",
                                       self.bounds, self.page_rows):
            yield page


def read_instructions(db: Database, channel: str, business_date: str,
                      page_rows: int = PAGE_ROWS) -> InstructionReader:
    """Our instructions on `channel` created on `business_date` (UTC): payments, then refunds."""
    return InstructionReader(db, channel, business_date, page_rows)


async def lookup_instructions(db: Database, channel: str, instruction_ids: Sequence[str]) -> dict[str, Instruction]:
    """Instructions by id, whatever their business day (lines that settled on a later statement)."""
    return {k: Instruction._make(row[:INSTRUCTION_FIELDS])
            for k, row in (await lookup_rows(db, channel, instruction_ids)).items()}


async def lookup_rows(db: Database, channel: str, instruction_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """`lookup_instructions` as rows (the bank code included), what a run's engine is given."""
    payment_ids = sorted({i.rpartition("-")[0] for i in instruction_ids if i.startswith("pay_")})
    refund_ids = sorted({i.rpartition("-")[0] for i in instruction_ids if not i.startswith("pay_")})
    found: dict[str, tuple[Any, ...]] = {}
    for ids, reader in ((payment_ids, _payment_rows), (refund_ids, _refund_rows)):
        for n in range(0, len(ids), 500):
            chunk = ids[n:n + 500]
            column = "p.payment_id" if reader is _payment_rows else "r.refund_id"
            where = f"{column} IN ({', '.join('?' * len(chunk))})"
            async for page in reader(db, channel, where, tuple(chunk), len(chunk) + 1):
                for row in page:
                    found[row[0]] = row
    wanted = set(instruction_ids)
    return {k: v for k, v in found.items() if k in wanted}


# The six fields decoded by the database itself (C, on the store's reader thread, while this
# thread works through the previous page), where we know its JSON functions.
# The channel test goes in SQL too: SQLite keeps the parse of a body for the next json_extract
# of the same row (cheaper than the LIKE scan it replaces); PostgreSQL keeps the LIKE prefilter.
# `kind` then the bank code last: the top-level key only (NULL for an ordinary payment, whose body
# has none), and bank_account's (NULL for a card payment).
_EXTRACTED: dict[str, tuple[str, str]] = {
    "sqlite": (", ".join([*(f"json_extract(p.body, '$.{key}')" for key, _ in (*_PAYMENT_KEYS, ("kind", str))),
                          "json_extract(p.body, '$.bank_account.bank_code')"]),
               "json_extract(p.body, '$.channel') = ?"),
    "postgres": (", ".join([*(f"(p.body::jsonb)->>'{key}'" for key, _ in (*_PAYMENT_KEYS, ("kind", str))),
                            "(p.body::jsonb)->'bank_account'->>'bank_code'"]),
                 "p.body LIKE ? ESCAPE '\\'"),
}


def _backend(db: Database) -> str:
    return str(getattr(db, "backend", None) or getattr(getattr(db, "store", None), "backend", ""))


async def _payment_rows(db: Database, channel: str, where: str, params: tuple[Any, ...],
                        page_rows: int) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Pages of rows in Instruction's field order. The fields come from the database's JSON
    functions where the backend is known (SQLite, PostgreSQL), else from the body's text (see
    `_payment_fields`; every SAMPLE_EVERY-th body, and any it cannot read, decoded in full by
    json.loads as well)."""
    extracted = _EXTRACTED.get(_backend(db))
    if extracted is not None:
        async for page in _payment_rows_extracted(db, channel, where, params, page_rows, extracted):
            yield page
        return
    sql = ("SELECT p.payment_id, p.status, p.created_at_ns, p.body, c.window_ends_ns FROM payments p "
           "LEFT JOIN channel_polls c ON c.object_id = p.payment_id "
           f"WHERE p.payment_id > ? AND {where} AND p.asset IN (3, 4) AND p.body LIKE ? ESCAPE '\\' "
           "ORDER BY p.payment_id LIMIT ?")
    like = _like(channel)
    status_of = PAYMENT_STATUS
    fields = _payment_row_fields
    seen = 0
    async for rows in _pages(db, sql, params, like, page_rows):
        page = []
        for payment_id, status, created_at_ns, body, window_ends_ns in rows:
            seen += 1
            f = fields(body)
            if f is None or seen % SAMPLE_EVERY == 0:
                decoded = _payment_row_fields_full(body)
                assert f is None or f == decoded, f"payment body format changed under reconciliation: {f} != {decoded}"
                f = decoded
            amount, attempt, bank_code, their_channel, reference, currency = f
            if their_channel != channel:
                continue
            page.append((f"{payment_id}-{attempt}", _payment_kind(body), payment_id, channel, reference, amount,
                         currency, status_of[int(status)], int(created_at_ns), int(window_ends_ns or 0), bank_code))
        yield page


async def _payment_rows_extracted(db: Database, channel: str, where: str, params: tuple[Any, ...], page_rows: int,
                                  extracted: tuple[str, str]) -> AsyncIterator[list[tuple[Any, ...]]]:
    columns, channel_test = extracted
    sql = (f"SELECT p.payment_id, p.status, p.created_at_ns, c.window_ends_ns, {columns} FROM payments p "
           "LEFT JOIN channel_polls c ON c.object_id = p.payment_id "
           f"WHERE p.payment_id > ? AND {where} AND p.asset IN (3, 4) AND {channel_test} "
           "ORDER BY p.payment_id LIMIT ?")
    like = _like(channel) if "LIKE" in channel_test else channel
    status_of = PAYMENT_STATUS
    async for rows in _pages(db, sql, params, like, page_rows):
        page = []
        for payment_id, status, created_at_ns, window_ends_ns, amount, attempt, their_channel, reference, currency, \
                kind, bank_code in rows:
            if their_channel != channel:
                continue
            # A body without these is not a payment body as this code knows it: stop, do not guess.
            assert amount is not None and attempt is not None and currency, \
                f"payment body format changed under reconciliation: {payment_id} has {amount=} {attempt=} {currency=}"
            page.append((f"{payment_id}-{attempt}", kind or "pay", payment_id, channel, reference or "", int(amount),
                         currency, status_of[int(status)], int(created_at_ns), int(window_ends_ns or 0),
                         bank_code or ""))
        yield page


async def _pages(db: Database, sql: str, params: tuple[Any, ...], like: str,
                 page_rows: int) -> AsyncIterator[list[tuple[Any, ...]]]:
    """Keyset pages of `sql` (its first column is the key); the next page is already being read
    (on the store's reader thread) while the caller works through this one."""
    rows = await db.query(sql, ("", *params, like, page_rows))
    while rows:
        following = None
        if len(rows) == page_rows:
            following = asyncio.ensure_future(db.query(sql, (rows[-1][0], *params, like, page_rows)))
        try:
            yield rows
        except BaseException:
            if following is not None:
                following.cancel()
            raise
        rows = await following if following is not None else []


async def _refund_rows(db: Database, channel: str, where: str, params: tuple[Any, ...],
                       page_rows: int) -> AsyncIterator[list[tuple[Any, ...]]]:
    decoder = _Decoder()
    sql = ("SELECT r.refund_id, r.status, r.created_at_ns, r.body, p.body, c.window_ends_ns FROM refunds r "
           "JOIN payments p ON p.payment_id = r.payment_id LEFT JOIN channel_polls c ON c.object_id = r.refund_id "
           f"WHERE r.refund_id > ? AND {where} AND p.asset IN (3, 4) AND p.body LIKE ? ESCAPE '\\' "
           "ORDER BY r.refund_id LIMIT ?")
    like = _like(channel)
    async for rows in _pages(db, sql, params, like, page_rows):
        page = []
        for refund_id, status, created_at_ns, body, payment_body, window_ends_ns in rows:
            if decoder.fields(payment_body, (("channel", str),))["channel"] != channel:
                continue
            f = decoder.fields(body, _REFUND_KEYS)
            page.append((f"{refund_id}-1", "refund", refund_id, channel, "", f["amount"], f["currency"],
                         REFUND_STATUS[int(status)], int(created_at_ns), int(window_ends_ns or 0), ""))
        yield page


def fee_model(fees: Mapping[str, Any], same_bank_fees: Mapping[str, Any] | None = None, home_bank: str = "") -> Any:
    """Our fee model as the engine's `fee_for`: the channel's FeeSchedule per currency (from its
    adapter's Capabilities.fees) for settled pays, or its same-bank one (`same_bank_fees`) for a
    payment whose bank is the channel's `home_bank`; other kinds and currencies are not checked."""
    same = same_bank_fees or {}

    def fee_for(kind: str, currency: str, amount: int, bank_code: str = "") -> int | None:
        if kind != "pay":
            return None
        schedule = same.get(currency) if bank_code and bank_code == home_bank else None
        if schedule is None:
            schedule = fees.get(currency)
        return schedule.fee_for(amount) if schedule is not None else None
    return fee_for


def router_fee_model(router: Any, channel: str) -> Any:
    """Our fee model as the router has it (routing/policy.py Router: the adapter's fee schedules
    with the operator's per-channel overrides, and its same-bank schedule for a payment whose
    bank is the channel's home bank: `Router.fee`), as the engine's `fee_for`; a currency with no
    schedule on any side, and kinds other than pay, are not checked."""
    def fee_for(kind: str, currency: str, amount: int, bank_code: str = "") -> int | None:
        caps = router.capabilities.get(channel)
        if kind != "pay" or caps is None:
            return None
        same_bank = bool(bank_code) and bank_code == caps.home_bank and currency in caps.same_bank_fees
        if not same_bank and currency not in caps.fees and currency not in (router.config.rule(channel).fees or {}):
            return None
        return int(router.fee(channel, currency, amount, bank_code))
    return fee_for
