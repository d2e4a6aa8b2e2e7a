"""`dualflow mock-bank iso8583`: the mock card bank as its own program.

Listens on TCP for length-framed ISO 8583 (see `wire.py`), answers each request in its own task
(so replies come back in whatever order latency and jitter make, matched by the client on the
STAN), and serves the uniform admin endpoint over HTTP (see mock_banks/launcher.py), plus
`GET /stats` (connections, sign-ons, echoes, queries, duplicates, bad MACs, unreadable frames)
and `GET /balance?currency=` (our balance at the bank, MACed: bank.py `balance`; in real life a
balance report next to the settlement files).

A frame the bank cannot parse is dropped without an answer: without a trustworthy STAN it cannot
say whom it answers. A request with a bad MAC is answered 63 and not booked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

from aiohttp import web

from . import wire
from .bank import Bank, Profile

log = logging.getLogger("mock_bank.iso8583")

RESPONSE_MTI = {"0200": "0210", "0400": "0410", "0800": "0810"}


class CardBankServer:
    def __init__(self, bank: Bank, key: bytes, host: str, port: int) -> None:
        self.bank = bank
        self.key = key
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> int:
        self._server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def set_outage(self, outage: bool) -> None:
        if outage:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._clients):
                writer.transport.abort()  # a reset, as when a bank's front end goes away
            self._clients.clear()
        elif self._server is None:
            await self.listen()

    async def close(self) -> None:
        await self.set_outage(True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.bank.profile.outage:
            writer.transport.abort()
            return
        self.bank.stats.connections += 1
        self._clients.add(writer)
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                if length == 0:
                    self.bank.stats.unreadable += 1
                    break  # the stream cannot be trusted any more
                body = await reader.readexactly(length)
                task = asyncio.create_task(self._answer(body, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    def _send(self, writer: asyncio.StreamWriter, mti: str, fields: dict[int, str | bytes], corrupt: bool = False) -> None:
        message = wire.sign(RESPONSE_MTI[mti], fields, self.key)
        if corrupt:
            message = message[:-1] + bytes([message[-1] ^ 0x5A])
        if not writer.is_closing():
            writer.write(wire.frame(message))

    async def _answer(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        bank = self.bank
        try:
            mti, request = wire.parse(body)
        except wire.WireError as exc:
            bank.stats.unreadable += 1
            log.info("unreadable message dropped: %s", exc)
            return
        if mti not in RESPONSE_MTI:
            bank.stats.unreadable += 1
            return
        try:
            tlv = wire.tlv_parse(str(request.get(48, "")))
        except wire.WireError:
            tlv = None
        if not wire.mac_ok(body, request, self.key):
            bank.stats.bad_macs += 1
            reply = {n: request[n] for n in (3, 4, 7, 11, 41, 42, 49, 70) if n in request}
            reply[39] = "63"
            if tlv and tlv.get("II"):
                reply[48] = wire.tlv_build({"II": tlv["II"]})
            self._send(writer, mti, reply)
            return
        if tlv is None:
            self._send(writer, mti, {**{n: request[n] for n in (3, 4, 7, 11, 49, 70) if n in request}, 39: "30"})
            return
        network = str(request.get(70, "")) if mti == "0800" else ""
        if network in ("001", "301"):
            if network == "001":
                bank.stats.sign_ons += 1
            else:
                bank.stats.echoes += 1
            # Answered by the front end at once: no latency, no faults (an echo slower than the
            # client's echo timeout would make it cut healthy links).
            self._send(writer, mti, {7: request.get(7, "0000000000"), 11: request[11], 70: network, 39: "00"}
                       if 11 in request else {70: network, 39: "00"})
            return
        if mti == "0800" and network != "900":
            self._send(writer, mti, {**{n: request[n] for n in (7, 11, 70) if n in request}, 39: "12"})
            return
        bank.stats.requests += 1
        draws = bank.draw()
        if draws.delay_s:
            await asyncio.sleep(draws.delay_s)
        if draws.timeout:
            bank.stats.dropped += 1
            return
        if mti == "0800":
            reply = bank.query(request, tlv)
        elif mti == "0400":
            reply = bank.reverse(request, tlv)
        elif str(request.get(3, "")).startswith("20"):
            reply = bank.refund(request, tlv, draws)
        else:
            reply = bank.purchase(request, tlv, draws)
        if draws.lost:
            bank.stats.dropped += 1
            return
        if bank.profile.late_reply_ms:
            await asyncio.sleep(bank.profile.late_reply_ms / 1000)
        self._send(writer, mti, reply, corrupt=draws.bad_mac)


def admin_app(server: CardBankServer) -> web.Application:
    bank = server.bank

    async def get_profile(_request: web.Request) -> web.Response:
        return web.json_response(asdict(bank.profile))

    async def put_profile(request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("a JSON object of profile fields")
            was_out = bank.profile.outage
            bank.profile.update(changes)
            if bank.profile.phantom_amount:
                bank.invent(bank.profile.phantom_amount)
                bank.profile.phantom_amount = 0
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if bank.profile.outage != was_out:
            await server.set_outage(bank.profile.outage)
        return web.json_response(asdict(bank.profile))

    async def get_book(_request: web.Request) -> web.Response:
        return web.json_response(bank.book_view())

    async def get_statement(request: web.Request) -> web.Response:
        day = request.query.get("date", "")
        try:
            date.fromisoformat(day)
        except ValueError:
            return web.json_response({"error": "date=YYYY-MM-DD required"}, status=400)
        return web.Response(body=bank.statement(day, server.key), content_type="text/csv")

    async def get_balance(request: web.Request) -> web.Response:
        currency = request.query.get("currency", "")
        if len(currency) != 3 or not currency.isascii() or not currency.isupper():
            return web.json_response({"error": "currency=XXX required"}, status=400)
        body = bank.balance(currency, server.key, int(time.time()))
        # The profile's bad_signature_rate: a report the client must not believe (drawn only while it
        # is above 0, so a seeded run's decisions stay the same).
        if bank.profile.bad_signature_rate and bank.draw().bad_mac:
            body = body[:-2] + (b"0" if body[-2:-1] != b"0" else b"1") + b"\n"
        return web.Response(body=body, content_type="text/plain")

    async def get_stats(_request: web.Request) -> web.Response:
        return web.json_response({**asdict(bank.stats), "open_connections": server.open_connections})

    app = web.Application()
    app.add_routes([web.get("/profile", get_profile), web.put("/profile", put_profile), web.get("/book", get_book),
                    web.get("/statement", get_statement), web.get("/balance", get_balance),
                    web.get("/stats", get_stats)])
    return app


async def run(args: argparse.Namespace, key: bytes, profile: Profile) -> int:
    server = CardBankServer(Bank(args.seed, profile), key, args.host, args.port)
    outage_at_start = profile.outage
    profile.outage = False
    port = await server.listen()
    runner = web.AppRunner(admin_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.admin_port)
    await site.start()
    admin_port = runner.addresses[0][1]
    if outage_at_start:
        profile.outage = True
        await server.set_outage(True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock-bank iso8583 listening port={port} admin=http://{args.host}:{admin_port}", flush=True)
    await stop.wait()
    await server.close()
    await runner.cleanup()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dualflow mock-bank iso8583",
                                     description="a mock card bank speaking ISO 8583 over TCP (loopback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="ISO 8583 port; 0 picks a free one")
    parser.add_argument("--admin-port", type=int, default=0, help="admin HTTP port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random decision")
    parser.add_argument("--mac-key-file", required=True, help="file holding the AES-128 MAC key as 32 hex digits")
    parser.add_argument("--profile", default="{}", help="initial behaviour profile as JSON (partial)")
    args = parser.parse_args(argv)
    try:
        key = bytes.fromhex(Path(args.mac_key_file).read_text().strip())
        if len(key) != 16:
            raise ValueError("the MAC key must be 16 bytes (32 hex digits)")
        profile = Profile()
        changes = json.loads(args.profile)
        if not isinstance(changes, dict):
            raise ValueError("--profile must be a JSON object")
        profile.update(changes)
    except (OSError, ValueError) as exc:
        print(f"mock-bank iso8583: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run(args, key, profile))
