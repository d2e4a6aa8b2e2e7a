"""Payment tables: schema, rows <-> records, JSON for events.

The tables live beside the ledger's in the same database (core/database.py),
so a payment's state, its postings and its outbox event commit together.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Final

from .model import (
    Asset,
    BankAccount,
    CardInfo,
    Discrepancy,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    RouteCandidate,
    Routing,
)

PAYMENT_SCHEMA: Final[list[str]] = [
    """CREATE TABLE IF NOT EXISTS payments (
        payment_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        merchant_id TEXT NOT NULL,
        asset BIGINT NOT NULL,
        status BIGINT NOT NULL,
        created_at_ns BIGINT NOT NULL,
        updated_at_ns BIGINT NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS payments_by_merchant ON payments (merchant_id, created_at_ns, payment_id)",
    # Partial: only payments still waiting for a channel, which is what a restart scans for;
    # the many settled internal payments never enter it.
    "CREATE INDEX IF NOT EXISTS payments_open ON payments (status, updated_at_ns) WHERE status IN (1, 2, 5)",
    # Idempotency keys, kept for a window; scope is "pay:<merchant>" or "refund:<merchant>".
    """CREATE TABLE IF NOT EXISTS request_keys (
        scope TEXT NOT NULL,
        request_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        object_id TEXT NOT NULL,
        expires_at_ns BIGINT NOT NULL,
        PRIMARY KEY (scope, request_id)
    )""",
    "CREATE INDEX IF NOT EXISTS request_keys_expiry ON request_keys (expires_at_ns)",
    """CREATE TABLE IF NOT EXISTS refunds (
        refund_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        status BIGINT NOT NULL,
        created_at_ns BIGINT NOT NULL,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS refunds_by_payment ON refunds (payment_id, created_at_ns)",
    """CREATE TABLE IF NOT EXISTS discrepancies (
        discrepancy_id TEXT PRIMARY KEY,
        payment_id TEXT NOT NULL,
        created_at_ns BIGINT NOT NULL,
        body TEXT NOT NULL
    )""",
    # The transactional outbox: written in the same commit as the change it reports.
    """CREATE TABLE IF NOT EXISTS outbox (
        seq BIGINT PRIMARY KEY,
        event_id TEXT NOT NULL,  -- "evt_<seq>": unique because seq is; no index of its own
        type TEXT NOT NULL,
        merchant_id TEXT NOT NULL,
        subject_id TEXT NOT NULL,
        created_at_ns BIGINT NOT NULL,
        payload TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_by_subject ON outbox (subject_id, seq)",
    # The polling schedule for external payments and refunds whose answer is not final:
    # in the database, so a restart neither forgets a payment nor resets its window.
    """CREATE TABLE IF NOT EXISTS channel_polls (
        object_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        next_at_ns BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        window_ends_ns BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS channel_polls_due ON channel_polls (next_at_ns)",
]

SCHEDULE_POLL = (
    "INSERT INTO channel_polls (object_id, kind, next_at_ns, attempts, window_ends_ns) VALUES (?, ?, ?, 0, ?) "
    "ON CONFLICT (object_id) DO NOTHING"
)
UNSCHEDULE_POLL = "DELETE FROM channel_polls WHERE object_id = ?"


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def payment_to_dict(p: Payment) -> dict[str, Any]:
    # Written out rather than dataclasses.asdict: this runs twice per payment inside the
    # group commit, and asdict's recursive deep copy was a measurable share of it.
    d: dict[str, Any] = {
        "payment_id": p.payment_id, "request_id": p.request_id, "merchant_id": p.merchant_id,
        "payer": p.payer, "payee": p.payee, "amount": p.amount, "currency": p.currency,
        "asset": p.asset.name, "status": p.status.name, "fee": p.fee, "created_at_ns": p.created_at_ns,
        "updated_at_ns": p.updated_at_ns, "version": p.version, "failure_reason": p.failure_reason,
        "refunded_amount": p.refunded_amount, "trade_order_id": p.trade_order_id,
        "description": p.description, "metadata": dict(p.metadata),
        "card": asdict(p.card) if p.card is not None else None,
        "bank_account": asdict(p.bank_account) if p.bank_account is not None else None,
        "channel": p.channel, "channel_reference": p.channel_reference, "attempt": p.attempt,
        "routing": routing_to_dict(p.routing) if p.routing is not None else None,
    }
    if p.kind != "pay":
        # Only when not "pay": an ordinary payment's body stays what code before payouts reads
        # (payment_from_dict takes every key as a field). reconciliation/ours.py reads it.
        d["kind"] = p.kind
    return d


def routing_to_dict(r: Routing) -> dict[str, Any]:
    return {
        "chosen": r.chosen, "reason": r.reason, "fallbacks": list(r.fallbacks),
        # Scores are probabilities, not money: four decimals say all there is to say.
        "candidates": [[c.channel, round(c.estimated_success, 4), c.fee, round(c.score, 4)] for c in r.candidates],
        "excluded": [list(e) for e in r.excluded], "config_version": r.config_version,
        "rerouted_from": list(r.rerouted_from),
    }


def routing_from_dict(d: dict[str, Any]) -> Routing:
    return Routing(
        chosen=d["chosen"], reason=d["reason"], fallbacks=tuple(d["fallbacks"]),
        candidates=tuple(RouteCandidate(c, s, f, sc) for c, s, f, sc in d["candidates"]),
        excluded=tuple((c, why) for c, why in d["excluded"]), config_version=d["config_version"],
        rerouted_from=tuple(d["rerouted_from"]))


def payment_from_dict(d: dict[str, Any]) -> Payment:
    d = dict(d)
    d["asset"] = Asset[d["asset"]]
    d["status"] = PaymentStatus[d["status"]]
    if d.get("card"):
        d["card"] = CardInfo(**d["card"])
    if d.get("bank_account"):
        d["bank_account"] = BankAccount(**d["bank_account"])
    if d.get("routing"):
        d["routing"] = routing_from_dict(d["routing"])
    return Payment(**d)


def payment_body(p: Payment) -> str:
    return _dumps(payment_to_dict(p))


def payment_from_body(body: str) -> Payment:
    return payment_from_dict(json.loads(body))


def refund_to_dict(r: Refund) -> dict[str, Any]:
    d = asdict(r)
    d["status"] = r.status.name
    return d


def refund_from_dict(d: dict[str, Any]) -> Refund:
    d = dict(d)
    d["status"] = RefundStatus[d["status"]]
    return Refund(**d)


def refund_body(r: Refund) -> str:
    return _dumps(refund_to_dict(r))


def refund_from_body(body: str) -> Refund:
    return refund_from_dict(json.loads(body))


def discrepancy_to_dict(d: Discrepancy) -> dict[str, Any]:
    out = asdict(d)
    out["recorded_status"] = d.recorded_status.name
    return out


def discrepancy_from_dict(d: dict[str, Any]) -> Discrepancy:
    d = dict(d)
    d["recorded_status"] = PaymentStatus[d["recorded_status"]]
    return Discrepancy(**d)


UPSERT_PAYMENT = (
    "INSERT INTO payments (payment_id, request_id, merchant_id, asset, status, created_at_ns, updated_at_ns, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (payment_id) DO UPDATE SET status = excluded.status, "
    "updated_at_ns = excluded.updated_at_ns, body = excluded.body"
)


def payment_params(p: Payment, body: str | None = None) -> tuple[Any, ...]:
    return (p.payment_id, p.request_id, p.merchant_id, int(p.asset), int(p.status), p.created_at_ns,
            p.updated_at_ns, body if body is not None else payment_body(p))


UPSERT_REFUND = (
    "INSERT INTO refunds (refund_id, payment_id, status, created_at_ns, body) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (refund_id) DO UPDATE SET status = excluded.status, body = excluded.body"
)


def refund_params(r: Refund) -> tuple[Any, ...]:
    return (r.refund_id, r.payment_id, int(r.status), r.created_at_ns, refund_body(r))


INSERT_DISCREPANCY = "INSERT INTO discrepancies (discrepancy_id, payment_id, created_at_ns, body) VALUES (?, ?, ?, ?)"

INSERT_EVENT = (
    "INSERT INTO outbox (seq, event_id, type, merchant_id, subject_id, created_at_ns, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

SELECT_PAYMENT = "SELECT body FROM payments WHERE payment_id = ?"
# Event types whose payload is the payment after the change (a discrepancy's is the discrepancy).
PAYMENT_EVENT_TYPES = frozenset(
    {f"payment.{s.name.lower()}" for s in PaymentStatus} | {"payment.refunded", "payment.refund_reverted",
                                                             "payment.rerouted"})
SELECT_REFUND = "SELECT body FROM refunds WHERE refund_id = ?"
SELECT_KEY = "SELECT fingerprint, object_id FROM request_keys WHERE scope = ? AND request_id = ? AND expires_at_ns > ?"
# The same without the expiry test, for a batch prefetch made before the commit's clock is known.
SELECT_KEY_ANY = "SELECT fingerprint, object_id, expires_at_ns FROM request_keys WHERE scope = ? AND request_id = ?"
UPSERT_KEY = (
    "INSERT INTO request_keys (scope, request_id, fingerprint, object_id, expires_at_ns) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (scope, request_id) DO UPDATE SET fingerprint = excluded.fingerprint, "
    "object_id = excluded.object_id, expires_at_ns = excluded.expires_at_ns"
)
