"""The shop: a business system (业务系统) playing one day on dualflow, written as a client would write it.

Two storefronts of one business (a tea house and a bookshop) serve three customers. The shop
knows dualflow only through the PaymentGateway gRPC API, the generated stubs and its API key:
customers top their wallets up by card (tokenized first; the shop never keeps a card number) or
by bank transfer, and follow each top-up with WatchPayment until the bank has answered (or the
shop's patience ends: it sees how that one ended in the evening); the tea
house grants loyalty points, trade orders become payment orders paid from the wallet or with
points, one order is retried with the same request_id, one is partly refunded, the tea house's
rush hour brings waves of walk-in guests paying by card a few at a time, and an event consumer
follows both storefronts' event streams all day. Nothing is printed here: progress goes
to a `say` callback (the demo prints it as it happens) and the day's facts come back as a `Day`
for the caller to show.

The banks behind the platform are not the shop's business. The one hook that knows of them is
`BankWeather`, called around each top-up and each wave of the rush hour, and at close of day: the
demo uses it to give each its own trouble at the (mock) bank, to steer the router and to reconcile
the day, the way a sandbox operator and the platform's back office would; a real shop passes
nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dualflow.core.money import format_minor
from dualflow.v1 import payments_pb2 as pb
from dualflow.v1 import payments_pb2_grpc

CNY = "CNY"
# How long the shop waits for anything: the whole demo is meant to end by itself.
CALL_TIMEOUT_S = 10.0


class Say(Protocol):
    """Where the shop reports progress as it happens (plain text; `heading` starts a part of the day)."""

    def __call__(self, text: str, *, heading: bool = False) -> None: ...


class BankWeather(Protocol):
    """What happens at the banks around one top-up. Not part of any real shop: the demo's sandbox
    operator injects a fault before the top-up is asked for (`before`), hears of each state the
    shop's WatchPayment shows (`seen`: from the first it knows the payment id, and may lift the
    fault early), and clears it when the top-up has ended (`after`, also when it failed). Around
    each wave of the rush hour (`before_wave`, `after_wave`: every payment of the wave has ended)
    it may cut a bank off or change how the platform routes."""

    async def before(self, top_up: TopUpSpec) -> None: ...

    async def seen(self, top_up: TopUpSpec, payment: pb.Payment) -> None: ...

    async def after(self, top_up: TopUpSpec) -> None: ...

    async def before_wave(self, wave: int) -> None: ...

    async def after_wave(self, wave: int) -> None: ...

    async def close_of_day(self) -> None:
        """After the rush hour, before the shop's evening: the platform's back office closes the
        day (the demo reconciles each channel's statement, which may settle a payment the shop
        left UNKNOWN). A real shop's platform does it without telling the shop."""
        ...


class FairWeather:
    """No trouble at the banks (and nothing to do with them)."""

    async def before(self, top_up: TopUpSpec) -> None:
        return None

    async def seen(self, top_up: TopUpSpec, payment: pb.Payment) -> None:
        return None

    async def after(self, top_up: TopUpSpec) -> None:
        return None

    async def before_wave(self, wave: int) -> None:
        return None

    async def after_wave(self, wave: int) -> None:
        return None

    async def close_of_day(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Storefront:
    merchant_id: str
    name: str
    fee_bps: int  # the platform's fee, in basis points of what the storefront takes in


@dataclass(frozen=True, slots=True)
class Customer:
    user_id: str
    # Test numbers from the card networks' sandboxes. Only TokenizeCard ever carries one; the
    # repr leaves it out so that no log line or traceback can show it.
    card_number: str = field(repr=False)
    points_granted: int
    # The customer's bank account, as a transfer names it: bank code, last four digits, holder.
    bank_account: tuple[str, str, str] = ("", "", "")


@dataclass(frozen=True, slots=True)
class TopUpSpec:
    """A wallet top-up: the user pays themselves from their card or their bank account."""

    trade_order_id: str
    user_id: str
    amount: int
    by: int  # pb.ASSET_BANK_CARD or pb.ASSET_BANK_TRANSFER
    # How long the shop follows the top-up (WatchPayment) before it moves on; the platform goes on
    # following it up, and the shop hears of it by its events.
    patience_s: float = 10.0


@dataclass(frozen=True, slots=True)
class OrderSpec:
    trade_order_id: str
    merchant_id: str
    user_id: str
    asset: int  # pb.Asset
    amount: int  # minor units of CNY (points count in CNY minor units too)
    description: str


STOREFRONTS: tuple[Storefront, ...] = (
    Storefront("tea-house", "West Lake Tea House", 60),
    Storefront("bookshop", "Riverside Books", 45),
)
# Top-ups and loyalty points go through the tea house: it runs the business's wallet programme.
WALLET_MERCHANT = "tea-house"
CUSTOMERS: tuple[Customer, ...] = (
    Customer("alice", "4111111111111111", 50_00),  # Visa
    Customer("bob", "6200000000000005", 30_00),  # UnionPay
    Customer("carol", "5555555555554444", 10_00, ("ICBC", "6789", "Carol Wang")),  # Mastercard
)
# One after another: each meets its own weather at the banks (the demo arranges it by trade order).
TOP_UPS: tuple[TopUpSpec, ...] = (
    TopUpSpec("TOPUP-alice", "alice", 1_000_00, pb.ASSET_BANK_CARD),
    TopUpSpec("TOPUP-bob", "bob", 500_00, pb.ASSET_BANK_CARD),
    TopUpSpec("TOPUP-carol", "carol", 200_00, pb.ASSET_BANK_CARD),
    # Her card was declined: she sends a little by bank transfer instead (not enough for her novel).
    TopUpSpec("TOPUP-carol-2", "carol", 50_00, pb.ASSET_BANK_TRANSFER),
    # And a bigger one; the shop will not wait at the counter for a bank that does not answer.
    TopUpSpec("TOPUP-carol-3", "carol", 120_00, pb.ASSET_BANK_TRANSFER, patience_s=2.0),
)
ORDERS: tuple[OrderSpec, ...] = (
    OrderSpec("T-1001", "tea-house", "alice", pb.ASSET_WALLET, 168_00, "Longjing tea, 250 g"),
    OrderSpec("T-1002", "tea-house", "bob", pb.ASSET_POINTS, 25_00, "Celadon teacup"),
    OrderSpec("T-1003", "bookshop", "carol", pb.ASSET_WALLET, 88_00, "A novel"),
    OrderSpec("T-1004", "bookshop", "alice", pb.ASSET_WALLET, 256_00, "World atlas"),
    OrderSpec("T-1005", "bookshop", "bob", pb.ASSET_WALLET, 240_00, "Three cookbooks"),
    OrderSpec("T-1006", "tea-house", "alice", pb.ASSET_POINTS, 40_00, "Tea tasting for two"),
    OrderSpec("T-1007", "tea-house", "carol", pb.ASSET_POINTS, 8_00, "Green tea sample"),
)
# The tea house's rush hour: walk-in guests pay at the counter by card (Visa test numbers, tokenized
# first like the customers' cards), in waves of a dozen, a few payments in flight at once.
RUSH_WAVES = 3
RUSH_WAVE_SIZE = 12
RUSH_AT_ONCE = 3
RUSH_CARDS = ("4242424242424242", "4012888888881881", "4000056655665556")
RUSH_PRICES = (32_00, 38_00, 45_00, 58_00)


@dataclass(frozen=True, slots=True)
class RushOrder:
    trade_order_id: str
    wave: int  # 0-based
    guest: str  # a walk-in guest: no wallet here, the card pays the tea house directly
    card_number: str = field(repr=False)
    amount: int


RUSH: tuple[RushOrder, ...] = tuple(
    RushOrder(f"RUSH-{i + 1:02d}", i // RUSH_WAVE_SIZE, f"guest-{i + 1:02d}", RUSH_CARDS[i % len(RUSH_CARDS)],
              RUSH_PRICES[i % len(RUSH_PRICES)])
    for i in range(RUSH_WAVES * RUSH_WAVE_SIZE))
RETRIED_ORDER = "T-1004"  # its answer is "lost" and the shop sends it again
REFUNDED_ORDER = "T-1005"  # one cookbook comes back
PARTIAL_REFUND = 80_00
OVER_REFUND = 200_00  # more than the 160.00 left to refund


def status_name(status: int) -> str:
    return pb.PaymentStatus.Name(status).removeprefix("PAYMENT_STATUS_")


def asset_name(asset: int) -> str:
    return pb.Asset.Name(asset).removeprefix("ASSET_")


def money(amount: int, currency: str = CNY) -> str:
    return format_minor(amount, currency)


def masked(card: pb.CardSummary) -> str:
    """What the shop may show of a card: brand, BIN and last four (the platform gives nothing more)."""
    return f"{card.brand} {card.bin}******{card.last4}"


def masked_account(account: pb.BankAccountRef) -> str:
    return f"{account.bank_code} account ****{account.account_last4}"


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo of a refusal: its reason (e.g. REFUND_EXCEEDS_CAPTURED) is what a
    client branches on, never the message text. Empty if the status carries none."""
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            break
    return info


@dataclass(frozen=True, slots=True)
class Change:
    """One state of a payment as the shop saw it: seconds since the top-up was asked for, status,
    failure reason, and the channel carrying it then."""

    at_s: float
    status: str
    reason: str
    channel: str


@dataclass(slots=True)
class TopUp:
    trade_order_id: str
    user_id: str
    paid_with: str  # a masked card or bank account
    amount: int
    payment_id: str = ""
    timeline: list[Change] = field(default_factory=list)
    started: float = 0.0  # time.monotonic() when the shop asked for it

    @property
    def channel(self) -> str:
        return self.timeline[-1].channel if self.timeline else ""

    @property
    def status(self) -> str:
        return self.timeline[-1].status if self.timeline else ""


@dataclass(slots=True)
class Day:
    """What happened, for the caller to print and check."""

    top_ups: list[TopUp] = field(default_factory=list)
    payments: list[pb.Payment] = field(default_factory=list)  # every payment order, oldest first, as it ends
    refunds: list[pb.Refund] = field(default_factory=list)
    balances: dict[str, dict[str, pb.Balance]] = field(default_factory=dict)  # user -> WALLET/POINTS
    events: list[pb.Event] = field(default_factory=list)
    resumed_ok: bool = False
    events_complete: bool = False
    idempotent_ok: bool = False
    over_refund_refused: bool = False


class EventConsumer:
    """Follows each storefront's event stream from sequence 0, as the shop's notification service.

    Delivery is at least once, so events are deduplicated on event_id. A storefront's events
    arrive in sequence order; the cursor to resume from is the last sequence seen.
    """

    def __init__(self, stub: payments_pb2_grpc.PaymentGatewayStub, metadata: Sequence[tuple[str, str]],
                 merchant_ids: Sequence[str]) -> None:
        self._stub = stub
        self._metadata = tuple(metadata)
        self._merchant_ids = tuple(merchant_ids)
        self.events: list[pb.Event] = []
        self._seen: set[str] = set()
        self._calls: list[grpc.aio.UnaryStreamCall] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._arrived = asyncio.Event()

    def start(self) -> None:
        for merchant_id in self._merchant_ids:
            call = self._stub.SubscribeEvents(pb.SubscribeEventsRequest(merchant_id=merchant_id, after_sequence=0),
                                              metadata=self._metadata)
            self._calls.append(call)
            self._tasks.append(asyncio.create_task(self._follow(call), name=f"events-{merchant_id}"))

    async def _follow(self, call: AsyncIterator[pb.Event]) -> None:
        async for event in call:
            if event.event_id not in self._seen:
                self._seen.add(event.event_id)
                self.events.append(event)
                self._arrived.set()

    def has(self, type_: str, subject_id: str) -> bool:
        for e in self.events:
            if e.type == type_ and subject_id in (e.payment.payment_id, e.refund.refund_id):
                return True
        return False

    async def settle(self, done: Callable[[], bool], *, quiet_s: float = 0.3, timeout_s: float = 5.0) -> bool:
        """Wait until `done()` holds and no event came for `quiet_s` (the trailing balance events of
        the last commit); False if that took longer than `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), quiet_s)
            except TimeoutError:
                if done():
                    return True
        return False

    async def stop(self) -> None:
        for call in self._calls:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def resume(self, merchant_id: str, after_sequence: int, count: int) -> list[pb.Event]:
        """A new subscription from a cursor, as after a restart of the consumer: the next `count` events."""
        call = self._stub.SubscribeEvents(pb.SubscribeEventsRequest(merchant_id=merchant_id,
                                                                    after_sequence=after_sequence),
                                          metadata=self._metadata)
        got: list[pb.Event] = []
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                async for event in call:
                    got.append(event)
                    if len(got) == count:
                        break
        finally:
            call.cancel()
        return got


class Shop:
    """The shop backend: every call carries its API key and an idempotency key (request_id)."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str, say: Say, weather: BankWeather | None = None) -> None:
        self.stub = payments_pb2_grpc.PaymentGatewayStub(channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),)
        self.say = say
        self.weather: BankWeather = weather or FairWeather()

    async def top_up(self, spec: TopUpSpec, customer: Customer) -> TopUp:
        """Charge the customer's card (tokenized first) or bank account into their wallet and watch
        the payment to its end."""
        await self.weather.before(spec)
        try:
            return await self._top_up(spec, customer)
        finally:
            await self.weather.after(spec)

    async def _top_up(self, spec: TopUpSpec, customer: Customer) -> TopUp:
        if spec.by == pb.ASSET_BANK_CARD:
            card = await self.stub.TokenizeCard(pb.TokenizeCardRequest(
                card_number=customer.card_number, exp_month=12, exp_year=datetime.date.today().year + 3),
                metadata=self.metadata, timeout=CALL_TIMEOUT_S)
            method, paid_with = pb.PaymentMethod(card_token=card.token), masked(card)
        else:
            bank_code, last4, holder = customer.bank_account
            account = pb.BankAccountRef(bank_code=bank_code, account_last4=last4, holder_name=holder)
            method, paid_with = pb.PaymentMethod(bank_account=account), masked_account(account)
        started = time.monotonic()
        top_up = TopUp(spec.trade_order_id, spec.user_id, paid_with, spec.amount, started=started)
        # A top-up: the user pays themselves; the money lands in their wallet once the bank confirms.
        created = await self.stub.CreatePayment(pb.CreatePaymentRequest(
            request_id=f"topup-{spec.trade_order_id}", merchant_id=WALLET_MERCHANT,
            payer=f"user:{spec.user_id}", payee=f"user:{spec.user_id}", amount=spec.amount, currency=CNY,
            asset=spec.by, method=method, trade_order_id=spec.trade_order_id, description="wallet top-up"),
            metadata=self.metadata, timeout=CALL_TIMEOUT_S)
        top_up.payment_id = created.payment_id
        what = f"{spec.user_id:<6} top-up {money(top_up.amount)} by {paid_with}"
        version = 0

        async def seen(p: pb.Payment) -> None:
            nonlocal version
            if p.version <= version:
                return
            version = p.version
            before = top_up.channel
            top_up.timeline.append(Change(time.monotonic() - started, status_name(p.status), p.failure_reason,
                                          p.channel))
            note = f" ({p.failure_reason})" if p.failure_reason else ""
            if p.status == pb.PAYMENT_STATUS_UNKNOWN:
                note = f" (no answer from {p.channel}: it is polled, never sent again)"
            where = f" at {p.channel}"
            if before and p.channel != before:
                # Only a submission that provably never left moves to another channel.
                where = f" at {p.channel} (it never reached {before}: sent to the next channel)"
            self.say(f"{what}: {status_name(p.status)}{where}{note}")
            await self.weather.seen(spec, p)

        await seen(created)
        # WatchPayment answers the payment now, then each change, and ends at a final state.
        try:
            async with asyncio.timeout(min(spec.patience_s, CALL_TIMEOUT_S)):
                async for p in self.stub.WatchPayment(pb.WatchPaymentRequest(payment_id=created.payment_id),
                                                      metadata=self.metadata):
                    await seen(p)
        except TimeoutError:
            if spec.patience_s >= CALL_TIMEOUT_S:
                raise
            self.say(f"{what}: still {top_up.status} after {spec.patience_s:g} s; the shop moves on (its event "
                     "will tell)")
        return top_up

    async def pay_by_card(self, order: RushOrder) -> pb.Payment:
        """A guest pays the tea house by card at the counter; the payment as it ended (WatchPayment)."""
        card = await self.stub.TokenizeCard(pb.TokenizeCardRequest(
            card_number=order.card_number, exp_month=12, exp_year=datetime.date.today().year + 3),
            metadata=self.metadata, timeout=CALL_TIMEOUT_S)
        last = await self.stub.CreatePayment(pb.CreatePaymentRequest(
            request_id=f"order-{order.trade_order_id}", merchant_id=WALLET_MERCHANT, payer=f"user:{order.guest}",
            payee=f"merchant:{WALLET_MERCHANT}", amount=order.amount, currency=CNY, asset=pb.ASSET_BANK_CARD,
            method=pb.PaymentMethod(card_token=card.token), trade_order_id=order.trade_order_id,
            description="tea at the counter"), metadata=self.metadata, timeout=CALL_TIMEOUT_S)
        async with asyncio.timeout(CALL_TIMEOUT_S):
            async for p in self.stub.WatchPayment(pb.WatchPaymentRequest(payment_id=last.payment_id),
                                                  metadata=self.metadata):
                last = p
        if last.routing.rerouted_from:
            self.say(f"{order.trade_order_id} {order.guest} {money(order.amount)} by {masked(card)}: "
                     f"{status_name(last.status)} at {last.channel} (it never reached "
                     f"{', '.join(last.routing.rerouted_from)}: sent to the next channel)")
        return last

    async def rush_wave(self, wave: int) -> tuple[list[pb.Payment], float]:
        """One wave of guests, RUSH_AT_ONCE payments in flight at a time: the payments as they
        ended, and the seconds the wave took."""
        gate = asyncio.Semaphore(RUSH_AT_ONCE)

        async def one(order: RushOrder) -> pb.Payment:
            async with gate:
                return await self.pay_by_card(order)

        await self.weather.before_wave(wave)
        try:
            started = time.monotonic()
            paid = list(await asyncio.gather(*(one(o) for o in RUSH if o.wave == wave)))
            return paid, time.monotonic() - started
        finally:
            await self.weather.after_wave(wave)

    async def pay(self, request_id: str, merchant_id: str, payer: str, payee: str, asset: int, amount: int,
                  trade_order_id: str, description: str) -> pb.Payment:
        return await self.stub.CreatePayment(pb.CreatePaymentRequest(
            request_id=request_id, merchant_id=merchant_id, payer=payer, payee=payee, amount=amount,
            currency=CNY, asset=asset, trade_order_id=trade_order_id, description=description),
            metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    async def grant_points(self, merchant_id: str, customer: Customer) -> pb.Payment:
        """Loyalty points: the merchant is the payer of its own points (its liability grows)."""
        return await self.pay(f"points-{customer.user_id}-1", merchant_id, f"merchant:{merchant_id}",
                              f"user:{customer.user_id}", pb.ASSET_POINTS, customer.points_granted,
                              f"PTS-{customer.user_id}", "welcome points")

    async def checkout(self, order: OrderSpec) -> pb.Payment:
        """A trade order's payment order. The request_id derives from the trade order, so a retry of
        the same order can never charge twice."""
        return await self.pay(f"order-{order.trade_order_id}", order.merchant_id, f"user:{order.user_id}",
                              f"merchant:{order.merchant_id}", order.asset, order.amount, order.trade_order_id,
                              order.description)

    async def refund(self, payment_id: str, request_id: str, amount: int, reason: str) -> pb.Refund:
        return await self.stub.RefundPayment(pb.RefundPaymentRequest(
            request_id=request_id, payment_id=payment_id, amount=amount, reason=reason),
            metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    async def balance(self, user_id: str, asset: int) -> pb.Balance:
        return await self.stub.GetBalance(pb.GetBalanceRequest(user_id=user_id, asset=asset, currency=CNY),
                                          metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    async def all_payments(self, merchant_ids: Sequence[str]) -> list[pb.Payment]:
        """Every payment order of the storefronts, oldest first, as the platform has them now."""
        found: list[pb.Payment] = []
        for merchant_id in merchant_ids:
            token = ""
            while True:
                page = await self.stub.ListPayments(pb.ListPaymentsRequest(
                    merchant_id=merchant_id, page_size=100, page_token=token), metadata=self.metadata,
                    timeout=CALL_TIMEOUT_S)
                found.extend(page.payments)
                token = page.next_page_token
                if not token:
                    break
        return sorted(found, key=lambda p: (p.created_at_ns, p.payment_id))


def _order_line(order: OrderSpec, p: pb.Payment) -> str:
    reason = f" {p.failure_reason}" if p.failure_reason else ""
    return (f"{order.trade_order_id} {order.user_id:<6} {money(order.amount)} by {asset_name(order.asset)} "
            f"at {order.merchant_id}: {status_name(p.status)}{reason}")


async def play_day(channel: grpc.aio.Channel, api_key: str, say: Say, weather: BankWeather | None = None) -> Day:
    """The shop's day, start to end, over `channel` with the shop backend's `api_key`; `weather`
    is what happens at the banks around each top-up (nothing, unless a sandbox arranges it)."""
    shop = Shop(channel, api_key, say, weather)
    merchant_ids = [s.merchant_id for s in STOREFRONTS]
    consumer = EventConsumer(shop.stub, shop.metadata, merchant_ids)
    consumer.start()
    day = Day()
    customers = {c.user_id: c for c in CUSTOMERS}
    try:
        say("Morning: customers top up their wallets by card or bank transfer (banks answer late, "
            "not at all, or no)", heading=True)
        for spec in TOP_UPS:
            day.top_ups.append(await shop.top_up(spec, customers[spec.user_id]))

        say("Loyalty: the tea house grants welcome points", heading=True)
        for c in CUSTOMERS:
            p = await shop.grant_points(WALLET_MERCHANT, c)
            say(f"{c.user_id:<6} receives {money(c.points_granted)} in points: {status_name(p.status)}")

        say("Orders: trade orders become payment orders (wallet and points settle at once)", heading=True)
        by_order: dict[str, pb.Payment] = {}
        for order in ORDERS:
            p = await shop.checkout(order)
            by_order[order.trade_order_id] = p
            say(_order_line(order, p))
            if order.trade_order_id == RETRIED_ORDER:
                # The answer "got lost" (say, the shop's connection dropped): the shop sends the very
                # same request again. The platform answers the original payment instead of a second one.
                again = await shop.checkout(order)
                day.idempotent_ok = again.payment_id == p.payment_id and again.version == p.version
                say(f"{order.trade_order_id} sent again, same request_id: "
                    f"{'the same payment' if day.idempotent_ok else 'A NEW PAYMENT'} {again.payment_id} "
                    f"{status_name(again.status)}")

        say("Returns: a partial refund, and one asking for more than is left", heading=True)
        refunded = by_order[REFUNDED_ORDER]
        refund = await shop.refund(refunded.payment_id, f"refund-{REFUNDED_ORDER}-1", PARTIAL_REFUND,
                                   "one cookbook returned")
        day.refunds.append(refund)
        say(f"{REFUNDED_ORDER} refund of {money(refund.amount)}: "
            f"{pb.RefundStatus.Name(refund.status).removeprefix('REFUND_STATUS_')} {refund.refund_id}")
        try:
            await shop.refund(refunded.payment_id, f"refund-{REFUNDED_ORDER}-2", OVER_REFUND, "all of it, again")
            line = f"{REFUNDED_ORDER} refund of {money(OVER_REFUND)}: ACCEPTED (it should have been refused)"
        except grpc.aio.AioRpcError as err:
            info = error_info(err)
            day.over_refund_refused = (err.code() is grpc.StatusCode.FAILED_PRECONDITION
                                       and info.reason == "REFUND_EXCEEDS_CAPTURED")
            left = info.metadata.get("refundable", "")
            line = (f"{REFUNDED_ORDER} refund of {money(OVER_REFUND)} refused: {err.code().name} {info.reason}"
                    + (f" ({money(int(left))} left)" if left.isdigit() else ""))
        say(line)

        say(f"Rush hour: {len(RUSH)} walk-in guests pay the tea house by card, in {RUSH_WAVES} waves, "
            f"{RUSH_AT_ONCE} at a time", heading=True)
        for wave in range(RUSH_WAVES):
            paid, took_s = await shop.rush_wave(wave)
            ok = sum(p.status == pb.PAYMENT_STATUS_SUCCEEDED for p in paid)
            carried = ", ".join(f"{name} {n}" for name, n in sorted(Counter(p.channel for p in paid).items()))
            say(f"wave {wave + 1}: {len(paid)} card payments, {ok} SUCCEEDED in {took_s:.2f} s (carried by {carried})")

        await shop.weather.close_of_day()

        say("Evening: the books, and the event stream the shop followed all day", heading=True)
        # Evening: the books. Every payment order as the platform has it now (ListPayments).
        day.payments = await shop.all_payments(merchant_ids)
        # A top-up the shop stopped watching before it ended: how it ended, as the platform has it.
        for t in day.top_ups:
            p = next(x for x in day.payments if x.payment_id == t.payment_id)
            if status_name(p.status) != t.status:
                t.timeline.append(Change(time.monotonic() - t.started, status_name(p.status), p.failure_reason,
                                         p.channel))
                note = p.metadata.get("status_note", "")
                say(f"{t.user_id:<6} top-up {money(t.amount)} by {t.paid_with}: {status_name(p.status)}"
                    + (f" ({note})" if note else ""))
        for user_id in customers:
            day.balances[user_id] = {asset_name(a): await shop.balance(user_id, a)
                                     for a in (pb.ASSET_WALLET, pb.ASSET_POINTS)}

        # The consumer has every payment's final state and every refund as an event.
        def complete() -> bool:
            return (all(consumer.has(f"payment.{status_name(p.status).lower()}", p.payment_id)
                        for p in day.payments)
                    and all(consumer.has("refund.succeeded", r.refund_id) for r in day.refunds))

        day.events_complete = await consumer.settle(complete)
        day.events = sorted(consumer.events, key=lambda e: e.sequence)

        # A consumer restarted with a cursor picks up exactly where the cursor points.
        tea = [e for e in day.events if e.merchant_id == WALLET_MERCHANT]
        cut = len(tea) // 2
        resumed = await consumer.resume(WALLET_MERCHANT, tea[cut].sequence, len(tea) - cut - 1)
        day.resumed_ok = [e.event_id for e in resumed] == [e.event_id for e in tea[cut + 1:]]
        say(f"{len(day.events)} events received; resumed after {WALLET_MERCHANT} event #{cut + 1} (its sequence): "
            f"the next {len(resumed)} {'match' if day.resumed_ok else 'DO NOT match'} the first stream")
    finally:
        await consumer.stop()
    return day
