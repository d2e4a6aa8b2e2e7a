"""Statements with integrity, against each real mock bank over sockets.

Each mock bank (its own process, from gateway.sandbox) books a few payments, then serves its
statement whole or broken in each of the ways its profile's `statement_fault` offers. A good
statement streams every booked line; a broken one raises StatementRejected with the reason and
the line number, and yields nothing at all (it is verified whole before the first line).
"""

from __future__ import annotations

import io
import secrets
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dualflow.adapters.contract import (
    CardData,
    ChannelAdapter,
    ChannelConfig,
    Outcome,
    PayInstruction,
    StatementLine,
    StatementRejected,
)
from dualflow.adapters.iso8583_bank.statement import read_statement, render, statement_key
from dualflow.adapters.registry import build
from dualflow.core.payments.model import Asset, BankAccount
from dualflow.gateway.sandbox import Sandbox

PAYS = 5  # booked per channel: detail lines 2..6, the trailer (or summary) after them


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox"), seed=11).start(fee_bps={"iso8583": 0, "psp": 0, "transfer": 0})
    try:
        yield box
    finally:
        box.stop()


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def configs(sandbox: Sandbox) -> dict[str, ChannelConfig]:
    out = {}
    for ch in tomllib.loads(sandbox.channels_toml())["channels"]:
        out[ch["kind"]] = ChannelConfig(ch["name"], ch["kind"], ch["settings"],
                                        {k: Path(v) for k, v in ch["keys"].items()})
    return out


@pytest.fixture(params=["iso8583", "psp", "transfer"])
async def booked(request: pytest.FixtureRequest, sandbox: Sandbox) -> AsyncIterator[tuple[str, ChannelAdapter,
                                                                                            list[str]]]:
    kind = request.param
    config = configs(sandbox)[kind]
    bank = sandbox.banks[config.name]
    bank.set_profile(pending_rate=0.0, decline_rate=0.0, statement_fault="")
    adapter = build(config)
    await adapter.start()
    made = []
    for n in range(PAYS):
        iid = f"pay_{secrets.token_hex(6)}-1"
        ins = PayInstruction(iid, iid[:-2], "shop", Asset.BANK_CARD if kind != "transfer" else Asset.BANK_TRANSFER,
                             1_000 + n, "CNY", card=CardData("4761739001010119", 12, 2030) if kind == "iso8583"
                             else None, bank_account=BankAccount("ICBC", "6789", "Alice") if kind == "transfer"
                             else None, description="top-up")
        result = await adapter.submit(ins)
        assert result.outcome is Outcome.SUCCEEDED, result
        made.append(iid)
    try:
        yield kind, adapter, made
    finally:
        bank.set_profile(statement_fault="")
        await adapter.close()


async def lines_of(adapter: ChannelAdapter) -> list[StatementLine]:
    return [line async for line in adapter.fetch_statement(today())]


async def test_a_good_statement_streams_every_booked_line(booked: tuple[str, ChannelAdapter, list[str]]) -> None:
    _kind, adapter, made = booked
    lines = await lines_of(adapter)
    assert {line.instruction_id for line in lines} >= set(made)
    mine = [line for line in lines if line.instruction_id in made]
    assert all(line.status is Outcome.SUCCEEDED and line.kind == "pay" for line in mine)
    assert sorted(line.amount for line in mine) == [1_000 + n for n in range(PAYS)]


@pytest.mark.parametrize("fault, reason", [("bad_row", "BAD_ROW"), ("wrong_totals", "WRONG_TOTALS"),
                                           ("truncated", "TRUNCATED"), ("bad_checksum", "BAD_CHECKSUM")])
async def test_a_broken_statement_is_rejected_with_its_line_and_yields_nothing(
        booked: tuple[str, ChannelAdapter, list[str]], sandbox: Sandbox, fault: str, reason: str) -> None:
    kind, adapter, _made = booked
    detail = len(await lines_of(adapter))  # this module's lines, plus any earlier test's of the same day
    assert detail >= PAYS
    sandbox.banks[adapter.name].set_profile(statement_fault=fault)
    yielded: list[StatementLine] = []
    try:
        with pytest.raises(StatementRejected) as rejected:
            async for line in adapter.fetch_statement(today()):
                yielded.append(line)
    finally:
        sandbox.banks[adapter.name].set_profile(statement_fault="")
    assert yielded == [], "nothing may be handed out of a statement that does not verify"
    assert rejected.value.reason == reason, rejected.value
    # Line 1 is the header; detail lines are 2 .. detail + 1; the trailer or summary comes next.
    expected_line = {
        "bad_row": 2 + detail // 2,
        "truncated": detail + 1,  # the last detail line, cut in half
        "wrong_totals": detail + 2 if kind != "psp" else detail + 3,  # the PSP's summary values follow a header
        "bad_checksum": detail + 2 if kind == "iso8583" else 0,  # outside the file: the whole file
    }[fault]
    assert rejected.value.line_number == expected_line, (kind, rejected.value)
    assert await lines_of(adapter), "the bank's good statement is still there"


def test_settlement_file_reader_orders_its_reasons() -> None:
    """Several things wrong at once: the file's integrity first (TRUNCATED, then BAD_CHECKSUM),
    then the first bad row, then the totals."""
    key = statement_key(bytes(16))
    rows = [("2024-01-02", f"pay_{n}-1", f"R{n}", "pay", 100 + n, "CNY", "SUCCEEDED", 1) for n in range(4)]
    good = render(rows, key)

    def reason(data: bytes) -> tuple[str, int]:
        with pytest.raises(StatementRejected) as exc:
            read_statement(io.BytesIO(data), "2024-01-02", key)
        return exc.value.reason, exc.value.line_number

    with read_statement(io.BytesIO(good), "2024-01-02", key) as spool:
        assert [line.amount for line in spool.lines()] == [100, 101, 102, 103]
    bad_row = good.replace(b",101,", b",1x1,")
    assert reason(bad_row) == ("BAD_CHECKSUM", 6)  # the row changed after the MAC: integrity first
    assert reason(render([*rows[:1], ("2024-01-02", "pay_x-1", "R", "pay", "1x1", "CNY", "SUCCEEDED", 1)],
                         key)) == ("BAD_ROW", 3)  # type: ignore[list-item]
    assert reason(good[:-10]) == ("TRUNCATED", 6)
    assert reason(good.rsplit(b"TRAILER", 1)[0]) == ("TRUNCATED", 6)
    assert reason(render([*rows, ("2023-12-31", "pay_y-1", "R", "pay", 1, "CNY", "SUCCEEDED", 0)], key)) == \
        ("BAD_ROW", 6)  # another day's line
    lying = good.split(b"TRAILER")[0] + b"TRAILER,4,407,4,"
    from dualflow.adapters.iso8583_bank.statement import cmac
    assert reason(lying + cmac(key, lying).hex().upper().encode() + b"\n") == ("WRONG_TOTALS", 6)
    assert reason(good + b"2024-01-02,pay_z-1,R,pay,1,CNY,SUCCEEDED,0\n") == ("BAD_ROW", 7)
    assert reason(render(rows, statement_key(b"\x01" * 16))) == ("BAD_CHECKSUM", 6)
