"""Server assembly: storage, domain services, gRPC server, metrics endpoint, shutdown.

`Platform` owns the lifecycle of one dualflow process: open the store, start
the ledger, bind gRPC (health and reflection included) and the Prometheus
endpoint; on stop, refuse new calls, drain in-flight ones, flush the writer and
close storage, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from dualflow.adapters.dispatcher import FinancialGateway
from dualflow.adapters.registry import build as build_adapter
from dualflow.clearing.attribution import Attribution
from dualflow.clearing.bank_check import PoolBankCheck
from dualflow.clearing.feed import ObligationFeed
from dualflow.clearing.gate import CapGate
from dualflow.clearing.service import ClearingService
from dualflow.clearing.settlement import SettlementExecutor
from dualflow.core.balance_check import BalanceCheck
from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.core.payments.dispatch import ChannelAnswer, ChannelDispatcher
from dualflow.core.payments.model import Asset, Merchant, PaymentStatus
from dualflow.core.payments.records import PAYMENT_SCHEMA, payment_from_body
from dualflow.core.payments.resolution import ChannelFees, StatementResolver
from dualflow.core.payments.service import PaymentService
from dualflow.core.payments.vault import VAULT_SCHEMA, CardVault, KeyRing
from dualflow.core.webhooks.delivery import WEBHOOK_SCHEMA, WebhookDispatcher, WebhookRegistry
from dualflow.reconciliation.ours import router_fee_model
from dualflow.reconciliation.runner import InstructionSource
from dualflow.reconciliation.scheduler import DailyReconciliation
from dualflow.reconciliation.service import ReconciliationService
from dualflow.routing.control import RoutingControl
from dualflow.routing.policy import DAY_S
from dualflow.v1 import clearing_pb2, clearing_pb2_grpc, ledger_pb2, ledger_pb2_grpc, payments_pb2, payments_pb2_grpc, \
    reconciliation_pb2, reconciliation_pb2_grpc, routing_pb2, routing_pb2_grpc

from .auth import AccessControl, server_credentials
from .clearing_servicer import ClearingServicer
from .config import PlatformConfig, load_config
from .interceptors import ServerInterceptor
from .ledger_servicer import LedgerServicer
from .payment_servicer import PaymentGatewayServicer
from .reconciliation_servicer import ReconciliationServicer
from .routing_servicer import RoutingAdminServicer

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# How long no call may be running before grpc is stopped (see Platform._drain).
DRAIN_QUIET_S = 0.1
SERVICE_NAMES = (
    ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name,
    payments_pb2.DESCRIPTOR.services_by_name["PaymentGateway"].full_name,
    routing_pb2.DESCRIPTOR.services_by_name["RoutingAdmin"].full_name,
    clearing_pb2.DESCRIPTOR.services_by_name["Clearing"].full_name,
    reconciliation_pb2.DESCRIPTOR.services_by_name["Reconciliation"].full_name,
)


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    db: str = "dualflow.db"
    metrics_port: int | None = None  # None: no endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    grace_s: float = 10.0
    expiry_interval_s: float = 0.2
    config_path: str | None = None  # TOML: merchants, callers (API keys, permissions, rate limits), vault keys
    # "scripted": external payments are answered in-process (development and the demo);
    # "none": BANK_CARD / BANK_TRANSFER payments are refused until a channel is configured.
    channel: str = "none"
    # mTLS: all three or none. Client certificates are required and verified, and a
    # caller configured with `mtls_common_name` is authenticated by its certificate.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Where channels POST asynchronous callbacks (only with channels configured); 0: any port.
    callback_host: str = "127.0.0.1"
    callback_port: int = 0


def create_server(ledger: LedgerService, address: str, *,
                  interceptor: ServerInterceptor | None = None,
                  health_servicer: health.aio.HealthServicer | None = None,
                  payments: PaymentGatewayServicer | None = None,
                  routing: RoutingAdminServicer | None = None,
                  clearing: ClearingServicer | None = None,
                  reconciliation: ReconciliationServicer | None = None,
                  credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with every dualflow service registered, bound to `address` (port 0 = any)."""
    server = grpc.aio.server(
        interceptors=[interceptor or ServerInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    ledger_pb2_grpc.add_LedgerServicer_to_server(LedgerServicer(ledger), server)
    if payments is not None:
        payments_pb2_grpc.add_PaymentGatewayServicer_to_server(payments, server)
    if routing is not None:
        routing_pb2_grpc.add_RoutingAdminServicer_to_server(routing, server)
    if clearing is not None:
        clearing_pb2_grpc.add_ClearingServicer_to_server(clearing, server)
    if reconciliation is not None:
        reconciliation_pb2_grpc.add_ReconciliationServicer_to_server(reconciliation, server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        # set() is a coroutine in the aio servicer; schedule it on the running loop.
        asyncio.ensure_future(health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING))
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(address, credentials) if credentials is not None \
        else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port


class Platform:
    """One dualflow process: storage, ledger, gRPC server and metrics endpoint."""

    def __init__(self, config: ServerConfig, *, dispatcher: ChannelDispatcher | None = None,
                 settlement: SettlementExecutor | None = None) -> None:
        self.config = config
        self.settings = load_config(config.config_path) if config.config_path else PlatformConfig()
        self.ledger = LedgerService(store_from_url(config.db), expiry_interval_s=config.expiry_interval_s)
        vault = self.settings.vault
        self.vault = CardVault(self.ledger, KeyRing(dict(vault.keys), vault.active,
                                                    fingerprint_key=vault.fingerprint_key)) if vault else None
        self.gateway: FinancialGateway | None = None
        self.routing: RoutingControl | None = None
        if dispatcher is None and self.settings.channels:
            self.gateway = FinancialGateway([build_adapter(c) for c in self.settings.channels], cards=self.vault,
                                            callback_host=config.callback_host, callback_port=config.callback_port,
                                            seed=self.settings.routing.seed)
            self.routing = RoutingControl(self.gateway.router, self.ledger, file=self.settings.routing.file)
            dispatcher = self.gateway
        if dispatcher is None and config.channel == "scripted":
            from dualflow.adapters.scripted import ScriptedChannel

            dispatcher = ScriptedChannel()
        merchants = {m.id: Merchant(m.id, m.name, frozenset(m.currencies), m.fee_bps) for m in self.settings.merchants}
        limits = self.settings.payments
        self.payments = PaymentService(
            self.ledger, merchants, dispatcher=dispatcher, cards=self.vault,
            key_window_s=limits.request_key_window_s, outbox_retention_s=limits.outbox_retention_s,
            balance_cache_ttl_s=limits.balance_cache_ttl_s,
            # Channels collecting straight into a reserve-fund pool: their settled money is swept there.
            channel_pools=self.settings.clearing.channel_pools)
        # Notifications read the outbox and never sit on the payment path: a dead
        # endpoint delays only its own deliveries.
        self.webhooks = WebhookRegistry(self.ledger)
        self.webhook_dispatcher = WebhookDispatcher(self.ledger, self.payments.feed,
                                                    max_attempts=self.settings.webhooks.max_attempts,
                                                    timeout_s=self.settings.webhooks.timeout_s)
        self._lag_watch: asyncio.Task[None] | None = None
        # Trial balance per currency and open payments by age, for dashboards and alerts.
        self.balance_check = BalanceCheck(self.ledger)
        # The clearing center; `settlement` executes its transfers (without one, closed windows wait):
        # by default over the transfer channel [clearing] names (see config.py _settlement_channel).
        rail = self.settings.clearing.settlement_channel
        if settlement is None and rail and self.gateway is not None:
            from dualflow.adapters.transfer.settlement import RailSettlementExecutor

            settlement = RailSettlementExecutor(self.gateway.adapters[rail],  # type: ignore[arg-type]
                                                self.settings.clearing.rail_accounts)
        self.clearing = ClearingService(self.ledger, self.settings.clearing, executor=settlement)
        # Each pool's ledger balance against the bank's own record of the pool account, asked over
        # the settlement rail (it names every pool's account); run with the invariant.
        # A pool has one bank account (`rail_accounts`), so the check is made only with one clearing
        # currency: with more, every other currency would be compared with the same balance.
        self.pool_bank_check: PoolBankCheck | None = None
        if rail and self.gateway is not None and len(self.settings.clearing.currencies) > 1:
            log.warning("pools are not checked against their banks: a pool has one bank account, and [clearing] "
                        "names %d currencies", len(self.settings.clearing.currencies))
        elif rail and self.gateway is not None:
            from dualflow.adapters.transfer.pool_balance import pool_balance_fetcher

            self.pool_bank_check = PoolBankCheck(self.ledger, self.settings.clearing, pool_balance_fetcher(
                self.gateway.adapters[rail]), in_flight=self.clearing.in_flight)  # type: ignore[arg-type]
            self.clearing.bank_check = self.pool_bank_check
        # Inter-pool obligations recorded from the payments themselves (clearing/feed.py).
        clearing_settings = self.settings.clearing
        self.obligation_feed = ObligationFeed(
            self.ledger, self.payments.feed, self.clearing,
            Attribution(clearing_settings.home_pool, clearing_settings.channel_pools,
                        clearing_settings.merchant_pools, frozenset(clearing_settings.currencies))) \
            if clearing_settings.pools else None
        # Under the refuse cap policy a movement between pools is refused before it happens
        # (clearing/gate.py); the feed releases what the gate reserved as it records.
        self.cap_gate = CapGate.attach(self.clearing, self.obligation_feed) \
            if self.obligation_feed is not None else None
        self.payments.admission = self.cap_gate
        # Reconciliation: each channel's statement against our payments (on request, and daily
        # when [reconciliation] enables it); what a statement proves moves through the payments.
        gateway = self.gateway
        # A channel's statement is its own account's (adapters/transfer/adapter.py fetch_statement):
        # a settlement transfer is on the payer pool's and the payee pool's, whichever channel sent
        # it. So each pooled transfer channel reconciles the settlement transfers of its pool (an
        # open one resolved through the clearing service, whichever statement comes first; the fee
        # posted on the payer pool's channel only). The settlement channel, unless pooled, has none
        # on its statement and gets no source; a pool without a channel is reconciled nowhere.
        sources: dict[str, InstructionSource] = {}
        if rail and gateway is not None:
            from dualflow.adapters.transfer.adapter import TransferAdapter
            from dualflow.adapters.transfer.settlement import RailSettlementExecutor, SettlementInstructions

            if isinstance(settlement, RailSettlementExecutor) and settlement.adapter is gateway.adapters[rail]:
                channel_pools = self.settings.clearing.channel_pools
                for channel, pool in channel_pools.items():
                    if isinstance(gateway.adapters.get(channel), TransferAdapter):
                        sources[channel] = SettlementInstructions(self.clearing, channel, pool, channel_pools)
        self.reconciliation = ReconciliationService(
            self.ledger, gateway.adapters if gateway is not None else {}, resolver=StatementResolver(self.payments),
            fees=ChannelFees(self.ledger), sla_ns=self.settings.reconciliation.sla_s * 10**9,
            fee_for=(lambda channel: router_fee_model(gateway.router, channel)) if gateway is not None else None,
            # Left out of the receivable drift check: channels collecting into a pool (their money is
            # swept into the pool, which PoolBankCheck compares with the bank), and the settlement
            # channel (the rail reports one balance for its whole network, the pools' settlement
            # transfers and other channels' traffic included, which no receivable of ours mirrors).
            pooled_channels=frozenset(self.settings.clearing.channel_pools),
            no_drift=frozenset({rail} if rail else ()),
            sources=sources)
        self.daily_reconciliation = DailyReconciliation(self.reconciliation, self.settings.reconciliation)
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_http: object | None = None
        self._interceptor = ServerInterceptor(AccessControl.from_config(self.settings))
        self._health = health.aio.HealthServicer()

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        if not self.settings.auth_enabled:
            log.warning("authentication disabled: no callers configured (pass --config to require API keys)")
        await self.ledger.start()
        await self.ledger.ensure_schema([*VAULT_SCHEMA, *WEBHOOK_SCHEMA])
        if self.gateway is not None:
            assert self.routing is not None
            await self.routing.start()  # the newest configuration before the first decision
            await self._restore_daily_volume()
            self.gateway.on_answer = self._channel_answer
            await self.gateway.start()
        await self.payments.start()
        await self.webhook_dispatcher.start()
        await self.balance_check.start()
        await self.clearing.start()
        if self.obligation_feed is not None:
            await self.obligation_feed.start()
        await self.reconciliation.start()
        servicer = PaymentGatewayServicer(self.payments, vault=self.vault, webhooks=self.webhooks)
        cfg = self.config
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) \
            if cfg.tls_cert and cfg.tls_key and cfg.tls_client_ca else None
        self.server, self.port = create_server(self.ledger, cfg.listen, interceptor=self._interceptor,
                                                health_servicer=self._health, payments=servicer,
                                                routing=RoutingAdminServicer(self.routing),
                                                clearing=ClearingServicer(self.clearing),
                                                reconciliation=ReconciliationServicer(self.reconciliation),
                                                credentials=credentials)
        await self.server.start()
        # After self.server is set: the watch runs while it is (an await above, such as the
        # clearing start-up, would otherwise let it see None and end at once).
        self._lag_watch = asyncio.create_task(self._watch_outbox_lag(), name="outbox-lag")
        await self.daily_reconciliation.start()
        if self.config.metrics_port is not None:
            http, _thread = start_http_server(self.config.metrics_port, addr=self.config.metrics_host)
            self._metrics_http = http
            self.metrics_port = http.server_port
        log.info("dualflow serving on %s (db backend %s)", self.address, self.ledger.store.backend)

    async def _restore_daily_volume(self) -> None:
        """Daily caps survive a restart: today's volume per channel, read back from the payments."""
        assert self.gateway is not None
        day = int(time.time() // DAY_S)
        await self.ledger.ensure_schema(PAYMENT_SCHEMA)
        rows = await self.ledger.query(
            "SELECT body FROM payments WHERE created_at_ns >= ? AND asset IN (?, ?) AND status NOT IN (?, ?)",
            (day * DAY_S * 10**9, Asset.BANK_CARD.value, Asset.BANK_TRANSFER.value,
             PaymentStatus.FAILED.value, PaymentStatus.CANCELED.value))
        for (body,) in rows:
            payment = payment_from_body(body)
            if payment.channel:
                self.gateway.router.add_volume(payment.channel, payment.currency, day, payment.amount)

    async def _channel_answer(self, kind: str, object_id: str, answer: ChannelAnswer) -> None:
        """A verified callback: applied like a poll answer (idempotent, any order)."""
        if object_id.startswith("stl."):  # a settlement transfer (adapters/transfer/settlement.py)
            return  # acknowledged: the clearing service's driver asks the rail itself
        if kind == "refund":
            await self.payments.apply_refund_answer(object_id, answer, source="callback")
        else:
            await self.payments.apply_channel_answer(object_id, answer, source="callback")

    async def _watch_outbox_lag(self) -> None:
        """dualflow_outbox_lag_seconds{consumer="webhooks"}: how far notifications trail the outbox."""
        while self.server is not None:  # not only cancellation: 3.11 can swallow one in a library
            await asyncio.sleep(1.0)
            try:
                rows = await self.ledger.query("SELECT MIN(created_at_ns) FROM outbox WHERE seq > ?",
                                               (self.webhook_dispatcher.cursor,))
                self.payments.feed.record_lag("webhooks", rows[0][0] if rows and rows[0][0] is not None else None)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a missed sample is fine
                log.debug("outbox lag sample failed", exc_info=True)

    async def _drain(self, grace_s: float) -> float:
        """Lame duck before grpc's own stop; returns what is left of the grace period.

        Why: grpc.aio's stop() answers CANCELLED to every call the transport has
        received but the server loop has not yet picked up, and under load that
        includes calls sent well before the signal (seen in
        tests/integration/test_serve_lifecycle.py). CANCELLED tells a client
        nothing about whether its write happened. So first let the loop keep
        picking calls up while the interceptor answers new ones UNAVAILABLE
        (not applied, safe to retry), wait until the admitted ones finished and
        no call has run for DRAIN_QUIET_S, and only then stop grpc.
        """
        self._interceptor.draining = True
        # Load balancers and health probes see NOT_SERVING for the whole drain.
        await self._health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        quiet_since: float | None = None
        while (now := loop.time()) < deadline:
            if self._interceptor.in_flight:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= DRAIN_QUIET_S:
                break
            await asyncio.sleep(0.01)
        return max(0.0, deadline - loop.time())

    async def stop(self) -> None:
        if self.server is not None:
            remaining_s = await self._drain(self.config.grace_s)
            await self.server.stop(remaining_s)  # refuse new calls, drain in-flight ones
            self.server = None
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
            self._lag_watch = None
        await self.daily_reconciliation.stop()  # a day it did not finish is run again at the next start
        await self.balance_check.stop()
        await self.webhook_dispatcher.stop()  # pending deliveries resume at the next start
        if self.obligation_feed is not None:
            await self.obligation_feed.stop()  # resumes from its stored position
        await self.clearing.stop()  # a settlement in flight resumes at the next start
        await self.payments.stop()  # open external payments resume at the next start
        if self.routing is not None:
            await self.routing.stop()
        if self.gateway is not None:
            await self.gateway.close()
        await self.ledger.stop()  # flush the group-commit writer, close storage
        if self._metrics_http is not None:
            self._metrics_http.shutdown()  # type: ignore[attr-defined]
            self._metrics_http.server_close()  # type: ignore[attr-defined]
            self._metrics_http = None


async def serve(config: ServerConfig, *, announce: bool = True) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    platform = Platform(config)
    await platform.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if announce:
        metrics = f" metrics=http://{config.metrics_host}:{platform.metrics_port}/metrics" \
            if platform.metrics_port is not None else ""
        # One parseable line: tests and scripts that bind port 0 read the real port here.
        callbacks = f" callbacks={platform.gateway.callback_url}" if platform.gateway is not None else ""
        print(f"dualflow listening grpc={platform.address}{metrics} db={platform.ledger.store.backend}{callbacks}",
              flush=True)
    await stop.wait()
    print("dualflow shutting down: draining calls, flushing the writer", flush=True)
    await platform.stop()
    print("dualflow stopped", flush=True)
