"""Clearing settlement end to end (issue 7): a day of obligations among three pools, a cut-off, and
the net settled through the mock transfer rail (its own process, real sockets) with one lost reply.

The platform runs the sandbox's `bank-rail` channel and `[clearing]` with each pool's account at its
bank (`rail_accounts`), so it settles over `RailSettlementExecutor`. Obligations come in through the
Clearing RPC; CloseWindow nets them. The rail loses the reply to every first send (it books the
transfer, the connection drops: UNKNOWN), then the fault is lifted and the driver's repeat of the
same instruction id asks the rail, which knows the transfer. Then: the window is SETTLED; the rail's
book has exactly one transfer per instruction with the net amounts; the pool ledger accounts moved by
exactly the net positions, as did the pool accounts in the bank's own book; each instruction is one
line of the bank's statement; the trial balance and the pool invariant hold.

A second test stops the platform after each transfer left for the bank and before any answer was
recorded (a crash between send and record); the restarted platform sends the same ids again, the
bank deduplicates them, and each net amount is paid once.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from dualflow.adapters.transfer.settlement import RailSettlementExecutor, rail_id
from dualflow.clearing.pools import deposit_own_funds, pool_balances
from dualflow.clearing.window import WindowState
from dualflow.gateway.sandbox import NAMES, Sandbox
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import clearing_pb2 as pb
from dualflow.v1 import clearing_pb2_grpc

RAIL = NAMES["transfer"]
POOLS = {  # pool -> its account at its bank
    "bank-a": {"bank_code": "BANKA", "number": "6222000000000101", "name": "dualflow reserve A"},
    "bank-b": {"bank_code": "BANKB", "number": "6222000000000202", "name": "dualflow reserve B"},
    "bank-c": {"bank_code": "BANKC", "number": "6222000000000303", "name": "dualflow reserve C"},
}
FLOAT = 10_000_000  # what each pool holds at the start, in the ledger and at the bank
SEED = 20261126


def _inline(account: dict[str, str]) -> str:
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in account.items()) + " }"


@pytest.fixture
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    # One bank per test: window ids (so rail ids) start again with each fresh database.
    box = Sandbox(tmp_path_factory.mktemp("clearing-sandbox"), seed=5).start(kinds=("transfer",))
    yield box
    box.stop()


def configure(tmp_path: Path, sandbox: Sandbox) -> ServerConfig:
    rail = sandbox.banks[RAIL]
    # Fees on settlement transfers are not modelled by clearing yet: a free rail, so balances compare.
    rail.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.8,
                     settle_after_ms=200, fee_bps=0, fee_fixed=0, statement_fault="")
    rail._call("PUT", "/accounts", [{**a, "balance": FLOAT} for a in POOLS.values()])
    accounts = "\n".join(f"{pool} = {_inline(a)}" for pool, a in POOLS.items())
    config = tmp_path / "dualflow.toml"
    config.write_text(f"""
[clearing]
pools = {list(POOLS)!r}
currencies = ["CNY"]
settlement_channel = "{RAIL}"
settle_interval_s = 3600  # one pass at cut-off; the test drives the re-sends itself
invariant_interval_s = 0

[clearing.rail_accounts]
{accounts}

{sandbox.channels_toml()}
""".replace("'", '"'))
    return ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"), config_path=str(config),
                        expiry_interval_s=0, callback_port=sandbox.callback_port)


@pytest.fixture
async def platform(tmp_path: Path, sandbox: Sandbox) -> AsyncIterator[Platform]:
    p = Platform(configure(tmp_path, sandbox))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def eventually(what: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    for _ in range(int(timeout_s / 0.05)):
        found = await what()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {timeout_s} s")


OUTCOMES = ("SUCCEEDED", "FAILED", "PENDING", "UNKNOWN", "NOT_SUBMITTED")


def rail_requests(flow: str, outcome: str = "") -> float:
    """The adapter's own request counter for the rail channel (every outcome when none is given)."""
    return sum(REGISTRY.get_sample_value("dualflow_channel_requests_total",
                                         {"channel": RAIL, "flow": flow, "outcome": o}) or 0.0
               for o in ((outcome,) if outcome else OUTCOMES))


async def test_a_day_settles_net_through_the_rail_despite_a_lost_reply(platform: Platform,
                                                                        sandbox: Sandbox) -> None:
    rail = sandbox.banks[RAIL]
    assert isinstance(platform.clearing.executor, RailSettlementExecutor)
    for pool in POOLS:
        await deposit_own_funds(platform.ledger, pool, "CNY", FLOAT, key=f"float-{pool}")
    channel = grpc.aio.insecure_channel(platform.address)
    stub = clearing_pb2_grpc.ClearingStub(channel)
    try:
        # A day of cross-pool obligations (seeded), through the RPC.
        rng = random.Random(SEED)
        net: defaultdict[str, int] = defaultdict(int)
        gross = 0
        for i in range(60):
            debtor, creditor = rng.sample(list(POOLS), 2)
            amount = rng.randint(1, 50_000)
            answer = await stub.RecordObligation(pb.RecordObligationRequest(obligation=pb.Obligation(
                obligation_id=f"day-{i:03d}", debtor_pool=debtor, creditor_pool=creditor, amount_minor=amount,
                currency="CNY")))
            assert answer.status == pb.OBLIGATION_ADMITTED and not answer.replayed
            net[debtor] -= amount
            net[creditor] += amount
            gross += amount
        assert sum(net.values()) == 0 and any(net.values())

        # Cut-off, with the rail losing the reply to every first send (it books the transfer).
        lost_before, sends_before, asked_before = (rail_requests("payout", "UNKNOWN"), rail_requests("payout"),
                                                   rail_requests("query"))
        unanswered_before = rail_requests("query", "UNKNOWN")
        rail.set_profile(lost_reply_rate=1.0)
        closed = await stub.CloseWindow(pb.CloseWindowRequest(window_id="current"))
        instructions = list(closed.instructions)
        assert closed.netting[0].gross_minor == gross
        assert 1 <= len(instructions) <= len(POOLS) - 1
        moved: defaultdict[str, int] = defaultdict(int)
        for inst in instructions:
            moved[inst.payer_pool] -= inst.amount_minor
            moved[inst.payee_pool] += inst.amount_minor
        assert {p: moved[p] for p in POOLS} == {p: net[p] for p in POOLS}

        async def all_unknown() -> bool:
            listed = await stub.ListSettlements(pb.ListSettlementsRequest(window_id=closed.window_id))
            return all(i.state == pb.INSTRUCTION_UNKNOWN for i in listed.instructions)
        await eventually(all_unknown)  # the pass at cut-off sent each once; every reply was lost
        assert rail_requests("payout", "UNKNOWN") - lost_before == len(instructions)
        booked = {line["instruction_id"] for line in await asyncio.to_thread(rail.book)}
        assert {rail_id(i.instruction_id) for i in instructions} <= booked  # the bank did book them

        # The fault is lifted; the driver's repeat of each id asks the rail and learns the outcome.
        rail.set_profile(lost_reply_rate=0.0)

        async def settled() -> pb.Window | None:
            await platform.clearing.drive()
            window = await stub.GetWindow(pb.GetWindowRequest(window_id=closed.window_id))
            return window if window.state == pb.WINDOW_SETTLED else None
        window = await eventually(settled)
        assert not window.failed_instruction_ids
        # Each instruction was POSTed once; every repeat was a query the rail answered.
        assert rail_requests("payout") - sends_before == len(instructions)
        assert rail_requests("query") - asked_before >= len(instructions)
        assert rail_requests("query", "UNKNOWN") == unanswered_before
        assert all(i.state == pb.INSTRUCTION_SUCCEEDED and i.reference.startswith("TR") for i in window.instructions)
        assert [i.instruction_id for i in window.instructions] == [i.instruction_id for i in instructions]
    finally:
        await channel.close()

    # The rail's book: exactly one transfer per instruction, with the net amount, between the pools' accounts.
    book = [line for line in await asyncio.to_thread(rail.book) if line["instruction_id"].startswith("stl.")]
    assert sorted(line["instruction_id"] for line in book) == sorted(rail_id(i.instruction_id)
                                                                     for i in instructions)
    by_id = {line["instruction_id"]: line for line in book}
    for inst in instructions:
        line = by_id[rail_id(inst.instruction_id)]
        assert (line["amount"], line["currency"], line["status"], line["direction"]) == \
            (inst.amount_minor, "CNY", "SUCCEEDED", "payout")
        assert line["debtor"] == {"bank_code": POOLS[inst.payer_pool]["bank_code"],
                                  "last4": POOLS[inst.payer_pool]["number"][-4:]}
        assert line["creditor"] == {"bank_code": POOLS[inst.payee_pool]["bank_code"],
                                    "last4": POOLS[inst.payee_pool]["number"][-4:]}

    # Pools moved by exactly the net positions: in our ledger and in the bank's own accounts.
    ledger_balances = {b.pool: b.balance_minor for b in await pool_balances(platform.ledger, POOLS, ["CNY"])}
    assert ledger_balances == {p: FLOAT + net[p] for p in POOLS}
    bank_accounts = {(a["bank_code"], a["number"]): a for a in await asyncio.to_thread(rail._call, "GET", "/accounts")}
    for pool, account in POOLS.items():
        at_bank = bank_accounts[(account["bank_code"], account["number"])]
        assert (at_bank["balance"], at_bank["held"]) == (ledger_balances[pool], 0), pool

    # Reconciliation of the settlement transfers against the bank's statement of the day.
    today = datetime.now(timezone.utc).date().isoformat()
    statement = await asyncio.to_thread(rail.statement, today)
    rows = [r.split(",") for r in statement.splitlines()[1:] if r.startswith(today) and ",stl." in r]
    assert sorted((r[1], r[3], int(r[5]), r[6], r[7]) for r in rows) == sorted(
        (rail_id(i.instruction_id), "payout", i.amount_minor, "CNY", "SETTLED") for i in instructions)
    assert {r[2] for r in rows} == {i.reference for i in window.instructions}

    # No money created or lost: the trial balance and the pool invariant hold.
    rows = await platform.ledger.query("SELECT currency, SUM(debits_posted) - SUM(credits_posted), "
                                       "SUM(debits_pending) - SUM(credits_pending) FROM accounts GROUP BY currency")
    assert all(int(posted) == 0 and int(pending) == 0 for _c, posted, pending in rows), rows
    report = await platform.clearing.pool_report("CNY")
    assert [i.difference_minor for i in report.invariant] == [0]

    # The bank's callbacks about settlement transfers were acknowledged (not redelivered forever).
    async def acknowledged() -> bool:
        deliveries = await asyncio.to_thread(rail._call, "GET", "/callbacks")
        return bool(deliveries) and all(d["acknowledged"] >= 1 for d in deliveries if not d["dropped"])
    await eventually(acknowledged)


class SendsThenHangs:
    """The real executor, whose process dies after the request left and before the answer is
    recorded: the send goes out, then the driver waits until the platform stops."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.sent = inner, 0

    async def send(self, order: Any) -> Any:
        await self.inner.send(order)
        self.sent += 1
        await asyncio.Event().wait()


async def test_a_crash_between_send_and_record_pays_once(tmp_path: Path, sandbox: Sandbox) -> None:
    rail = sandbox.banks[RAIL]
    config = configure(tmp_path, sandbox)
    first = Platform(config)
    hanging = SendsThenHangs(first.clearing.executor)
    first.clearing.executor = hanging
    await first.start()
    try:
        for i, (debtor, creditor, amount) in enumerate([("bank-a", "bank-b", 900), ("bank-b", "bank-c", 400),
                                                        ("bank-c", "bank-a", 100)]):
            await first.clearing.record(f"o{i}", debtor, creditor, amount, "CNY")
        closed = await first.clearing.close_window()
        instructions = [(i.instruction_id, i.amount_minor) for i in closed.instructions]

        async def all_sent() -> bool:
            return hanging.sent == len(instructions)
        await eventually(all_sent)
        stored = await first.ledger.query("SELECT COUNT(*) FROM clearing_instructions WHERE state != ?", ("pending",))
    finally:
        await first.stop()  # the driver is cancelled with every answer unrecorded
    assert [tuple(r) for r in stored] == [(0,)]  # nothing recorded: each is pending, as before its send
    booked = [line for line in await asyncio.to_thread(rail.book) if line["instruction_id"].startswith("stl.")]
    assert len(booked) == len(instructions)  # ... yet the bank has every one

    second = Platform(config)  # the restart: same database, the executor from [clearing]
    await second.start()
    try:
        # (Its driver's first pass may already be under way: the unrecorded sends go out again.)
        async def settled() -> bool:
            await second.clearing.drive()
            return (await second.clearing.window(closed.window_id)).state is WindowState.SETTLED
        await eventually(settled)
        book = [line for line in await asyncio.to_thread(rail.book) if line["instruction_id"].startswith("stl.")]
        assert sorted((line["instruction_id"], line["amount"], line["status"]) for line in book) == sorted(
            (rail_id(iid), amount, "SUCCEEDED") for iid, amount in instructions)
        balances = {b.pool: b.balance_minor for b in await pool_balances(second.ledger, POOLS, ["CNY"])}
        assert balances == {"bank-a": -800, "bank-b": 500, "bank-c": 300}
    finally:
        await second.stop()
