"""Shared set-up for tests of the demo's reserve-fund day (gateway/demo_clearing.py): the mock
interbank rail as its own process, a platform with the day's three pooled transfer channels and
`[clearing]`, and the banks opened (pool accounts with our float, the users' accounts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from payments_fixtures import vault_toml

from dualflow.clearing.pools import deposit_own_funds
from dualflow.core.payments.model import Payment
from dualflow.gateway import demo_clearing as day
from dualflow.gateway.sandbox import Sandbox
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.mock_banks.launcher import MockBankProcess

CNY = "CNY"


@pytest.fixture
def interbank(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(sandbox, the interbank rail's process, its key file)."""
    box = Sandbox(tmp_path_factory.mktemp("reserve-day"), seed=5)
    bank, key = box.start_other_rail("interbank")
    yield box, bank, key
    box.stop()


@asynccontextmanager
async def reserve_platform(tmp_path: Path, interbank: Any, extra_toml: str = "") -> AsyncIterator[Platform]:
    """A started platform with the wallet merchant, the day's `[clearing]` (settling every 0.1 s)
    plus `extra_toml`, and its three pooled channels; greedy routing with fees weighing more than a
    fresh rail's first outcomes, so each top-up goes to the user's own bank (see gateway/demo.py)."""
    box, bank, key = interbank
    routing = tmp_path / "routing.toml"
    routing.write_text("exploration = 0\nfee_weight = 500.0\n")
    config = tmp_path / "dualflow.toml"
    config.write_text(f"""{vault_toml()}
[routing]
file = "{routing}"

[[merchants]]
id = "{day.MERCHANT}"
name = "Wallet"
currencies = ["{CNY}"]
fee_bps = 0

{day.clearing_toml().replace("settle_interval_s = 0.2", "settle_interval_s = 0.1")}
{extra_toml}
{day.channels_toml(bank.port, str(key), box.callback_base)}
""")
    p = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "ledger.db"), config_path=str(config),
                              expiry_interval_s=0, callback_port=box.callback_port, grace_s=1))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def open_banks(platform: Platform, bank: MockBankProcess, *, float_minor: int, user_minor: int) -> None:
    """The pool accounts hold `float_minor` of our own money, at the bank and in the ledger; each
    user's account `user_minor`; the payout account nothing."""
    await asyncio.to_thread(bank._call, "PUT", "/accounts", [
        *({"bank_code": p.bank_code, "number": p.number, "name": f"dualflow reserve {p.bank_code}",
           "balance": float_minor} for p in day.POOLS),
        *({"bank_code": u.bank_code, "number": u.number, "name": u.holder, "balance": user_minor} for u in day.USERS),
        {"bank_code": day.PAYOUT_TO.bank_code, "number": day.PAYOUT_TO.number, "name": day.PAYOUT_TO.holder,
         "balance": 0}])
    for p in day.POOLS:
        await deposit_own_funds(platform.ledger, p.pool, CNY, float_minor, key=f"float-{p.pool}")


async def final(platform: Platform, payment: Payment) -> Payment:
    """The payment once final (10 s at most)."""
    for _ in range(400):
        p = await platform.payments.get_payment(payment.payment_id)
        if p.status.final:
            return p
        await asyncio.sleep(0.025)
    raise AssertionError(f"{payment.payment_id} is still {p.status.name}")
