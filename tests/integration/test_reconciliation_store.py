"""Reconciliation storage on SQLite and PostgreSQL (the ledger's real stores, the tables made by
ensure_schema): our side read from the payments tables, runs and their counts, the discrepancy
workflow (open, assign, resolve, list by class and age, audit trail, errors), and a whole run
against a statement with every kind of finding, resolved through a Resolver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import Capabilities, FeeSchedule, Flow, Outcome, StatementLine
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.model import Asset, BankAccount, CardInfo, Payment, PaymentStatus, Refund, RefundStatus
from dualflow.core.payments.records import PAYMENT_SCHEMA, SCHEDULE_POLL, UPSERT_PAYMENT, UPSERT_REFUND, \
    payment_body, payment_params, refund_params
from dualflow.reconciliation.model import Action, Class, Result
from dualflow.reconciliation.ours import _Decoder, _PAYMENT_KEYS, _payment_fields, day_bounds_ns, \
    lookup_instructions, read_instructions
from dualflow.reconciliation.runner import Reconciler
from dualflow.reconciliation.store import BadResolution, DiscrepancyClosed, DiscrepancyNotFound, DiscrepancyService

DAY = "2024-01-02"
START, END = day_bounds_ns(DAY)
H = 3600 * 10**9


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[LedgerService]:
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    await ledger.ensure_schema(PAYMENT_SCHEMA)
    try:
        yield ledger
    finally:
        await ledger.stop()


def payment(n: int, status: PaymentStatus, amount: int = 1_000, channel: str = "cardbank", ref: str = "",
            created: int = START + H, asset: Asset = Asset.BANK_CARD, attempt: int = 1) -> Payment:
    return Payment(payment_id=f"pay_{n:024x}", request_id=f"r{n}", merchant_id="shop", payer="user:a",
                   payee="merchant:shop", amount=amount, currency="CNY", asset=asset, status=status, fee=10,
                   created_at_ns=created, updated_at_ns=created, metadata={"channel": "psp", "x": 'a"b'},
                   card=CardInfo("tok", "476173", "0119", "VISA", 12, 2030), channel=channel,
                   channel_reference=ref or f"R{n}", attempt=attempt)


@pytest.mark.parametrize("decoded_by", ["database", "python"])
async def test_our_side_is_read_by_channel_and_day_with_refunds_and_polling_windows(
        db: LedgerService, decoded_by: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if decoded_by == "python":  # a Database whose backend this code does not know: bodies read in Python
        monkeypatch.setattr("dualflow.reconciliation.ours._backend", lambda _db: "")
    rows = [payment(1, PaymentStatus.SUCCEEDED), payment(2, PaymentStatus.UNKNOWN, attempt=2),
            payment(3, PaymentStatus.SUCCEEDED, channel="wallet-psp"),  # another channel
            payment(4, PaymentStatus.SUCCEEDED, created=END + 1),  # another day
            payment(5, PaymentStatus.SUCCEEDED, asset=Asset.WALLET, channel="")]  # internal
    refund = Refund("rfd_1", rows[0].payment_id, "rr", "shop", 300, "CNY", RefundStatus.UNKNOWN, START + 2 * H,
                    START + 2 * H)
    await db.write([(UPSERT_PAYMENT, payment_params(p)) for p in rows] + [(UPSERT_REFUND, refund_params(refund))]
                   + [(SCHEDULE_POLL, (rows[1].payment_id, "pay", START, START + 5 * H))])
    got = [i async for i in read_instructions(db, "cardbank", DAY, page_rows=1)]  # a page per row: keyset works
    assert [(i.instruction_id, i.kind, i.status, i.amount, i.channel_reference, i.window_ends_ns) for i in got] == [
        (f"{rows[0].payment_id}-1", "pay", "SUCCEEDED", 1_000, "R1", 0),
        (f"{rows[1].payment_id}-2", "pay", "UNKNOWN", 1_000, "R2", START + 5 * H),
        ("rfd_1-1", "refund", "UNKNOWN", 300, "", 0)]
    found = await lookup_instructions(db, "cardbank", [f"{rows[3].payment_id}-1", f"{rows[3].payment_id}-2",
                                                       "rfd_1-1", f"{rows[2].payment_id}-1"])
    assert sorted(found) == sorted([f"{rows[3].payment_id}-1", "rfd_1-1"])  # wrong attempt, other channel: no


@settings(max_examples=200, deadline=None)
@given(amount=st.integers(1, 2**62), ref=st.text(max_size=12), text=st.text(max_size=12),
       attempt=st.integers(1, 9), channel=st.text(min_size=1, max_size=8))
def test_body_fields_cut_from_the_text_agree_with_json(amount: int, ref: str, text: str, attempt: int,
                                                       channel: str) -> None:
    p = payment(1, PaymentStatus.SUCCEEDED, amount=amount, channel=channel, ref=ref or "R", attempt=attempt)
    p = p.__class__(**{**{f: getattr(p, f) for f in p.__slots__}, "description": text,  # type: ignore[attr-defined]
                       "metadata": {"amount": text, "channel": text, '"attempt":': "1", "channel_reference": text,
                                    "created_at_ns": text, "currency": text},
                       "bank_account": BankAccount("B", "1234", text)})
    body = payment_body(p)
    full = json.loads(body)
    assert _Decoder().fields(body, _PAYMENT_KEYS) == {k: full[k] for k, _ in _PAYMENT_KEYS}
    # The positional reader answers the same, or None (then the caller decodes in full).
    fast = _payment_fields(body)
    assert fast is None or fast == tuple(full[k] for k, _ in _PAYMENT_KEYS), (fast, body)
    if "\\" not in body and '"' not in text + ref + channel:
        assert fast is not None, body


async def test_discrepancy_workflow(db: LedgerService) -> None:
    from dualflow.reconciliation.model import Instruction, Line

    clock = iter(range(1_000, 10_000_000, 1_000))
    service = DiscrepancyService(db, clock_ns=lambda: next(clock))
    reconciler = Reconciler(db)
    await reconciler.open()
    ins = Instruction("pay_a-1", "pay", "pay_a", "cardbank", "R1", 1_000, "CNY", "FAILED", START, 0)
    result = Result(Class.STATUS_MISMATCH, Action.OPEN_DISCREPANCY, ins,
                    (Line("pay_a-1", "R1", "pay", 1_000, "CNY", "SUCCEEDED", 5, 1),), "status: ours FAILED")
    opened = await service.open("cardbank", DAY, "rcn_x", result)
    again = await service.open("cardbank", DAY, "rcn_y", result)  # the same finding again: the same row
    assert again.discrepancy_id == opened.discrepancy_id and again.last_run_id == "rcn_y"
    assert (opened.status, opened.cls, opened.object_id) == ("open", Class.STATUS_MISMATCH, "pay_a")
    orphan = await service.open("cardbank", DAY, "rcn_x", Result(
        Class.MISSING_INTERNALLY, Action.OPEN_DISCREPANCY, None, (Line("pay_z-1", "RZ", "pay", 5, "CNY", "SUCCEEDED",
                                                                        0, 2),), "nobody's"))
    assert [d.discrepancy_id for d in await service.list(status="open")] == [opened.discrepancy_id,
                                                                             orphan.discrepancy_id]
    assert [d.cls for d in await service.list(cls=Class.MISSING_INTERNALLY)] == [Class.MISSING_INTERNALLY]
    assert [d.discrepancy_id for d in await service.list(opened_before_ns=orphan.opened_at_ns)] == \
        [opened.discrepancy_id]  # by age
    assert await service.count_open_by_class() == {"STATUS_MISMATCH": 1, "MISSING_INTERNALLY": 1}
    with pytest.raises(BadResolution):
        await service.assign(opened.discrepancy_id, " ", "lead")
    assigned = await service.assign(opened.discrepancy_id, "alice", "lead")
    assert (assigned.status, assigned.assignee, assigned.version) == ("assigned", "alice", 2)
    with pytest.raises(BadResolution):
        await service.resolve(opened.discrepancy_id, "shrug", "because", "alice")
    with pytest.raises(BadResolution):
        await service.resolve(opened.discrepancy_id, "refund", "", "alice")
    resolved = await service.resolve(opened.discrepancy_id, "refund", "customer charged, we failed it", "alice")
    assert (resolved.status, resolved.resolution_action, resolved.version) == ("resolved", "refund", 3)
    with pytest.raises(DiscrepancyClosed):
        await service.resolve(opened.discrepancy_id, "write_off", "again", "bob")
    with pytest.raises(DiscrepancyClosed):
        await service.assign(opened.discrepancy_id, "bob", "lead")
    with pytest.raises(DiscrepancyNotFound):
        await service.get("dsc_nope")
    trail = await service.history(opened.discrepancy_id)
    assert [(v, actor, event) for v, _at, actor, event, _d in trail] == [
        (1, "reconciliation rcn_x", "opened"), (2, "lead", "assigned"), (3, "alice", "resolved")]
    assert await service.count_open_by_class() == {"MISSING_INTERNALLY": 1}


class StubAdapter:
    """A channel whose statement is given; the Reconciler only fetches statements and fees."""

    name = "cardbank"

    def __init__(self, lines: list[StatementLine]) -> None:
        self.lines = lines

    def describe(self) -> Capabilities:
        return Capabilities("cardbank", frozenset({Asset.BANK_CARD}), frozenset({"CNY"}),
                            frozenset({Flow.STATEMENT}), fees={"CNY": FeeSchedule(bps=50)})

    async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
        for line in self.lines:
            yield line


class RecordingResolver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Action]] = []

    async def resolve(self, run_id: str, object_id: str, kind: str, action: Action, result: Result) -> bool:
        self.calls.append((run_id, object_id, kind, action))
        return object_id != "pay_000000000000000000000003"  # that one moved meanwhile


async def test_a_whole_run_records_counts_discrepancies_and_resolutions(db: LedgerService) -> None:
    settled, unknown, failed, expected = (payment(1, PaymentStatus.SUCCEEDED), payment(2, PaymentStatus.UNKNOWN),
                                          payment(3, PaymentStatus.UNKNOWN), payment(4, PaymentStatus.FAILED))
    waiting = payment(5, PaymentStatus.UNKNOWN)
    await db.write([(UPSERT_PAYMENT, payment_params(p)) for p in (settled, unknown, failed, expected, waiting)]
                   + [(SCHEDULE_POLL, (waiting.payment_id, "pay", START, END + 10 * H))])

    def sl(p: Payment, status: str = "SUCCEEDED", amount: int = 1_000) -> StatementLine:
        return StatementLine(DAY, f"{p.payment_id}-1", p.channel_reference, "pay", amount, "CNY", Outcome[status],
                             (amount * 50 + 5_000) // 10_000 if status == "SUCCEEDED" else 0)

    lines = [sl(settled), sl(unknown), sl(failed, "FAILED"), sl(expected),
             StatementLine(DAY, "pay_nobody-1", "RN", "pay", 77, "CNY", Outcome.SUCCEEDED, 0)]
    resolver = RecordingResolver()
    reconciler = Reconciler(db, resolver=resolver, clock_ns=lambda: END + 2 * H)
    await reconciler.open()
    report = await reconciler.run(StubAdapter(lines), DAY)  # type: ignore[arg-type]
    run = report.run
    assert (run.state, run.lines, run.instructions, run.attempt) == ("completed", 5, 5, 1)
    assert {c: (v["lines"], v["instructions"]) for c, v in report.counts.items()} == {
        "MATCHED": (1, 1), "STATUS_MISMATCH": (3, 3), "MISSING_INTERNALLY": (1, 0), "EXPECTED": (0, 1)}
    assert report.counts["MATCHED"]["amount_minor:CNY"] == 1_000
    assert sorted((o, a) for _r, o, _k, a in resolver.calls) == [
        (unknown.payment_id, Action.MARK_SUCCEEDED), (failed.payment_id, Action.MARK_FAILED)]
    assert (report.applied, report.refused) == (1, 1)
    assert await reconciler.store.actions(run.run_id, "applied") == [(unknown.payment_id, f"{unknown.payment_id}-1",
                                                                       "pay", "MARK_SUCCEEDED")]
    service = DiscrepancyService(db)
    assert await service.count_open_by_class() == {"STATUS_MISMATCH": 1, "MISSING_INTERNALLY": 1}
    assert await reconciler.store.expected("cardbank", "2024-01-03") == [f"{waiting.payment_id}-1"]
    # Run again (the pair is re-runnable): a second numbered run, the same discrepancies, not new ones.
    again = await reconciler.run(StubAdapter(lines), DAY)  # type: ignore[arg-type]
    assert again.run.attempt == 2 and (await reconciler.store.latest_run("cardbank", DAY)).run_id == again.run.run_id
    assert await service.count_open_by_class() == {"STATUS_MISMATCH": 1, "MISSING_INTERNALLY": 1}


async def test_a_rejected_statement_ends_the_run_and_applies_nothing(db: LedgerService) -> None:
    from dualflow.adapters.contract import StatementRejected

    class Broken(StubAdapter):
        async def fetch_statement(self, business_date: str) -> AsyncIterator[StatementLine]:
            yield StatementLine(DAY, "pay_x-1", "R", "pay", 1, "CNY", Outcome.SUCCEEDED, 0)
            raise StatementRejected("WRONG_TOTALS", 4, "the trailer says 3 lines")

    await db.write([(UPSERT_PAYMENT, payment_params(payment(2, PaymentStatus.UNKNOWN)))])
    resolver = RecordingResolver()
    reconciler = Reconciler(db, resolver=resolver, clock_ns=lambda: END + 48 * H)
    await reconciler.open()
    report = await reconciler.run(Broken([]), DAY)  # type: ignore[arg-type]
    assert (report.run.state, report.run.error_reason, report.run.error_line) == ("rejected", "WRONG_TOTALS", 4)
    assert resolver.calls == [] and await DiscrepancyService(db).list() == []
    assert await reconciler.store.actions(report.run.run_id) == []


def _unused(*_: Any) -> None:
    return None
