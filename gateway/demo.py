"""`dualflow demo`: a shop's day on the whole platform, end to end over real gRPC.

This module is the platform's side: it writes a config (two merchants, the shop backend's API
key stored only as a hash, a back-office reader, fresh vault keys), starts a `Platform` on a
temporary SQLite database on loopback with a sandbox bank (a scripted channel that answers
late, unclearly or with a decline), lets the shop (gateway/demo_shop.py, a plain gRPC client)
play its day, reads the books through the Ledger API as the back office, prints it all as
tables and stops. It ends by itself in a few seconds and exits non-zero if a check fails.
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dualflow.adapters.scripted import PENDING, SUCCEEDED, UNKNOWN, Plan, ScriptedChannel, failed
from dualflow.core.money import format_minor
from dualflow.core.payments.accounts import Party, fee_account, holding_account, receivable_account
from dualflow.core.payments.dispatch import Instruction
from dualflow.core.payments.model import Asset
from dualflow.v1 import ledger_pb2, ledger_pb2_grpc, payments_pb2

from . import demo_shop
from .config import generate_api_key, hash_api_key
from .demo_shop import CNY, CUSTOMERS, STOREFRONTS, Day, asset_name, status_name
from .server import Platform, ServerConfig

# The bank takes a moment to acknowledge, so the shop's watch sees PROCESSING before the answer.
BANK_ACK_S = 0.2
# Wide enough for the tables when the output is not a terminal (a pipe, a test, CI logs).
PIPE_WIDTH = 120


def sandbox_bank(instruction: Instruction) -> Plan:
    """How the sandbox bank answers, by amount (see demo_shop.SANDBOX_*)."""
    if instruction.amount == demo_shop.SANDBOX_LATE_AMOUNT:
        # The submit times out: nobody knows whether the card was charged. The payment is UNKNOWN
        # until a poll asks the bank and hears it was.
        return Plan(on_submit=UNKNOWN, final=SUCCEEDED, settle_after_s=1.0, submit_delay_s=BANK_ACK_S)
    if instruction.amount == demo_shop.SANDBOX_DECLINED_AMOUNT:
        return Plan(on_submit=PENDING, final=failed("CARD_DECLINED"), settle_after_s=0.3,
                    submit_delay_s=BANK_ACK_S)
    return Plan(on_submit=PENDING, final=SUCCEEDED, settle_after_s=0.3, submit_delay_s=BANK_ACK_S)


def _key32() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def write_config(path: Path, shop_key: str, office_key: str) -> None:
    """The platform's TOML: keys are fresh for every run and only the API keys' hashes are written."""
    merchants = "\n".join(
        f'[[merchants]]\nid = "{s.merchant_id}"\nname = "{s.name}"\ncurrencies = ["{CNY}"]\nfee_bps = {s.fee_bps}\n'
        for s in STOREFRONTS)
    ids = ", ".join(f'"{s.merchant_id}"' for s in STOREFRONTS)
    path.write_text(f"""\
[vault]
active = "k1"
fingerprint_key = "{_key32()}"
[vault.keys]
k1 = "{_key32()}"

{merchants}
[[callers]]
name = "shop-backend"
api_key_sha256 = "{hash_api_key(shop_key)}"
merchants = [{ids}]
permissions = ["payments.write", "payments.read", "events.read", "cards.tokenize"]

# The business's back office reads the ledger (settlement, fees); it cannot move money.
[[callers]]
name = "back-office"
api_key_sha256 = "{hash_api_key(office_key)}"
merchants = ["*"]
permissions = ["ledger.read", "payments.read"]
""")
    path.chmod(0o600)  # vault keys


@dataclass(frozen=True, slots=True)
class LedgerLine:
    name: str
    account: ledger_pb2.Account


def ledger_accounts(channel_name: str) -> list[tuple[str, int]]:
    """Every account the day can have touched, named for people. Ids are derived from names
    (core/payments/accounts.py), so the back office needs no lookup table to find them."""
    named = []
    for c in CUSTOMERS:
        user = Party("user", c.user_id)
        named.append((f"{c.user_id} wallet", holding_account(user, Asset.WALLET, CNY).id))
        named.append((f"{c.user_id} points", holding_account(user, Asset.POINTS, CNY).id))
    for s in STOREFRONTS:
        merchant = Party("merchant", s.merchant_id)
        named.append((f"{s.merchant_id} settlement", holding_account(merchant, Asset.WALLET, CNY).id))
        named.append((f"{s.merchant_id} points issued", holding_account(merchant, Asset.POINTS, CNY).id))
    named.append(("platform fees", fee_account(CNY).id))
    named.append((f"bank receivable ({channel_name})", receivable_account(channel_name, CNY).id))
    return named


async def read_ledger(channel: grpc.aio.Channel, office_key: str, channel_name: str) -> list[LedgerLine]:
    stub = ledger_pb2_grpc.LedgerStub(channel)
    named = ledger_accounts(channel_name)
    reply = await stub.LookupAccounts(ledger_pb2.LookupAccountsRequest(ids=[i for _, i in named]),
                                      metadata=(("authorization", f"Bearer {office_key}"),), timeout=10)
    by_id = {a.id: a for a in reply.accounts}
    return [LedgerLine(name, by_id[i]) for name, i in named if i in by_id]


def _customer(p: payments_pb2.Payment) -> str:
    """The user a payment order is about: its payer, or for points granted and top-ups its payee."""
    for party in (p.payer, p.payee):
        if party.startswith("user:"):
            return party.removeprefix("user:").split(":")[0]
    return ""


def _amount(v: int) -> str:
    return format_minor(v, CNY, with_code=False)


def _console() -> Console:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    return console


def _print_tables(console: Console, day: Day, ledger: list[LedgerLine]) -> dict[str, bool]:
    """Print the evening's tables; returns the trial balance verdict per currency."""
    top_ups = Table(title="Card top-ups, as WatchPayment showed them (seconds since the request)")
    for col in ("customer", "card", "amount", "states"):
        top_ups.add_column(col, justify="right" if col == "amount" else "left")
    for t in day.top_ups:
        # The first state is CreatePayment's own answer; the rest came over WatchPayment.
        states = " → ".join(f"{s}{f' ({r})' if r else ''}{f' {at:.2f}s' if i else ''}"
                            for i, (at, s, r) in enumerate(t.timeline))
        top_ups.add_row(t.user_id, t.card, _amount(t.amount), states)
    console.print(top_ups)

    orders = Table(title="Payment orders (ListPayments), oldest first")
    for col in ("trade order", "customer", "merchant", "asset", "amount", "fee", "refunded", "status", "reason"):
        orders.add_column(col, justify="right" if col in ("amount", "fee", "refunded") else "left", no_wrap=True)
    for p in day.payments:
        # A payment records the fee it would take even when it failed; only a success charges it.
        fee = p.fee if p.status == payments_pb2.PAYMENT_STATUS_SUCCEEDED else 0
        orders.add_row(p.trade_order_id, _customer(p), p.merchant_id, asset_name(p.asset),
                       format_minor(p.amount, p.currency), _amount(fee) if fee else "",
                       _amount(p.refunded_amount) if p.refunded_amount else "", status_name(p.status),
                       p.failure_reason)
    console.print(orders)

    balances = Table(title="Balances (GetBalance)")
    for col in ("user", "wallet", "points"):
        balances.add_column(col, justify="left" if col == "user" else "right")
    for user_id, by_asset in day.balances.items():
        balances.add_row(user_id, format_minor(by_asset["WALLET"].available, CNY),
                         format_minor(by_asset["POINTS"].available, CNY))
    console.print(balances)

    books = Table(title=f"The books (Ledger API, back-office key), {CNY}")
    for col in ("account", "debits", "credits", "pending", "credits - debits"):
        books.add_column(col, justify="left" if col == "account" else "right")
    sums: dict[str, list[int]] = {}
    for line in ledger:
        a = line.account
        row = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
        total = sums.setdefault(a.currency, [0, 0, 0, 0])
        for i, v in enumerate(row):
            total[i] += v
        pending = f"-{_amount(a.debits_pending)} +{_amount(a.credits_pending)}" \
            if a.debits_pending or a.credits_pending else ""
        books.add_row(line.name, _amount(a.debits_posted), _amount(a.credits_posted), pending,
                      _amount(a.credits_posted - a.debits_posted))
    console.print(books)

    counts = Table(title="Events received (SubscribeEvents from 0)")
    counts.add_column("type")
    merchant_ids = [s.merchant_id for s in STOREFRONTS]
    for m in (*merchant_ids, "total"):
        counts.add_column(m, justify="right")
    by_type = Counter((e.type, e.merchant_id) for e in day.events)
    for type_ in sorted({t for t, _ in by_type}):
        row = [by_type[(type_, m)] for m in merchant_ids]
        counts.add_row(type_, *map(str, row), str(sum(row)))
    counts.add_row("[bold]all[/bold]", *(str(sum(1 for e in day.events if e.merchant_id == m)) for m in merchant_ids),
                   str(len(day.events)))
    console.print(counts)

    verdicts = {}
    for currency, (d_pending, d_posted, c_pending, c_posted) in sorted(sums.items()):
        balanced = d_pending == c_pending and d_posted == c_posted
        verdicts[currency] = balanced
        verdict = "[green]debits = credits[/green]" if balanced else "[red]OUT OF BALANCE[/red]"
        console.print(f"Trial balance {currency} over {len(ledger)} accounts: debits "
                      f"{format_minor(d_posted + d_pending, currency)}, credits "
                      f"{format_minor(c_posted + c_pending, currency)}: {verdict}")
    return verdicts


async def run_demo(console: Console | None = None) -> int:
    console = console or _console()
    started = time.monotonic()

    def say(text: str, *, heading: bool = False) -> None:
        if heading:
            console.print(f"\n[bold]{escape(text)}[/bold]")
        else:
            console.print(f"  {time.monotonic() - started:5.2f}s  {escape(text)}")

    with tempfile.TemporaryDirectory(prefix="dualflow-demo-") as tmp:
        db, config = Path(tmp) / "dualflow.db", Path(tmp) / "dualflow.toml"
        shop_key, office_key = generate_api_key(), generate_api_key()
        write_config(config, shop_key, office_key)
        bank = ScriptedChannel(sandbox_bank, names=("sandbox-bank",))
        platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(db), config_path=str(config),
                                         channel="scripted", grace_s=2), dispatcher=bank)
        await platform.start()
        console.print(f"[bold]dualflow demo[/bold]: the platform on {platform.address}, SQLite in {tmp}\n"
                      f"{len(STOREFRONTS)} merchants, a sandbox bank; the shop calls with a fresh API key "
                      "(the config holds only its SHA-256)")
        try:
            async with grpc.aio.insecure_channel(platform.address) as channel:
                day = await demo_shop.play_day(channel, shop_key, say)
                ledger = await read_ledger(channel, office_key, bank.name)
        finally:
            await platform.stop()

    console.print()
    verdicts = _print_tables(console, day, ledger)
    checks = {
        "a retried order returned the same payment (idempotency)": day.idempotent_ok,
        "a refund above what is left was refused (REFUND_EXCEEDS_CAPTURED)": day.over_refund_refused,
        "every final state and refund arrived as an event": day.events_complete,
        "resuming the event stream from a cursor gave the same events": day.resumed_ok,
        **{f"trial balance {c}: debits = credits": ok for c, ok in verdicts.items()},
    }
    for what, ok in checks.items():
        console.print(f"  {'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {what}")
    elapsed = time.monotonic() - started
    if all(checks.values()) and verdicts:
        console.print(f"[bold green]dualflow demo finished[/bold green] in {elapsed:.1f} s: "
                      f"{len(day.payments)} payment orders, {len(day.refunds)} refund, {len(day.events)} events, "
                      "the books balance.")
        return 0
    console.print(f"[bold red]dualflow demo FAILED[/bold red] after {elapsed:.1f} s: "
                  f"{', '.join(w for w, ok in checks.items() if not ok) or 'no ledger accounts read'}")
    return 1


def main() -> int:
    return asyncio.run(run_demo())
