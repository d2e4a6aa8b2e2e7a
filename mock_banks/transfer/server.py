"""The mock transfer bank as a program: the rail's HTTP API, callbacks, and the admin endpoint.

    python -m dualflow.gateway.cli mock-bank transfer --hmac-key-file KEY [--hmac-key-file OLD]
        [--host 127.0.0.1] [--port 0] [--admin-port 0] [--seed N] [--callback-url URL]
        [--profile JSON]

prints `mock-bank transfer listening port=P admin=http://127.0.0.1:A` once both ports are bound
and exits 0 on SIGTERM or SIGINT. The first key signs, every key verifies (key rotation).
Faults come from the profile (bank.py lists the fields); `outage` closes the API's listening
socket and every open connection, so clients see connections refused until it is lifted.

The API also answers `GET /balances/{currency}`: our balance at the bank (bank.py `balance`),
signed like every reply; and `GET /accounts/{bank_code}/{number}/balance`: one account's own
balance (a reserve-fund pool's, say) as the bank keeps it, `{"bank_code", "last4", "balance",
"held", "as_of"}` (bank.py `account_balance`: `balance` minor units with every settled transfer
applied, fees not taken from it; `held` what accepted, unsettled transfers will debit, still inside
`balance`; `as_of` ISO 8601 UTC), for an account registered by its full number with a balance;
else a signed 404 NOT_FOUND (400 INVALID_ACCOUNT when malformed). Accounts keep no currency: the
balance is in whatever currency the account was registered for. The reply names the account by
its last four digits only, never its number. Both balance endpoints honour `bad_signature_rate`
(drawn only while it is above 0, so a seeded run's decisions stay put), no other fault.

`GET /statements/{date}` is the whole network's statement of that UTC day: every transfer that
became final on it, whoever's. `GET /statements/{date}?account=<bank_code>:<number>` is one
account's, as a real bank gives it: only the transfers that account (registered or named by that
full number) is the debtor or the creditor of, and the trailer's count and totals over those lines
only. A malformed `account` (not `<bank_code>:<number>`, given twice, a bad code or number) is a
signed 400 INVALID_ACCOUNT. The signed PATH of a request and of its reply is the raw path with its
query string, so a statement cannot be passed off as another account's.

Admin (HTTP JSON, no auth, loopback): GET/PUT /profile, GET /book, GET /statement?date=[&account=],
GET/PUT /accounts (register accounts with balances, closed or invalid ones), GET /callbacks
(each notification's delivery attempts and whether it was acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from yarl import URL

from .auth import Keys, Nonces, check
from .bank import Bank, Draws, Notification, RequestError

log = logging.getLogger("mock_banks.transfer")
WINDOW_S = 300


@dataclass
class Delivery:
    event_id: str
    url: str
    attempts: int = 0
    acknowledged: int = 0  # how many times (a duplicate delivery is acknowledged again)
    dropped: bool = False  # never sent (callback_drop_rate)


class TransferBankServer:
    def __init__(self, bank: Bank, keys: Keys, host: str, port: int, admin_port: int) -> None:
        self.bank, self.keys = bank, keys
        self.host, self.port, self.admin_port = host, port, admin_port
        self.nonces = Nonces(WINDOW_S)
        self.deliveries: dict[str, Delivery] = {}
        self._rng = random.Random(bank.rng.random())  # callback jitter, apart from the decision draws
        self._drops = random.Random(0xD809)  # callback_drop_rate, apart from both
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.base_events.Server | None = None
        self._session: ClientSession | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ---- lifecycle
    async def start(self) -> None:
        api = web.Application(client_max_size=1 << 20)
        api.router.add_post("/transfers", self.post_transfer)
        api.router.add_get("/transfers/{id}", self.get_transfer)
        api.router.add_post("/transfers/{id}/return", self.post_return)
        api.router.add_get("/statements/{date}", self.get_statement)
        api.router.add_get("/balances/{currency}", self.get_balance)
        api.router.add_get("/accounts/{bank_code}/{number}/balance", self.get_account_balance)
        # Cancel a handler whose client went away: a held (timed-out) request never completes.
        self.api_runner = web.AppRunner(api, handle_signals=False, access_log=None, handler_cancellation=True,
                                        shutdown_timeout=0.5)
        await self.api_runner.setup()
        admin = web.Application()
        admin.router.add_get("/profile", self.admin_get_profile)
        admin.router.add_put("/profile", self.admin_put_profile)
        admin.router.add_get("/book", self.admin_book)
        admin.router.add_get("/statement", self.admin_statement)
        admin.router.add_get("/accounts", self.admin_get_accounts)
        admin.router.add_put("/accounts", self.admin_put_accounts)
        admin.router.add_get("/callbacks", self.admin_callbacks)
        self.admin_runner = web.AppRunner(admin, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self.admin_runner.setup()
        site = web.TCPSite(self.admin_runner, "127.0.0.1", self.admin_port)
        await site.start()
        self.admin_port = self.admin_runner.addresses[0][1]
        await self._listen()
        if self.bank.profile["outage"]:
            self._refuse()
        self._session = ClientSession(timeout=ClientTimeout(total=5))
        self._schedule()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._refuse()
        if self._session is not None:
            await self._session.close()
        await self.api_runner.cleanup()
        await self.admin_runner.cleanup()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.api_runner.server is not None
        self._listener = await loop.create_server(self.api_runner.server, self.host, self.port,
                                                  reuse_address=True, family=socket.AF_INET)
        self.port = self._listener.sockets[0].getsockname()[1]

    def _refuse(self) -> None:
        """An outage: stop listening and drop every connection, so clients get refused."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        server = self.api_runner.server
        if server is not None:
            for conn in server.connections:
                conn.force_close()

    # ---- the rail's API
    async def _authentic(self, request: web.Request) -> tuple[bytes, str, web.Response | None]:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        error, kid = check(self.keys, self.nonces, request.method, request.raw_path, headers, body,
                           WINDOW_S)
        if error:
            return body, kid, self._reply(request, kid, 401, {"error": {"code": error, "message": "not authentic"}})
        return body, kid, None

    async def _serve(self, request: web.Request, act: Any) -> web.StreamResponse:
        """The profile's faults around one authentic request: latency, no reply, a lost reply,
        a late reply, a badly signed reply."""
        body, kid, refused = await self._authentic(request)
        if refused is not None:
            return refused
        p = self.bank.profile
        draws = self.bank.draw()
        delay_ms = p["latency_ms"] + draws.latency * p["jitter_ms"]
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if draws.timeout < p["timeout_rate"]:
            await asyncio.sleep(p["hold_ms"] / 1000)  # not processed; the client gives up first
            return self._drop(request)
        try:
            status, payload = act(body, draws)
        except RequestError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message}}
        if draws.lost < p["lost_reply_rate"]:
            return self._drop(request)  # processed; the answer never arrives
        if p["late_reply_ms"]:
            await asyncio.sleep(p["late_reply_ms"] / 1000)
        corrupt = draws.bad_signature < p["bad_signature_rate"]
        return self._reply(request, kid, status, payload, corrupt=corrupt)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        request.protocol.force_close()
        return web.Response(status=500)  # never written: the transport is gone

    def _reply(self, request: web.Request, kid: str, status: int, payload: Any, *, corrupt: bool = False,
               text: str | None = None) -> web.Response:
        if text is not None:
            raw, content_type = text.encode(), "text/csv"
        else:
            raw, content_type = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
        headers = self.keys.headers(request.method, request.raw_path, raw, kid or None, corrupt)
        headers["Content-Type"] = f"{content_type}; charset=utf-8"
        return web.Response(status=status, body=raw, headers=headers)

    def _notify(self, notifications: list[Notification]) -> None:
        for n in notifications:
            rate = self.bank.profile["callback_drop_rate"]
            if rate and self._drops.random() < rate:
                self.deliveries[n.event_id] = Delivery(n.event_id, n.callback_url, dropped=True)
                log.info("callback %s dropped (callback_drop_rate)", n.event_id)
                continue
            self._spawn(self._deliver(n))
        self._schedule()

    async def post_transfer(self, request: web.Request) -> web.StreamResponse:
        def act(body: bytes, draws: Draws) -> tuple[int, Any]:
            status, transfer, notes = self.bank.create(_json(body), draws, time.time())
            self._notify(notes)
            return status, transfer.wire()

        return await self._serve(request, act)

    async def post_return(self, request: web.Request) -> web.StreamResponse:
        original_id = request.match_info["id"]

        def act(body: bytes, draws: Draws) -> tuple[int, Any]:
            status, transfer, notes = self.bank.create_return(original_id, _json(body), draws, time.time())
            self._notify(notes)
            return status, transfer.wire()

        return await self._serve(request, act)

    async def get_transfer(self, request: web.Request) -> web.StreamResponse:
        def act(body: bytes, draws: Draws) -> tuple[int, Any]:
            self._notify(self.bank.due(time.time()))
            return 200, self.bank.get(request.match_info["id"], time.time()).wire()

        return await self._serve(request, act)

    async def get_statement(self, request: web.Request) -> web.StreamResponse:
        body, kid, refused = await self._authentic(request)
        if refused is not None:
            return refused
        date = request.match_info["date"]
        if not _is_date(date):
            return self._reply(request, kid, 400, {"error": {"code": "INVALID_REQUEST", "message": "YYYY-MM-DD"}})
        try:
            account = _account_param(request.query.getall("account", []))
            self._notify(self.bank.due(time.time()))
            text = self.bank.statement(date, time.time(), account)
        except RequestError as exc:
            return self._reply(request, kid, exc.status, {"error": {"code": exc.code, "message": exc.message}})
        corrupt = self.bank.draw().bad_signature < self.bank.profile["bad_signature_rate"]
        reply = self._reply(request, kid, 200, None, corrupt=corrupt, text=text)
        if self.bank.profile["statement_fault"] == "bad_checksum":
            reply.body = (reply.body or b"") + b"# tampered after signing\n"  # type: ignore[operator]
        return reply

    async def get_balance(self, request: web.Request) -> web.StreamResponse:
        """Our balance in one currency, `{currency, amount, as_of_unix_s}`, signed like every reply."""
        body, kid, refused = await self._authentic(request)
        if refused is not None:
            return refused
        currency = request.match_info["currency"]
        if len(currency) != 3 or not currency.isascii() or not currency.isupper():
            return self._reply(request, kid, 400, {"error": {"code": "INVALID_REQUEST", "message": "currency"}})
        now = time.time()
        self._notify(self.bank.due(now))
        rate = self.bank.profile["bad_signature_rate"]  # drawn only while above 0: seeded decisions stay put
        corrupt = bool(rate) and self.bank.draw().bad_signature < rate
        return self._reply(request, kid, 200, {"currency": currency, "amount": self.bank.balance(currency, now),
                                               "as_of_unix_s": int(now)}, corrupt=corrupt)

    async def get_account_balance(self, request: web.Request) -> web.StreamResponse:
        """One registered account's balance, signed like every reply (never echoing its number)."""
        body, kid, refused = await self._authentic(request)
        if refused is not None:
            return refused
        now = time.time()
        self._notify(self.bank.due(now))  # settle what is due first, so its callbacks go out
        try:
            status, payload = 200, self.bank.account_balance(request.match_info["bank_code"],
                                                              request.match_info["number"], now)
        except RequestError as exc:
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message}}
        rate = self.bank.profile["bad_signature_rate"]  # drawn only while above 0: seeded decisions stay put
        corrupt = bool(rate) and self.bank.draw().bad_signature < rate
        return self._reply(request, kid, status, payload, corrupt=corrupt)

    # ---- settlement clock and callbacks
    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.bank.next_due()
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - time.time()) + 0.001, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._notify(self.bank.due(time.time()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, n: Notification) -> None:
        """POST a notification until it is acknowledged (a 2xx); once more if the profile asks
        for a duplicate. Each attempt is signed afresh (new timestamp and nonce)."""
        delivery = self.deliveries.setdefault(n.event_id, Delivery(n.event_id, n.callback_url))
        raw = json.dumps(n.body, separators=(",", ":")).encode()
        path = URL(n.callback_url).raw_path
        for _copy in range(2 if n.duplicate else 1):
            delay_s = self.bank.profile["callback_retry_ms"] / 1000
            while True:
                delivery.attempts += 1
                corrupt = self._rng.random() < self.bank.profile["bad_signature_rate"]
                headers = self.keys.headers("POST", path, raw, None, corrupt)
                headers["Content-Type"] = "application/json"
                try:
                    assert self._session is not None
                    async with self._session.post(URL(n.callback_url, encoded=True), data=raw,
                                                  headers=headers) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            delivery.acknowledged += 1
                            break
                except Exception as exc:  # noqa: BLE001 - whatever failed, redeliver later
                    log.debug("callback %s: %s", n.event_id, exc.__class__.__name__)
                await asyncio.sleep(delay_s * (0.5 + self._rng.random()))
                delay_s = min(delay_s * 2, 2.0)
            await asyncio.sleep(0.01 + self._rng.random() * 0.05)

    # ---- admin
    async def admin_get_profile(self, request: web.Request) -> web.Response:
        return web.json_response(self.bank.profile)

    async def admin_put_profile(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            was_out = self.bank.profile["outage"]
            profile = self.bank.set_profile(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if profile["outage"] and not was_out:
            self._refuse()
        elif was_out and not profile["outage"]:
            await self._listen()
        return web.json_response(profile)

    async def admin_book(self, request: web.Request) -> web.Response:
        self._notify(self.bank.due(time.time()))
        return web.json_response(self.bank.book(time.time()))

    async def admin_statement(self, request: web.Request) -> web.Response:
        date = request.query.get("date", "")
        if not _is_date(date):
            return web.json_response({"error": "date=YYYY-MM-DD"}, status=400)
        try:
            account = _account_param(request.query.getall("account", []))
            self._notify(self.bank.due(time.time()))
            text = self.bank.statement(date, time.time(), account)
        except RequestError as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.Response(text=text, content_type="text/csv")

    async def admin_get_accounts(self, request: web.Request) -> web.Response:
        return web.json_response(self.bank.account_list())

    async def admin_put_accounts(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.bank.put_accounts(await request.json()))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def admin_callbacks(self, request: web.Request) -> web.Response:
        return web.json_response([vars(d) for d in self.deliveries.values()])


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError(400, "INVALID_REQUEST", "the body is not JSON") from None


def _account_param(values: list[str]) -> tuple[str, str] | None:
    """`account=<bank_code>:<number>` (at most once) as (bank code, number); None without it."""
    if not values:
        return None
    bank_code, sep, number = values[0].partition(":")
    if len(values) > 1 or not sep:
        raise RequestError(400, "INVALID_ACCOUNT", "account must be <bank_code>:<number>, once")
    return bank_code, number  # the bank checks both parts


def _is_date(text: str) -> bool:
    try:
        return len(text) == 10 and time.strptime(text, "%Y-%m-%d") is not None
    except ValueError:
        return False


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dualflow mock-bank transfer",
                                     description="a mock account-to-account transfer / payout bank")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the rail's API port (0: any free one)")
    parser.add_argument("--admin-port", type=int, default=0, help="the admin endpoint's port (loopback)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every decision, so a run can be replayed")
    parser.add_argument("--hmac-key-file", action="append", required=True, type=Path,
                        help="a shared key in hex; give it twice while keys roll (the first signs)")
    parser.add_argument("--callback-url", default="", help="where to POST notifications when a transfer "
                                                           "names none")
    parser.add_argument("--profile", default="{}", help="a partial behaviour profile as JSON")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(list(argv))


def _read_key(path: Path) -> bytes:
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise ValueError("an HMAC key must be at least 16 bytes")
    return key


async def _run(args: argparse.Namespace, keys: Keys, profile: dict[str, Any]) -> None:
    bank = Bank(args.seed, profile, args.callback_url)
    server = TransferBankServer(bank, keys, args.host, args.port, args.admin_port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock-bank transfer listening port={server.port} admin=http://127.0.0.1:{server.admin_port}", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        keys = Keys([_read_key(p) for p in args.hmac_key_file])
        profile = json.loads(args.profile)
        Bank(0, profile)  # validates the profile before anything binds
    except (OSError, ValueError) as exc:
        print(f"mock-bank transfer: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_run(args, keys, profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
