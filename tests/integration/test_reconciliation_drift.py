"""Balance drift (issue 6) end to end: the platform against the three mock banks, each its own
process over real sockets, RunInternalCheck over real gRPC.

A few payments on every channel and a refund. Before the day's reconciliation the channels have
netted their fees and we have not posted them yet: each channel drifts by exactly its fees. After
the runs post the fees, every channel agrees with our receivable (drift 0, no finding). Then one
bank's book drifts (`balance_offset`): a BALANCE_DRIFT finding for exactly that channel, the
offset as the amount, on the gauge as well."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from dualflow.core.payments.model import Asset, BankAccount, PaymentRequest, PaymentStatus, RefundStatus
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.sandbox import Sandbox
from dualflow.gateway.server import Platform
from dualflow.v1 import reconciliation_pb2 as pb
from dualflow.v1 import reconciliation_pb2_grpc
from shop_day_fixtures import CARD, PSP, RAIL, eventually, fee, shop_platform, start_sandbox

VISA = "4111111111111111"
TODAY = datetime.now(timezone.utc).date().isoformat()
OFFSET = 500


def gauge(name: str, channel: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"channel": channel, "currency": "CNY"})


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("drift-sandbox"), seed=13)
    yield box
    box.stop()


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    async with shop_platform(tmp_path, sandbox, PollTiming(first_ns=50_000_000, window_ns=600 * 10**9)) as p:
        yield p


def drift_findings(result: pb.InternalCheckResult) -> dict[str, str]:
    return {f.subject: f.detail for f in result.findings if f.kind == "BALANCE_DRIFT"}


async def test_balances_agree_after_the_days_fees_and_an_offset_is_found_for_exactly_its_channel(
        platform: Platform, sandbox: Sandbox) -> None:
    assert platform.vault is not None
    token = (await platform.vault.tokenize(VISA, 12, 2031)).token
    amounts = {CARD: 10_000, PSP: 11_000, RAIL: 12_000}
    paid = {}
    for n, (channel, merchant) in enumerate(((CARD, "shop"), (PSP, "psp-shop"), (CARD, "shop"))):
        p = await platform.payments.create_payment(PaymentRequest(
            request_id=f"card-{n}", merchant_id=merchant, payer=f"user:u{n}", payee=f"merchant:{merchant}",
            amount=amounts[channel], currency="CNY", asset=Asset.BANK_CARD, card_token=token))
        paid[f"card-{n}"] = p.payment_id
    rail = await platform.payments.create_payment(PaymentRequest(
        request_id="rail", merchant_id="shop", payer="user:r", payee="merchant:shop", amount=amounts[RAIL],
        currency="CNY", asset=Asset.BANK_TRANSFER, bank_account=BankAccount("ICBC", "6789", "Dave")))
    paid["rail"] = rail.payment_id

    async def all_succeeded() -> bool:
        return all([(await platform.payments.get_payment(pid)).status is PaymentStatus.SUCCEEDED
                    for pid in paid.values()])
    await eventually(all_succeeded)
    channels = {label: (await platform.payments.get_payment(pid)).channel for label, pid in paid.items()}
    assert channels == {"card-0": CARD, "card-1": PSP, "card-2": CARD, "rail": RAIL}
    await platform.payments.refund_payment("refund-1", paid["card-0"], 2_500)

    async def refunded() -> bool:
        return [r.status for r in await platform.payments.refunds_of(paid["card-0"])] == [RefundStatus.SUCCEEDED]
    await eventually(refunded)

    async with grpc.aio.insecure_channel(platform.address) as channel:
        stub = reconciliation_pb2_grpc.ReconciliationStub(channel)

        # The banks netted their fees at once; we post them when the day is reconciled.
        before = await stub.RunInternalCheck(pb.RunInternalCheckRequest(), timeout=60)
        card_fees = fee(CARD, 10_000) * 2 + sum(
            int(line["fee"]) for line in await asyncio.to_thread(sandbox.banks[CARD].book) if line["kind"] == "refund")
        fees = {CARD: card_fees, PSP: fee(PSP, 11_000), RAIL: fee(RAIL, 12_000)}
        assert {k: n for k, n in before.counts.items() if n} == {"BALANCE_DRIFT": 3}, list(before.findings)
        assert sorted(drift_findings(before)) == sorted(f"{c}/CNY" for c in (CARD, PSP, RAIL))
        for name in (CARD, PSP, RAIL):
            assert drift_findings(before)[f"{name}/CNY"].startswith(f"drift {-fees[name]:+d} beyond in flight")
            assert gauge("dualflow_reconciliation_balance_drift_minor", name) == -fees[name]

        for name in (CARD, PSP, RAIL):
            run = await stub.RunReconciliation(pb.RunReconciliationRequest(channel=name, business_date=TODAY),
                                               timeout=60)
            assert run.state == pb.RUN_STATE_COMPLETED, (name, run)

        # After the day's runs: every channel agrees with our receivable.
        clean = await stub.RunInternalCheck(pb.RunInternalCheckRequest(), timeout=60)
        assert {k: n for k, n in clean.counts.items() if n} == {}, list(clean.findings)
        assert clean.counts["BALANCE_DRIFT"] == 0 and clean.counts["BALANCE_UNAVAILABLE"] == 0
        for name in (CARD, PSP, RAIL):
            assert gauge("dualflow_reconciliation_balance_drift_minor", name) == 0
            assert gauge("dualflow_reconciliation_balance_unexplained_minor", name) == 0

        # One bank's book drifts: found for exactly that channel, the offset as the amount.
        sandbox.banks[PSP].set_profile(balance_offset=OFFSET)
        try:
            drifted = await stub.RunInternalCheck(pb.RunInternalCheckRequest(), timeout=60)
        finally:
            sandbox.banks[PSP].set_profile(balance_offset=0)
        assert {k: n for k, n in drifted.counts.items() if n} == {"BALANCE_DRIFT": 1}, list(drifted.findings)
        [(subject, detail)] = drift_findings(drifted).items()
        assert subject == f"{PSP}/CNY" and detail.startswith(f"drift +{OFFSET} beyond in flight"), detail
        assert gauge("dualflow_reconciliation_balance_unexplained_minor", PSP) == OFFSET
        assert gauge("dualflow_reconciliation_balance_unexplained_minor", CARD) == 0
        assert REGISTRY.get_sample_value("dualflow_reconciliation_internal_findings", {"kind": "BALANCE_DRIFT"}) == 1

        # A balance whose signature does not verify is no number at all.
        sandbox.banks[RAIL].set_profile(bad_signature_rate=1.0)
        try:
            untrusted = await stub.RunInternalCheck(pb.RunInternalCheckRequest(), timeout=60)
        finally:
            sandbox.banks[RAIL].set_profile(bad_signature_rate=0.0)
        assert {k: n for k, n in untrusted.counts.items() if n} == {"BALANCE_UNAVAILABLE": 1}
        [finding] = [f for f in untrusted.findings if f.kind == "BALANCE_UNAVAILABLE"]
        assert finding.subject == f"{RAIL}/CNY" and finding.detail.endswith("UNTRUSTED"), finding


# What is in flight explains a drift up to our held payments (+) and held refunds (-); beyond
# that band the rest is unexplained. One line per case: ours posted, payments held, refunds held,
# theirs, the unexplained drift.
IN_FLIGHT_CASES = """
    10000      0     0   10000      0   agree
    10000      0     0   10500    500   theirs higher, nothing in flight
    10000      0     0    9500   -500   theirs lower, nothing in flight
    10000   2000     0   12000      0   a held payment the channel settled already
    10000   2000     0   12300    300   more than the held payment
    10000   2000     0   10000      0   a held payment the channel has not settled either
    10000      0  2500    7500      0   a held refund the channel paid out already
    10000      0  2500    7000   -500   more than the held refund
    10000   2000  2500   12000      0   both held: the band is -2500..+2000
        0      0     0    -120   -120   fees netted, not posted yet
"""


def test_in_flight_items_explain_only_their_own_amounts() -> None:
    from dualflow.reconciliation.drift import Side

    for line in IN_FLIGHT_CASES.strip().splitlines():
        ours, held_in, held_out, theirs, unexplained, *_why = line.split()
        side = Side(int(ours), int(held_in), int(held_out))
        assert side.beyond(int(theirs)) == int(unexplained), line


class _Reads:
    """A database whose receivable reads answer these rows in turn (pending in, pending out,
    debits posted, credits posted)."""

    def __init__(self, *rows: tuple[int, int, int, int]) -> None:
        self.rows = list(rows)

    async def query(self, sql: str, params: Any = ()) -> list[tuple[int, ...]]:
        return [self.rows.pop(0)]


class _Reporting:
    def __init__(self, name: str, amount: int | Exception) -> None:
        self.name, self.amount = name, amount

    def describe(self) -> Any:
        from dualflow.adapters.contract import Capabilities

        return Capabilities(self.name, frozenset(), frozenset({"CNY"}), frozenset())

    async def fetch_balance(self, currency: str) -> Any:
        from dualflow.adapters.contract import ChannelBalance

        if isinstance(self.amount, Exception):
            raise self.amount
        return ChannelBalance(self.name, currency, self.amount, 1)


class _Silent:
    name = "silent"

    def describe(self) -> Any:
        raise AssertionError("a channel without the capability is not even described")


async def test_a_payment_settling_on_both_sides_while_we_ask_is_no_finding() -> None:
    from dualflow.adapters.contract import BalanceUnavailable
    from dualflow.reconciliation.drift import BalanceDrift

    # Before the channel answers, 5,000 is held (pending in); after, it is posted. The channel
    # counted it: before explains it (in flight), after agrees exactly.
    settled = BalanceDrift(_Reads((5_000, 0, 10_000, 0), (0, 0, 15_000, 0)),  # type: ignore[arg-type]
                           {"a": _Reporting("a", 15_000), "z": _Silent()})  # type: ignore[dict-item]
    [found] = await settled.check()
    assert (found.subject, found.drift, found.unexplained, found.error) == ("a/CNY", 0, 0, "")
    # Posted between the reads but not counted by the channel at its as_of: before agrees exactly.
    early = BalanceDrift(_Reads((0, 0, 10_000, 0), (0, 0, 15_000, 0)), {"a": _Reporting("a", 10_000)})  # type: ignore
    [found] = await early.check()
    assert (found.drift, found.unexplained) == (0, 0)
    # A real drift is one whichever read it is compared with.
    drifted = BalanceDrift(_Reads((0, 0, 10_000, 0), (0, 0, 10_000, 0)), {"a": _Reporting("a", 10_300)})  # type: ignore
    [found] = await drifted.check()
    assert (found.drift, found.unexplained) == (300, 300)
    # No balance to trust is no number.
    failing = BalanceDrift(_Reads((0, 0, 10_000, 0), (0, 0, 10_000, 0)), {  # type: ignore[arg-type]
        "a": _Reporting("a", BalanceUnavailable("UNTRUSTED", "bad MAC")), "b": _Reporting("b", RuntimeError("bug"))})
    [a, b] = await failing.check()
    assert (a.error, b.error) == ("UNTRUSTED", "ADAPTER_ERROR")
