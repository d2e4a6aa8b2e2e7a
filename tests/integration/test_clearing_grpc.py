"""The Clearing service over real gRPC, on SQLite and PostgreSQL.

A Platform (no channels) serves on 127.0.0.1:0 with a `[clearing]` table and API keys written by
the test, and a scripted settlement executor standing in for the payment gateway. Refusals are
checked for their status, ErrorInfo and BadRequest details, and for having changed nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dualflow.clearing import Obligation, net
from dualflow.clearing.pools import deposit_own_funds
from dualflow.clearing.settlement import ScriptedExecutor
from dualflow.gateway.config import hash_api_key
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import clearing_pb2 as pb
from dualflow.v1 import clearing_pb2_grpc

OPS_KEY = "dfk_clearing-ops-key-0123456789abcdef"
READER_KEY = "dfk_clearing-reader-key-0123456789abc"
POOLS = ("bank-a", "bank-b", "bank-c")


def config(policy: str) -> str:
    return f"""
[clearing]
pools = ["bank-a", "bank-b", "bank-c"]
currencies = ["CNY", "USD"]
cap_policy = "{policy}"
settle_interval_s = 0.02
invariant_interval_s = 0

[clearing.caps.bank-c]
CNY = 100

[[callers]]
name = "clearing-ops"
api_key_sha256 = "{hash_api_key(OPS_KEY)}"
permissions = ["clearing.manage", "clearing.read"]

[[callers]]
name = "clearing-reader"
api_key_sha256 = "{hash_api_key(READER_KEY)}"
permissions = ["clearing.read"]
"""


@dataclass
class Running:
    platform: Platform
    stub: clearing_pb2_grpc.ClearingStub
    rail: ScriptedExecutor

    async def call(self, method: str, request: Any, key: str = OPS_KEY) -> Any:
        rpc: Callable[..., Awaitable[Any]] = getattr(self.stub, method)
        return await rpc(request, metadata=(("authorization", f"Bearer {key}"),))

    async def record(self, oid: str, debtor: str, creditor: str, amount: int,
                     currency: str = "CNY") -> pb.RecordObligationResponse:
        return await self.call("RecordObligation", pb.RecordObligationRequest(obligation=pb.Obligation(
            obligation_id=oid, debtor_pool=debtor, creditor_pool=creditor, amount_minor=amount, currency=currency)))

    async def positions(self) -> list[tuple[str, str, int, int]]:
        answer = await self.call("GetPositions", pb.GetPositionsRequest())
        return [(p.pool, p.currency, p.net_minor, p.queued_count) for p in answer.positions]


@asynccontextmanager
async def serving(db_url: str, tmp_path: Path, policy: str = "refuse") -> AsyncIterator[Running]:
    config_file = tmp_path / f"dualflow-{policy}.toml"
    config_file.write_text(config(policy))
    rail = ScriptedExecutor()
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, config_path=str(config_file),
                                     expiry_interval_s=0), settlement=rail)
    await platform.start()
    channel = grpc.aio.insecure_channel(platform.address)
    try:
        yield Running(platform, clearing_pb2_grpc.ClearingStub(channel), rail)
    finally:
        await channel.close()
        await platform.stop()


@pytest.fixture
async def running(db_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    async with serving(db_url, tmp_path) as r:
        yield r


def details(err: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str], dict[str, str]]:
    """Code, ErrorInfo reason and metadata, and BadRequest field -> description."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    infos[0].Unpack(info)
    assert info.domain == "dualflow.v1.Clearing"
    for d in status.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            d.Unpack(bad)
    return err.code(), info.reason, dict(info.metadata), {v.field: v.description for v in bad.field_violations}


async def refused(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, str], dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details(caught.value)


async def test_bad_input_is_invalid_argument_naming_each_field_and_changes_nothing(running: Running) -> None:
    await running.record("first", "bank-a", "bank-b", 10)
    before = await running.positions()
    code, reason, _, fields = await refused(running.record("bad/id", "bank-z", "bank-z", -5, "EUR"))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OBLIGATION")
    assert set(fields) == {"obligation.obligation_id", "obligation.debtor_pool", "obligation.creditor_pool",
                           "obligation.amount_minor", "obligation.currency"}
    code, reason, _, fields = await refused(running.record("", "", "", 0, ""))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "obligation.obligation_id" in fields
    code, reason, _, _ = await refused(running.call("ListSettlements", pb.ListSettlementsRequest(page_size=5000)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_SIZE_INVALID")
    code, reason, _, _ = await refused(running.call("ListSettlements", pb.ListSettlementsRequest(page_token="x")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
    assert await running.positions() == before
    window = await running.call("GetWindow", pb.GetWindowRequest(window_id="current"))
    assert window.obligation_count == 1
    code, reason, _, _ = await refused(running.call("GetWindow", pb.GetWindowRequest(window_id="W999999")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "WINDOW_NOT_FOUND")


async def test_a_cap_refuses_with_its_figures_and_changes_nothing(running: Running) -> None:
    await running.record("c-owes-a", "bank-c", "bank-a", 100)
    before = await running.positions()
    code, reason, meta, _ = await refused(running.record("c-owes-b", "bank-c", "bank-b", 1))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NET_DEBIT_CAP_EXCEEDED")
    assert meta == {"pool": "bank-c", "currency": "CNY", "cap_minor": "100", "net_debit_after_minor": "101",
                    "obligation_id": "c-owes-b"}
    assert await running.positions() == before
    positions = (await running.call("GetPositions", pb.GetPositionsRequest(currency="CNY"))).positions
    c = next(p for p in positions if p.pool == "bank-c")
    assert (c.owes_minor, c.net_debit_minor, c.cap_minor, c.HasField("cap_minor")) == (100, 100, 100, True)
    assert not next(p for p in positions if p.pool == "bank-a").HasField("cap_minor"), "no cap: absent"
    # USD has no cap for bank-c.
    assert (await running.record("c-owes-b-usd", "bank-c", "bank-b", 10_000, "USD")).status == pb.OBLIGATION_ADMITTED


async def test_queued_obligations_say_queued_and_are_released_by_what_the_debtor_is_owed(
        db_url: str, tmp_path: Path) -> None:
    async with serving(db_url, tmp_path, "queue") as running:
        await running.record("c1", "bank-c", "bank-a", 100)
        queued = await running.record("c2", "bank-c", "bank-b", 30)
        assert (queued.status, queued.replayed) == (pb.OBLIGATION_QUEUED, False)
        assert ("bank-c", "CNY", -100, 1) in await running.positions()
        again = await running.record("c2", "bank-c", "bank-b", 30)
        assert (again.status, again.replayed) == (pb.OBLIGATION_QUEUED, True)
        owed = await running.record("b1", "bank-b", "bank-c", 30)
        assert list(owed.released_obligation_ids) == ["c2"]
        assert ("bank-c", "CNY", -100, 0) in await running.positions()


async def test_record_obligation_is_idempotent_by_id(running: Running) -> None:
    first = await running.record("pay-7:a-b", "bank-a", "bank-b", 51)
    again = await running.record("pay-7:a-b", "bank-a", "bank-b", 51)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.obligation == first.obligation and again.window_id == first.window_id == "W000001"
    code, reason, meta, _ = await refused(running.record("pay-7:a-b", "bank-a", "bank-b", 50))
    assert (code, reason, meta) == (grpc.StatusCode.ALREADY_EXISTS, "OBLIGATION_ID_REUSED",
                                    {"obligation_id": "pay-7:a-b"})
    assert ("bank-a", "CNY", -51, 0) in await running.positions()


async def test_close_window_figures_equal_net_and_settlement_moves_the_pools(running: Running) -> None:
    rng = random.Random(7)
    obligations = []
    for i in range(60):
        debtor, creditor = rng.sample(POOLS[:2], 2) if i % 3 else rng.sample(POOLS, 2)
        amount = rng.randint(1, 30) if debtor != "bank-c" else 1
        currency = "USD" if i % 5 == 0 else "CNY"
        obligations.append(Obligation(f"o{i}", debtor, creditor, amount, currency))
        await running.record(f"o{i}", debtor, creditor, amount, currency)
    for pool in POOLS:
        await deposit_own_funds(running.platform.ledger, pool, "CNY", 10_000, f"float-{pool}")
    expected = net(obligations)
    running.rail.script = None  # every transfer succeeds
    closed = await running.call("CloseWindow", pb.CloseWindowRequest(window_id="W000001"))
    assert closed.window_id == "W000001" and closed.state in (pb.WINDOW_CLOSED, pb.WINDOW_SETTLING)
    assert [(n.currency, n.gross_minor, n.net_minor, n.transfer_count, n.transfer_bound, n.optimal,
             n.obligation_count) for n in closed.netting] == [
        (c.currency, c.gross_minor, c.net_minor, len(c.transfers), c.transfer_bound, c.optimal, c.obligation_count)
        for c in expected.by_currency.values()]
    assert [n.efficiency for n in closed.netting] == [float(c.efficiency) for c in expected.by_currency.values()]
    assert [(i.payer_pool, i.payee_pool, i.amount_minor, i.currency) for i in closed.instructions] == [
        (t.payer_pool, t.payee_pool, t.amount_minor, t.currency) for t in expected.transfers]
    assert {(p.pool, p.currency, p.net_minor) for p in closed.positions} == {
        (pool, c, position) for c, n in expected.by_currency.items() for pool, position in n.positions.items()}
    # Retried with the same id: answered as it is; the new open window is untouched.
    again = await running.call("CloseWindow", pb.CloseWindowRequest(window_id="W000001"))
    assert again.window_id == "W000001"
    current = await running.call("GetWindow", pb.GetWindowRequest())
    assert (current.window_id, current.state, current.obligation_count) == ("W000002", pb.WINDOW_OPEN, 0)
    # The background driver settles it through the scripted rail.
    for _ in range(500):
        window = await running.call("GetWindow", pb.GetWindowRequest(window_id="W000001"), key=READER_KEY)
        if window.state == pb.WINDOW_SETTLED:
            break
        await asyncio.sleep(0.01)
    assert window.state == pb.WINDOW_SETTLED and window.finished_at_ns >= window.closed_at_ns > 0
    assert {i.state for i in window.instructions} == {pb.INSTRUCTION_SUCCEEDED}
    assert sorted(o.instruction_id for o in running.rail.sends) == sorted(i.instruction_id
                                                                           for i in window.instructions)
    listed = await running.call("ListSettlements", pb.ListSettlementsRequest(
        window_id="W000001", states=[pb.INSTRUCTION_SUCCEEDED], page_size=2), key=READER_KEY)
    assert len(listed.instructions) == min(2, len(window.instructions))
    balances = await running.call("GetPoolBalances", pb.GetPoolBalancesRequest(currency="CNY"), key=READER_KEY)
    moved = {pool: 10_000 + position for pool, position in expected.by_currency["CNY"].positions.items()}
    assert {(b.pool, b.balance_minor) for b in balances.pools} == {(p, moved.get(p, 10_000)) for p in POOLS}
    (cny,) = balances.invariant
    assert (cny.pools_minor, cny.own_funds_minor, cny.difference_minor) == (30_000, 30_000, 0)


async def test_permissions_split_reading_from_managing(running: Running) -> None:
    code, reason, meta, _ = await refused(running.call("CloseWindow", pb.CloseWindowRequest(), key=READER_KEY))
    assert (code, reason, meta) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING",
                                    {"permission": "clearing.manage"})
    assert (await running.call("GetWindow", pb.GetWindowRequest(), key=READER_KEY)).window_id == "W000001"


async def test_dualflow_clear_closes_the_current_window_and_prints_its_figures(
        running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    from dualflow.gateway.cli import main

    await running.record("x1", "bank-a", "bank-b", 5_100)
    await running.record("x2", "bank-b", "bank-a", 5_000)
    target = ["--target", running.platform.address, "--api-key", OPS_KEY]
    assert await asyncio.to_thread(main, ["clear", "--window", "current", "--no-close", *target]) == 0
    shown = capsys.readouterr().out
    assert "W000001 OPEN" in shown and "-1.00" in shown
    assert await asyncio.to_thread(main, ["clear", "--window", "current", *target]) == 0
    closed = capsys.readouterr().out
    assert "W000001" in closed and "101.00" in closed and "1.00" in closed and "99.01%" in closed
    assert "W000001/0" in closed and "bank-b" in closed
    assert await asyncio.to_thread(main, ["clear", "--window", "W000001", *target]) == 0
    assert "W000001/0" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["clear", "--window", "W000077", *target]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
