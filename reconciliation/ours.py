"""Our side: the channel instructions we made, read from the payments and refunds tables.

Read-only, through the Database protocol (core/database.py), in pages (keyset pagination on the
primary key), so memory stays flat whatever the day's volume.

An instruction is a payment's current attempt (`{payment_id}-{attempt}` on `payment.channel`: an
earlier attempt went elsewhere only after NOT_SUBMITTED, so it provably never reached a channel)
or a refund (`{refund_id}-1`, on its payment's channel). Internal payments (points, wallet) have
no channel and are left out in SQL by `asset`.

Business day: the UTC date of the instruction's creation. The channels we ship book in UTC
(a channel booking in another zone would shift it by its offset); an instruction created just
before midnight and settled just after lands on the next day's statement: it is EXPECTED on its
own day, and the next day's run finds its line through `lookup_instructions`.

Decoding: a body is compact JSON with sorted keys (core/payments/records.py). A full json.loads
of a payment body costs about as much as parsing a whole statement line, so the five fields we
need are cut out of the text: a `"key":` outside a string is always a key (a quote inside a JSON
string is escaped), and no object nested before these keys (bank_account, card) has keys of the
same names, so the first occurrence is the top-level one. Any value with an escape, or any body
that does not look as expected, falls back to json.loads, and every SAMPLE_EVERY-th body is
decoded both ways and compared: if the payments' body format ever changes under this code, the
run stops with an assertion instead of reading wrong amounts.
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
_REFUND_KEYS = (("amount", int), ("currency", str))


async def read_instructions(db: Database, channel: str, business_date: str,
                            page_rows: int = PAGE_ROWS) -> AsyncIterator[Instruction]:
    """Our instructions on `channel` created on `business_date` (UTC): payments, then refunds."""
    start, end = day_bounds_ns(business_date)
    async for ins in _payments(db, channel, "p.created_at_ns >= ? AND p.created_at_ns < ?", (start, end), page_rows):
        yield ins
    async for ins in _refunds(db, channel, "r.created_at_ns >= ? AND r.created_at_ns < ?", (start, end), page_rows):
        yield ins


async def lookup_instructions(db: Database, channel: str, instruction_ids: Sequence[str]) -> dict[str, Instruction]:
    """Instructions by id, whatever their business day (lines that settled on a later statement)."""
    payment_ids = sorted({i.rpartition("-")[0] for i in instruction_ids if i.startswith("pay_")})
    refund_ids = sorted({i.rpartition("-")[0] for i in instruction_ids if not i.startswith("pay_")})
    found: dict[str, Instruction] = {}
    for ids, reader in ((payment_ids, _payments), (refund_ids, _refunds)):
        for n in range(0, len(ids), 500):
            chunk = ids[n:n + 500]
            column = "p.payment_id" if reader is _payments else "r.refund_id"
            where = f"{column} IN ({', '.join('?' * len(chunk))})"
            async for ins in reader(db, channel, where, tuple(chunk), len(chunk) + 1):
                found[ins.instruction_id] = ins
    wanted = set(instruction_ids)
    return {k: v for k, v in found.items() if k in wanted}


async def _payments(db: Database, channel: str, where: str, params: tuple[Any, ...],
                    page_rows: int) -> AsyncIterator[Instruction]:
    decoder = _Decoder()
    sql = ("SELECT p.payment_id, p.status, p.created_at_ns, p.body, c.window_ends_ns FROM payments p "
           "LEFT JOIN channel_polls c ON c.object_id = p.payment_id "
           f"WHERE p.payment_id > ? AND {where} AND p.asset IN (3, 4) AND p.body LIKE ? ESCAPE '\\' "
           "ORDER BY p.payment_id LIMIT ?")
    like = _like(channel)
    status_of = PAYMENT_STATUS
    async for rows in _pages(db, sql, params, like, page_rows):
        for payment_id, status, created_at_ns, body, window_ends_ns in rows:
            f = decoder.fields(body, _PAYMENT_KEYS)
            if f["channel"] != channel:
                continue
            yield Instruction(f"{payment_id}-{f['attempt']}", "pay", payment_id, channel, f["channel_reference"],
                              f["amount"], f["currency"], status_of[int(status)], int(created_at_ns),
                              int(window_ends_ns or 0))


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


async def _refunds(db: Database, channel: str, where: str, params: tuple[Any, ...],
                   page_rows: int) -> AsyncIterator[Instruction]:
    decoder = _Decoder()
    sql = ("SELECT r.refund_id, r.status, r.created_at_ns, r.body, p.body, c.window_ends_ns FROM refunds r "
           "JOIN payments p ON p.payment_id = r.payment_id LEFT JOIN channel_polls c ON c.object_id = r.refund_id "
           f"WHERE r.refund_id > ? AND {where} AND p.asset IN (3, 4) AND p.body LIKE ? ESCAPE '\\' "
           "ORDER BY r.refund_id LIMIT ?")
    like = _like(channel)
    async for rows in _pages(db, sql, params, like, page_rows):
        for refund_id, status, created_at_ns, body, payment_body, window_ends_ns in rows:
            if decoder.fields(payment_body, (("channel", str),))["channel"] != channel:
                continue
            f = decoder.fields(body, _REFUND_KEYS)
            yield Instruction(f"{refund_id}-1", "refund", refund_id, channel, "", f["amount"], f["currency"],
                              REFUND_STATUS[int(status)], int(created_at_ns), int(window_ends_ns or 0))


def fee_model(fees: Mapping[str, Any]) -> Any:
    """Our fee model as the engine's `fee_for`: the channel's FeeSchedule per currency (from its
    adapter's Capabilities.fees) for settled pays; other kinds and currencies are not checked."""
    def fee_for(kind: str, currency: str, amount: int) -> int | None:
        schedule = fees.get(currency)
        return schedule.fee_for(amount) if kind == "pay" and schedule is not None else None
    return fee_for


def router_fee_model(router: Any, channel: str) -> Any:
    """Our fee model as the router has it (routing/policy.py Router: the adapter's fee schedules
    with the operator's per-channel overrides, `Router.fee`), as the engine's `fee_for`; a
    currency with no schedule on either side, and kinds other than pay, are not checked."""
    def fee_for(kind: str, currency: str, amount: int) -> int | None:
        caps = router.capabilities.get(channel)
        if kind != "pay" or caps is None:
            return None
        if currency not in caps.fees and currency not in (router.config.rule(channel).fees or {}):
            return None
        return int(router.fee(channel, currency, amount))
    return fee_for
