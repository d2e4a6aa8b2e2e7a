"""Platform config (gateway/config.py) and the permission model it feeds (gateway/auth.py).

Bad input is a table: one line per case, an edit to a good file and the key path
the ConfigError must name. Secrets (vault keys, API keys and their hashes) must
never appear in an error message or a repr.
"""

from __future__ import annotations

import base64
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest

import dualflow.v1
from dualflow.core.errors import NotFound, PermissionDenied
from dualflow.gateway import auth
from dualflow.gateway.auth import (
    ADMIN,
    ANONYMOUS,
    LEDGER_READ,
    METHOD_PERMISSIONS,
    PERMISSIONS,
    PUBLIC_SERVICES,
    AccessControl,
    Caller,
    caller_scope,
    current_caller,
    hash_api_key,
)
from dualflow.gateway.config import (
    CallerConfig,
    ConfigError,
    PlatformConfig,
    generate_api_key,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dualflow.example.toml"

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()
FINGERPRINT = base64.b64encode(b"F" * 32).decode()
DEV_KEY = "dfk_local-dev-key-1234567890"
SHOP_KEY = "dfk_shop-backend-key-abcdefghij"

GOOD = f"""
[vault]
active = "k1"
fingerprint_key = "{FINGERPRINT}"
[vault.keys]
k1 = "{KEY_A}"
k2 = "{KEY_B}"

[[merchants]]
id = "shop-1"
name = "Demo shop"
currencies = ["CNY", "USD"]
fee_bps = 60

[[merchants]]
id = "shop-2"
currencies = ["JPY"]
fee_bps = 0

[[callers]]
name = "shop-backend"
api_key_sha256 = "{hash_api_key(SHOP_KEY)}"
merchants = ["shop-1"]
permissions = ["payments.write", "payments.read", "events.read", "webhooks.manage"]
rate_per_s = 500
burst = 1000

[[callers]]
name = "dev"
api_key = "{DEV_KEY}"
merchants = ["*"]
permissions = ["admin"]

[[callers]]
name = "batch"
mtls_common_name = "batch.internal"
permissions = ["ledger.read"]
rate_per_s = 2.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dualflow.toml"
    path.write_text(text)
    return path


def test_good_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.auth_enabled
    assert config.vault is not None
    assert config.vault.active == "k1"
    assert config.vault.active_key == b"A" * 32
    assert dict(config.vault.keys) == {"k1": b"A" * 32, "k2": b"B" * 32}
    assert config.vault.fingerprint_key == b"F" * 32

    shop = config.merchant("shop-1")
    assert (shop.id, shop.name, shop.currencies, shop.fee_bps) == ("shop-1", "Demo shop", ("CNY", "USD"), 60)
    assert config.merchant("shop-2").name == "shop-2"  # name defaults to the id
    with pytest.raises(NotFound) as unknown:
        config.merchant("shop-9")
    assert unknown.value.reason == "MERCHANT_NOT_FOUND"

    backend, dev, batch = config.callers
    assert backend == CallerConfig(
        name="shop-backend", api_key_sha256=hash_api_key(SHOP_KEY), mtls_common_name=None,
        merchants=("shop-1",), permissions=frozenset({"payments.write", "payments.read", "events.read",
                                                       "webhooks.manage"}),
        rate_per_s=500.0, burst=1000)
    assert dev.api_key_sha256 == hash_api_key(DEV_KEY)  # a clear-text key is kept only as its hash
    assert (dev.merchants, dev.rate_per_s) == (("*",), 0.0)
    assert (batch.api_key_sha256, batch.mtls_common_name, batch.merchants) == (None, "batch.internal", ())
    assert (batch.rate_per_s, batch.burst) == (2.5, 3)  # burst defaults to a second's worth, rounded up

    # Secrets stay out of reprs (configs end up in logs and tracebacks).
    shown = repr(config)
    for secret in (KEY_A, KEY_B, FINGERPRINT, repr(b"A" * 32), DEV_KEY, hash_api_key(DEV_KEY),
                   hash_api_key(SHOP_KEY)):
        assert secret not in shown


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.auth_enabled and config.vault is not None and config.merchants


def test_no_callers_means_auth_disabled(tmp_path: Path) -> None:
    assert not PlatformConfig().auth_enabled
    assert not load_config(write(tmp_path, "")).auth_enabled
    config = load_config(write(tmp_path, GOOD.split("[[callers]]")[0]))
    assert not config.auth_enabled and len(config.merchants) == 2


def test_api_keys() -> None:
    key = generate_api_key()
    assert re.fullmatch(r"dfk_[A-Za-z0-9_-]{32}", key)
    assert generate_api_key() != key
    assert hash_api_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# One line per bad case: (old text, new text) applied to GOOD (old "" = append), the key path named.
BAD_CASES: list[tuple[str, str, str, str]] = [
    # old                                   new                                      key path
    ('[vault]', '[valut]\n[vault]', 'valut', "unknown top-level table"),
    ('active = "k1"', 'active = "k3"', 'vault.active', "active key not among keys"),
    ('active = "k1"\n', '', 'vault.active', "active missing"),
    (f'k2 = "{KEY_B}"', 'k2 = "c2hvcnQ="', 'vault.keys.k2', "key of 5 bytes"),
    (f'k2 = "{KEY_B}"', 'k2 = "not base64 at all!"', 'vault.keys.k2', "not base64"),
    (f'k2 = "{KEY_B}"', 'k2 = 7', 'vault.keys.k2', "not a string"),
    (f'fingerprint_key = "{FINGERPRINT}"', 'fingerprint_key = "QUJD"', 'vault.fingerprint_key', "short"),
    (f'k1 = "{KEY_A}"\nk2 = "{KEY_B}"', '', 'vault.keys', "no keys"),
    (f'k2 = "{KEY_B}"', f'"k 2" = "{KEY_B}"', 'vault.keys.k 2', "key id with a space"),
    (f'fingerprint_key = "{FINGERPRINT}"', f'fingerprint_key = "{KEY_B}"', 'vault.fingerprint_key',
     "fingerprint key reuses an encryption key"),
    ('id = "shop-1"', 'id = "shop 1"', 'merchants[0].id', "space in id"),
    ('id = "shop-2"', 'id = "shop-1"', 'merchants[1].id', "duplicate id"),
    ('currencies = ["CNY", "USD"]', 'currencies = ["CNY", "XYZ"]', 'merchants[0].currencies[1]', "currency"),
    ('currencies = ["CNY", "USD"]', 'currencies = []', 'merchants[0].currencies', "no currency"),
    ('currencies = ["CNY", "USD"]', 'currencies = "CNY"', 'merchants[0].currencies', "not an array"),
    ('fee_bps = 60', 'fee_bps = 0.6', 'merchants[0].fee_bps', "float fee"),
    ('fee_bps = 60', 'fee_bps = true', 'merchants[0].fee_bps', "boolean fee"),
    ('fee_bps = 60', 'fee_bps = 10001', 'merchants[0].fee_bps', "fee over 100%"),
    ('fee_bps = 0\n', '', 'merchants[1].fee_bps', "fee missing"),
    ('fee_bps = 60', 'fee_bps = 60\nfee = 1', 'merchants[0].fee', "unknown merchant key"),
    ('name = "shop-backend"', 'name = "shop backend!"', 'callers[0].name', "name unfit for a label"),
    ('name = "dev"', 'name = "shop-backend"', 'callers[1].name', "duplicate caller name"),
    ('permissions = ["admin"]', 'permissions = ["admin", "payments.delete"]', 'callers[1].permissions[1]',
     "unknown permission"),
    ('permissions = ["admin"]', 'permissions = []', 'callers[1].permissions', "no permission"),
    ('permissions = ["ledger.read"]\n', '', 'callers[2].permissions', "permissions missing"),
    ('merchants = ["shop-1"]', 'merchants = ["shop-1", "shop-9"]', 'callers[0].merchants[1]',
     "unknown merchant"),
    ('rate_per_s = 500', 'rate_per_s = -1', 'callers[0].rate_per_s', "negative rate"),
    ('rate_per_s = 500', 'rate_per_s = "fast"', 'callers[0].rate_per_s', "rate not a number"),
    ('rate_per_s = 500', 'rate_per_s = inf', 'callers[0].rate_per_s', "infinite rate"),
    ('burst = 1000', 'burst = 0', 'callers[0].burst', "empty bucket"),
    ('burst = 1000', 'burst = 10.5', 'callers[0].burst', "fractional burst"),
    ('mtls_common_name = "batch.internal"\n', '', 'callers[2]', "no credential"),
    ('mtls_common_name = "batch.internal"', 'mtls_common_name = ""', 'callers[2].mtls_common_name', "empty"),
    ('', '[[callers]]\nname = "batch2"\nmtls_common_name = "batch.internal"\npermissions = ["ledger.read"]\n',
     'callers[3].mtls_common_name', "duplicate certificate name"),
    ('', f'[[callers]]\nname = "dup"\napi_key = "{DEV_KEY}"\npermissions = ["ledger.read"]\n',
     'callers[3]', "same key as another caller"),
    ('', '[[callers]]\nname = "x"\npermissions = ["ledger.read"]\napi_kye = "k"\n', 'callers[3].api_kye',
     "misspelt key"),
]


@pytest.mark.parametrize(("old", "new", "key_path", "what"), BAD_CASES, ids=[c[3] for c in BAD_CASES])
def test_bad_config_names_the_key_path(tmp_path: Path, old: str, new: str, key_path: str, what: str) -> None:
    if old:
        assert old in GOOD, old
        text = GOOD.replace(old, new, 1)
    else:
        text = GOOD + new
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key_path == key_path, str(caught.value)
    assert str(caught.value).startswith(f"{key_path}: "), str(caught.value)


@pytest.mark.parametrize(("text", "key_path"), [
    ("merchants = 3", "merchants"),
    ("merchants = [1]", "merchants[0]"),
    ("callers = {}", "callers"),
    ("vault = 1", "vault"),
    ("[vault]\nactive = 'k1'\nfingerprint_key = 'QUJD'\nkeys = 3", "vault.keys"),
    ("[[callers]]\nname = 3", "callers[0].name"),
])
def test_bad_shapes(tmp_path: Path, text: str, key_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key_path == key_path, str(caught.value)


SECRET_CASES: list[tuple[str, str, str, str]] = [
    # (old, new, key path, the secret that must not be echoed)
    (f'k2 = "{KEY_B}"', 'k2 = "c2VjcmV0LXZhdWx0LWtleS10b28tc2hvcnQ="', 'vault.keys.k2',
     "c2VjcmV0LXZhdWx0LWtleS10b28tc2hvcnQ="),
    (f'k2 = "{KEY_B}"', 'k2 = "sEcReT!not*base64"', 'vault.keys.k2', "sEcReT!not*base64"),
    (f'fingerprint_key = "{FINGERPRINT}"', f'fingerprint_key = "{KEY_A}AAAA"', 'vault.fingerprint_key', KEY_A),
    (f'api_key = "{DEV_KEY}"', 'api_key = "dfk_short"', 'callers[1].api_key', "dfk_short"),
    (f'api_key = "{DEV_KEY}"', 'api_key = "dfk_has a space in it 12345"', 'callers[1].api_key',
     "dfk_has a space"),
    (f'api_key = "{DEV_KEY}"', f'api_key = "{DEV_KEY}"\napi_key_sha256 = "{"0" * 64}"', 'callers[1].api_key',
     DEV_KEY),
    (f'api_key_sha256 = "{hash_api_key(SHOP_KEY)}"', f'api_key_sha256 = "{hash_api_key(SHOP_KEY)[:-1]}"',
     'callers[0].api_key_sha256', hash_api_key(SHOP_KEY)[:-1]),
    ('', f'[[callers]]\nname = "dup"\napi_key = "{DEV_KEY}"\npermissions = ["ledger.read"]\n', 'callers[3]',
     DEV_KEY),
]


@pytest.mark.parametrize(("old", "new", "key_path", "secret"), SECRET_CASES)
def test_errors_never_echo_secrets(tmp_path: Path, old: str, new: str, key_path: str, secret: str) -> None:
    text = GOOD.replace(old, new, 1) if old else GOOD + new
    assert text != GOOD
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert caught.value.key_path == key_path, str(caught.value)
    assert secret not in str(caught.value)
    assert hash_api_key(DEV_KEY) not in str(caught.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    secret_line = f'k1 = "{KEY_A}" oops'
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_config(write(tmp_path, GOOD.replace(f'k1 = "{KEY_A}"', secret_line)))
    assert KEY_A not in str(caught.value) and caught.value.key_path == ""


# ------------------------------------------------------------------ permission model


def _dualflow_services() -> list[Any]:
    """Every service in the generated dualflow.v1 descriptors (ledger_pb2, payments_pb2, ...)."""
    services = []
    for module in pkgutil.iter_modules(dualflow.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"dualflow.v1.{module.name}").DESCRIPTOR
            services.extend(descriptor.services_by_name.values())
    return services


def test_every_dualflow_method_has_a_permission() -> None:
    services = _dualflow_services()
    names = {s.full_name for s in services}
    assert "dualflow.v1.Ledger" in names
    missing = [f"/{s.full_name}/{m.name}" for s in services for m in s.methods
               if f"/{s.full_name}/{m.name}" not in METHOD_PERMISSIONS]
    assert not missing, f"methods without a permission in gateway.auth.METHOD_PERMISSIONS: {missing}"
    for service in services:
        assert service.full_name not in PUBLIC_SERVICES


def test_permission_table_names_only_real_methods_and_permissions() -> None:
    existing = {f"/{s.full_name}/{m.name}" for s in _dualflow_services() for m in s.methods}
    services = {s.full_name for s in _dualflow_services()}
    for method, permission in METHOD_PERMISSIONS.items():
        assert permission in PERMISSIONS and permission != ADMIN, (method, permission)
        service = method.lstrip("/").partition("/")[0]
        if service in services:  # a service being written may not have its descriptor yet
            assert method in existing, f"{method} is in the table but not in the {service} descriptor"


def test_permission_table_matches_the_contract() -> None:
    """The access rules as written in the design, one line per method."""
    expected = """
        Ledger/CreateAccounts          ledger.write
        Ledger/CreateTransfers         ledger.write
        Ledger/LookupAccounts          ledger.read
        Ledger/LookupTransfers         ledger.read
        Ledger/GetAccountTransfers     ledger.read
        Ledger/GetAccountBalances      ledger.read
        PaymentGateway/CreatePayment   payments.write
        PaymentGateway/CreatePayout    payments.write
        PaymentGateway/CancelPayment   payments.write
        PaymentGateway/RefundPayment   payments.write
        PaymentGateway/GetPayment      payments.read
        PaymentGateway/ListPayments    payments.read
        PaymentGateway/GetBalance      payments.read
        PaymentGateway/WatchPayment    events.read
        PaymentGateway/SubscribeEvents events.read
        PaymentGateway/TokenizeCard    cards.tokenize
        PaymentGateway/RegisterWebhook webhooks.manage
        PaymentGateway/ListWebhooks    webhooks.manage
        PaymentGateway/DisableWebhook  webhooks.manage
        PaymentGateway/ListDeadLetters webhooks.manage
        PaymentGateway/RedeliverWebhook webhooks.manage
        RoutingAdmin/GetRoutingConfig  routing.read
        RoutingAdmin/ListChannelHealth routing.read
        RoutingAdmin/ReplaceRoutingConfig routing.manage
        RoutingAdmin/SetChannelEnabled routing.manage
        RoutingAdmin/ForceBreaker      routing.manage
        Clearing/RecordObligation      clearing.manage
        Clearing/CloseWindow           clearing.manage
        Clearing/GetPositions          clearing.read
        Clearing/GetWindow             clearing.read
        Clearing/ListSettlements       clearing.read
        Clearing/GetPoolBalances       clearing.read
        Reconciliation/RunReconciliation reconciliation.manage
        Reconciliation/AssignDiscrepancy reconciliation.manage
        Reconciliation/ResolveDiscrepancy reconciliation.manage
        Reconciliation/GetRun          reconciliation.read
        Reconciliation/ListRuns        reconciliation.read
        Reconciliation/ListDiscrepancies reconciliation.read
        Reconciliation/GetDiscrepancyHistory reconciliation.read
        Reconciliation/ListRunResults  reconciliation.read
        Reconciliation/RunInternalCheck reconciliation.read
    """
    table = dict(line.split() for line in expected.strip().splitlines())
    assert dict(METHOD_PERMISSIONS) == {f"/dualflow.v1.{m}": p for m, p in table.items()}


class FakeContext:
    """The two parts of a grpc.aio.ServicerContext that authentication reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = (), common_name: str | None = None) -> None:
        self.metadata = metadata
        self.common_name = common_name

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.common_name is None:
            return {"transport_security_type": [b"insecure"]}
        return {"transport_security_type": [b"ssl"], "x509_common_name": [self.common_name.encode()]}


def test_admission_rules(tmp_path: Path) -> None:
    access = AccessControl.from_config(load_config(write(tmp_path, GOOD)))
    assert access.enabled
    write_payment = access.admission("/dualflow.v1.PaymentGateway/CreatePayment")
    read_ledger = access.admission("/dualflow.v1.Ledger/LookupAccounts")
    unmapped = access.admission("/dualflow.v1.Ledger/DropEverything")
    assert write_payment and read_ledger and unmapped
    assert access.admission("/grpc.health.v1.Health/Check") is None

    bearer = FakeContext((("authorization", f"Bearer {SHOP_KEY}"),))
    assert write_payment(bearer).name == "shop-backend"
    assert write_payment(FakeContext((("x-api-key", SHOP_KEY),))).name == "shop-backend"
    assert write_payment(FakeContext((("authorization", f"bearer  {DEV_KEY} "),))).name == "dev"

    cases = [
        # (admission, context, error class, reason)
        (write_payment, FakeContext(), "Unauthenticated", "API_KEY_MISSING"),
        (write_payment, FakeContext((("authorization", f"Basic {SHOP_KEY}"),)), "Unauthenticated",
         "API_KEY_MISSING"),
        (write_payment, FakeContext((("authorization", "Bearer dfk_wrong"),)), "Unauthenticated",
         "API_KEY_UNKNOWN"),
        (read_ledger, bearer, "PermissionDenied", "PERMISSION_MISSING"),
        (unmapped, FakeContext((("x-api-key", DEV_KEY),)), "PermissionDenied", "METHOD_NOT_ALLOWED"),
        (unmapped, FakeContext(), "Unauthenticated", "API_KEY_MISSING"),
        (read_ledger, FakeContext(common_name="stranger"), "Unauthenticated", "CLIENT_CERT_UNKNOWN"),
    ]
    for admit, context, error, reason in cases:
        with pytest.raises(Exception) as caught:
            admit(context)
        assert (type(caught.value).__name__, caught.value.reason) == (error, reason)  # type: ignore[attr-defined]
        assert SHOP_KEY not in str(caught.value) and DEV_KEY not in str(caught.value)
    with pytest.raises(PermissionDenied) as denied:
        read_ledger(bearer)
    assert denied.value.metadata == {"permission": LEDGER_READ}

    # A verified client certificate authenticates the caller that claims its common name.
    assert read_ledger(FakeContext(common_name="batch.internal")).name == "batch"
    # An API key, when sent, wins over the certificate.
    with pytest.raises(PermissionDenied):
        read_ledger(FakeContext((("x-api-key", SHOP_KEY),), common_name="batch.internal"))


def test_admission_takes_a_rate_limit_token(tmp_path: Path) -> None:
    now = [100.0]
    text = GOOD.replace("rate_per_s = 500\nburst = 1000", "rate_per_s = 1\nburst = 2")
    access = AccessControl.from_config(load_config(write(tmp_path, text)), clock=lambda: now[0])
    admit = access.admission("/dualflow.v1.PaymentGateway/GetPayment")
    assert admit is not None
    context = FakeContext((("x-api-key", SHOP_KEY),))
    admit(context)
    admit(context)
    with pytest.raises(Exception) as caught:
        admit(context)
    assert (type(caught.value).__name__, caught.value.reason, caught.value.retry_after_ms) == (  # type: ignore
        "Overloaded", "RATE_LIMITED", 1000)
    # A refused permission takes no token.
    denied = access.admission("/dualflow.v1.Ledger/CreateTransfers")
    assert denied is not None
    now[0] += 1.0
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            denied(context)
    admit(context)


def test_auth_disabled_admits_everyone_as_anonymous() -> None:
    for access in (AccessControl(), AccessControl.from_config(None), AccessControl.from_config(PlatformConfig())):
        assert not access.enabled
        admit = access.admission("/dualflow.v1.Ledger/CreateTransfers")
        assert admit is not None and admit(FakeContext()) is ANONYMOUS
    assert ANONYMOUS.permissions == PERMISSIONS
    ANONYMOUS.check_merchant("any-merchant")


def test_caller_merchant_scope_and_admin() -> None:
    access = AccessControl([
        CallerConfig(name="ops", permissions=frozenset({ADMIN}), api_key_sha256=hash_api_key("k" * 20)),
        CallerConfig(name="shop", permissions=frozenset({"payments.read"}), merchants=("shop-1",),
                     api_key_sha256=hash_api_key("s" * 20)),
    ])
    ops, shop = access.callers
    assert ops.permissions == PERMISSIONS  # admin is every permission
    assert shop.permissions == frozenset({"payments.read"})
    shop.check_merchant("shop-1")
    with pytest.raises(PermissionDenied) as caught:
        shop.check_merchant("shop-2")
    assert (caught.value.reason, caught.value.metadata) == ("MERCHANT_NOT_ALLOWED", {"merchant_id": "shop-2"})
    # Permissions do not widen merchant scope: an admin without merchants acts for none.
    with pytest.raises(PermissionDenied):
        ops.check_merchant("shop-1")


def test_current_caller_outside_a_call() -> None:
    with pytest.raises(LookupError, match="caller_scope"):
        current_caller()
    someone = Caller("someone", frozenset(), frozenset({LEDGER_READ}))
    with caller_scope(someone):
        assert current_caller() is someone
    with pytest.raises(LookupError):
        current_caller()
    assert auth.PERMISSIONS == PERMISSIONS


def test_payment_and_webhook_limits(tmp_path: Path) -> None:
    assert PlatformConfig().payments.request_key_window_s == 86400
    assert PlatformConfig().webhooks.max_attempts == 8
    config = load_config(write(tmp_path, "[payments]\nrequest_key_window_s = 60\n[webhooks]\nmax_attempts = 3\n"))
    assert config.payments.request_key_window_s == 60 and config.payments.outbox_retention_s == 604800
    assert config.webhooks.max_attempts == 3
    for text, path in (("[payments]\nrequest_key_window_s = 0\n", "payments.request_key_window_s"),
                       ("[webhooks]\nmax_tries = 3\n", "webhooks.max_tries"),
                       ('[webhooks]\ntimeout_s = "5"\n', "webhooks.timeout_s")):
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, text))
        assert caught.value.key_path == path
    example = load_config(EXAMPLE)
    assert example.payments.request_key_window_s == 86400 and example.webhooks.timeout_s == 5
