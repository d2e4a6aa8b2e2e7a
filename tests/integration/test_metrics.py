"""The Prometheus endpoint of a running Platform: the series exist and move as the calls say.

Metrics are process-global, and other tests in this process move them too, so
every assertion is on the difference between two scrapes around our own calls.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dualflow.core.ledger.model import Account, AccountCode, Transfer
from dualflow.core.payments.accounts import Party, account_id, holding_account
from dualflow.core.payments.model import Asset
from dualflow.core.payments.procedures import PollTiming
from dualflow.gateway.server import Platform, ServerConfig
from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc
from dualflow.v1 import payments_pb2 as ppb
from dualflow.v1 import payments_pb2_grpc

SERVICE = "dualflow.v1.Ledger"
Labels = frozenset[tuple[str, str]]


class Scrape:
    """One scrape of /metrics: sample name + labels -> value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when the series does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        out = {}
        for (n, lbls), v in self.samples.items():
            d = dict(lbls)
            le = d.pop("le", None)
            if n == f"{name}_bucket" and le is not None and d == labels:
                out[float(le)] = v
        return dict(sorted(out.items()))


async def scrape(port: int) -> Scrape:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            return resp.read().decode()

    return Scrape(await asyncio.to_thread(fetch))


@pytest.fixture
async def platform(db_url: str) -> AsyncIterator[Platform]:
    p = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, metrics_port=0, grace_s=1,
                              expiry_interval_s=0.05))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def tr(id_: int, dr: int, cr: int, amount: int, flags: int = 0, **kw: int) -> pb.Transfer:
    return pb.Transfer(id=id_, debit_account_id=dr, credit_account_id=cr, amount=amount, currency="CNY", code=1,
                       flags=flags, **kw)


async def test_metrics_endpoint_reports_calls_commits_results_and_expiry(platform: Platform) -> None:
    assert platform.metrics_port
    backend = platform.ledger.store.backend
    before = await scrape(platform.metrics_port)
    handled = "dualflow_grpc_server_handled_total"
    ok_transfers = dict(service=SERVICE, method="CreateTransfers", code="OK")
    bad_transfers = dict(service=SERVICE, method="CreateTransfers", code="INVALID_ARGUMENT")
    latency = dict(service=SERVICE, method="CreateTransfers")

    async with grpc.aio.insecure_channel(platform.address) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        res = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
            pb.Account(id=1, currency="CNY", code=pb.ACCOUNT_CODE_EQUITY),
            pb.Account(id=2, currency="CNY", code=pb.ACCOUNT_CODE_WALLET,
                       flags=pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS),
            pb.Account(id=3, currency="CNY", code=pb.ACCOUNT_CODE_MERCHANT),
        ]))
        assert set(res.results) == {pb.CREATE_ACCOUNT_RESULT_OK}
        topup = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[tr(1, 1, 2, 100), tr(2, 1, 2, 50)]))
        assert set(topup.results) == {pb.CREATE_TRANSFER_RESULT_OK}
        overdraft = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[tr(3, 2, 3, 1_000)]))
        assert list(overdraft.results) == [pb.CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateTransfers(pb.CreateTransfersRequest())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        mid = await scrape(platform.metrics_port)

        # RPCs, by method and code; the latency histogram saw each of them.
        assert mid.get(handled, **ok_transfers) - before.get(handled, **ok_transfers) == 2
        assert mid.get(handled, **bad_transfers) - before.get(handled, **bad_transfers) == 1
        ok_accounts = dict(service=SERVICE, method="CreateAccounts", code="OK")
        assert mid.get(handled, **ok_accounts) - before.get(handled, **ok_accounts) == 1
        seconds = "dualflow_grpc_server_handling_seconds"
        assert mid.get(f"{seconds}_count", **latency) - before.get(f"{seconds}_count", **latency) == 3
        assert 0 < mid.get(f"{seconds}_sum", **latency) - before.get(f"{seconds}_sum", **latency) < 30
        buckets = mid.buckets(seconds, **latency)
        assert list(buckets.values()) == sorted(buckets.values()), "histogram buckets are cumulative"
        assert buckets[float("inf")] == mid.get(f"{seconds}_count", **latency)

        # Group commits: three accepted requests, three commits (they were sequential), six items.
        items = "dualflow_ledger_commit_items"
        assert mid.get(f"{items}_count", backend=backend) - before.get(f"{items}_count", backend=backend) == 3
        assert mid.get(f"{items}_sum", backend=backend) - before.get(f"{items}_sum", backend=backend) == 3 + 2 + 1
        commit = "dualflow_ledger_commit_seconds"
        assert mid.get(f"{commit}_count", backend=backend) - before.get(f"{commit}_count", backend=backend) == 3
        assert 0 < mid.get(f"{commit}_sum", backend=backend) - before.get(f"{commit}_sum", backend=backend) < 30
        assert mid.has("dualflow_ledger_writer_queue_items")
        assert mid.get("dualflow_ledger_writer_queue_items") == 0, "nothing waits once every call answered"

        # Results: the overdraft is counted by its name.
        results = "dualflow_ledger_transfers_total"
        assert mid.get(results, result="EXCEEDS_CREDITS") - before.get(results, result="EXCEEDS_CREDITS") == 1
        assert mid.get(results, result="OK") - before.get(results, result="OK") == 2

        # Expiry: a one-second hold, voided by the platform's own sweeper.
        expired = "dualflow_ledger_pending_expired_total"
        assert mid.has(expired)
        hold = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[
            tr(4, 2, 3, 30, pb.TRANSFER_FLAG_PENDING, timeout_s=1),
        ]))
        assert list(hold.results) == [pb.CREATE_TRANSFER_RESULT_OK]
        deadline = time.monotonic() + 10
        while True:
            after = await scrape(platform.metrics_port)
            if after.get(expired) - mid.get(expired) >= 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert after.get(expired) - mid.get(expired) == 1
        void = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=[2**63 + 4]))
        assert [(t.pending_id, t.flags) for t in void.transfers] == [
            (4, pb.TRANSFER_FLAG_VOID_PENDING | pb.TRANSFER_FLAG_EXPIRY),
        ]
        (wallet,) = (await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[2]))).accounts
        assert wallet.debits_pending == 0


async def test_payment_metrics_move_with_payments(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "dualflow.toml"
    config.write_text('[[merchants]]\nid = "m"\nname = "M"\ncurrencies = ["CNY"]\nfee_bps = 0\n')
    p = Platform(ServerConfig(listen="127.0.0.1:0", db=db_url, metrics_port=0, grace_s=1, expiry_interval_s=0,
                              config_path=str(config), channel="scripted"))
    p.payments.polls = PollTiming(first_ns=10_000_000, window_ns=3600 * 10**9)
    p.payments.poll_tick_s = 0.01
    await p.start()
    try:
        assert p.metrics_port
        wallet = holding_account(Party("user", "u"), Asset.WALLET, "CNY")
        source = account_id("metrics-test-source")
        await p.ledger.create_accounts([wallet, Account(id=source, currency="CNY", code=AccountCode.EQUITY)])
        await p.ledger.create_transfers([Transfer(id=7, debit_account_id=source, credit_account_id=wallet.id,
                                                  amount=100, currency="CNY", code=1)])
        before = await scrape(p.metrics_port)
        total = "dualflow_payments_total"
        ok = dict(asset="WALLET", status="SUCCEEDED", reason="")
        broke = dict(asset="WALLET", status="FAILED", reason="INSUFFICIENT_FUNDS")
        bank_ok = dict(asset="BANK_TRANSFER", status="SUCCEEDED", reason="")
        moved = dict(from_status="PROCESSING", to_status="SUCCEEDED")
        async with grpc.aio.insecure_channel(p.address) as channel:
            stub = payments_pb2_grpc.PaymentGatewayStub(channel)

            def req(rid: str, amount: int, asset: int = ppb.ASSET_WALLET, **kw: object) -> ppb.CreatePaymentRequest:
                return ppb.CreatePaymentRequest(request_id=rid, merchant_id="m", payer="user:u", amount=amount,
                                                currency="CNY", asset=asset, **kw)  # type: ignore[arg-type]

            assert (await stub.CreatePayment(req("1", 60))).status == ppb.PAYMENT_STATUS_SUCCEEDED
            assert (await stub.CreatePayment(req("2", 60))).status == ppb.PAYMENT_STATUS_FAILED
            await stub.CreatePayment(req("1", 60))  # a replay
            bank = await stub.CreatePayment(req("3", 500, ppb.ASSET_BANK_TRANSFER, method=ppb.PaymentMethod(
                bank_account=ppb.BankAccountRef(bank_code="B", account_last4="1234", holder_name="U"))))
            async for _ in stub.WatchPayment(ppb.WatchPaymentRequest(payment_id=bank.payment_id)):
                pass
            for _ in range(2):
                await stub.GetBalance(ppb.GetBalanceRequest(user_id="u", asset=ppb.ASSET_WALLET, currency="CNY"))
        deadline = time.monotonic() + 5
        while True:
            after = await scrape(p.metrics_port)
            if after.has("dualflow_outbox_lag_seconds", consumer="webhooks") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert after.get(total, **ok) - before.get(total, **ok) == 1
        assert after.get(total, **broke) - before.get(total, **broke) == 1
        assert after.get(total, **bank_ok) - before.get(total, **bank_ok) == 1
        replayed = dict(kind="payment", result="replayed")
        assert after.get("dualflow_payment_requests_replayed_total", **replayed) - \
            before.get("dualflow_payment_requests_replayed_total", **replayed) == 1
        seconds = "dualflow_payment_transition_seconds_count"
        assert after.get(seconds, **moved) - before.get(seconds, **moved) == 1
        assert after.get("dualflow_outbox_head_sequence") > 0
        assert after.has("dualflow_outbox_lag_seconds", consumer="webhooks")
        cache = "dualflow_balance_cache_total"
        assert after.get(cache, result="miss") - before.get(cache, result="miss") >= 1
        assert after.get(cache, result="hit") - before.get(cache, result="hit") >= 1
        # No party or merchant in any label (values such as timestamps may contain any digits).
        labels = {v for family in text_string_to_metric_families(after.text) for sample in family.samples
                  for v in sample.labels.values()}
        assert not {"user:u", "u", "m", "merchant:m"} & labels, labels
    finally:
        await p.stop()

