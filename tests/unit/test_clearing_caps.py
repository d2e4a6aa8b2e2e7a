"""Net debit caps: refuse or queue, FIFO per debtor, release when the position allows."""

from __future__ import annotations

import pytest

from dualflow.clearing import (
    Admission,
    CapPolicy,
    InvalidObligation,
    NetDebitCapExceeded,
    NetDebitCaps,
    Obligation,
    ObligationConflict,
    PositionBook,
)


def ob(oid: str, debtor: str, creditor: str, amount: int, currency: str = "CNY") -> Obligation:
    return Obligation(oid, debtor, creditor, amount, currency)


CAP_100 = NetDebitCaps(default_minor=100)


def test_refuse_raises_with_the_figures_and_keeps_nothing() -> None:
    book = PositionBook(CAP_100, CapPolicy.REFUSE)
    assert book.submit(ob("1", "A", "B", 60)).admission is Admission.ADMITTED
    with pytest.raises(NetDebitCapExceeded) as raised:
        book.submit(ob("2", "A", "C", 50))
    err = raised.value
    assert (err.reason, err.pool, err.currency, err.cap_minor, err.net_debit_after_minor) == \
        ("NET_DEBIT_CAP_EXCEEDED", "A", "CNY", 100, 110)
    assert err.metadata["obligation_id"] == "2"
    assert book.position("A", "CNY").net_debit_minor == 60 and book.state_of("2") is None
    assert book.caps_hit == 1
    # An opposite obligation makes room; the refused id may be offered again.
    book.submit(ob("3", "B", "A", 20))
    assert book.submit(ob("2", "A", "C", 50)).admission is Admission.ADMITTED
    assert book.position("A", "CNY").net_debit_minor == 90


def test_exactly_the_cap_is_allowed_and_a_cap_of_zero_forbids_any_net_debit() -> None:
    book = PositionBook(NetDebitCaps({("Z", "CNY"): 0}, default_minor=100))
    book.submit(ob("1", "A", "B", 100))
    with pytest.raises(NetDebitCapExceeded):
        book.submit(ob("2", "Z", "B", 1))
    book.submit(ob("3", "B", "Z", 5))
    assert book.submit(ob("4", "Z", "B", 5)).admission is Admission.ADMITTED


def test_caps_are_per_currency_and_pools_without_a_cap_are_unlimited() -> None:
    book = PositionBook(NetDebitCaps({("A", "USD"): 10}))
    book.submit(ob("1", "A", "B", 10**12))  # no CNY cap for A, no default
    with pytest.raises(NetDebitCapExceeded):
        book.submit(ob("2", "A", "B", 11, "USD"))


def test_queue_admits_when_an_opposite_obligation_arrives() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    book.submit(ob("1", "A", "B", 80))
    assert book.submit(ob("2", "A", "C", 50)).admission is Admission.QUEUED
    assert book.queued() == [ob("2", "A", "C", 50)] and book.caps_hit == 1
    sub = book.submit(ob("3", "C", "A", 30))  # A's net debit 50: room for 50 more
    assert sub.admission is Admission.ADMITTED
    assert sub.admitted == (ob("3", "C", "A", 30), ob("2", "A", "C", 50))
    assert sub.released == (ob("2", "A", "C", 50),)
    assert book.queued() == [] and book.position("A", "CNY").net_debit_minor == 100


def test_queue_is_fifo_per_debtor_a_small_one_waits_behind_a_big_one() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    book.submit(ob("1", "A", "B", 90))
    assert book.submit(ob("2", "A", "B", 50)).admission is Admission.QUEUED
    assert book.submit(ob("3", "A", "C", 5)).admission is Admission.QUEUED, "it would fit, but 2 is first"
    assert book.submit(ob("4", "D", "E", 5)).admission is Admission.ADMITTED, "other debtors are not held up"
    sub = book.submit(ob("5", "B", "A", 45))
    assert [o.obligation_id for o in sub.released] == ["2", "3"]


def test_release_follows_the_chain_of_creditors() -> None:
    """B's admission credits C, whose queued obligation then fits, which credits D..."""
    book = PositionBook(NetDebitCaps(default_minor=0), CapPolicy.QUEUE)
    assert book.submit(ob("c", "C", "D", 10)).admission is Admission.QUEUED
    assert book.submit(ob("b", "B", "C", 10)).admission is Admission.QUEUED
    sub = book.submit(ob("x", "A", "B", 10), force=True)
    assert [o.obligation_id for o in sub.admitted] == ["x", "b", "c"]
    assert book.position("A", "CNY").net_debit_minor == 10, "forced beyond its cap of 0"
    assert [book.position(p, "CNY").net_minor for p in "BCD"] == [0, 0, 10]


def test_reconfigure_raising_a_cap_releases_the_queue_in_arrival_order() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    book.submit(ob("1", "A", "B", 100))
    book.submit(ob("2", "B", "C", 150))  # B is owed 100: net debit 50 after, within 100
    book.submit(ob("3", "A", "C", 10))  # A is at its cap
    book.submit(ob("4", "C", "A", 300))  # C is owed 150: 150 after, beyond 100
    assert [o.obligation_id for o in book.queued()] == ["3", "4"]
    assert book.reconfigure(NetDebitCaps(default_minor=105)) == (), "A would be at 110, C at 150"
    released = book.reconfigure(NetDebitCaps(default_minor=1000))
    assert [o.obligation_id for o in released] == ["3", "4"]
    assert book.queued() == []


def test_lowering_a_cap_keeps_what_was_admitted_and_holds_new_debits() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    book.submit(ob("1", "A", "B", 100))
    book.reconfigure(NetDebitCaps(default_minor=10))
    assert book.position("A", "CNY").net_debit_minor == 100
    assert book.submit(ob("2", "A", "B", 1)).admission is Admission.QUEUED


def test_take_queued_hands_over_in_arrival_order_and_forgets_them() -> None:
    book = PositionBook(NetDebitCaps(default_minor=0), CapPolicy.QUEUE)
    for oid, debtor in (("1", "B"), ("2", "A"), ("3", "B")):
        book.submit(ob(oid, debtor, "Z", 5))
    assert [o.obligation_id for o in book.take_queued()] == ["1", "2", "3"]
    assert book.queued() == [] and book.state_of("1") is None


def test_an_id_offered_again_is_exists_with_the_same_fields_and_a_conflict_with_others() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    book.submit(ob("1", "A", "B", 100))
    book.submit(ob("2", "A", "B", 5))
    for oid, state in (("1", Admission.ADMITTED), ("2", Admission.QUEUED)):
        assert book.submit(ob(oid, "A", "B", 100 if oid == "1" else 5)).admission is Admission.EXISTS
        assert book.state_of(oid) is state
        with pytest.raises(ObligationConflict) as raised:
            book.submit(ob(oid, "A", "B", 7))
        assert raised.value.reason == "OBLIGATION_ID_REUSED"
    assert book.position("A", "CNY").debits_minor == 100, "nothing counted twice"


def test_restore_rebuilds_positions_and_queues_from_persisted_lists() -> None:
    book = PositionBook(CAP_100, CapPolicy.QUEUE)
    admitted = [ob("1", "A", "B", 100), ob("2", "B", "C", 30)]
    queued = [ob("3", "A", "C", 10)]
    for o in (*admitted, *queued):
        book.submit(o)
    again = PositionBook.restore(CAP_100, CapPolicy.QUEUE, admitted, queued)
    assert again.positions() == book.positions() and again.queued() == book.queued()
    assert again.submit(ob("4", "C", "A", 10)).released == (ob("3", "A", "C", 10),)


def test_caps_must_be_non_negative_integers() -> None:
    with pytest.raises(InvalidObligation):
        NetDebitCaps(default_minor=-1)
    with pytest.raises(InvalidObligation):
        NetDebitCaps({("A", "CNY"): 1.5})  # type: ignore[dict-item]
