"""SIGKILL a real `dualflow serve` while it takes payments and refunds; restart it on the same database; audit.

Durable before acknowledged, for payments: a crash at any instant loses nothing a
caller was told and leaves nothing half-applied. Per backend (`db_url`: SQLite and
PostgreSQL) one server child (serve_process.py) runs with a TOML config (one
merchant with a 1% fee, one admin caller) and is fed over real gRPC by 16
concurrent callers; at a seeded random moment it is SIGKILLed, restarted on the
same database, and then:

- every request that was in flight (no answer) is retried twice with the same
  request_id and parameters: both answers name the same object, and over the
  whole run each request_id has exactly one payment (ListPayments);
- every payment a CreatePayment acknowledged exists with the acknowledged
  status (internal ones never change), and its refunded_amount is the sum of the
  SUCCEEDED refunds answered for it;
- per account the ledger holds exactly what the answers imply: per user,
  wallet (and points) balance == funding - SUCCEEDED payments + SUCCEEDED
  refunds, via the Ledger API and GetBalance; the merchant's settlement and
  points accounts and the fee account likewise; nothing pending; debits ==
  credits over every account involved (the trial balance);
- every SUCCEEDED payment has exactly its transfers (`pay`, and `fee` when it
  has a fee), no FAILED one has any; a SUCCEEDED refund has its transfer, a
  FAILED one none (external ones: the hold, posted or voided);
- SubscribeEvents from 0 (read up to a fence payment made after the audit
  started) has strictly increasing sequences and unique event ids; each payment's
  events carry versions 1, 2, 3... in order (none lost, none duplicated), with
  exactly one event for its final state and one `payment.refunded` per refund
  that held money; each refund has exactly one event for its final state.

External payments (`--channel scripted`: the in-process channel answers success at
once; a restarted server's channel remembers nothing): the kill lands while card
and bank-transfer payments are CREATED or PROCESSING. After the restart every
one ends SUCCEEDED or FAILED, none stuck; from the events, a payment CREATED at
the kill was sent after the restart (SUCCEEDED), one PROCESSING at the kill was
only asked about, never sent again (the fresh channel never received it:
FAILED NOT_RECEIVED); the same for refunds in flight to the channel. Holds are
posted or voided to match, and the merchant's settlement equals SUCCEEDED
amounts - fees - SUCCEEDED refunds.

The seed is printed; rerun one with DUALFLOW_CRASH_SEED=N. At the end, a test
checks that event stream for a payment rerouted to another channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from serve_process import ServeFactory, ServeProcess, serve_processes  # noqa: F401 - fixture

from dualflow.core.ledger.model import Account, AccountCode
from dualflow.core.payments.accounts import (
    Party,
    account_id,
    fee_account,
    fee_for,
    holding_account,
    parse_party,
    receivable_account,
    transfer_id,
)
from dualflow.core.payments.model import Asset
from dualflow.gateway.config import hash_api_key
from dualflow.v1 import ledger_pb2 as lpb
from dualflow.v1 import ledger_pb2_grpc
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

pytestmark = pytest.mark.timeout(180)

KILLS_PER_BACKEND = 2
EXTERNAL_KILLS_PER_BACKEND = 2
SOAK_KILLS_PER_BACKEND = 10
CALLERS = 16
CALL_TIMEOUT_S = 20.0
SETTLE_TIMEOUT_S = 30.0
LOOKUP_CHUNK = 8000

KEY = "dfk_crash-auditor-key-0123456789abcdef"
MD = (("authorization", f"Bearer {KEY}"),)
MERCHANT = "shop"
FEE_BPS = 100
CNY = "CNY"
USERS = [f"u{i}" for i in range(8)]
FUNDING = {Asset.WALLET: 150_000, Asset.POINTS: 40_000}
EQUITY = Account(id=account_id("crash:equity|CNY"), currency=CNY, code=AccountCode.EQUITY)
FEES = fee_account(CNY)
RECEIVABLE = receivable_account("scripted", CNY)
SETTLEMENT = holding_account(Party("merchant", MERCHANT), Asset.WALLET, CNY)
# Legs of an external payment's hold, per channel attempt; with the one scripted channel a payment
# never moves to a second attempt (only a NOT_SUBMITTED answer does that, and it never gives one).
HOLD, POST, VOID = "hold", "post.1", "void.1"
BANK = pb.BankAccountRef(bank_code="ICBC", account_last4="6789", holder_name="Crash Test")

S = pb.PaymentStatus
SUCCEEDED, FAILED = pb.PAYMENT_STATUS_SUCCEEDED, pb.PAYMENT_STATUS_FAILED
OPEN = (pb.PAYMENT_STATUS_CREATED, pb.PAYMENT_STATUS_PROCESSING, pb.PAYMENT_STATUS_UNKNOWN)
R_SUCCEEDED, R_FAILED = pb.REFUND_STATUS_SUCCEEDED, pb.REFUND_STATUS_FAILED
FINAL_EVENTS = {"payment.succeeded": SUCCEEDED, "payment.failed": FAILED,
                "payment.canceled": pb.PAYMENT_STATUS_CANCELED}
# What a new refund may be told without anything having gone wrong (nothing is applied then).
REFUND_REFUSALS = {("FAILED_PRECONDITION", "REFUND_EXCEEDS_CAPTURED"),
                   ("FAILED_PRECONDITION", "PAYMENT_NOT_REFUNDABLE")}


def config_toml() -> str:
    import base64

    def key(n: int) -> str:
        return base64.b64encode(bytes([n]) * 32).decode()

    return f"""
[vault]
active = "k1"
fingerprint_key = "{key(9)}"
[vault.keys]
k1 = "{key(1)}"

[[merchants]]
id = "{MERCHANT}"
name = "Crash shop"
currencies = ["{CNY}"]
fee_bps = {FEE_BPS}

[[callers]]
name = "auditor"
api_key_sha256 = "{hash_api_key(KEY)}"
merchants = ["*"]
permissions = ["admin"]
"""


# ------------------------------------------------------------------ what the test sent and was told

@dataclass
class Req:
    """One CreatePayment or RefundPayment request_id: what was sent and what it was answered."""

    kind: str  # "pay" | "refund"
    msg: Any  # pb.CreatePaymentRequest | pb.RefundPaymentRequest
    answer: Any = None  # pb.Payment | pb.Refund (the newest answer for this key)
    refusal: tuple[str, str] | None = None  # (status code, ErrorInfo reason): answered, nothing applied
    lost: bool = False  # sent, never answered: the server died (outcome unknown until retried)


@dataclass
class Books:
    external: bool = False
    reqs: list[Req] = field(default_factory=list)
    acked_payments: list[pb.Payment] = field(default_factory=list)  # create answers, for refunds and replays
    create_msgs: dict[str, pb.CreatePaymentRequest] = field(default_factory=dict)  # by payment id, for replays
    fences: int = 0
    card_token: str = ""
    next_key: int = 0

    def key(self, prefix: str) -> str:
        self.next_key += 1
        return f"{prefix}-{self.next_key}"

    def creates(self) -> list[Req]:
        return [r for r in self.reqs if r.kind == "pay"]

    def refunds(self) -> list[Req]:
        return [r for r in self.reqs if r.kind == "refund"]


@dataclass
class RoundStats:
    answered: int = 0
    lost: int = 0
    replays: int = 0
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


def error_reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


class Clients:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.pay = payments_pb2_grpc.PaymentGatewayStub(channel)
        self.ledger = ledger_pb2_grpc.LedgerStub(channel)


async def send(c: Clients, req: Req) -> Any:
    if req.kind == "pay":
        return await c.pay.CreatePayment(req.msg, metadata=MD, timeout=CALL_TIMEOUT_S)
    return await c.pay.RefundPayment(req.msg, metadata=MD, timeout=CALL_TIMEOUT_S)


def answer_id(answer: Any) -> str:
    return answer.payment_id if isinstance(answer, pb.Payment) else answer.refund_id


# ------------------------------------------------------------------ load

def internal_create(books: Books, rng: random.Random) -> pb.CreatePaymentRequest:
    asset = pb.ASSET_WALLET if rng.random() < 0.7 else pb.ASSET_POINTS
    # Now and then more than any balance: FAILED INSUFFICIENT_FUNDS, nothing posted.
    amount = rng.randint(1, 3_000) if rng.random() < 0.85 else rng.randint(50_000, 500_000)
    return pb.CreatePaymentRequest(request_id=books.key("pay"), merchant_id=MERCHANT,
                                   payer=f"user:{rng.choice(USERS)}", amount=amount, currency=CNY, asset=asset)


def external_create(books: Books, rng: random.Random) -> pb.CreatePaymentRequest:
    user = rng.choice(USERS)
    amount = rng.randint(100, 50_000)
    if rng.random() < 0.5:
        return pb.CreatePaymentRequest(request_id=books.key("card"), merchant_id=MERCHANT, payer=f"user:{user}",
                                       amount=amount, currency=CNY, asset=pb.ASSET_BANK_CARD,
                                       method=pb.PaymentMethod(card_token=books.card_token))
    return pb.CreatePaymentRequest(request_id=books.key("bank"), merchant_id=MERCHANT, payer=f"user:{user}",
                                   amount=amount, currency=CNY, asset=pb.ASSET_BANK_TRANSFER,
                                   method=pb.PaymentMethod(bank_account=BANK))


def refund_request(books: Books, rng: random.Random) -> pb.RefundPaymentRequest | None:
    candidates = [p for p in books.acked_payments if p.status == SUCCEEDED or books.external]
    if not candidates:
        return None
    p = rng.choice(candidates)
    r = rng.random()
    if r < 0.45:
        amount = rng.randint(1, max(1, p.amount // 3))
    elif r < 0.65:
        amount = 0  # the rest
    elif r < 0.85:
        amount = p.amount
    else:
        amount = p.amount + 1  # always more than captured: refused, nothing applied
    return pb.RefundPaymentRequest(request_id=books.key("rfd"), payment_id=p.payment_id, amount=amount,
                                   reason="crash test")


async def one_call(c: Clients, books: Books, rng: random.Random, stats: RoundStats) -> bool:
    """Send one random request; False once the server is gone."""
    r = rng.random()
    if r < 0.12 and books.acked_payments:
        # A replay of an acknowledged create: the same payment, whatever happened since.
        original = rng.choice(books.acked_payments)
        msg = pb.CreatePaymentRequest()
        msg.CopyFrom(books.create_msgs[original.payment_id])
        misuse = rng.random() < 0.3
        if misuse:
            msg.amount += 1
        try:
            again = await c.pay.CreatePayment(msg, metadata=MD, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return False
            got = (exc.code().name, error_reason(exc))
            if not (misuse and got == ("ALREADY_EXISTS", "REQUEST_ID_REUSED")):
                stats.unexpected.append(f"replay of {msg.request_id} (misuse={misuse}): {got}")
            return True
        stats.replays += 1
        if misuse:
            stats.unexpected.append(f"{msg.request_id} with another amount was answered {again.payment_id}")
        elif again.payment_id != original.payment_id or (not books.external and again.status != original.status):
            stats.unexpected.append(f"replay of {msg.request_id}: {again.payment_id} {S.Name(again.status)}, "
                                    f"first {original.payment_id} {S.Name(original.status)}")
        return True
    if r < 0.32:
        msg = refund_request(books, rng)
        req = Req("refund", msg) if msg is not None else None
    else:
        req = None
    if req is None:
        req = Req("pay", (external_create if books.external else internal_create)(books, rng))
    books.reqs.append(req)
    try:
        req.answer = await send(c, req)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            req.lost = True
            stats.lost += 1
            return False
        req.refusal = (exc.code().name, error_reason(exc))
        stats.refusals[req.refusal] += 1
        if req.kind != "refund" or req.refusal not in REFUND_REFUSALS:
            stats.unexpected.append(f"{req.kind} {req.msg.request_id}: {req.refusal} {exc.details()}")
        return True
    stats.answered += 1
    if req.kind == "pay":
        books.acked_payments.append(req.answer)
        books.create_msgs[req.answer.payment_id] = req.msg
    return True


async def load_then_kill(server: ServeProcess, books: Books, kill_after_s: float, rng: random.Random) -> tuple[RoundStats, int, int]:
    """CALLERS concurrent callers until the server is SIGKILLed; answers (stats, in flight at kill, kill time)."""
    stats = RoundStats()
    dead = asyncio.Event()
    answering = asyncio.Event()  # the kill timer starts at the first answer: a slow start is no kill
    in_flight = 0
    at_kill = 0
    killed_at_ns = 0

    async def caller(seed: int) -> None:
        nonlocal in_flight
        crng = random.Random(seed)
        while not dead.is_set():
            in_flight += 1
            try:
                alive = await one_call(c, books, crng, stats)
            finally:
                in_flight -= 1
            if not alive:
                return
            answering.set()

    async def killer() -> None:
        nonlocal at_kill, killed_at_ns
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await answering.wait()
        await asyncio.sleep(kill_after_s)
        at_kill = in_flight
        server.signal(signal.SIGKILL)
        rc = await asyncio.get_running_loop().run_in_executor(None, server.wait, 10)
        killed_at_ns = time.time_ns()  # every commit of that process happened before this instant
        assert rc == -signal.SIGKILL, f"server ended with {rc}, not by our SIGKILL\n{server.diagnostics()}"
        dead.set()

    async with grpc.aio.insecure_channel(server.address) as channel:
        c = Clients(channel)
        await asyncio.gather(killer(), *(caller(rng.getrandbits(64)) for _ in range(CALLERS)))
    return stats, at_kill, killed_at_ns


async def retry_lost(c: Clients, books: Books, label: str) -> int:
    """Retry every unanswered request twice (same key, same parameters): one object per key."""
    lost = [r for r in books.reqs if r.lost]
    for req in lost:
        answers = []
        for _ in range(2):
            try:
                answers.append(await send(c, req))
            except grpc.aio.AioRpcError as exc:
                answers.append((exc.code().name, error_reason(exc)))
        first, second = answers
        if isinstance(first, tuple):
            # Refused on retry: then it never committed (a committed key replays). Only refunds may be.
            assert req.kind == "refund" and first in REFUND_REFUSALS, \
                f"{label}: retry of {req.kind} {req.msg.request_id} answered {first}"
            assert second == first, f"{label}: retry of {req.msg.request_id}: {first} then {second}"
            req.refusal = first
        else:
            assert not isinstance(second, tuple), f"{label}: {req.msg.request_id}: {first} then {second}"
            assert answer_id(first) == answer_id(second), \
                f"{label}: {req.msg.request_id} retried twice gave {answer_id(first)} and {answer_id(second)}"
            req.answer = second
            if req.kind == "pay":
                books.acked_payments.append(second)
                books.create_msgs[second.payment_id] = req.msg
        req.lost = False
    return len(lost)


# ------------------------------------------------------------------ audit

async def list_all_payments(c: Clients) -> list[pb.Payment]:
    out: list[pb.Payment] = []
    token = ""
    while True:
        page = await c.pay.ListPayments(pb.ListPaymentsRequest(merchant_id=MERCHANT, page_size=1000,
                                                               page_token=token), metadata=MD, timeout=30)
        out += page.payments
        token = page.next_page_token
        if not token:
            return out


async def lookup_transfers(c: Clients, ids: list[int]) -> dict[int, lpb.Transfer]:
    found: dict[int, lpb.Transfer] = {}
    for i in range(0, len(ids), LOOKUP_CHUNK):
        resp = await c.ledger.LookupTransfers(lpb.LookupTransfersRequest(ids=ids[i:i + LOOKUP_CHUNK]),
                                              metadata=MD, timeout=30)
        found.update((t.id, t) for t in resp.transfers)
    return found


async def lookup_accounts(c: Clients, ids: Iterable[int]) -> dict[int, lpb.Account]:
    resp = await c.ledger.LookupAccounts(lpb.LookupAccountsRequest(ids=sorted(set(ids))), metadata=MD, timeout=30)
    return {a.id: a for a in resp.accounts}


async def fence(c: Clients, books: Books) -> str:
    """A payment made now (the merchant issues one point): its event is after every earlier commit."""
    books.fences += 1
    rid = f"fence-{books.fences}"
    req = Req("pay", pb.CreatePaymentRequest(request_id=rid, merchant_id=MERCHANT, payer=f"merchant:{MERCHANT}",
                                             payee="user:fence", amount=1, currency=CNY, asset=pb.ASSET_POINTS))
    req.answer = await send(c, req)
    assert req.answer.status == SUCCEEDED, req.answer
    books.reqs.append(req)
    return rid


async def read_events(c: Clients, fence_id: str) -> list[pb.Event]:
    """SubscribeEvents from 0 up to the fence's own event (sequences follow commit order)."""
    events: list[pb.Event] = []
    stream = c.pay.SubscribeEvents(pb.SubscribeEventsRequest(merchant_id=MERCHANT), metadata=MD)
    try:
        async with asyncio.timeout(60):
            async for e in stream:
                events.append(e)
                if e.type == "payment.succeeded" and e.payment.request_id == fence_id:
                    return events
    finally:
        stream.cancel()
    raise AssertionError(f"the event stream ended before the fence {fence_id}")


def account_of(party: str, asset: int) -> int:
    p = parse_party(party)
    assert p is not None
    return holding_account(p, Asset(asset), CNY).id


@dataclass
class Audit:
    payments: dict[str, pb.Payment]  # as stored now, by id
    events: list[pb.Event]
    refunds: dict[str, pb.Refund]  # newest answer per refund id


async def audit(c: Clients, books: Books, label: str) -> Audit:
    """Everything the module docstring promises, against the answers the callers got."""
    assert not any(r.lost for r in books.reqs)
    fence_id = await fence(c, books)
    listed = await list_all_payments(c)
    stored = {p.payment_id: p for p in listed}

    # One payment per request_id, and only payments somebody asked for.
    per_key = Counter(p.request_id for p in listed)
    assert not [k for k, n in per_key.items() if n > 1], \
        f"{label}: request_ids with several payments: {[k for k, n in per_key.items() if n > 1][:10]}"
    creates = {r.msg.request_id: r for r in books.creates()}
    assert set(per_key) == set(creates), (
        f"{label}: payments without a request {sorted(set(per_key) - set(creates))[:10]}, "
        f"requests without a payment {sorted(set(creates) - set(per_key))[:10]}")

    # Acknowledged payments exist as acknowledged (an internal payment is final when answered).
    for rid, req in creates.items():
        got = stored.get(req.answer.payment_id)
        assert got is not None, f"{label}: acknowledged payment {req.answer.payment_id} ({rid}) is lost"
        for f in ("request_id", "payer", "payee", "amount", "asset", "currency", "created_at_ns"):
            assert getattr(got, f) == getattr(req.answer, f), f"{label}: {rid}.{f}: {got} vs answered {req.answer}"
        if not books.external:
            assert got.status == req.answer.status and got.fee == req.answer.fee, \
                f"{label}: {rid} answered {S.Name(req.answer.status)}, stored {S.Name(got.status)}"
            assert got.status in (SUCCEEDED, FAILED), f"{label}: internal payment {rid} is {S.Name(got.status)}"
        if got.status == SUCCEEDED and Asset(got.asset) is not Asset.POINTS and got.payee.startswith("merchant:"):
            assert got.fee == fee_for(got.amount, FEE_BPS), f"{label}: {rid} fee {got.fee}"
        else:
            assert got.fee == 0, f"{label}: {rid} is {S.Name(got.status)} with fee {got.fee}"

    # Refunds: the newest answer per key (a replay answers the refund as it is now).
    refunds: dict[str, pb.Refund] = {}
    for req in books.refunds():
        if req.answer is not None:
            refunds[req.answer.refund_id] = req.answer
            assert req.answer.payment_id == req.msg.payment_id
    refunded: defaultdict[str, int] = defaultdict(int)
    for r in refunds.values():
        if r.status == R_SUCCEEDED:
            refunded[r.payment_id] += r.amount
        elif not books.external:
            assert r.status == R_FAILED, f"{label}: internal refund {r.refund_id} is {r.status}"
    for pid, p in stored.items():
        assert p.refunded_amount == refunded[pid], \
            f"{label}: {pid} refunded_amount {p.refunded_amount}, SUCCEEDED refunds answered {refunded[pid]}"
        assert p.refunded_amount <= p.amount

    # Ledger transfers of each payment and refund.
    wanted: list[int] = []
    for pid in stored:
        wanted += [transfer_id(pid, leg) for leg in ("pay", "fee", HOLD, POST, VOID)]
    for rfd in refunds:
        wanted += [transfer_id(rfd, leg) for leg in ("refund", "post", "void")]
    transfers = await lookup_transfers(c, wanted)
    for pid, p in stored.items():
        legs = {leg: transfers.get(transfer_id(pid, leg)) for leg in ("pay", "fee", HOLD, POST, VOID)}
        src, dst = account_of(p.payer, p.asset), account_of(p.payee, p.asset)
        fee = legs["fee"]
        if p.status == SUCCEEDED and p.fee:
            assert fee is not None and (fee.amount, fee.debit_account_id, fee.credit_account_id) == (
                p.fee, dst, FEES.id), f"{label}: {pid} fee transfer {fee}"
        else:
            assert fee is None, f"{label}: {S.Name(p.status)} payment {pid} with fee {p.fee} has a fee transfer"
        if Asset(p.asset).internal:
            pay, rest = legs["pay"], [legs[k] for k in (HOLD, POST, VOID)]
            assert rest == [None] * 3, f"{label}: internal payment {pid} has hold legs"
            if p.status == SUCCEEDED:
                assert pay is not None and (pay.amount, pay.debit_account_id, pay.credit_account_id) == (
                    p.amount, src, dst), f"{label}: {pid} pay transfer {pay}"
            else:
                assert pay is None, f"{label}: FAILED payment {pid} has a pay transfer"
        else:
            hold, post, void = legs[HOLD], legs[POST], legs[VOID]
            assert legs["pay"] is None
            assert hold is not None and hold.flags & lpb.TRANSFER_FLAG_PENDING and (
                hold.amount, hold.debit_account_id, hold.credit_account_id) == (p.amount, RECEIVABLE.id, dst), \
                f"{label}: {pid} hold {hold}"
            expected = {SUCCEEDED: (True, False), FAILED: (False, True)}.get(p.status, (False, False))
            assert (post is not None, void is not None) == expected, \
                f"{label}: {S.Name(p.status)} payment {pid}: post {post}, void {void}"
    for rfd, r in refunds.items():
        p = stored[r.payment_id]
        t = transfers.get(transfer_id(rfd, "refund"))
        post, void = transfers.get(transfer_id(rfd, "post")), transfers.get(transfer_id(rfd, "void"))
        if r.status == R_SUCCEEDED:
            assert t is not None and t.amount == r.amount and t.debit_account_id == account_of(p.payee, p.asset), \
                f"{label}: refund {rfd}: {t}"
            assert Asset(p.asset).internal or (post is not None and void is None), f"{label}: refund {rfd} not posted"
        elif r.status == R_FAILED:
            assert post is None, f"{label}: FAILED refund {rfd} was posted"
            assert (t is None) if Asset(p.asset).internal else (t is None or void is not None), \
                f"{label}: FAILED refund {rfd}: hold {t}, void {void}"

    # Balances: every account holds exactly what the answers imply.
    expected: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])  # debits_posted, credits_posted
    for user in USERS:
        for asset, amount in FUNDING.items():
            expected[EQUITY.id][0] += amount
            expected[holding_account(Party("user", user), asset, CNY).id][1] += amount
    for p in stored.values():
        if p.status != SUCCEEDED:
            continue
        src = RECEIVABLE.id if not Asset(p.asset).internal else account_of(p.payer, p.asset)
        dst = account_of(p.payee, p.asset)
        expected[src][0] += p.amount
        expected[dst][1] += p.amount
        if p.fee:
            expected[dst][0] += p.fee
            expected[FEES.id][1] += p.fee
    for r in refunds.values():
        if r.status == R_SUCCEEDED:
            p = stored[r.payment_id]
            back_to = account_of(p.payer, p.asset) if Asset(p.asset).internal else RECEIVABLE.id
            expected[account_of(p.payee, p.asset)][0] += r.amount
            expected[back_to][1] += r.amount
    accounts = await lookup_accounts(c, expected)
    for aid, (debits, credits) in expected.items():
        a = accounts.get(aid)
        got = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted) if a else (0, 0, 0, 0)
        assert got == (0, debits, 0, credits), \
            f"{label}: account {aid} holds (dp, dpo, cp, cpo)={got}; the answers imply (0, {debits}, 0, {credits})"
    assert sum(a.debits_posted for a in accounts.values()) == sum(a.credits_posted for a in accounts.values()), \
        f"{label}: trial balance: debits != credits"
    # The same, said the way a user sees it: wallet = funding - SUCCEEDED payments + SUCCEEDED refunds.
    for user in USERS:
        for asset, funding in FUNDING.items():
            party = f"user:{user}"
            paid = sum(p.amount for p in stored.values()
                       if p.status == SUCCEEDED and p.payer == party and p.asset == asset)
            back = sum(r.amount for r in refunds.values()
                       if r.status == R_SUCCEEDED and stored[r.payment_id].payer == party
                       and stored[r.payment_id].asset == asset)
            balance = await c.pay.GetBalance(pb.GetBalanceRequest(user_id=user, asset=int(asset), currency=CNY),
                                             metadata=MD, timeout=30)
            assert balance.available == funding - paid + back and balance.pending_out == 0, \
                f"{label}: {user} {asset.name}: {balance.available}, expected {funding} - {paid} + {back}"
    settled = sum(p.amount - p.fee for p in stored.values() if p.status == SUCCEEDED
                  and p.payee == f"merchant:{MERCHANT}" and p.asset != pb.ASSET_POINTS)
    refunded_total = sum(r.amount for r in refunds.values() if r.status == R_SUCCEEDED
                         and stored[r.payment_id].asset != pb.ASSET_POINTS)
    s = accounts.get(SETTLEMENT.id)
    assert (s.credits_posted - s.debits_posted if s else 0) == settled - refunded_total, \
        f"{label}: settlement {s} != {settled} - {refunded_total}"

    # Events.
    events = await read_events(c, fence_id)
    check_events(events, stored, refunds, label)
    return Audit(stored, events, refunds)


def check_events(events: list[pb.Event], stored: dict[str, pb.Payment], refunds: dict[str, pb.Refund],
                 label: str) -> None:
    seqs = [e.sequence for e in events]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), f"{label}: event sequences not strictly increasing"
    dup = [k for k, n in Counter(e.event_id for e in events).items() if n > 1]
    assert not dup, f"{label}: duplicated event ids {dup[:5]}"
    by_payment: defaultdict[str, list[pb.Event]] = defaultdict(list)
    by_refund: defaultdict[str, list[pb.Event]] = defaultdict(list)
    for e in events:
        if e.type.startswith("payment.") and e.type != "payment.discrepancy":
            by_payment[e.payment.payment_id].append(e)
        elif e.type.startswith("refund."):
            by_refund[e.refund.refund_id].append(e)
    assert set(by_payment) == set(stored), \
        f"{label}: events of unknown payments {sorted(set(by_payment) - set(stored))[:5]}, " \
        f"payments without events {sorted(set(stored) - set(by_payment))[:5]}"
    for pid, p in stored.items():
        evs = by_payment[pid]
        versions = [e.payment.version for e in evs]
        assert versions == list(range(1, len(evs) + 1)), \
            f"{label}: {pid} events {[e.type for e in evs]} carry versions {versions}"
        assert evs[-1].payment == p, f"{label}: {pid}'s last event {evs[-1].payment} is not the stored {p}"
        finals = [e for e in evs if e.type in FINAL_EVENTS]
        assert len(finals) == (1 if p.status in (SUCCEEDED, FAILED, pb.PAYMENT_STATUS_CANCELED) else 0), \
            f"{label}: {pid} ({S.Name(p.status)}) has final events {[e.type for e in finals]}"
        assert all(FINAL_EVENTS[e.type] == p.status for e in finals)
        succeeded_refunds = sum(1 for r in refunds.values() if r.payment_id == pid and r.status == R_SUCCEEDED)
        reverted = sum(1 for e in evs if e.type == "payment.refund_reverted")
        refunded_events = sum(1 for e in evs if e.type == "payment.refunded")
        assert refunded_events == succeeded_refunds + reverted, \
            f"{label}: {pid}: {refunded_events} payment.refunded events, {succeeded_refunds} SUCCEEDED refunds, " \
            f"{reverted} reverted"
    for rfd, r in refunds.items():
        evs = by_refund.get(rfd, [])
        finals = [e for e in evs if e.type in ("refund.succeeded", "refund.failed")]
        assert len(finals) == 1 and finals[0].refund.status == r.status, \
            f"{label}: refund {rfd} ({r.status}) has events {[e.type for e in evs]}"


# ------------------------------------------------------------------ set-up

async def open_books(c: Clients, books: Books) -> None:
    """Fund every user's wallet and points from an equity account, through the Ledger API."""
    accounts = [EQUITY] + [holding_account(Party("user", u), a, CNY) for u in USERS for a in FUNDING]
    resp = await c.ledger.CreateAccounts(lpb.CreateAccountsRequest(accounts=[
        lpb.Account(id=a.id, currency=a.currency, code=int(a.code), flags=int(a.flags)) for a in accounts]),
        metadata=MD, timeout=30)
    assert list(resp.results) == [lpb.CREATE_ACCOUNT_RESULT_OK] * len(accounts), list(resp.results)
    transfers = [lpb.Transfer(id=account_id(f"crash:fund:{u}:{a.name}"), debit_account_id=EQUITY.id,
                              credit_account_id=holding_account(Party("user", u), a, CNY).id, amount=amount,
                              currency=CNY, code=9) for u in USERS for a, amount in FUNDING.items()]
    resp = await c.ledger.CreateTransfers(lpb.CreateTransfersRequest(transfers=transfers), metadata=MD, timeout=30)
    assert list(resp.results) == [lpb.CREATE_TRANSFER_RESULT_OK] * len(transfers), list(resp.results)
    if books.external:
        card = await c.pay.TokenizeCard(pb.TokenizeCardRequest(card_number="4111111111111111", exp_month=12,
                                                               exp_year=2031), metadata=MD, timeout=30)
        books.card_token = card.token


def crash_seed() -> int:
    seed = int(os.environ.get("DUALFLOW_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"payments crash seed {seed} (rerun with DUALFLOW_CRASH_SEED={seed})")
    return seed


def serve_args(tmp_path: Path, external: bool) -> list[str]:
    path = tmp_path / "crash.toml"
    path.write_text(config_toml())
    return ["--config", str(path), *(["--channel", "scripted"] if external else [])]


def check_round(stats: RoundStats, label: str) -> None:
    print(f"{label}: {stats.answered} answered, {stats.lost} lost at the kill, {stats.replays} replays, "
          f"refusals {dict(stats.refusals)}")
    assert not stats.unexpected, f"{label}: unexpected answers: {stats.unexpected[:10]}"
    assert stats.answered, f"{label}: nothing was answered before the kill"


# ------------------------------------------------------------------ internal assets

async def internal_rounds(db_url: str, serve_processes: ServeFactory, tmp_path: Path, kills: int) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    books = Books()
    args = serve_args(tmp_path, external=False)
    started = time.monotonic()
    server = serve_processes(db_url, *args, name="paycrash")
    async with grpc.aio.insecure_channel(server.address) as channel:
        await open_books(Clients(channel), books)
    lost_total = 0
    for kill in range(1, kills + 1):
        kill_after_s = rng.uniform(0.3, 1.0)
        stats, at_kill, _ = await load_then_kill(server, books, kill_after_s, rng)
        label = f"seed {seed} kill {kill} ({server.backend}, {kill_after_s:.2f}s)"
        check_round(stats, label)
        server = serve_processes(db_url, *args, name="paycrash")
        async with grpc.aio.insecure_channel(server.address) as channel:
            c = Clients(channel)
            lost_total += await retry_lost(c, books, label)
            found = await audit(c, books, label)
        print(f"{label}: audit passed: {len(found.payments)} payments, {len(found.refunds)} refunds, "
              f"{len(found.events)} events, {at_kill} calls in flight at the kill")
    # The kills must have landed mid-load, or this proved nothing about in-flight requests.
    assert lost_total > 0, f"seed {seed}: no request was in flight at any kill"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.diagnostics()
    print(f"seed {seed}: {kills} kills on {server.backend} in {time.monotonic() - started:.1f}s")


async def test_sigkill_during_internal_payments_and_refunds(db_url: str, serve_processes: ServeFactory,
                                                            tmp_path: Path) -> None:
    await internal_rounds(db_url, serve_processes, tmp_path, KILLS_PER_BACKEND)


# ------------------------------------------------------------------ external assets

async def wait_all_final(c: Clients, books: Books, label: str) -> None:
    """No payment or refund stays open: the restarted server resumes them all."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        still = await c.pay.ListPayments(pb.ListPaymentsRequest(merchant_id=MERCHANT, statuses=list(OPEN),
                                                                page_size=1000), metadata=MD, timeout=30)
        open_refunds = []
        for req in books.refunds():
            if req.answer is not None and req.answer.status not in (R_SUCCEEDED, R_FAILED):
                req.answer = await send(c, req)  # a replay answers the refund as it is now
                if req.answer.status not in (R_SUCCEEDED, R_FAILED):
                    open_refunds.append(req.answer.refund_id)
        if not still.payments and not open_refunds:
            return
        assert time.monotonic() < deadline, (
            f"{label}: stuck after {SETTLE_TIMEOUT_S}s: payments "
            f"{[(p.payment_id, S.Name(p.status)) for p in still.payments][:10]}, refunds {open_refunds[:10]}")
        await asyncio.sleep(0.1)


def state_at(events: list[pb.Event], instant_ns: int) -> tuple[dict[str, int], dict[str, int]]:
    """Each payment's and refund's status as of `instant_ns`, from the events committed before it."""
    payments: dict[str, int] = {}
    refunds: dict[str, int] = {}
    for e in events:
        if e.created_at_ns >= instant_ns:
            continue
        if e.type.startswith("payment.") and e.type != "payment.discrepancy":
            payments[e.payment.payment_id] = e.payment.status
        elif e.type.startswith("refund."):
            refunds[e.refund.refund_id] = e.refund.status
    return payments, refunds


async def external_rounds(db_url: str, serve_processes: ServeFactory, tmp_path: Path, kills: int) -> None:
    seed = crash_seed()
    rng = random.Random(seed)
    books = Books(external=True)
    args = serve_args(tmp_path, external=True)
    started = time.monotonic()
    server = serve_processes(db_url, *args, name="extcrash")
    async with grpc.aio.insecure_channel(server.address) as channel:
        await open_books(Clients(channel), books)
    open_at_kills = Counter[str]()
    for kill in range(1, kills + 1):
        kill_after_s = rng.uniform(0.3, 1.0)
        stats, at_kill, killed_at_ns = await load_then_kill(server, books, kill_after_s, rng)
        label = f"seed {seed} external kill {kill} ({server.backend}, {kill_after_s:.2f}s)"
        check_round(stats, label)
        server = serve_processes(db_url, *args, name="extcrash")
        async with grpc.aio.insecure_channel(server.address) as channel:
            c = Clients(channel)
            await retry_lost(c, books, label)
            await wait_all_final(c, books, label)
            found = await audit(c, books, label)
        # What each payment and refund was when the process died, and what the restart made of it.
        at, refunds_at = state_at(found.events, killed_at_ns)
        for pid, status in at.items():
            p = found.payments[pid]
            if status == pb.PAYMENT_STATUS_CREATED:
                # Never sent: the restarted server sends it (the scripted channel says yes).
                assert p.status == SUCCEEDED, f"{label}: {pid} CREATED at the kill ended {S.Name(p.status)}"
            elif status in (pb.PAYMENT_STATUS_PROCESSING, pb.PAYMENT_STATUS_UNKNOWN):
                # Maybe sent: only asked about. The new process's channel never received it, so a
                # resend would have succeeded; asking answers NOT_RECEIVED.
                assert (p.status, p.failure_reason) == (FAILED, "NOT_RECEIVED"), \
                    f"{label}: {pid} {S.Name(status)} at the kill ended {S.Name(p.status)} {p.failure_reason}"
            if status in OPEN:
                open_at_kills[S.Name(status)] += 1
        for rfd, status in refunds_at.items():
            r = found.refunds.get(rfd)
            if status == pb.REFUND_STATUS_PROCESSING and r is not None:
                assert (r.status, r.failure_reason) == (R_FAILED, "NOT_RECEIVED"), \
                    f"{label}: refund {rfd} PROCESSING at the kill ended {r.status} {r.failure_reason}"
                open_at_kills["refund PROCESSING"] += 1
        print(f"{label}: audit passed: {len(found.payments)} payments, {len(found.refunds)} refunds, "
              f"{at_kill} calls in flight; open at the kills so far: {dict(open_at_kills)}")
    assert open_at_kills["PAYMENT_STATUS_CREATED"] + open_at_kills["PAYMENT_STATUS_PROCESSING"] > 0, \
        f"seed {seed}: no external payment was open at any kill"
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.diagnostics()
    print(f"seed {seed}: {kills} external kills on {server.backend} in {time.monotonic() - started:.1f}s")


async def test_sigkill_during_external_payments(db_url: str, serve_processes: ServeFactory, tmp_path: Path) -> None:
    await external_rounds(db_url, serve_processes, tmp_path, EXTERNAL_KILLS_PER_BACKEND)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_sigkill_internal_payments_soak(db_url: str, serve_processes: ServeFactory, tmp_path: Path) -> None:
    """The same audit over many more kills: `pytest -m slow`."""
    await internal_rounds(db_url, serve_processes, tmp_path, SOAK_KILLS_PER_BACKEND)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_sigkill_external_payments_soak(db_url: str, serve_processes: ServeFactory, tmp_path: Path) -> None:
    """The same audit over many more kills: `pytest -m slow`."""
    await external_rounds(db_url, serve_processes, tmp_path, SOAK_KILLS_PER_BACKEND)


# ------------------------------------------------------------------ the event stream a restart audit relies on

async def test_a_rerouted_payment_streams_every_change_with_its_payment(db_url: str, tmp_path: Path) -> None:
    """The audit above reads each payment's versions from SubscribeEvents; a payment that moved to
    another channel (NOT_SUBMITTED) must stream that change like any other."""
    from dualflow.adapters.scripted import NOT_SUBMITTED, Plan, ScriptedChannel
    from dualflow.gateway.server import Platform, ServerConfig

    config = tmp_path / "reroute.toml"
    config.write_text(config_toml())
    # Channel "a" refuses the connection (provably not sent): the payment moves to "b", which says yes.
    channel = ScriptedChannel(lambda i: Plan(on_submit=NOT_SUBMITTED) if i.channel == "a" else Plan(),
                              names=("a", "b"))
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, config_path=str(config), expiry_interval_s=0),
                        dispatcher=channel)
    await platform.start()
    try:
        async with grpc.aio.insecure_channel(platform.address) as grpc_channel:
            c = Clients(grpc_channel)
            created = await c.pay.CreatePayment(pb.CreatePaymentRequest(
                request_id="reroute-1", merchant_id=MERCHANT, payer="user:u0", amount=500, currency=CNY,
                asset=pb.ASSET_BANK_TRANSFER, method=pb.PaymentMethod(bank_account=BANK)), metadata=MD, timeout=30)
            async with asyncio.timeout(30):
                watched = [p async for p in c.pay.WatchPayment(
                    pb.WatchPaymentRequest(payment_id=created.payment_id), metadata=MD)]
            final = watched[-1]
            assert (final.status, final.channel) == (SUCCEEDED, "b")
            events = await read_events(c, await fence(c, Books()))
    finally:
        await platform.stop()
    mine = [e for e in events if e.type.startswith("payment.") and e.type != "payment.discrepancy"
            and json.loads(e.data_json)["payment_id"] == created.payment_id]
    assert "payment.rerouted" in [e.type for e in mine]
    carried = [e.payment.version for e in mine]
    versions = [p.version for p in watched]
    assert carried == list(range(1, final.version + 1)) and versions == list(range(versions[0], final.version + 1)), \
        f"events {[e.type for e in mine]} carry payments of versions {carried}; WatchPayment yielded {versions}"
