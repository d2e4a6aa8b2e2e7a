"""Our side's rows carry each payment's bank code (reconciliation/ours.py), read by the database's
JSON functions on SQLite and PostgreSQL and from the body's text elsewhere, alike; the fee check of
a run then prices a same-bank payment with the channel's same-bank schedule."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.model import Asset, BankAccount, CardInfo, Payment, PaymentStatus, Refund, RefundStatus
from dualflow.core.payments.records import PAYMENT_SCHEMA, UPSERT_PAYMENT, UPSERT_REFUND, payment_params, \
    refund_params
from dualflow.reconciliation.ours import day_bounds_ns, lookup_instructions, lookup_rows, read_instructions

DAY = "2024-01-02"
START, _END = day_bounds_ns(DAY)
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


def payment(n: int, bank: BankAccount | None, *, card: bool = False, kind: str = "pay") -> Payment:
    return Payment(payment_id=f"pay_{n:024x}", request_id=f"r{n}", merchant_id="shop", payer="user:a",
                   payee="merchant:shop", amount=1_000 * n, currency="CNY",
                   asset=Asset.BANK_CARD if card else Asset.BANK_TRANSFER, status=PaymentStatus.SUCCEEDED, fee=0,
                   created_at_ns=START + n * H, updated_at_ns=START + n * H,
                   metadata={"bank_code": "NOTME", "x": 'a"b'}, bank_account=bank,
                   card=CardInfo("tok", "476173", "0119", "VISA", 12, 2030) if card else None,
                   channel="bank-rail", channel_reference=f"R{n}", attempt=1, kind=kind)


@pytest.mark.parametrize("decoded_by", ["database", "python"])
async def test_each_row_carries_the_payments_bank_code(db: LedgerService, decoded_by: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if decoded_by == "python":  # a Database whose backend this code does not know: bodies read in Python
        monkeypatch.setattr("dualflow.reconciliation.ours._backend", lambda _db: "")
    rows = [payment(1, BankAccount("BANKA", "1234", "Zhang San")), payment(2, BankAccount("BANKB", "5678", 'a"b')),
            payment(3, None, card=True), payment(4, BankAccount("BANKA", "9999", "Li Si"), kind="payout")]
    refund = Refund("rfd_1", rows[0].payment_id, "rr", "shop", 300, "CNY", RefundStatus.SUCCEEDED, START + 5 * H,
                    START + 5 * H)
    await db.write([(UPSERT_PAYMENT, payment_params(p)) for p in rows] + [(UPSERT_REFUND, refund_params(refund))])
    pages = [page async for page in read_instructions(db, "bank-rail", DAY, page_rows=2).pages()]
    got = [(r[0], r[1], r[5], r[-1]) for page in pages for r in page]
    assert got == [(f"{rows[0].payment_id}-1", "pay", 1_000, "BANKA"), (f"{rows[1].payment_id}-1", "pay", 2_000, "BANKB"),
                   (f"{rows[2].payment_id}-1", "pay", 3_000, ""), (f"{rows[3].payment_id}-1", "payout", 4_000, "BANKA"),
                   ("rfd_1-1", "refund", 300, "")]
    assert all(len(r) == 11 for page in pages for r in page)
    # As Instructions (the public reader), without it.
    assert [len(i) for i in [i async for i in read_instructions(db, "bank-rail", DAY)]] == [10] * 5
    ids = [f"{rows[1].payment_id}-1", "rfd_1-1"]
    assert {k: v[-1] for k, v in (await lookup_rows(db, "bank-rail", ids)).items()} == {ids[0]: "BANKB", ids[1]: ""}
    assert sorted(await lookup_instructions(db, "bank-rail", ids)) == sorted(ids)
