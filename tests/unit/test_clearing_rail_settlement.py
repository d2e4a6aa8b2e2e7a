"""Settlement over the transfer rail: `[clearing] rail_accounts` / `settlement_channel`, the rail id
of an instruction, and what the executor asks and sends (the adapter's exchange scripted)."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from dualflow.adapters.contract import ChannelResult, Outcome
from dualflow.adapters.transfer import KeyRing, TransferAdapter, TransferSettings
from dualflow.adapters.transfer.adapter import _Reply
from dualflow.adapters.transfer.settlement import RailSettlementExecutor, is_settlement_id, rail_id
from dualflow.adapters.transfer.transformers import WireAccount, valid_id
from dualflow.clearing.settings import RailAccount
from dualflow.clearing.settlement import SettlementOrder
from dualflow.core.payments.dispatch import ChannelOutcome
from dualflow.gateway.config import ConfigError, parse_config

ACCOUNTS = """
[clearing.rail_accounts]
bank-a = { bank_code = "BANKA", number = "6222000000000101", name = "reserve A" }
bank-b = { bank_code = "BANKB", number = "6222000000000202", name = "reserve B" }
"""
CLEARING = '[clearing]\npools = ["bank-a", "bank-b"]\ncurrencies = ["CNY"]\n'


def channel(name: str, kind: str = "transfer") -> str:
    return f'[[channels]]\nname = "{name}"\nkind = "{kind}"\n'


def load(text: str) -> Any:
    return parse_config(tomllib.loads(text))


def test_the_only_transfer_channel_is_chosen_and_accounts_kept() -> None:
    clearing = load(CLEARING + ACCOUNTS + channel("cards", "iso8583") + channel("bank-rail")).clearing
    assert clearing.settlement_channel == "bank-rail"
    assert clearing.rail_accounts["bank-b"] == RailAccount("BANKB", "6222000000000202", "reserve B")
    assert "6222000000000202" not in repr(clearing)  # account numbers stay out of logs


def test_no_rail_accounts_means_no_settlement_even_with_a_rail() -> None:
    assert load(CLEARING + channel("bank-rail")).clearing.settlement_channel == ""


# (the config, the key path named, a word of the problem); one line per case.
PROBLEMS = [
    (CLEARING + ACCOUNTS + 'bank-z = { bank_code = "BZ", number = "123456", name = "z" }\n' + channel("r"),
     "clearing.rail_accounts.bank-z", "not one of"),
    (CLEARING + ACCOUNTS.split("bank-b")[0] + channel("r"), "clearing.rail_accounts", "bank-b"),
    (CLEARING + ACCOUNTS.replace('"BANKA"', '"B"') + channel("r"), "clearing.rail_accounts.bank-a.bank_code", "2-16"),
    (CLEARING + ACCOUNTS.replace('"6222000000000101"', '"62-22"') + channel("r"),
     "clearing.rail_accounts.bank-a.number", "digits"),
    (CLEARING + ACCOUNTS.replace('name = "reserve A"', 'name = " "') + channel("r"),
     "clearing.rail_accounts.bank-a.name", "blank"),
    (CLEARING + ACCOUNTS.replace('name = "reserve A" }', 'name = "A", iban = "x" }') + channel("r"),
     "clearing.rail_accounts.bank-a.iban", ""),
    (CLEARING + 'settlement_channel = "r"\n' + channel("r"), "clearing.settlement_channel", "rail_accounts"),
    (CLEARING + 'settlement_channel = "cards"\n' + ACCOUNTS + channel("cards", "iso8583") + channel("r"),
     "clearing.settlement_channel", "transfer"),
    (CLEARING + ACCOUNTS + channel("r1") + channel("r2"), "clearing.settlement_channel", "2 transfer channels"),
    (CLEARING + ACCOUNTS, "clearing.settlement_channel", "0 transfer channels"),
    (CLEARING + ACCOUNTS + channel("r") + '[channels.settings]\ncurrencies = ["USD"]\n', "clearing.currencies[0]",
     "settlement channel"),
]


@pytest.mark.parametrize(("text", "key_path", "word"), PROBLEMS)
def test_each_problem_is_named_by_its_key_path(text: str, key_path: str, word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert caught.value.key_path == key_path
    assert word in caught.value.problem
    assert "62-22" not in str(caught.value)


# (clearing instruction id, rail id); the hashed ones by prefix.
RAIL_IDS = [
    ("W000001/0", "stl.W000001.0"),
    ("W000001/12", "stl.W000001.12"),
    ("day.2026-11-26/3", "stl.day.2026-11-26.3"),
    ("h/1", "stl.h."),  # would look like a hashed id
    ("W" * 70 + "/1", "stl.h."),  # too long for the rail
    ("win dow/1", "stl.h."),  # outside the rail's alphabet
    ("W000001/0/carry", "stl.h."),  # not <window>/<index>
]


@pytest.mark.parametrize(("instruction_id", "expected"), RAIL_IDS)
def test_rail_ids_fit_the_rail_and_are_recognised(instruction_id: str, expected: str) -> None:
    got = rail_id(instruction_id)
    assert got == expected if not expected.endswith("h.") else got.startswith(expected) and len(got) == 46
    assert valid_id(got) and is_settlement_id(got) and rail_id(instruction_id) == got
    assert len({rail_id(i) for i, _ in RAIL_IDS}) == len(RAIL_IDS)


class ScriptedRail(TransferAdapter):
    """The adapter with its signed exchange replaced by a script of verified replies."""

    def __init__(self, replies: list[_Reply | ChannelResult]) -> None:
        super().__init__("bank-rail", TransferSettings(
            base_url="http://127.0.0.1:1", pool=WireAccount("DFPOOL", "dualflow", "6222000000000001"),
            keys=KeyRing.of(b"k" * 32)))
        self.replies = replies
        self.asked: list[tuple[str, str, dict[str, Any]]] = []

    async def _exchange(self, method: str, path: str, body: bytes, timeout: Any) -> _Reply | ChannelResult:
        self.asked.append((method, path, json.loads(body) if body else {}))
        return self.replies.pop(0)


def transfer(status: str, amount: int = 700, ident: str = "stl.W000001.0") -> _Reply:
    return _Reply(200, json.dumps({"instruction_id": ident, "reference": "TR1", "direction": "payout",
                                   "amount": amount, "currency": "CNY", "status": status, "code": ""}).encode())


NOT_FOUND = _Reply(404, b'{"error":{"code":"NOT_FOUND","message":"no transfer"}}')
ACCOUNTS_BY_POOL = {"bank-a": RailAccount("BANKA", "6222000000000101", "reserve A"),
                    "bank-b": RailAccount("BANKB", "6222000000000202", "reserve B")}


def order(attempt: int, payer: str = "bank-a", amount: int = 700) -> SettlementOrder:
    return SettlementOrder("W000001/0", "W000001", payer, "bank-b", amount, "CNY", attempt)


# (attempt, the rail's replies in turn, requests made, outcome); one line per case.
SENDS = [
    (1, [transfer("ACCEPTED")], ["POST"], ChannelOutcome.PENDING),
    (1, [ChannelResult(Outcome.UNKNOWN, "CONNECTION_LOST")], ["POST"], ChannelOutcome.UNKNOWN),
    (2, [transfer("SETTLED")], ["GET"], ChannelOutcome.SUCCEEDED),  # a lost reply, resolved by asking
    (2, [transfer("REJECTED")], ["GET"], ChannelOutcome.FAILED),
    (2, [NOT_FOUND, transfer("SETTLED")], ["GET", "POST"], ChannelOutcome.SUCCEEDED),  # never arrived: send
    (2, [ChannelResult(Outcome.UNKNOWN, "TIMEOUT")], ["GET"], ChannelOutcome.UNKNOWN),  # no blind re-send
    (2, [transfer("SETTLED", amount=701)], ["GET"], ChannelOutcome.UNKNOWN),  # about another transfer
    (2, [_Reply(404, b'{"error":{"code":"ROUTE","message":"?"}}')], ["GET"], ChannelOutcome.UNKNOWN),
]


@pytest.mark.parametrize(("attempt", "replies", "methods", "outcome"), SENDS)
async def test_a_send_asks_before_repeating(attempt: int, replies: list[Any], methods: list[str],
                                            outcome: ChannelOutcome) -> None:
    rail = ScriptedRail(list(replies))
    answer = await RailSettlementExecutor(rail, ACCOUNTS_BY_POOL).send(order(attempt))
    assert answer.outcome is outcome
    assert [m for m, _, _ in rail.asked] == methods
    for method, path, body in rail.asked:
        if method == "GET":
            assert path == "/transfers/stl.W000001.0"
        else:
            assert (body["instruction_id"], body["direction"], body["amount"], body["end_to_end_id"]) == \
                ("stl.W000001.0", "payout", 700, "stl.W000001.0")
            assert (body["debtor"]["number"], body["creditor"]["number"]) == ("6222000000000101", "6222000000000202")


async def test_unknown_pools_and_bad_amounts_never_leave() -> None:
    rail = ScriptedRail([])
    executor = RailSettlementExecutor(rail, ACCOUNTS_BY_POOL)
    assert (await executor.send(order(1, payer="bank-z"))).reason == "POOL_ACCOUNT_UNKNOWN"
    assert (await executor.send(order(1, amount=0))).outcome is ChannelOutcome.NOT_SUBMITTED
    assert rail.asked == []


# ---- reconciliation's source: one pooled channel's settlement transfers

class FakeClearing:
    """The three reads SettlementInstructions makes of ClearingService, over a fixed list."""

    def __init__(self, instructions: list[Any]) -> None:
        self.instructions = instructions

    async def sent_instructions(self, start_ns: int, end_ns: int) -> list[tuple[Any, int]]:
        return [(i, 1) for i in self.instructions]

    async def instructions_by_id(self, instruction_ids: Any) -> list[tuple[Any, int]]:
        return [(i, 1) for i in self.instructions if i.instruction_id in instruction_ids]

    async def apply_statement_answer(self, instruction_id: str, succeeded: bool, *, reason: str = "",
                                     channel_reference: str = "") -> bool:
        return False


# payer -> payee; the channel of each pool (bank-c has two: the first by name posts its fees;
# bank-d has none: its side is reconciled nowhere, its fees posted by no channel).
SETTLEMENTS = [("bank-a", "bank-b"), ("bank-b", "bank-c"), ("bank-c", "bank-a"), ("bank-d", "bank-a"),
               ("bank-b", "bank-d")]
CHANNEL_POOLS = {"rail-a": "bank-a", "rail-b": "bank-b", "rail-c2": "bank-c", "rail-c1": "bank-c"}


@pytest.mark.parametrize(("channel", "rows", "fee_elsewhere"), [
    ("rail-a", [0, 2, 3], [2, 3]),  # bank-a pays 0 (its fee here); 2's is rail-c1's, 3's nobody's
    ("rail-b", [0, 1, 4], [0]),
    ("rail-c1", [1, 2], [1]),
    ("rail-c2", [1, 2], [1, 2]),
])
async def test_a_pooled_channel_has_its_pools_settlements_and_posts_only_the_fees_its_pool_pays(
        channel: str, rows: list[int], fee_elsewhere: list[int]) -> None:
    from dualflow.adapters.transfer.settlement import SettlementInstructions
    from dualflow.clearing.window import SettlementInstruction

    insts = [SettlementInstruction(f"W000001/{n}", "W000001", n, payer, payee, 100 + n, "CNY", attempts=1)
             for n, (payer, payee) in enumerate(SETTLEMENTS)]
    source = SettlementInstructions(FakeClearing(insts), channel, CHANNEL_POOLS[channel], CHANNEL_POOLS)
    ids = [rail_id(i.instruction_id) for i in insts]
    assert [row[0] for row in await source.day(0, 1)] == [ids[n] for n in rows]
    assert sorted(await source.find([*ids, "pay_1", "stl.h.00"])) == sorted(ids[n] for n in rows)
    assert await source.fee_elsewhere([*ids, "pay_1"]) == {ids[n] for n in fee_elsewhere}
    everything = SettlementInstructions(FakeClearing(insts), "rail-x")  # no pool: every one, every fee
    assert len(await everything.day(0, 1)) == len(insts) and await everything.fee_elsewhere(ids) == set()
