"""Every built-in adapter is registered under the entry-point group `dualflow.adapters`, is
built from the platform's own `[[channels]]` configuration by that route, and passes the
shared contract harness against its mock bank process."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import run_contract

from dualflow.adapters import iso8583_bank, psp, registry, transfer
from dualflow.adapters.contract import CardData, ChannelAdapter, PayInstruction
from dualflow.core.payments.model import Asset, BankAccount
from dualflow.gateway.config import parse_config
from dualflow.gateway.sandbox import NAMES, Sandbox

BUILT_IN = {"iso8583": iso8583_bank.create, "psp": psp.create, "transfer": transfer.create}


def test_built_in_kinds_are_entry_points() -> None:
    found = registry.factories()
    for kind, factory in BUILT_IN.items():
        assert found.get(kind) is factory, kind
    with pytest.raises(registry.UnknownChannelKind):
        registry.build(parse_config({"channels": [{"name": "x", "kind": "no-such-kind"}]}).channels[0])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("registry-sandbox"), seed=11).start()
    yield box
    box.stop()


def make_pay_for(kind: str):  # noqa: ANN201 - (instruction id, amount) -> PayInstruction for that channel
    def make(instruction_id: str, amount: int) -> PayInstruction:
        if kind == "transfer":
            return PayInstruction(instruction_id=instruction_id, payment_id=f"pay_{instruction_id[-8:]}",
                                  merchant_id="shop", asset=Asset.BANK_TRANSFER, amount=amount, currency="CNY",
                                  bank_account=BankAccount("ICBC", "6789", "Test Payer"))
        return PayInstruction(instruction_id=instruction_id, payment_id=f"pay_{instruction_id[-8:]}",
                              merchant_id="shop", asset=Asset.BANK_CARD, amount=amount, currency="CNY",
                              card=CardData("4111111111111111", 12, 2031))
    return make


@pytest.mark.parametrize("kind", sorted(BUILT_IN))
async def test_built_in_adapter_built_by_the_registry_passes_the_contract(kind: str, sandbox: Sandbox) -> None:
    config = parse_config(tomllib.loads(sandbox.channels_toml()))
    [channel] = [c for c in config.channels if c.kind == kind]
    adapter = registry.build(channel)
    assert isinstance(adapter, ChannelAdapter) and adapter.name == NAMES[kind]
    await adapter.start()
    try:
        await run_contract(adapter, sandbox.banks[channel.name], make_pay_for(kind))
    finally:
        await adapter.close()
