"""The reserve-fund day of `dualflow demo`: wallets over pools at three banks, then clearing.

Six wallet users bank at three banks (BKA, BKB, BKC); we keep a reserve-fund pool at each, on
an interbank transfer rail of its own (a second mock rail process, so the shop's day and its
books stay as they were). Three transfer channels collect into and pay out of one pool each, and
charge less for a move inside their own bank (`same_bank_fees`), so the router sends each user's
top-up to the pool at the user's own bank. Then the users pay each other from their wallets all
day (information flow only: not one bank transfer), one user pays out to an account at another
bank, and at cut-off the back office closes the clearing window: the clearing center nets what
the pools owe each other and settles only the net amounts over the rail (fund flow), the first
settlement reply lost on the way. At the end each pool's ledger balance is checked against the
bank's own record of the pool account, the reserve-fund invariant against the wallets, and the back
office reconciles each pooled rail's statement of the day: the rail carries every channel's
transfers, but a statement is one account's (the channel's pool account), so each shows that
rail's own top-ups and payouts and the settlement transfers its pool paid or was paid.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from dualflow.clearing.pools import deposit_own_funds
from dualflow.core.money import format_minor
from dualflow.mock_banks.launcher import MockBankProcess
from dualflow.v1 import clearing_pb2, clearing_pb2_grpc, reconciliation_pb2, reconciliation_pb2_grpc
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

CNY = "CNY"
MERCHANT = "wallet"  # the wallet app: the merchant every wallet movement is made under
RAIL_FEE_BPS = 10  # between banks
SAME_BANK_FEE_BPS = 2  # inside one bank: cheaper, which is why top-ups land at the user's own bank
FLOAT_MINOR = 500_000  # our own money in each pool at the start of the day
TOP_UP_MINOR = 60_000
TRANSFERS = 30  # wallet to wallet, between the six users
SEED = 11


@dataclass(frozen=True, slots=True)
class PoolBank:
    pool: str
    channel: str  # the transfer channel collecting into and paying out of this pool
    bank_code: str
    number: str


POOLS = (PoolBank("pool-a", "rail-a", "BKA", "6222000000000101"),
         PoolBank("pool-b", "rail-b", "BKB", "6222000000000202"),
         PoolBank("pool-c", "rail-c", "BKC", "6222000000000303"))


@dataclass(frozen=True, slots=True)
class WalletUser:
    name: str
    bank_code: str
    number: str
    holder: str

    @property
    def party(self) -> str:
        return f"user:{self.name}"


USERS = (WalletUser("ann", "BKA", "6212000000001101", "Ann Lin"), WalletUser("ben", "BKA", "6212000000001102", "Ben Ma"),
         WalletUser("cai", "BKB", "6212000000002201", "Cai Wu"), WalletUser("dan", "BKB", "6212000000002202", "Dan Xu"),
         WalletUser("eve", "BKC", "6212000000003301", "Eve Qi"), WalletUser("fay", "BKC", "6212000000003302", "Fay He"))
# Ann pays part of her wallet out to her second account, at BKB: it leaves from the pool there.
PAYOUT_TO = WalletUser("ann", "BKB", "6212000000002909", "Ann Lin")
PAYOUT_MINOR = 25_000


def channels_toml(rail_port: int, key_file: str, callback_base: str) -> str:
    """The three pooled transfer channels (on the interbank rail), for the platform's TOML."""
    directory = ", ".join(f'"{u.bank_code}:{u.number[-4:]}" = "{u.number}"' for u in (*USERS, PAYOUT_TO))
    out = []
    for p in POOLS:
        out.append(f"""[[channels]]
name = "{p.channel}"
kind = "transfer"
[channels.settings]
base_url = "http://127.0.0.1:{rail_port}"
pool_account = {{ bank_code = "{p.bank_code}", number = "{p.number}", name = "dualflow reserve {p.bank_code}" }}
currencies = ["{CNY}"]
fees = {{ {CNY} = {{ fixed = 0, bps = {RAIL_FEE_BPS} }} }}
same_bank_fees = {{ {CNY} = {{ fixed = 0, bps = {SAME_BANK_FEE_BPS} }} }}
accounts = {{ {directory} }}
callback_url = "{callback_base}/{p.channel}"
timeout_ms = 2000
[channels.keys]
hmac_key = "{key_file}"
""")
    return "\n".join(out)


def clearing_toml(settlement_channel: str = POOLS[0].channel) -> str:
    accounts = "\n".join(f'{p.pool} = {{ bank_code = "{p.bank_code}", number = "{p.number}", '
                         f'name = "dualflow reserve {p.bank_code}" }}' for p in POOLS)
    return f"""[clearing]
pools = [{", ".join(f'"{p.pool}"' for p in POOLS)}]
currencies = ["{CNY}"]
settlement_channel = "{settlement_channel}"
settle_interval_s = 0.2
# The scene checks the invariant and the banks itself, at the end of its day (no periodic check:
# the pools open at the banks only when the scene begins).
invariant_interval_s = 0
[clearing.rail_accounts]
{accounts}
"""


def routing_rules(storefronts: Sequence[str]) -> str:
    """Routing rules keeping the shop's day and the wallet day on their own channels."""
    pooled = ", ".join(f'"{p.channel}"' for p in POOLS)
    rules = [f"[merchants.{s}]\ndeny = [{pooled}]\n" for s in storefronts]
    rules.append(f"[merchants.{MERCHANT}]\nallow = [{pooled}]\n")
    return "\n".join(rules)


@dataclass
class ClearingDay:
    top_ups: list[pb.Payment] = field(default_factory=list)
    transfers: list[pb.Payment] = field(default_factory=list)
    payout: pb.Payment | None = None
    positions: list[clearing_pb2.Position] = field(default_factory=list)
    window: clearing_pb2.Window | None = None
    pools_before: dict[str, int] = field(default_factory=dict)  # the bank's balance of each pool account
    pools_after: dict[str, int] = field(default_factory=dict)
    ledger_after: dict[str, int] = field(default_factory=dict)
    invariant: clearing_pb2.PoolInvariant | None = None
    bank_check: list[Any] = field(default_factory=list)
    lost_reply: bool = False
    homes: dict[str, str] = field(default_factory=dict)
    runs: dict[str, reconciliation_pb2.ReconciliationRun] = field(default_factory=dict)  # by pooled rail


def _final(p: pb.Payment) -> bool:
    return p.status in (pb.PAYMENT_STATUS_SUCCEEDED, pb.PAYMENT_STATUS_FAILED, pb.PAYMENT_STATUS_CANCELED)


async def _until_final(stub: payments_pb2_grpc.PaymentGatewayStub, created: pb.Payment,
                       auth: tuple[tuple[str, str], ...]) -> pb.Payment:
    last = created
    async for p in stub.WatchPayment(pb.WatchPaymentRequest(payment_id=created.payment_id), metadata=auth,
                                     timeout=20):
        last = p
        if _final(p):
            break
    return last


def _account_balances(rail: MockBankProcess) -> dict[tuple[str, str], int | None]:
    return {(a["bank_code"], a["number"]): a["balance"] for a in rail._call("GET", "/accounts")}


async def play(platform: Any, channel: grpc.aio.Channel, wallet_key: str, office_key: str, rail: MockBankProcess,
               say: Callable[..., None], bank_check: Callable[[], Any]) -> ClearingDay:
    """The wallet day against a running platform (in this process) and the interbank rail."""
    day = ClearingDay()
    wallet = (("authorization", f"Bearer {wallet_key}"),)
    office = (("authorization", f"Bearer {office_key}"),)
    payments = payments_pb2_grpc.PaymentGatewayStub(channel)
    clearing = clearing_pb2_grpc.ClearingStub(channel)
    say("The reserve-fund day: wallets over pools at three banks", heading=True)

    # The banks open our pool accounts with our own money in them, and the users' accounts.
    # The mock rail charges one rate on every transfer: the same-bank one, which is what each top-up
    # (all at the user's own bank) is expected to cost when the statements are reconciled.
    await asyncio.to_thread(rail._call, "PUT", "/profile", {"latency_ms": 20, "jitter_ms": 0, "pending_rate": 1.0,
                                                           "settle_after_ms": 150, "fee_bps": SAME_BANK_FEE_BPS})
    await asyncio.to_thread(rail._call, "PUT", "/accounts", [
        *({"bank_code": p.bank_code, "number": p.number, "name": f"dualflow reserve {p.bank_code}",
           "balance": FLOAT_MINOR} for p in POOLS),
        *({"bank_code": u.bank_code, "number": u.number, "name": u.holder, "balance": 200_000} for u in USERS),
        {"bank_code": PAYOUT_TO.bank_code, "number": PAYOUT_TO.number, "name": PAYOUT_TO.holder, "balance": 0}])
    for p in POOLS:
        await deposit_own_funds(platform.ledger, p.pool, CNY, FLOAT_MINOR, key=f"demo-float-{p.pool}")
    balances = await asyncio.to_thread(_account_balances, rail)
    day.pools_before = {p.pool: int(balances[(p.bank_code, p.number)] or 0) for p in POOLS}
    say(f"our pools {', '.join(f'{p.pool} at {p.bank_code}' for p in POOLS)} hold "
        f"{format_minor(FLOAT_MINOR, CNY)} each of our own money (recorded as own funds)")

    # Morning: every user tops up from their own bank account; the router picks the pool at that bank.
    created = []
    for u in USERS:
        account = pb.BankAccountRef(bank_code=u.bank_code, account_last4=u.number[-4:], holder_name=u.holder)
        created.append(await payments.CreatePayment(pb.CreatePaymentRequest(
            request_id=f"topup-{u.name}", merchant_id=MERCHANT, payer=u.party, payee=u.party, amount=TOP_UP_MINOR,
            currency=CNY, asset=pb.ASSET_BANK_TRANSFER, method=pb.PaymentMethod(bank_account=account),
            description="wallet top-up"), metadata=wallet, timeout=10))
    day.top_ups = list(await asyncio.gather(*(_until_final(payments, p, wallet) for p in created)))
    for u, p in zip(USERS, day.top_ups):
        say(f"{u.name} (banks at {u.bank_code}) tops up {format_minor(p.amount, CNY)}: {p.channel}, "
            f"{pb.PaymentStatus.Name(p.status).removeprefix('PAYMENT_STATUS_')}")

    # All day: wallet to wallet, in the ledger only.
    rng = random.Random(SEED)
    held = {u.name: TOP_UP_MINOR for u in USERS}
    for n in range(TRANSFERS):
        payer, payee = rng.sample(USERS, 2)
        amount = rng.randrange(10, 120) * 100
        if held[payer.name] - amount < PAYOUT_MINOR:
            continue
        held[payer.name] -= amount
        held[payee.name] += amount
        day.transfers.append(await payments.CreatePayment(pb.CreatePaymentRequest(
            request_id=f"p2p-{n}", merchant_id=MERCHANT, payer=payer.party, payee=payee.party, amount=amount,
            currency=CNY, asset=pb.ASSET_WALLET, description="wallet transfer"), metadata=wallet, timeout=10))
    moved = sum(p.amount for p in day.transfers)
    say(f"{len(day.transfers)} wallet transfers between them, {format_minor(moved, CNY)}: ledger postings only, "
        "no bank is called")

    # Ann pays out to her account at BKB: the rail pays it from the pool at BKB.
    payout = await payments.CreatePayout(pb.CreatePayoutRequest(
        request_id="payout-ann", merchant_id=MERCHANT, payer=PAYOUT_TO.party, amount=PAYOUT_MINOR, currency=CNY,
        bank_account=pb.BankAccountRef(bank_code=PAYOUT_TO.bank_code, account_last4=PAYOUT_TO.number[-4:],
                                       holder_name=PAYOUT_TO.holder),
        description="to my BKB account"), metadata=wallet, timeout=10)
    say(f"ann pays out {format_minor(PAYOUT_MINOR, CNY)} to her account at {PAYOUT_TO.bank_code}: held in her "
        "wallet until the rail confirms")
    day.payout = await _until_final(payments, payout, wallet)
    say(f"payout {pb.PaymentStatus.Name(day.payout.status).removeprefix('PAYMENT_STATUS_')} over {day.payout.channel}")

    # Cut-off: the positions of the day, then the window closes and settles.
    await platform.obligation_feed.catch_up()
    day.homes = await platform.obligation_feed.homes.all()
    live = await clearing.GetPositions(clearing_pb2.GetPositionsRequest(currency=CNY), metadata=office, timeout=10)
    day.positions = list(live.positions)
    say(f"cut-off: window {live.window_id} holds {sum(1 for _ in day.positions)} pool positions; the back office "
        "closes it (Clearing.CloseWindow)")
    # The rail books the first settlement transfer, but its reply never reaches us: the driver asks
    # before it sends again, and the rail's answer settles it.
    await asyncio.to_thread(rail._call, "PUT", "/profile", {"lost_reply_rate": 1.0})
    closed = await clearing.CloseWindow(clearing_pb2.CloseWindowRequest(window_id=live.window_id), metadata=office,
                                        timeout=10)
    deadline = time.monotonic() + 15
    window = closed
    lost_lifted = False
    while time.monotonic() < deadline:
        window = await clearing.GetWindow(clearing_pb2.GetWindowRequest(window_id=closed.window_id),
                                          metadata=office, timeout=10)
        booked = await asyncio.to_thread(rail._call, "GET", "/book")
        if not lost_lifted and any(str(t.get("instruction_id", "")).startswith("stl.") for t in booked):
            await asyncio.to_thread(rail._call, "PUT", "/profile", {"lost_reply_rate": 0.0})
            lost_lifted = True
            say("the rail booked the first settlement transfer; its reply was lost (the driver will ask)")
        if window.state in (clearing_pb2.WINDOW_SETTLED, clearing_pb2.WINDOW_PARTIALLY_SETTLED):
            break
        await asyncio.sleep(0.1)
    day.window = window
    day.lost_reply = lost_lifted and any(i.attempts > 1 for i in window.instructions)
    say(f"window {window.window_id}: {clearing_pb2.WindowState.Name(window.state).removeprefix('WINDOW_')}")

    balances = await asyncio.to_thread(_account_balances, rail)
    day.pools_after = {p.pool: int(balances[(p.bank_code, p.number)] or 0) for p in POOLS}
    report = await clearing.GetPoolBalances(clearing_pb2.GetPoolBalancesRequest(currency=CNY), metadata=office,
                                            timeout=10)
    day.ledger_after = {b.pool: b.balance_minor for b in report.pools}
    day.invariant = report.invariant[0] if report.invariant else None
    day.bank_check = list(await bank_check())

    # Close of day: each pooled rail's statement (its pool account's) against our side.
    recon = reconciliation_pb2_grpc.ReconciliationStub(channel)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    for p in POOLS:
        day.runs[p.channel] = await recon.RunReconciliation(reconciliation_pb2.RunReconciliationRequest(
            channel=p.channel, business_date=today), metadata=office, timeout=60)
    say("back office: each pooled rail's statement of today reconciled (Reconciliation.RunReconciliation): " +
        "; ".join(f"{c} {run.lines} lines ({_counts(run) or 'none'})" for c, run in day.runs.items()))
    return day


def _counts(run: reconciliation_pb2.ReconciliationRun) -> str:
    name = reconciliation_pb2.ReconciliationClass.Name
    return ", ".join(f"{name(c.match_class).removeprefix('RECONCILIATION_CLASS_')} {c.lines}"
                     for c in run.counts if c.lines or c.instructions)


def _all_matched(run: reconciliation_pb2.ReconciliationRun) -> bool:
    return run.state == reconciliation_pb2.RUN_STATE_COMPLETED and run.lines > 0 and all(
        c.match_class == reconciliation_pb2.RECONCILIATION_CLASS_MATCHED
        for c in run.counts if c.lines or c.instructions)


def _amount(v: int) -> str:
    return format_minor(v, CNY)


def print_day(console: Console, day: ClearingDay) -> None:
    table = Table(title="Cut-off: what the pools owe each other (Clearing.GetPositions, then CloseWindow)",
                  caption="owes / owed: gross obligations recorded as wallet money moved between users homed at "
                          "different pools, or left a pool other than its owner's\nnet: owed - owes · "
                          "settled by: the window's transfers over the rail")
    for col in ("pool", "bank", "wallet users", "owes", "owed", "net", "settled by"):
        table.add_column(col, justify="right" if col in ("owes", "owed", "net", "wallet users") else "left")
    bank = {p.pool: p.bank_code for p in POOLS}
    homed: dict[str, int] = {}
    for u in USERS:
        pool = day.homes.get(u.party, "")
        homed[pool] = homed.get(pool, 0) + 1
    window = day.window
    moves: dict[str, list[str]] = {}
    for i in (window.instructions if window is not None else ()):
        text = f"{i.payer_pool} → {i.payee_pool} {_amount(i.amount_minor)} " \
               f"({clearing_pb2.InstructionState.Name(i.state).removeprefix('INSTRUCTION_')}, {i.attempts} sends)"
        moves.setdefault(i.payer_pool, []).append(text)
    for p in day.positions:
        table.add_row(p.pool, bank.get(p.pool, ""), str(homed.get(p.pool, 0)), _amount(p.owes_minor),
                      _amount(p.owed_minor), _amount(p.net_minor), "; ".join(moves.get(p.pool, [])) or "-")
    console.print(table)
    if window is not None:
        for n in window.netting:
            console.print(
                f"Netting {n.currency}: {n.obligation_count} obligations, gross {_amount(n.gross_minor)} → net "
                f"{_amount(n.net_minor)}, efficiency {n.efficiency:.1%}; {n.transfer_count} transfer(s) for "
                f"{n.pools_nonzero} pools (at most N-1 = {n.transfer_bound}){', proven minimal' if n.optimal else ''}")
    pools = Table(title="Pools against the banks (the bank's record of each pool account; PoolBankCheck)",
                  caption="bank before / after: the pool account's balance at its bank at the start and the end "
                          "of the day\nledger: the pool's posted ledger balance · difference: bank - ledger")
    for col in ("pool", "bank before", "bank after", "ledger", "difference"):
        pools.add_column(col, justify="right" if col != "pool" else "left")
    for p in POOLS:
        after, ledger = day.pools_after.get(p.pool, 0), day.ledger_after.get(p.pool, 0)
        pools.add_row(p.pool, _amount(day.pools_before.get(p.pool, 0)), _amount(after), _amount(ledger),
                      _amount(after - ledger))
    console.print(pools)
    if day.runs:
        recon = Table(title="Close of day: each pooled rail's own statement (its pool account's), reconciled",
                      caption="lines: its top-ups, payouts and the settlements its pool paid or was paid\n"
                              "fees posted: by this rail's run (a settlement's on the payer pool's rail only)")
        for col in ("rail", "pool account", "lines", "classes", "fees posted"):
            recon.add_column(col, justify="right" if col in ("lines", "fees posted") else "left")
        for p in POOLS:
            run = day.runs.get(p.channel)
            if run is None:
                continue
            posted = sum(f.posted_now for f in run.fees)
            recon.add_row(p.channel, f"{p.bank_code} …{p.number[-4:]}", str(run.lines), _counts(run) or "-",
                          str(posted))
        console.print(recon)
    if day.invariant is not None:
        i = day.invariant
        console.print(f"Reserve-fund invariant {i.currency}: pools {_amount(i.pools_minor)} + in transit "
                      f"{_amount(i.in_transit_minor)} = wallets {_amount(i.wallets_minor)} + merchants "
                      f"{_amount(i.merchants_minor)} + own funds {_amount(i.own_funds_minor)}; difference "
                      f"{_amount(i.difference_minor)}")


def checks(day: ClearingDay) -> Mapping[str, bool]:
    window = day.window
    succeeded = pb.PAYMENT_STATUS_SUCCEEDED
    same_bank = all(p.status == succeeded and p.channel == next(x.channel for x in POOLS if x.bank_code == u.bank_code)
                    for u, p in zip(USERS, day.top_ups))
    netting = window.netting[0] if window is not None and window.netting else None
    gross = sum(p.owes_minor for p in day.positions)
    conserved = sum(day.pools_after.values()) == sum(day.pools_before.values()) + TOP_UP_MINOR * len(USERS) - (
        PAYOUT_MINOR if day.payout is not None and day.payout.status == succeeded else 0)
    return {
        "every top-up landed in the pool at the user's own bank (the router's same-bank fee)": same_bank,
        f"ann's payout left from the pool at {PAYOUT_TO.bank_code}": day.payout is not None
        and day.payout.status == succeeded and day.payout.channel == POOLS[1].channel,
        "the clearing window SETTLED, moving only the net over the rail": window is not None
        and window.state == clearing_pb2.WINDOW_SETTLED and netting is not None
        and netting.gross_minor == gross and netting.transfer_count <= netting.transfer_bound,
        "a settlement reply was lost; the driver asked the rail and did not pay twice": day.lost_reply,
        "every pool's ledger balance equals the bank's record of the pool account": bool(day.pools_after)
        and all(day.pools_after[p.pool] == day.ledger_after.get(p.pool) for p in POOLS)
        and len(day.bank_check) == len(POOLS) and all(r.status == "MATCH" for r in day.bank_check),
        "no money created or lost: the banks' pools moved by exactly the top-ups less the payout": conserved,
        "the reserve-fund invariant holds (pools + in transit = wallets + merchants + own funds)":
            day.invariant is not None and day.invariant.difference_minor == 0,
        "every pooled rail's statement reconciled: all MATCHED": len(day.runs) == len(POOLS)
        and all(_all_matched(run) for run in day.runs.values()),
    }
