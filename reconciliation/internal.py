"""Internal reconciliation: our information flow against our own books (ours vs ours).

`InternalCheck(db).run()` reads, through the Database protocol only (no writes), and answers
findings by kind; a clean platform has none:

    TRIAL_BALANCE       a currency's debits differ from its credits (pending or posted)
    PAYMENT_POSTINGS    a SUCCEEDED payment lacks a transfer it must have (or its amount differs),
                        or has one of its own derived ids it must not have
    REFUND_POSTINGS     the same for a SUCCEEDED refund
    ORPHAN_POSTING      a transfer with a payment's code (payment, fee, refund, hold, sweep) whose id is
                        derived from no payment or refund we have
    STALE_PENDING       a pending transfer still pending past its timeout (plus a grace)
    OUTBOX_UNDELIVERED  outbox events past the webhook cursor older than the allowed lag
    OUTBOX_CURSOR_AHEAD the webhook cursor is past the outbox head (events lost)
    BALANCE_DRIFT       a channel's reported balance differs from our receivable for it by more
                        than our payments and refunds in flight explain (drift.py; with `adapters`)
    BALANCE_UNAVAILABLE a channel with the balance capability gave no balance we can trust
                        (these two are counted only when some channel reports balances)

The transfers a payment must have follow core/payments/procedures.py, where every transfer id is
`transfer_id(object id, leg)`: an internal payment `pay` (+ `fee` when it has one); an external
one a hold per channel attempt (`hold`, `hold.2`, ...), a `void.k` for every attempt it was
moved off (a reroute), `post.<attempt>` (+ `fee`, + `sweep.<attempt>` on a channel collecting
into a pool); a refund `refund` (+ `post` when the payment is external: its hold was posted, +
`sweep` on a pooled channel). Any other leg of the same family is an extra posting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from dualflow.adapters.contract import ChannelAdapter
from dualflow.core.database import Database
from dualflow.core.payments.accounts import transfer_id
from dualflow.core.payments.model import PaymentStatus, RefundStatus
from dualflow.core.payments.procedures import CODE_FEE, CODE_HOLD, CODE_PAYMENT, CODE_REFUND, CODE_SWEEP, hold_leg
from dualflow.core.payments.records import payment_from_body, refund_from_body

from . import metrics
from .drift import BalanceDrift, ChannelDrift

KINDS: Final = ("TRIAL_BALANCE", "PAYMENT_POSTINGS", "REFUND_POSTINGS", "ORPHAN_POSTING", "STALE_PENDING",
                "OUTBOX_UNDELIVERED", "OUTBOX_CURSOR_AHEAD")
# Counted (in `counts`, 0 when clean) only when at least one channel reports balances.
BALANCE_KINDS: Final = ("BALANCE_DRIFT", "BALANCE_UNAVAILABLE")
PAYMENT_CODES: Final = (CODE_PAYMENT, CODE_FEE, CODE_REFUND, CODE_HOLD, CODE_SWEEP)
PAGE: Final = 500
NS: Final = 10**9
_PENDING = 1  # core/ledger/model.py PendingStatus.PENDING


class Finding(NamedTuple):
    kind: str
    subject: str  # a payment, refund, transfer id, currency or "outbox"
    detail: str


@dataclass(slots=True)
class InternalReport:
    checked_at_ns: int
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    payments: int = 0
    refunds: int = 0
    transfers: int = 0  # payment-coded transfers scanned for orphans
    balances: list[ChannelDrift] = field(default_factory=list)  # every channel and currency compared

    def add(self, kind: str, subject: str, detail: str) -> None:
        assert kind in KINDS or kind in BALANCE_KINDS, kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.findings.append(Finding(kind, subject, detail))


def payment_legs(internal: bool, attempt: int, fee: int, pooled: bool = False) -> tuple[dict[str, str], set[str]]:
    """({leg: what its amount must be ("amount", "fee" or "")} a SUCCEEDED payment must have,
    every leg of its family: what it may not have beyond those). `pooled`: its channel collects
    into a pool, so its settling commit swept the amount (`sweep.<attempt>`)."""
    if internal:
        must = {"pay": "amount", **({"fee": "fee"} if fee else {})}
    else:
        must = {hold_leg(k): "amount" for k in range(1, attempt + 1)}
        must.update({f"void.{k}": "" for k in range(1, attempt)})
        must[f"post.{attempt}"] = ""
        if fee:
            must["fee"] = "fee"
        if pooled:
            must[f"sweep.{attempt}"] = "amount"
    family = {"pay", "fee", *(hold_leg(k) for k in range(1, attempt + 2)),
              *(f"{leg}.{k}" for leg in ("post", "void", "sweep") for k in range(1, attempt + 2))}
    return must, family


def refund_legs(internal: bool, pooled: bool = False) -> tuple[dict[str, str], set[str]]:
    if internal:
        return {"refund": "amount"}, {"refund", "post", "void", "sweep"}
    return {"refund": "amount", "post": "", **({"sweep": "amount"} if pooled else {})}, {"refund", "post", "void",
                                                                                        "sweep"}


class InternalCheck:
    def __init__(self, db: Database, *, clock_ns: Callable[[], int] = time.time_ns, pending_grace_s: int = 60,
                 outbox_lag_s: int = 300, findings_max: int = 10_000,
                 adapters: Mapping[str, ChannelAdapter] | None = None,
                 pooled_channels: frozenset[str] = frozenset(), no_drift: frozenset[str] = frozenset()) -> None:
        self.db = db
        # The caller's mapping itself, not a copy: channels it adds later are checked too. Not
        # compared with their receivable: pooled channels and `no_drift` (the settlement channel).
        self.drift = BalanceDrift(db, adapters if adapters is not None else {}, pooled=pooled_channels | no_drift)
        # Their settled payments and refunds must have a sweep to or from the pool (a channel made
        # pooled later finds its older payments without one: a finding to look at, not to ignore).
        self.pooled_channels = pooled_channels
        self.clock_ns = clock_ns
        self.pending_grace_s = pending_grace_s
        self.outbox_lag_s = outbox_lag_s
        self.findings_max = findings_max

    async def run(self) -> InternalReport:
        report = InternalReport(self.clock_ns())
        await self._trial_balance(report)
        known: set[int] = set()  # every id derived from a payment or refund of ours
        await self._payments(report, known)
        await self._refunds(report, known)
        await self._orphans(report, known)
        await self._stale_pending(report)
        await self._outbox(report)
        await self._balance_drift(report)
        for kind in KINDS + BALANCE_KINDS:
            metrics.INTERNAL_FINDINGS.labels(kind).set(report.counts.get(kind, 0))
        metrics.INTERNAL_CHECKS.inc()
        del report.findings[self.findings_max:]
        return report

    async def _trial_balance(self, report: InternalReport) -> None:
        rows = await self.db.query("SELECT currency, SUM(debits_pending), SUM(credits_pending), SUM(debits_posted), "
                                   "SUM(credits_posted) FROM accounts GROUP BY currency ORDER BY currency")
        for currency, dp, cp, dpo, cpo in rows:
            if int(dp or 0) != int(cp or 0) or int(dpo or 0) != int(cpo or 0):
                report.add("TRIAL_BALANCE", str(currency), f"posted: debits {int(dpo or 0)}, credits {int(cpo or 0)}; "
                                                            f"pending: debits {int(dp or 0)}, credits {int(cp or 0)}")

    async def _transfers(self, ids: Sequence[int]) -> dict[int, int]:
        """{id: amount} of the transfers among `ids` that exist."""
        found: dict[int, int] = {}
        for n in range(0, len(ids), PAGE):
            chunk = ids[n:n + PAGE]
            rows = await self.db.query(f"SELECT id, amount FROM transfers WHERE id IN ({', '.join('?' * len(chunk))})",
                                       tuple(chunk))
            found.update((int(i), int(a)) for i, a in rows)
        return found

    async def _check(self, report: InternalReport, kind: str, items: list[tuple[str, dict[str, str], set[str],
                                                                             dict[str, int]]]) -> None:
        """items: (object id, legs it must have with their amounts' names, its family, {amount, fee})."""
        ids = [transfer_id(oid, leg) for oid, _must, family, _v in items for leg in family]
        present = await self._transfers(ids)
        for oid, must, family, values in items:
            for leg in sorted(family):
                tid = transfer_id(oid, leg)
                if leg in must:
                    if tid not in present:
                        report.add(kind, oid, f"missing transfer {leg} ({tid})")
                    elif must[leg] and present[tid] != values[must[leg]]:
                        report.add(kind, oid, f"transfer {leg} ({tid}) is {present[tid]}, "
                                              f"the {must[leg]} is {values[must[leg]]}")
                elif tid in present:
                    report.add(kind, oid, f"extra transfer {leg} ({tid})")

    async def _payments(self, report: InternalReport, known: set[int]) -> None:
        after = ""
        while True:
            rows = await self.db.query("SELECT payment_id, status, body FROM payments WHERE payment_id > ? "
                                       "ORDER BY payment_id LIMIT ?", (after, PAGE))
            if not rows:
                return
            items = []
            for pid, status, body in rows:
                p = payment_from_body(body)
                must, family = payment_legs(p.asset.internal, p.attempt, p.fee, p.channel in self.pooled_channels)
                known.update(transfer_id(p.payment_id, leg) for leg in family)
                if int(status) == PaymentStatus.SUCCEEDED:
                    items.append((p.payment_id, must, family, {"amount": p.amount, "fee": p.fee}))
            report.payments += len(items)
            await self._check(report, "PAYMENT_POSTINGS", items)
            after = str(rows[-1][0])

    async def _refunds(self, report: InternalReport, known: set[int]) -> None:
        after = ""
        while True:
            rows = await self.db.query("SELECT r.refund_id, r.status, r.body, p.asset, p.body FROM refunds r "
                                       "LEFT JOIN payments p ON p.payment_id = r.payment_id WHERE r.refund_id > ? "
                                       "ORDER BY r.refund_id LIMIT ?", (after, PAGE))
            if not rows:
                return
            items = []
            for rid, status, body, asset, payment_body in rows:
                r = refund_from_body(body)
                internal = asset is not None and int(asset) in _INTERNAL_ASSETS
                pooled = payment_body is not None and payment_from_body(payment_body).channel in self.pooled_channels
                must, family = refund_legs(internal, pooled)
                known.update(transfer_id(r.refund_id, leg) for leg in family)
                if int(status) == RefundStatus.SUCCEEDED:
                    items.append((r.refund_id, must, family, {"amount": r.amount}))
            report.refunds += len(items)
            await self._check(report, "REFUND_POSTINGS", items)
            after = str(rows[-1][0])

    async def _orphans(self, report: InternalReport, known: set[int]) -> None:
        codes = ", ".join(str(c) for c in PAYMENT_CODES)
        after: int | None = None
        while True:
            rows = await self.db.query(
                f"SELECT id, code, amount FROM transfers WHERE code IN ({codes})"
                + (" AND id > ?" if after is not None else "") + " ORDER BY id LIMIT ?",
                (after, PAGE) if after is not None else (PAGE,))
            if not rows:
                return
            for tid, code, amount in rows:
                report.transfers += 1
                if int(tid) not in known:
                    report.add("ORPHAN_POSTING", str(tid), f"code {int(code)}, amount {int(amount)}: "
                                                           "derived from no payment or refund of ours")
            after = int(rows[-1][0])

    async def _stale_pending(self, report: InternalReport) -> None:
        before = report.checked_at_ns - self.pending_grace_s * NS
        rows = await self.db.query("SELECT id, expires_at, amount, currency FROM transfers WHERE pending_status = ? "
                                   "AND expires_at > 0 AND expires_at < ? ORDER BY expires_at LIMIT 10000",
                                   (_PENDING, before))
        for tid, expires, amount, currency in rows:
            report.add("STALE_PENDING", str(tid), f"{int(amount)} {currency} still pending "
                                                  f"{(report.checked_at_ns - int(expires)) / NS:.0f} s past its timeout")

    async def _balance_drift(self, report: InternalReport) -> None:
        report.balances = await self.drift.check()
        if report.balances:
            for kind in BALANCE_KINDS:
                report.counts.setdefault(kind, 0)
        for found in report.balances:
            if found.error:
                report.add("BALANCE_UNAVAILABLE", found.subject, found.detail())
            elif found.unexplained:
                report.add("BALANCE_DRIFT", found.subject, found.detail())

    async def _outbox(self, report: InternalReport) -> None:
        head_rows = await self.db.query("SELECT MAX(seq) FROM outbox")
        head = int(head_rows[0][0] or 0) if head_rows else 0
        try:
            cursor_rows = await self.db.query("SELECT last_seq FROM webhook_cursor WHERE id = 1")
        except Exception:  # noqa: BLE001 - no webhook tables: nothing consumes the outbox here
            return
        cursor = int(cursor_rows[0][0]) if cursor_rows else 0
        if cursor > head:
            report.add("OUTBOX_CURSOR_AHEAD", "outbox", f"webhook cursor {cursor} is past the outbox head {head}")
            return
        if cursor == head:
            return
        rows = await self.db.query("SELECT COUNT(*), MIN(created_at_ns) FROM outbox WHERE seq > ? AND created_at_ns < ?",
                                   (cursor, report.checked_at_ns - self.outbox_lag_s * NS))
        late, oldest = (int(rows[0][0] or 0), rows[0][1]) if rows else (0, None)
        if late:
            report.add("OUTBOX_UNDELIVERED", "outbox", f"{late} events after the webhook cursor {cursor} (head {head}) "
                                                       f"are older than {self.outbox_lag_s} s; the oldest from "
                                                       f"{int(oldest)} ns")


def _internal_assets() -> frozenset[int]:
    from dualflow.core.payments.model import Asset

    return frozenset(int(a) for a in Asset if a.internal)


_INTERNAL_ASSETS: Final = _internal_assets()

