"""fetch_balance of each adapter against its real mock bank over sockets: the balance the bank
reports is what its own book says (payments less fees and refunds), `balance_offset` drifts it,
and a reply whose signature or MAC does not verify is never believed (BalanceUnavailable)."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness import CLEAN, new_id, settle

from dualflow.adapters.contract import (
    BalanceReporting,
    BalanceUnavailable,
    CardData,
    ChannelAdapter,
    ChannelConfig,
    Outcome,
    PayInstruction,
    QueryRequest,
    RefundInstruction,
)
from dualflow.adapters.registry import build
from dualflow.core.payments.model import Asset, BankAccount
from dualflow.gateway.sandbox import NAMES, Sandbox

FEE_BPS = 100  # every bank charges 1 %


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("balance-sandbox"), seed=5).start(
        fee_bps={"iso8583": FEE_BPS, "psp": FEE_BPS, "transfer": FEE_BPS})
    yield box
    box.stop()


def configs(sandbox: Sandbox) -> dict[str, ChannelConfig]:
    parsed = tomllib.loads(sandbox.channels_toml())
    return {c["name"]: ChannelConfig(c["name"], c["kind"], c["settings"], {k: Path(v) for k, v in c["keys"].items()})
            for c in parsed["channels"]}


@pytest.fixture(params=["iso8583", "psp", "transfer"])
async def channel(request: pytest.FixtureRequest, sandbox: Sandbox) -> AsyncIterator[tuple[str, ChannelAdapter]]:
    kind = request.param
    name = NAMES[kind]
    bank = sandbox.banks[name]
    bank.set_profile(**CLEAN, fee_bps=FEE_BPS, fee_fixed=0, balance_offset=0)
    adapter = build(configs(sandbox)[name])
    await adapter.start()
    try:
        yield kind, adapter
    finally:
        await adapter.close()
        bank.set_profile(balance_offset=0, bad_signature_rate=0.0)


def pay(kind: str, amount: int) -> PayInstruction:
    iid = new_id("pay")[:30]
    if kind == "transfer":
        return PayInstruction(iid, f"p_{iid}", "shop", Asset.BANK_TRANSFER, amount, "CNY",
                              bank_account=BankAccount("PAYERBANK", "1234", "Alice Li"))
    return PayInstruction(iid, f"p_{iid}", "shop", Asset.BANK_CARD, amount, "CNY",
                          card=CardData("4111111111111111", 12, 2031))


def book_balance(book: list[dict[str, object]]) -> int:
    """The brief's rule from the bank's uniform book: succeeded payments less refunds less fees."""
    total = 0
    for line in book:
        if line["status"] == "SUCCEEDED" and line["kind"] in ("pay", "refund", "reverse"):
            amount, fee = int(line["amount"]), int(line["fee"])  # type: ignore[call-overload]
            total += (amount if line["kind"] == "pay" else -amount) - fee
    return total


async def test_the_balance_is_the_banks_book_and_a_drift_shows(channel: tuple[str, ChannelAdapter],
                                                               sandbox: Sandbox) -> None:
    kind, adapter = channel
    bank = sandbox.banks[NAMES[kind]]
    assert isinstance(adapter, BalanceReporting)
    before = await adapter.fetch_balance("CNY")
    assert before.channel == adapter.name and before.currency == "CNY"
    ins = pay(kind, 10_000)
    result = await adapter.submit(ins)
    if not result.outcome.final:
        result = await settle(adapter, QueryRequest(ins.instruction_id, result.channel_reference))
    assert result.outcome is Outcome.SUCCEEDED, result
    refund = RefundInstruction(new_id("rfd")[:30], new_id("r"), ins.payment_id, ins.instruction_id,
                               result.channel_reference, 3_000, "CNY")
    answer = await adapter.refund(refund)
    if not answer.outcome.final:
        answer = await settle(adapter, QueryRequest(refund.instruction_id, answer.channel_reference, kind="refund"))
    assert answer.outcome is Outcome.SUCCEEDED, answer

    after = await adapter.fetch_balance("CNY")
    fee = (10_000 * FEE_BPS + 5_000) // 10_000
    refund_fee = sum(int(line["fee"]) for line in await asyncio.to_thread(bank.book)  # type: ignore[arg-type]
                     if line["instruction_id"] == refund.instruction_id)
    assert after.amount_minor - before.amount_minor == 10_000 - fee - 3_000 - refund_fee
    assert after.amount_minor == book_balance(await asyncio.to_thread(bank.book))
    assert after.as_of_unix_s >= before.as_of_unix_s > 0

    bank.set_profile(balance_offset=-777)
    drifted = await adapter.fetch_balance("CNY")
    assert drifted.amount_minor == after.amount_minor - 777


async def test_a_reply_that_does_not_verify_is_not_believed(channel: tuple[str, ChannelAdapter],
                                                            sandbox: Sandbox) -> None:
    kind, adapter = channel
    sandbox.banks[NAMES[kind]].set_profile(bad_signature_rate=1.0)
    with pytest.raises(BalanceUnavailable) as caught:
        await adapter.fetch_balance("CNY")
    assert caught.value.reason == "UNTRUSTED", caught.value


async def test_a_currency_the_channel_does_not_settle_is_unavailable(channel: tuple[str, ChannelAdapter]) -> None:
    _kind, adapter = channel
    with pytest.raises(BalanceUnavailable) as caught:
        await adapter.fetch_balance("JPY")
    assert caught.value.reason == "UNSUPPORTED_CURRENCY"


def test_the_capability_is_optional() -> None:
    """Checked with isinstance: an adapter without fetch_balance is simply not BalanceReporting."""
    class Without:
        name = "old"

    class With(Without):
        async def fetch_balance(self, currency: str) -> object:
            raise BalanceUnavailable("UNSUPPORTED", currency)

    assert not isinstance(Without(), BalanceReporting)
    assert isinstance(With(), BalanceReporting)
