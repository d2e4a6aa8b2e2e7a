"""Access control over real gRPC: API keys, permissions, rate limits, client certificates.

The server runs in-process on 127.0.0.1:0 (`create_server` with a SQLite ledger
and an interceptor holding AccessControl); clients use the generated stubs. A
refused call must come back with its status and exactly one ErrorInfo, must be
counted under that status code, and must reach no servicer: a refused write is
proved absent by looking it up afterwards. The mTLS tests make a CA, a server
certificate and client certificates with `cryptography` and call over a real
TLS port that requires client certificates.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.gateway.auth import (
    LEDGER_READ,
    METHOD_PERMISSIONS,
    AccessControl,
    current_caller,
    hash_api_key,
    server_credentials,
)
from dualflow.gateway.config import CallerConfig
from dualflow.gateway.interceptors import ServerInterceptor
from dualflow.gateway.server import create_server
from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc

LEDGER = "dualflow.v1.Ledger"
PROBE = "dualflow.v1.Probe"  # a test-only service that reports current_caller()
CNY = "CNY"
ISSUER, WALLET = 1, 2

WRITER_KEY = "dfk_it-writer-key-0123456789abcdef"
READER_KEY = "dfk_it-reader-key-0123456789abcdef"
LIMITED_KEY = "dfk_it-limited-key-0123456789abcde"
BATCH_CN = "batch.internal"
LIMITED_RATE_PER_S, LIMITED_BURST = 5.0, 2

CALLERS = [
    CallerConfig(name="writer", permissions=frozenset({"ledger.read", "ledger.write"}),
                 api_key_sha256=hash_api_key(WRITER_KEY)),
    CallerConfig(name="reader", permissions=frozenset({"ledger.read"}), merchants=("shop-1",),
                 api_key_sha256=hash_api_key(READER_KEY)),
    CallerConfig(name="it-limited", permissions=frozenset({"ledger.read"}), api_key_sha256=hash_api_key(LIMITED_KEY),
                 rate_per_s=LIMITED_RATE_PER_S, burst=LIMITED_BURST),
    CallerConfig(name="batch", permissions=frozenset({"ledger.read"}), mtls_common_name=BATCH_CN),
]

# The table the server uses: the real one plus the probe's methods. "Unmapped"
# is deliberately missing: a dualflow method without a permission is refused.
PERMISSIONS_WITH_PROBE = {
    **METHOD_PERMISSIONS,
    f"/{PROBE}/WhoAmI": LEDGER_READ,
    f"/{PROBE}/WhoAmIStream": LEDGER_READ,
    f"/{PROBE}/WhoAmIClientStream": LEDGER_READ,
}


def key(k: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {k}"),)


WRITER, READER, LIMITED = key(WRITER_KEY), key(READER_KEY), key(LIMITED_KEY)


# ------------------------------------------------------------------ the probe service

class Probe:
    """Reports the caller the servicer sees; records that it ran at all."""

    def __init__(self) -> None:
        self.calls = 0

    async def who_am_i(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        before = current_caller().name
        await asyncio.sleep(0.01)  # let other calls interleave on the loop
        assert current_caller().name == before
        return before.encode()

    async def who_am_i_stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        self.calls += 1
        for _ in range(3):
            yield current_caller().name.encode()
            await asyncio.sleep(0)

    async def who_am_i_client_stream(self, requests: AsyncIterator[bytes],
                                     context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        count = 0
        async for _ in requests:
            count += 1
        return f"{current_caller().name}:{count}".encode()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(PROBE, {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(self.who_am_i),
            "WhoAmIStream": grpc.unary_stream_rpc_method_handler(self.who_am_i_stream),
            "WhoAmIClientStream": grpc.stream_unary_rpc_method_handler(self.who_am_i_client_stream),
            "Unmapped": grpc.unary_unary_rpc_method_handler(self.who_am_i),
        })


# ------------------------------------------------------------------ fixtures

@dataclass
class Served:
    port: int
    tls_port: int  # the same server over TLS, client certificates required
    channel: grpc.aio.Channel
    stub: ledger_pb2_grpc.LedgerStub
    ledger: LedgerService
    probe: Probe
    server: grpc.aio.Server


@pytest.fixture
async def served(tmp_path: Path, pki: Pki) -> AsyncIterator[Served]:
    ledger = LedgerService(store_from_url(str(tmp_path / "ledger.db")), expiry_interval_s=0)
    await ledger.start()
    access = AccessControl(CALLERS, method_permissions=PERMISSIONS_WITH_PROBE)
    server, port = create_server(ledger, "127.0.0.1:0", interceptor=ServerInterceptor(access))
    tls_port = server.add_secure_port("127.0.0.1:0",
                                      server_credentials(pki.server_cert, pki.server_key, pki.ca_file))
    assert tls_port
    probe = Probe()
    server.add_generic_rpc_handlers((probe.handler(),))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.LedgerStub(channel)
            created = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
                pb.Account(id=ISSUER, currency=CNY, code=pb.ACCOUNT_CODE_EQUITY),
                pb.Account(id=WALLET, currency=CNY, code=pb.ACCOUNT_CODE_WALLET),
            ]), metadata=WRITER)
            assert list(created.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * 2
            yield Served(port, tls_port, channel, stub, ledger, probe, server)
    finally:
        await server.stop(None)
        await ledger.stop()


@dataclass
class Refusal:
    code: grpc.StatusCode
    info: error_details_pb2.ErrorInfo
    retry_delay_s: float | None


async def refused(call: Awaitable[Any], code: grpc.StatusCode, reason: str, domain: str = LEDGER) -> Refusal:
    """Await a call that must fail with `code` and one ErrorInfo with `reason`; decode its details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    kinds = [d.TypeName() for d in status.details]
    assert len(kinds) == len(set(kinds)), kinds
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, kinds
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain) == (reason, domain)
    delay = None
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            d.Unpack(retry)
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    for secret in (WRITER_KEY, READER_KEY, LIMITED_KEY):
        assert secret not in (err.details() or "")
    return Refusal(err.code(), info, delay)


def handled(method: str, code: str, service: str = LEDGER) -> float:
    return REGISTRY.get_sample_value("dualflow_grpc_server_handled_total",
                                     {"service": service, "method": method, "code": code}) or 0.0


def lookup(stub: ledger_pb2_grpc.LedgerStub, **kw: Any) -> Any:
    return stub.LookupAccounts(pb.LookupAccountsRequest(ids=[ISSUER, WALLET]), **kw)


# ------------------------------------------------------------------ API keys

async def test_no_key_is_unauthenticated(served: Served) -> None:
    before = handled("LookupAccounts", "UNAUTHENTICATED")
    r = await refused(lookup(served.stub), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert r.retry_delay_s is None
    assert handled("LookupAccounts", "UNAUTHENTICATED") == before + 1
    # A scheme other than Bearer is no key either.
    await refused(lookup(served.stub, metadata=(("authorization", f"Basic {READER_KEY}"),)),
                  grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")


async def test_wrong_key_is_unauthenticated(served: Served) -> None:
    await refused(lookup(served.stub, metadata=key("dfk_not-a-key-of-this-server-000000")),
                  grpc.StatusCode.UNAUTHENTICATED, "API_KEY_UNKNOWN")
    await refused(lookup(served.stub, metadata=(("x-api-key", READER_KEY + "x"),)),
                  grpc.StatusCode.UNAUTHENTICATED, "API_KEY_UNKNOWN")


async def test_known_keys_in_either_header(served: Served) -> None:
    for metadata in (READER, (("x-api-key", READER_KEY),), WRITER):
        got = await lookup(served.stub, metadata=metadata)
        assert [a.id for a in got.accounts] == [ISSUER, WALLET]


async def test_read_only_caller_cannot_write_and_nothing_changes(served: Served) -> None:
    stub = served.stub
    before_accounts = await lookup(stub, metadata=READER)
    before_denied = handled("CreateTransfers", "PERMISSION_DENIED")
    transfer = pb.Transfer(id=77, debit_account_id=ISSUER, credit_account_id=WALLET, amount=500, currency=CNY,
                           code=1)
    r = await refused(stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer]), metadata=READER),
                      grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    assert dict(r.info.metadata) == {"permission": "ledger.write"}
    assert handled("CreateTransfers", "PERMISSION_DENIED") == before_denied + 1
    # Unauthenticated writes are refused before permissions are even looked at.
    await refused(stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer])),
                  grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")

    looked_up = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=[77]), metadata=WRITER)
    assert list(looked_up.transfers) == []
    assert await lookup(stub, metadata=WRITER) == before_accounts
    # The same transfer from a caller allowed to write goes through: the refusal was the permission.
    ok = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer]), metadata=WRITER)
    assert list(ok.results) == [pb.CREATE_TRANSFER_RESULT_OK]


async def test_rate_limited_caller_is_told_when_to_retry(served: Served) -> None:
    def limited_total() -> float:
        return REGISTRY.get_sample_value("dualflow_rate_limited_total", {"caller": "it-limited"}) or 0.0

    before = limited_total()
    before_exhausted = handled("LookupAccounts", "RESOURCE_EXHAUSTED")
    for _ in range(LIMITED_BURST):
        await lookup(served.stub, metadata=LIMITED)
    r = await refused(lookup(served.stub, metadata=LIMITED), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert dict(r.info.metadata) == {"caller": "it-limited"}
    assert r.retry_delay_s is not None and 0 < r.retry_delay_s <= 1 / LIMITED_RATE_PER_S
    assert limited_total() == before + 1
    assert handled("LookupAccounts", "RESOURCE_EXHAUSTED") == before_exhausted + 1
    # Other callers have their own buckets.
    for _ in range(LIMITED_BURST + 2):
        await lookup(served.stub, metadata=READER)

    await asyncio.sleep(r.retry_delay_s)
    got = await lookup(served.stub, metadata=LIMITED)
    assert len(got.accounts) == 2
    assert limited_total() == before + 1


# ------------------------------------------------------------------ open services

async def test_health_and_reflection_need_no_key(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", LEDGER):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    replies = [r async for r in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert LEDGER in names


# ------------------------------------------------------------------ the caller in servicers

async def test_servicers_see_their_own_caller(served: Served) -> None:
    who = served.channel.unary_unary(f"/{PROBE}/WhoAmI")
    stream = served.channel.unary_stream(f"/{PROBE}/WhoAmIStream")
    client_stream = served.channel.stream_unary(f"/{PROBE}/WhoAmIClientStream")

    # Concurrent calls from different callers interleave on one loop; each sees itself.
    callers = [(WRITER, b"writer"), (READER, b"reader")] * 10
    answers = await asyncio.gather(*(who(b"", metadata=m) for m, _ in callers))
    assert answers == [name for _, name in callers]
    assert [m async for m in stream(b"", metadata=READER)] == [b"reader"] * 3

    async def three() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x"

    assert await client_stream(three(), metadata=WRITER) == b"writer:3"


async def test_refused_calls_reach_no_servicer(served: Served) -> None:
    probe = served.probe
    who = served.channel.unary_unary(f"/{PROBE}/WhoAmI")
    stream = served.channel.unary_stream(f"/{PROBE}/WhoAmIStream")
    client_stream = served.channel.stream_unary(f"/{PROBE}/WhoAmIClientStream")
    unmapped = served.channel.unary_unary(f"/{PROBE}/Unmapped")

    async def drain(call: Any) -> None:
        async for _ in call:
            pass

    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    calls_before = probe.calls
    before_stream = handled("WhoAmIStream", "UNAUTHENTICATED", service=PROBE)
    await refused(who(b""), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", PROBE)
    await refused(drain(stream(b"")), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", PROBE)
    await refused(drain(stream(b"", metadata=key("dfk_nobody-at-all-0000000000"))),
                  grpc.StatusCode.UNAUTHENTICATED, "API_KEY_UNKNOWN", PROBE)
    await refused(client_stream(one()), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", PROBE)
    # A dualflow method missing from the permission table is refused to every caller (fail closed).
    r = await refused(unmapped(b"", metadata=WRITER), grpc.StatusCode.PERMISSION_DENIED, "METHOD_NOT_ALLOWED",
                      PROBE)
    assert dict(r.info.metadata) == {"method": f"/{PROBE}/Unmapped"}
    await refused(unmapped(b""), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", PROBE)
    assert probe.calls == calls_before
    assert handled("WhoAmIStream", "UNAUTHENTICATED", service=PROBE) == before_stream + 2


async def test_without_access_control_everyone_is_anonymous(tmp_path: Path) -> None:
    ledger = LedgerService(store_from_url(str(tmp_path / "open.db")), expiry_interval_s=0)
    await ledger.start()
    server, port = create_server(ledger, "127.0.0.1:0")  # no interceptor given: authentication disabled
    probe = Probe()
    server.add_generic_rpc_handlers((probe.handler(),))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary(f"/{PROBE}/WhoAmI")(b"") == b"anonymous"
            assert await channel.unary_unary(f"/{PROBE}/Unmapped")(b"") == b"anonymous"
            reply = await ledger_pb2_grpc.LedgerStub(channel).LookupAccounts(pb.LookupAccountsRequest(ids=[1]))
            assert list(reply.accounts) == []
    finally:
        await server.stop(None)
        await ledger.stop()


# ------------------------------------------------------------------ mTLS

@dataclass
class Pki:
    ca_pem: bytes
    server_cert: Path
    server_key: Path
    ca_file: Path
    clients: dict[str, tuple[bytes, bytes]]  # common name -> (key PEM, certificate PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
           *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    elif server:
        builder = (builder
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[bytes, bytes]:
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("dualflow test CA", ca_key, "dualflow test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_key_pem, server_cert_pem = _pem(server_key, _issue("localhost", server_key, "dualflow test CA", ca_key,
                                                              server=True))
    clients = {}
    for common_name in (BATCH_CN, "stranger.internal"):
        client_key = ec.generate_private_key(ec.SECP256R1())
        clients[common_name] = _pem(client_key, _issue(common_name, client_key, "dualflow test CA", ca_key))
    # A certificate from another CA with a configured name: the handshake must refuse it.
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    clients["rogue"] = _pem(rogue_key, _issue(BATCH_CN, rogue_key, "rogue CA", rogue_ca_key))

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    (folder / "ca.pem").write_bytes(ca_pem)
    (folder / "server.pem").write_bytes(server_cert_pem)
    (folder / "server.key").write_bytes(server_key_pem)
    return Pki(ca_pem, folder / "server.pem", folder / "server.key", folder / "ca.pem", clients)


@pytest.fixture
def tls_port(served: Served) -> int:
    return served.tls_port


def tls_channel(port: int, pki: Pki, client: str | None) -> grpc.aio.Channel:
    key_pem, cert_pem = pki.clients[client] if client is not None else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem, private_key=key_pem,
                                               certificate_chain=cert_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def test_mtls_caller_authenticated_by_certificate(tls_port: int, pki: Pki) -> None:
    async with tls_channel(tls_port, pki, BATCH_CN) as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        got = await lookup(stub)  # no key: the certificate is the credential
        assert [a.id for a in got.accounts] == [ISSUER, WALLET]
        assert await channel.unary_unary(f"/{PROBE}/WhoAmI")(b"") == b"batch"
        # The certificate's caller has only ledger.read.
        transfer = pb.Transfer(id=91, debit_account_id=ISSUER, credit_account_id=WALLET, amount=5, currency=CNY,
                               code=1)
        await refused(stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer])),
                      grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
        # An API key, when sent, is the credential even over mTLS.
        assert await channel.unary_unary(f"/{PROBE}/WhoAmI")(b"", metadata=WRITER) == b"writer"
        ok = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer]), metadata=WRITER)
        assert list(ok.results) == [pb.CREATE_TRANSFER_RESULT_OK]


async def test_mtls_unknown_certificate_name_is_unauthenticated(tls_port: int, pki: Pki) -> None:
    async with tls_channel(tls_port, pki, "stranger.internal") as channel:
        stub = ledger_pb2_grpc.LedgerStub(channel)
        await refused(lookup(stub), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_CERT_UNKNOWN")
        got = await lookup(stub, metadata=READER)
        assert len(got.accounts) == 2


@pytest.mark.parametrize("client", [None, "rogue"], ids=["no-client-certificate", "certificate-of-another-ca"])
async def test_mtls_port_refuses_unverified_clients(tls_port: int, pki: Pki, client: str | None) -> None:
    async with tls_channel(tls_port, pki, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await lookup(ledger_pb2_grpc.LedgerStub(channel), metadata=READER, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_platform_serves_mtls_from_its_config(tmp_path: Path, pki: Pki) -> None:
    """`dualflow serve --tls-cert/--tls-key/--tls-client-ca` path: Platform binds a verified mTLS port."""
    from dualflow.gateway.server import Platform, ServerConfig

    config = tmp_path / "dualflow.toml"
    config.write_text(f'[[callers]]\nname = "batch"\nmtls_common_name = "{BATCH_CN}"\n'
                      'merchants = ["*"]\npermissions = ["ledger.read"]\n')
    platform = Platform(ServerConfig(listen="127.0.0.1:0", db=str(tmp_path / "l.db"), config_path=str(config),
                                     expiry_interval_s=0, tls_cert=str(pki.server_cert),
                                     tls_key=str(pki.server_key), tls_client_ca=str(pki.ca_file)))
    await platform.start()
    try:
        async with tls_channel(platform.port, pki, BATCH_CN) as channel:
            got = await ledger_pb2_grpc.LedgerStub(channel).LookupAccounts(pb.LookupAccountsRequest(ids=[1]))
            assert list(got.accounts) == []
        async with tls_channel(platform.port, pki, None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await ledger_pb2_grpc.LedgerStub(channel).LookupAccounts(pb.LookupAccountsRequest(ids=[1]),
                                                                         timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await platform.stop()
