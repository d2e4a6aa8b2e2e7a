"""The `dualflow` command as an operator runs it: serve, signals, health, metrics, demo.

Every test runs the real CLI as a child process on port 0 and talks to it over
loopback. Graceful shutdown is the contract under test: on SIGTERM or SIGINT
the server refuses new calls with UNAVAILABLE, lets in-flight ones finish (or
fail cleanly with UNAVAILABLE, never hang), flushes the writer, prints its
shutdown lines and exits 0, and every acknowledged write is there after a
restart.

Without the server's lame-duck phase (Platform._drain) grpc.aio answers
CANCELLED to calls it has received but not yet handed to the application,
which this test caught. A call still on the wire at the very instant grpc
stops can get CANCELLED from grpc itself whatever the server does, so after
the signal the test sends no new load, only a probe that must be refused as
UNAVAILABLE during the lame-duck phase.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from serve_process import ServeFactory, run_cli, serve_processes  # noqa: F401 - fixture

from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc

pytestmark = pytest.mark.timeout(120)

SHUTTING_DOWN = "dualflow shutting down: draining calls, flushing the writer"
STOPPED = "dualflow stopped"
ACCOUNT_IDS = list(range(1, 9))
CALL_TIMEOUT_S = 30.0


async def open_accounts(stub: ledger_pb2_grpc.LedgerStub) -> None:
    resp = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=i, currency="CNY", code=pb.ACCOUNT_CODE_OPERATING) for i in ACCOUNT_IDS]), timeout=10)
    assert list(resp.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * len(ACCOUNT_IDS)


@dataclass
class Call:
    transfers: list[pb.Transfer]
    code: grpc.StatusCode | None = None
    results: list[int] | None = None
    timestamps: list[int] | None = None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_under_load_drains_calls_and_keeps_acknowledged_writes(
    db_url: str, serve_processes: ServeFactory, sig: signal.Signals
) -> None:
    rng = random.Random(7)
    server = serve_processes(db_url, "--grace", "10", "--metrics-port", "0", name="drain")
    assert server.metrics_url is not None
    calls: list[Call] = []
    next_id = 1_000
    stop_sending = asyncio.Event()

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        await open_accounts(stub)

        async def caller() -> None:
            nonlocal next_id
            while not stop_sending.is_set():
                transfers = []
                for _ in range(rng.randint(1, 2000)):  # big batches: the signal lands mid-commit
                    next_id += 1
                    dr, cr = rng.sample(ACCOUNT_IDS, 2)
                    transfers.append(pb.Transfer(id=next_id, debit_account_id=dr, credit_account_id=cr,
                                                 amount=rng.randint(1, 1000), currency="CNY", code=1))
                call = Call(transfers)
                calls.append(call)
                try:
                    resp = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=transfers),
                                                      timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    call.code = exc.code()
                    return  # the server is going away
                call.code = grpc.StatusCode.OK
                call.results, call.timestamps = list(resp.results), list(resp.timestamps)

        async def probe() -> grpc.aio.AioRpcError:
            """Cheap calls every 5 ms from the signal on, until the first one is refused."""
            while True:
                try:
                    await stub.LookupAccounts(pb.LookupAccountsRequest(ids=ACCOUNT_IDS), timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    return exc
                await asyncio.sleep(0.005)

        callers = [asyncio.create_task(caller()) for _ in range(16)]
        while sum(c.code == grpc.StatusCode.OK for c in calls) < 10:  # the load is up
            await asyncio.sleep(0.02)
        # Signal while the server is inside some calls (not merely holding them in grpc's queue,
        # from where the lame duck refuses them): its own in-flight gauge says when.
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(_ledger_calls_running, server.metrics_url) < 2:
            assert time.monotonic() < deadline, "the server never ran two calls at once"
        stop_sending.set()  # from here on only the calls already in flight, and the probe
        signalled_s = time.monotonic()
        server.signal(sig)
        in_flight = [c for c in calls if c.code is None]
        refusal = await asyncio.wait_for(probe(), timeout=20)
        # Bounded: every call ends within the grace period plus a margin, none hangs.
        await asyncio.wait_for(asyncio.gather(*callers), timeout=20)

    rc = await asyncio.get_running_loop().run_in_executor(None, server.wait, 20)
    exited_s = time.monotonic() - signalled_s
    assert rc == 0, f"exit code {rc} after {sig.name}\n{server.diagnostics()}"
    assert SHUTTING_DOWN in server.lines and STOPPED in server.lines, server.diagnostics()
    assert server.lines.index(SHUTTING_DOWN) < server.lines.index(STOPPED)
    assert exited_s < 15, f"took {exited_s:.1f}s to exit after {sig.name}"
    assert in_flight, "no call was in flight when the signal was sent: the test proved nothing"
    codes = Counter(c.code.name if c.code else "NONE" for c in in_flight)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, f"calls in flight at the signal ended with {codes}\n" \
        f"{server.stderr_tail()}"
    # A new call during the shutdown is refused as UNAVAILABLE (retry elsewhere), not CANCELLED.
    assert refusal.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (refusal.details() or ""), \
        f"first refused call after {sig.name}: {refusal.code()} {refusal.details()!r}"
    # Calls already running when the signal came are drained, not dropped.
    drained = [c for c in in_flight if c.code == grpc.StatusCode.OK]
    assert drained, f"none of the {len(in_flight)} in-flight calls completed: {codes}"
    print(f"{sig.name}: {len(in_flight)} in flight, ended {dict(codes)}, "
          f"exit after {exited_s:.2f}s")

    acknowledged = [c for c in calls if c.code == grpc.StatusCode.OK]
    server = serve_processes(db_url, name="drain-restart")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        refused = [c for c in calls if c.code == grpc.StatusCode.UNAVAILABLE]
        ids = [t.id for c in acknowledged + refused for t in c.transfers]
        stored = {}
        for i in range(0, len(ids), 8000):
            resp = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=ids[i:i + 8000]), timeout=30)
            stored.update((t.id, t) for t in resp.transfers)
        for c in acknowledged:
            assert c.results == [pb.CREATE_TRANSFER_RESULT_OK] * len(c.transfers)
            assert c.timestamps is not None
            for t, ts in zip(c.transfers, c.timestamps, strict=True):
                assert t.id in stored, f"acknowledged transfer {t.id} lost across a graceful {sig.name}"
                assert stored[t.id].timestamp == ts and stored[t.id].amount == t.amount
        # "Cleanly" means not applied: a refused call can be retried without a second thought.
        for c in refused:
            assert not any(t.id in stored for t in c.transfers), "a call answered UNAVAILABLE was applied"
        accounts = (await stub.LookupAccounts(pb.LookupAccountsRequest(ids=ACCOUNT_IDS), timeout=10)).accounts
        assert sum(a.debits_posted for a in accounts) == sum(a.credits_posted for a in accounts)
        assert sum(a.debits_posted for a in accounts) >= sum(t.amount for c in acknowledged for t in c.transfers)
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.diagnostics()


async def test_health_metrics_and_shutdown_of_the_metrics_endpoint(tmp_path: Path,
                                                                   serve_processes: ServeFactory) -> None:
    server = serve_processes(str(tmp_path / "ledger.db"), "--metrics-port", "0", name="metrics")
    assert server.backend == "sqlite"
    assert server.metrics_url is not None, f"no metrics= in the announcement: {server.lines}"
    assert server.metrics_url.startswith("http://127.0.0.1:") and server.metrics_url.endswith("/metrics")
    port = int(server.metrics_url.rsplit(":", 1)[1].split("/")[0])
    assert port > 0, "--metrics-port 0 must report the port it really bound"

    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dualflow.v1.Ledger"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, f"health of {service!r}: {resp}"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        await open_accounts(ledger_pb2_grpc.LedgerStub(channel))

    body = await asyncio.to_thread(_get, server.metrics_url)
    handled = {(s.labels.get("method"), s.labels.get("code")): s.value
               for family in text_string_to_metric_families(body) if family.name == "dualflow_grpc_server_handled"
               for s in family.samples if s.name == "dualflow_grpc_server_handled_total"}
    assert handled.get(("CreateAccounts", "OK")) == 1.0, f"CreateAccounts OK count: {handled}\n{body[:2000]}"

    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0, server.diagnostics()
    assert server.lines[-2:] == [SHUTTING_DOWN, STOPPED], server.lines
    with pytest.raises(urllib.error.URLError):  # the endpoint went away with the process
        _get(server.metrics_url)


def _ledger_calls_running(metrics_url: str) -> float:
    for family in text_string_to_metric_families(_get(metrics_url)):
        if family.name == "dualflow_grpc_server_in_flight":
            return sum(s.value for s in family.samples if s.labels.get("service") == "dualflow.v1.Ledger")
    return 0.0


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


# What `dualflow demo` must show: each payment order of the shop's day, its status and reason.
DEMO_ORDERS = {
    "TOPUP-alice": ("SUCCEEDED", ""),  # the card bank refused the connection: rerouted to the PSP
    "TOPUP-bob": ("SUCCEEDED", ""),  # the card bank's reply was lost: UNKNOWN, resolved by polling
    "TOPUP-carol": ("FAILED", "CARD_DECLINED"),
    "TOPUP-carol-2": ("SUCCEEDED", ""),  # by bank transfer, settled by the rail's callback
    "TOPUP-carol-3": ("SUCCEEDED", ""),  # every answer lost: UNKNOWN past its window, settled by the statement
    "PTS-alice": ("SUCCEEDED", ""),
    "PTS-bob": ("SUCCEEDED", ""),
    "PTS-carol": ("SUCCEEDED", ""),
    "T-1001": ("SUCCEEDED", ""),
    "T-1002": ("SUCCEEDED", ""),
    "T-1003": ("FAILED", "INSUFFICIENT_FUNDS"),
    "T-1004": ("SUCCEEDED", ""),
    "T-1005": ("SUCCEEDED", ""),
    "T-1006": ("SUCCEEDED", ""),
    "T-1007": ("SUCCEEDED", ""),
}
DEMO_CARD_NUMBERS = ("4111111111111111", "6200000000000005", "5555555555554444")
DEMO_RUSH_CARD_NUMBERS = ("4242424242424242", "4012888888881881", "4000056655665556")
# The rush hour: 3 waves of 12 Visa payments (the router may send each to the card bank or the
# PSP), the card bank cut off for the second; its table has a row per wave and card channel.
DEMO_RUSH_WAVES = ("1 fair weather", "2 cardbank outage", "3 cardbank back")
DEMO_RUSH_WAVE_SIZE = 12
DEMO_OUTAGE_TRIES_MAX = 6
# The channel table: our payments per channel and how each channel answered, for the morning's
# scripted top-ups (exact where the day fixes it; polls and callbacks can repeat, so those are
# checked as "some" or "none"); the test adds what the rush-hour table says the rush brought.
DEMO_CHANNELS = {
    "cardbank": {"payments": "2", "succeeded": "1", "failed": "1", "unknown→resolved": "1", "sent: final": "1",
                 "pending": "0", "unknown": "1", "never sent": "1", "callbacks": "0"},
    "wallet-psp": {"payments": "1", "succeeded": "1", "failed": "0", "unknown→resolved": "0", "sent: final": "0",
                   "pending": "1", "unknown": "0", "never sent": "0", "polls: final": "0"},
    "bank-rail": {"payments": "2", "succeeded": "2", "failed": "0", "unknown→resolved": "1", "sent: final": "0",
                  "pending": "1", "unknown": "1", "never sent": "0", "polls: final": "0"},
}
# Each bank's own book against our payments through it: pay lines (succeeded/failed), refunds, for
# the morning (plus the rush hour's, from its table).
DEMO_BOOKS = {
    "cardbank": ("2", "1/1", "0"),
    "wallet-psp": ("1", "1/0", "0"),
    "bank-rail": ("2", "2/0", "0"),
}


def _table(text: str, first_header: str, also: str = "") -> list[dict[str, str]]:
    """The rows of the rich table whose first column is `first_header` (and which has a column
    `also`, where two tables start alike), as dicts by column name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┃") and
                 line.strip("┃").split("┃")[0].strip() == first_header and
                 (not also or also in [c.strip() for c in line.strip("┃").split("┃")]))
    header = [c.strip() for c in lines[start].strip("┃").split("┃")]
    rows = []
    for line in lines[start + 2:]:
        if line.startswith("├"):  # a line between sections of rows
            continue
        if not line.startswith("│"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("│").split("│")), strict=True)))
    return rows


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the mock banks name their key files)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_demo_plays_a_shop_and_balances() -> None:
    # Rich lays tables out for a pipe at its own width; an inherited COLUMNS or forced colour would
    # change the layout this test reads.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    started = time.monotonic()
    done = run_cli(["demo"], timeout_s=90, env=env)
    elapsed_s = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, f"demo exited {done.returncode}\nstdout:\n{out}\nstderr:\n{done.stderr}"
    assert "debits = credits" in out, out
    assert "OUT OF BALANCE" not in out and "dualflow demo FAILED" not in out, out
    assert "dualflow demo finished" in out.splitlines()[-1], out

    # The mock banks ran as their own processes and are gone with the demo.
    folder = re.search(r"SQLite in (\S+)", out)
    assert folder is not None, out
    assert not _processes_mentioning(folder[1]), "mock banks outlived the demo"

    # Cards are shown masked, never in full, on either stream.
    for number in DEMO_CARD_NUMBERS:
        assert number not in out and number not in done.stderr
        assert f"{number[:6]}******{number[-4:]}" in out
    for number in DEMO_RUSH_CARD_NUMBERS:
        assert number not in out and number not in done.stderr

    # The rush hour, as each payment's routing decision recorded it: every payment succeeded; in
    # the outage the card bank carried none and was tried a bounded number of times (each time
    # refused, NOT_SUBMITTED, so the payment went on to the PSP, which never refused one); in
    # fair weather both card channels had a share (Thompson sampling with the demo's seed).
    rush = _table(out, "wave")
    assert [(r["wave"], r["channel"]) for r in rush] == [
        (wave, channel) for wave in DEMO_RUSH_WAVES for channel in ("cardbank", "wallet-psp")], rush
    by_wave = {(r["wave"], r["channel"]): {k: int(v) for k, v in r.items() if k not in ("wave", "channel", "estimate")}
               for r in rush}
    for wave in DEMO_RUSH_WAVES:
        assert sum(by_wave[(wave, c)]["carried"] for c in ("cardbank", "wallet-psp")) == DEMO_RUSH_WAVE_SIZE, rush
        assert sum(by_wave[(wave, c)]["chosen"] for c in ("cardbank", "wallet-psp")) == DEMO_RUSH_WAVE_SIZE, rush
    for (_, channel), r in by_wave.items():
        # The card bank carries what it was chosen for, except what it refused; the PSP carries
        # what it was chosen for and what the card bank refused in the same wave.
        assert r["succeeded"] == r["carried"], rush
        if channel == "cardbank":
            assert r["carried"] == r["chosen"] - r["never reached"], rush
    carried = Counter({c: sum(by_wave[(w, c)]["carried"] for w in DEMO_RUSH_WAVES) for c in ("cardbank", "wallet-psp")})
    never = Counter({c: sum(by_wave[(w, c)]["never reached"] for w in DEMO_RUSH_WAVES)
                     for c in ("cardbank", "wallet-psp")})
    outage = by_wave[("2 cardbank outage", "cardbank")]
    assert outage["carried"] == 0 and outage["never reached"] == outage["chosen"] <= DEMO_OUTAGE_TRIES_MAX, rush
    assert never["wallet-psp"] == 0 and never["cardbank"] == outage["never reached"], rush
    assert all(by_wave[("1 fair weather", c)]["carried"] > 0 for c in ("cardbank", "wallet-psp")), rush

    # The reserve-fund day: each pool against its bank after the window settled, and its checks.
    pools = {row["pool"]: row for row in _table(out, "pool", also="bank before")}
    assert set(pools) == {"pool-a", "pool-b", "pool-c"}, out
    assert all(row["difference"] == "0.00 CNY" and row["bank after"] == row["ledger"] for row in pools.values()), out
    assert re.search(r"Netting CNY: \d+ obligations, gross [\d,.]+ CNY → net [\d,.]+ CNY", out), out
    for check in ("every top-up landed in the pool at the user's own bank",
                  "the clearing window SETTLED, moving only the net over the rail",
                  "a settlement reply was lost; the driver asked the rail and did not pay twice",
                  "every pool's ledger balance equals the bank's record of the pool account",
                  "no money created or lost", "the reserve-fund invariant holds"):
        assert re.search(rf"ok +{re.escape(check)}", out), check

    orders = {row["trade order"]: row for row in _table(out, "trade order")}
    assert {k: (row["status"], row["reason"]) for k, row in orders.items()} == DEMO_ORDERS, out
    assert orders["T-1005"]["refunded"] == "80.00"
    assert orders["T-1001"]["fee"] == "1.01" and orders["T-1003"]["fee"] == ""  # 60 bps; a failure charges none
    assert re.search(r"T-1003 carol +88\.00 CNY by WALLET at bookshop: FAILED INSUFFICIENT_FUNDS", out), out

    # WatchPayment's view of each top-up, with the channel that carried it and the attempt.
    top_ups = [(row["customer"], row["paid with"], row["channel"], row["attempt"], row["states"])
               for row in _table(out, "customer")]
    assert [t[:4] for t in top_ups] == [
        ("alice", "visa 411111******1111", "wallet-psp", "2"),  # the card bank was down: the PSP took it
        ("bob", "unionpay 620000******0005", "cardbank", "1"),
        ("carol", "mastercard 555555******4444", "cardbank", "1"),
        ("carol", "ICBC account ****6789", "bank-rail", "1"),
        ("carol", "ICBC account ****6789", "bank-rail", "1"),  # the shop moved on; reconciliation settled it
    ], top_ups
    states = [t[4] for t in top_ups]
    # The move to the PSP shows as its own change where WatchPayment streams payment.rerouted, else
    # with the final state.
    rerouted = r"(PROCESSING via wallet-psp \S+ → SUCCEEDED|SUCCEEDED via wallet-psp)"
    assert re.fullmatch(rf"CREATED → PROCESSING \S+ → {rerouted} \S+", states[0]), states
    # The lost reply: UNKNOWN, then SUCCEEDED (by polling: see the channel table).
    assert re.fullmatch(r"CREATED → PROCESSING \S+ → UNKNOWN \S+ → SUCCEEDED \S+", states[1]), states
    assert re.fullmatch(r"CREATED → PROCESSING \S+ → FAILED \(CARD_DECLINED\) \S+", states[2]), states
    assert re.fullmatch(r"CREATED → PROCESSING \S+ → SUCCEEDED \S+", states[3]), states
    # Every answer of the rail lost, its callback dropped: UNKNOWN when the shop moved on and when the
    # polling window closed; SUCCEEDED by the rail's statement at close of day.
    assert re.fullmatch(r"CREATED → PROCESSING \S+ → UNKNOWN \S+ → SUCCEEDED \S+", states[4]), states
    assert re.search(r"carol +top-up 120\.00 CNY by ICBC account \*\*\*\*6789: still UNKNOWN after 2 s", out), out
    resolved = re.search(r"carol +top-up 120\.00 CNY by ICBC account \*\*\*\*6789: SUCCEEDED \(resolved by "
                         r"reconciliation (rcn_bank-rail_\d{4}-\d\d-\d\d_1)\)", out)
    assert resolved is not None, out

    channels = {row["channel"]: row for row in _table(out, "channel", also="never sent")}
    assert set(channels) == set(DEMO_CHANNELS), channels
    for name, morning in DEMO_CHANNELS.items():
        # The rush hour's card payments: each answered final at once by the channel that carried
        # it, or refused (never sent) by the card bank in its outage.
        expected = {k: str(int(v) + (carried[name] if k in ("payments", "succeeded", "sent: final") else
                                     never[name] if k == "never sent" else 0))
                    for k, v in morning.items()}
        assert {k: channels[name][k] for k in expected} == expected, (name, channels[name])
    assert channels["cardbank"]["polls: final"] == "1"  # the lost reply, resolved by polling
    for name in ("wallet-psp", "bank-rail"):  # pending at the channel, then its callback (no poll heard it)
        assert int(channels[name]["callbacks"]) >= 1, channels[name]

    books = {row["bank"]: row for row in _table(out, "bank")}
    expected_books = {}
    for name, (pay, ok_failed, refunds) in DEMO_BOOKS.items():
        ok, failed = ok_failed.split("/")
        expected_books[name] = (str(int(pay) + carried[name]), f"{int(ok) + carried[name]}/{failed}", refunds)
    assert {name: (row["book: pay"], row["book: ok/failed"], row["book: refunds"]) for name, row in books.items()} \
        == expected_books, books
    for name, row in books.items():
        assert (row["ours: payments"], row["ours: ok/failed"], row["ours: refunds"]) == expected_books[name], row
        assert row["per instruction"] == "agree", row

    # The router's view in the evening and its decisions all day: bob's UnionPay and carol's
    # Mastercard could only go to the card bank (the PSP takes Visa only), the transfer only to the
    # rail; the PSP took each refused payment as the fallback (alice's and the outage's).
    router = {row["channel"]: row for row in _table(out, "channel", also="breaker")}
    # The reserve-fund day's rails (read before that day) took none of the shop's: a routing rule.
    assert set(router) == {"cardbank", "wallet-psp", "bank-rail", "rail-a", "rail-b", "rail-c"}, router
    for rail in ("rail-a", "rail-b", "rail-c"):
        assert router[rail]["decisions"] == "" and router[rail]["excluded from decisions"].startswith(
            "MERCHANT_RULE"), router
    assert "ONLY_CANDIDATE 2" in router["cardbank"]["decisions"].split(", "), router
    assert "CARD_BIN 2" in router["wallet-psp"]["excluded from decisions"].split(", "), router
    fallbacks = [d for d in router["wallet-psp"]["decisions"].split(", ") if d.startswith("FALLBACK ")]
    assert fallbacks == [f"FALLBACK {1 + never['cardbank']}"], router
    assert router["bank-rail"]["decisions"] == "ONLY_CANDIDATE 2", router
    chosen = Counter({c: sum(by_wave[(w, c)]["chosen"] for w in DEMO_RUSH_WAVES) for c in ("cardbank", "wallet-psp")})
    assert (f"Routing decisions all day (dualflow_routing_decisions_total): cardbank {3 + chosen['cardbank']}; "
            f"wallet-psp {chosen['wallet-psp'] + 1 + never['cardbank']} ({1 + never['cardbank']} as the fallback); "
            f"bank-rail 2") in out, out

    assert "the same payment pay_" in out
    assert "refused: FAILED_PRECONDITION REFUND_EXCEEDS_CAPTURED" in out
    wallets = {row["user"]: row["wallet"] for row in _table(out, "user")}
    assert wallets == {"alice": "576.00 CNY", "bob": "340.00 CNY", "carol": "170.00 CNY"}
    events = {row["type"]: row["total"] for row in _table(out, "type")}
    assert events["payment.unknown"] == "2" and events["payment.rerouted"] == str(1 + never["cardbank"]), events
    assert events["payment.created"] == str(5 + len(DEMO_RUSH_WAVES) * DEMO_RUSH_WAVE_SIZE), events
    assert events["refund.succeeded"] == "1", events

    # Close of day: each channel's statement reconciled; every line of ours MATCHED but the one it
    # settled; every fee as contracted and posted; nothing left for a person.
    recon = {row["channel"]: row for row in _table(out, "channel", also="settled")}
    card_lines, psp_lines = 2 + carried["cardbank"], 1 + carried["wallet-psp"]  # bob, carol's decline; alice
    assert {name: (row["run"], row["state"], row["lines"], row["ours"], row["classes"], row["settled"], row["open"])
            for name, row in recon.items()} == {
        "cardbank": (f"rcn_cardbank_{resolved[1][-12:-2]}_1", "COMPLETED", str(card_lines), str(card_lines),
                     f"MATCHED {card_lines}", "0", "0"),
        "wallet-psp": (f"rcn_wallet-psp_{resolved[1][-12:-2]}_1", "COMPLETED", str(psp_lines), str(psp_lines),
                       f"MATCHED {psp_lines}", "0", "0"),
        "bank-rail": (resolved[1], "COMPLETED", "2", "2", "MATCHED 1, STATUS_MISMATCH 1", "1", "0"),
    }, recon
    fee_lines = {"cardbank": card_lines - 1, "wallet-psp": psp_lines, "bank-rail": 2}  # a decline charges none
    for name, row in recon.items():
        assert row["fees (posted)"].endswith(f"CNY ({fee_lines[name]}/{fee_lines[name]})"), row
    assert out.count("  ok   ") == 23 and "FAIL " not in out, out  # 15 of the shop's day, 8 of the pools'
    print(f"demo: {elapsed_s:.1f}s")
    assert elapsed_s < 30
