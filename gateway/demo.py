"""`dualflow demo`: a short day of the platform, end to end over real gRPC.

It starts a dualflow server on a temporary SQLite database on loopback, plays
the caller through the generated stubs, prints what happened as tables, and
exits. Later issues grow it into a whole day (payments, banks, reconciliation,
clearing); today it shows the ledger: accounts, a transfer, a linked chain, a
pending transfer posted and one voided, a rejected overdraft, statements.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from dualflow.core.money import format_minor
from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc

from .server import Platform, ServerConfig

CNY = "CNY"
ISSUER, ALICE, BOB, SHOP, FEES = 1, 100, 101, 200, 300
NAMES = {ISSUER: "issuer (equity)", ALICE: "alice (wallet)", BOB: "bob (wallet)", SHOP: "shop (merchant)",
         FEES: "fees"}
WALLET_FLAGS = pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS | pb.ACCOUNT_FLAG_HISTORY
CODE_TOPUP, CODE_P2P, CODE_PURCHASE, CODE_FEE = 1, 2, 3, 4


@dataclass
class Step:
    what: str
    results: list[str]


def _result_name(r: int) -> str:
    return pb.CreateTransferResult.Name(r).removeprefix("CREATE_TRANSFER_RESULT_")


def _t(id_: int, dr: int, cr: int, amount: int, code: int, flags: int = 0, **kw: int) -> pb.Transfer:
    return pb.Transfer(id=id_, debit_account_id=dr, credit_account_id=cr, amount=amount, currency=CNY,
                       code=code, flags=flags, **kw)


async def _play(stub: ledger_pb2_grpc.LedgerStub) -> list[Step]:
    steps: list[Step] = []

    async def transfers(what: str, *items: pb.Transfer) -> None:
        resp = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=items))
        steps.append(Step(what, [_result_name(r) for r in resp.results]))

    accounts = [
        pb.Account(id=ISSUER, currency=CNY, code=pb.ACCOUNT_CODE_EQUITY),
        pb.Account(id=ALICE, currency=CNY, code=pb.ACCOUNT_CODE_WALLET, flags=WALLET_FLAGS),
        pb.Account(id=BOB, currency=CNY, code=pb.ACCOUNT_CODE_WALLET, flags=WALLET_FLAGS),
        pb.Account(id=SHOP, currency=CNY, code=pb.ACCOUNT_CODE_MERCHANT, flags=pb.ACCOUNT_FLAG_HISTORY),
        pb.Account(id=FEES, currency=CNY, code=pb.ACCOUNT_CODE_FEE),
    ]
    resp = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts))
    steps.append(Step("open 5 accounts", [pb.CreateAccountResult.Name(r).removeprefix("CREATE_ACCOUNT_RESULT_")
                                          for r in resp.results]))
    await transfers("top up alice 1,000.00 and bob 50.00",
                    _t(1001, ISSUER, ALICE, 100_000, CODE_TOPUP), _t(1002, ISSUER, BOB, 5_000, CODE_TOPUP))
    await transfers("alice pays bob 120.00", _t(1003, ALICE, BOB, 12_000, CODE_P2P))
    await transfers("linked: alice buys for 300.00, shop pays a 3.00 fee",
                    _t(1004, ALICE, SHOP, 30_000, CODE_PURCHASE, pb.TRANSFER_FLAG_LINKED),
                    _t(1005, SHOP, FEES, 300, CODE_FEE))
    await transfers("hold 200.00 of alice's for an order (pending, 60 s)",
                    _t(1006, ALICE, SHOP, 20_000, CODE_PURCHASE, pb.TRANSFER_FLAG_PENDING, timeout_s=60))
    await transfers("ship part of it: post 150.00 of the hold",
                    pb.Transfer(id=1007, pending_id=1006, amount=15_000, flags=pb.TRANSFER_FLAG_POST_PENDING))
    await transfers("hold 40.00 of bob's, then the order is cancelled",
                    _t(1008, BOB, SHOP, 4_000, CODE_PURCHASE, pb.TRANSFER_FLAG_PENDING, timeout_s=60))
    await transfers("void bob's hold", pb.Transfer(id=1009, pending_id=1008, flags=pb.TRANSFER_FLAG_VOID_PENDING))
    await transfers("bob tries to spend 10,000.00 (overdraft)", _t(1010, BOB, SHOP, 1_000_000, CODE_PURCHASE))
    await transfers("linked: a chain whose second leg overdraws",
                    _t(1011, ALICE, SHOP, 1_000, CODE_PURCHASE, pb.TRANSFER_FLAG_LINKED),
                    _t(1012, BOB, SHOP, 9_999_999, CODE_PURCHASE))
    await transfers("a client retry of alice -> bob (same id, same fields)", _t(1003, ALICE, BOB, 12_000, CODE_P2P))
    return steps


def _money(v: int) -> str:
    return format_minor(v, CNY)


def _amount(v: int) -> str:
    return format_minor(v, CNY, with_code=False)


async def run_demo(console: Console | None = None) -> int:
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="dualflow-demo-") as tmp:
        db = Path(tmp) / "ledger.db"
        platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(db), grace_s=2))
        await platform.start()
        console.print(f"[bold]dualflow demo[/bold]: server on {platform.address}, SQLite at {db}")
        try:
            async with grpc.aio.insecure_channel(platform.address) as channel:
                stub = ledger_pb2_grpc.LedgerStub(channel)
                steps = await _play(stub)
                accounts = (await stub.LookupAccounts(pb.LookupAccountsRequest(ids=list(NAMES)))).accounts
                statement = (await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
                    filter=pb.AccountFilter(account_id=ALICE)))).transfers
                history = (await stub.GetAccountBalances(pb.GetAccountBalancesRequest(
                    filter=pb.AccountFilter(account_id=ALICE)))).balances
        finally:
            await platform.stop()

    table = Table(title="What the caller asked, and what the ledger answered")
    table.add_column("step")
    table.add_column("results")
    for step in steps:
        table.add_row(step.what, ", ".join(step.results))
    console.print(table)

    balances = Table(title="Balances (CNY)")
    for col in ("account", "debits pending", "debits posted", "credits pending", "credits posted",
                "credits - debits"):
        balances.add_column(col, justify="right" if col != "account" else "left")
    sums = [0, 0, 0, 0]
    for a in accounts:
        row = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        sums = [s + v for s, v in zip(sums, row)]
        balances.add_row(NAMES[a.id], *map(_amount, row), _amount(a.credits_posted - a.debits_posted))
    balances.add_row("[bold]total[/bold]", *map(_amount, sums), "")
    console.print(balances)

    by_ts = {b.transfer_id: b for b in history}
    stmt = Table(title="Statement of alice (wallet), oldest first")
    for col in ("transfer", "kind", "counterparty", "amount", "available after"):
        stmt.add_column(col, justify="right" if col in ("amount", "available after") else "left")
    for t in statement:
        out = t.debit_account_id == ALICE
        other = t.credit_account_id if out else t.debit_account_id
        kind = ("hold" if t.flags & pb.TRANSFER_FLAG_PENDING else
                "post" if t.flags & pb.TRANSFER_FLAG_POST_PENDING else
                "void" if t.flags & pb.TRANSFER_FLAG_VOID_PENDING else "transfer")
        b = by_ts.get(t.id)
        available = _money(b.credits_posted - b.debits_posted - b.debits_pending) if b else ""
        stmt.add_row(str(t.id), kind, NAMES.get(other, str(other)), ("-" if out else "+") + _money(t.amount),
                     available)
    console.print(stmt)

    balanced = sums[0] == sums[2] and sums[1] == sums[3]
    verdict = "[green]debits = credits[/green]" if balanced else "[red]OUT OF BALANCE[/red]"
    console.print(f"Trial balance CNY: debits {_money(sums[0] + sums[1])}, "
                  f"credits {_money(sums[2] + sums[3])}: {verdict}")
    return 0 if balanced else 1


def main() -> int:
    return asyncio.run(run_demo())
