"""Shared set-up for reconciliation tests against the sandbox's three mock banks: the channels'
fees, a platform with a shop and a shop whose cards go to the PSP, and waiting for something."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from payments_fixtures import vault_toml

from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.sandbox import NAMES, Sandbox
from dualflow.gateway.server import Platform, ServerConfig

CARD, PSP, RAIL = NAMES["iso8583"], NAMES["psp"], NAMES["transfer"]
FEE_BPS = {CARD: 55, PSP: 60, RAIL: 10}  # the sandbox's channel config; the banks are told the same


def fee(channel: str, amount: int) -> int:
    return (amount * FEE_BPS[channel] + 5_000) // 10_000


def start_sandbox(folder: Path, seed: int) -> Sandbox:
    return Sandbox(folder, seed=seed).start(fee_bps={
        "iso8583": FEE_BPS[CARD], "psp": FEE_BPS[PSP], "transfer": FEE_BPS[RAIL]})


@asynccontextmanager
async def shop_platform(tmp_path: Path, sandbox: Sandbox, polls: PollTiming) -> AsyncIterator[Platform]:
    """Every bank answering at once and correctly with its fee; merchants `shop` and `psp-shop`
    (pinned to the PSP), greedy routing; polling as `polls` says, ticking every 20 ms."""
    for name, bank in sandbox.banks.items():
        bank.set_profile(lost_reply_rate=0.0, timeout_rate=0.0, decline_rate=0.0, outage=False, pending_rate=0.0,
                         fee_bps=FEE_BPS[name], statement_fault="", balance_offset=0, bad_signature_rate=0.0)
    (tmp_path / "routing.toml").write_text('exploration = 0\n[merchants.psp-shop]\npinned = "wallet-psp"\n')
    config = tmp_path / "dualflow.toml"
    config.write_text(f"""
[routing]
file = "{tmp_path / 'routing.toml'}"
seed = 3

{vault_toml()}

[[merchants]]
id = "shop"
name = "Shop"
currencies = ["CNY"]
fee_bps = 100

[[merchants]]
id = "psp-shop"
name = "A shop whose cards go to the PSP"
currencies = ["CNY"]
fee_bps = 100

{sandbox.channels_toml()}
""")
    p = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"), config_path=str(config),
                              expiry_interval_s=0, callback_port=sandbox.callback_port))
    p.payments.polls = polls
    p.payments.poll_tick_s = 0.02
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def eventually(what: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    for _ in range(int(timeout_s / 0.02)):
        found = await what()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen in {timeout_s} s")
