"""Who may call what: API keys and client certificates, permissions per method, the current caller.

`AccessControl` holds the configured callers (gateway/config.py) and admits or
refuses each call before any servicer runs (the interceptor asks it, once per
method, for an admission function). A caller proves who it is with an API key in
gRPC metadata (`authorization: Bearer <key>` or `x-api-key: <key>`), looked up
by its SHA-256 so the key itself is never stored, compared or logged; or, on a
port made with `server_credentials()`, with a verified client certificate whose
common name a caller claims as `mtls_common_name`. Every method of a dualflow
service needs one permission from the closed set below (`METHOD_PERMISSIONS`);
a method missing from the table is refused to everyone. Health and reflection
are open. Servicers read the admitted caller with `current_caller()` and check
merchant scope with `Caller.check_merchant()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

import grpc

from dualflow.core.errors import PermissionDenied, Unauthenticated

from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .config import CallerConfig, PlatformConfig

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ permissions

LEDGER_READ: Final = "ledger.read"
LEDGER_WRITE: Final = "ledger.write"
PAYMENTS_READ: Final = "payments.read"
PAYMENTS_WRITE: Final = "payments.write"  # create (payments, payouts), cancel, refund
CARDS_TOKENIZE: Final = "cards.tokenize"
EVENTS_READ: Final = "events.read"  # event streams: SubscribeEvents, WatchPayment
WEBHOOKS_MANAGE: Final = "webhooks.manage"
ROUTING_READ: Final = "routing.read"  # routing configuration and channel health
ROUTING_MANAGE: Final = "routing.manage"  # replace the configuration, disable channels, force breakers
CLEARING_READ: Final = "clearing.read"  # positions, windows, settlements, pool balances
CLEARING_MANAGE: Final = "clearing.manage"  # record obligations, close windows
RECONCILIATION_READ: Final = "reconciliation.read"  # runs, discrepancies and their history
RECONCILIATION_MANAGE: Final = "reconciliation.manage"  # run reconciliation, assign and resolve discrepancies
ADMIN: Final = "admin"  # every permission above

PERMISSIONS: Final[frozenset[str]] = frozenset({
    LEDGER_READ, LEDGER_WRITE, PAYMENTS_READ, PAYMENTS_WRITE, CARDS_TOKENIZE, EVENTS_READ,
    WEBHOOKS_MANAGE, ROUTING_READ, ROUTING_MANAGE, CLEARING_READ, CLEARING_MANAGE, RECONCILIATION_READ,
    RECONCILIATION_MANAGE, ADMIN,
})

_LEDGER = "/dualflow.v1.Ledger/"
_PAYMENTS = "/dualflow.v1.PaymentGateway/"
_ROUTING = "/dualflow.v1.RoutingAdmin/"
_CLEARING = "/dualflow.v1.Clearing/"
_RECONCILIATION = "/dualflow.v1.Reconciliation/"

# Full gRPC method name -> the one permission it needs. A unit test walks every
# service in the generated dualflow.v1 descriptors and fails on a method missing
# here; at run time a missing method is refused (fail closed).
METHOD_PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType({
    _LEDGER + "CreateAccounts": LEDGER_WRITE,
    _LEDGER + "CreateTransfers": LEDGER_WRITE,
    _LEDGER + "LookupAccounts": LEDGER_READ,
    _LEDGER + "LookupTransfers": LEDGER_READ,
    _LEDGER + "GetAccountTransfers": LEDGER_READ,
    _LEDGER + "GetAccountBalances": LEDGER_READ,
    _PAYMENTS + "CreatePayment": PAYMENTS_WRITE,
    _PAYMENTS + "CreatePayout": PAYMENTS_WRITE,
    _PAYMENTS + "CancelPayment": PAYMENTS_WRITE,
    _PAYMENTS + "RefundPayment": PAYMENTS_WRITE,
    _PAYMENTS + "GetPayment": PAYMENTS_READ,
    _PAYMENTS + "ListPayments": PAYMENTS_READ,
    _PAYMENTS + "GetBalance": PAYMENTS_READ,
    _PAYMENTS + "WatchPayment": EVENTS_READ,
    _PAYMENTS + "SubscribeEvents": EVENTS_READ,
    _PAYMENTS + "TokenizeCard": CARDS_TOKENIZE,
    _PAYMENTS + "RegisterWebhook": WEBHOOKS_MANAGE,
    _PAYMENTS + "ListWebhooks": WEBHOOKS_MANAGE,
    _PAYMENTS + "DisableWebhook": WEBHOOKS_MANAGE,
    _PAYMENTS + "ListDeadLetters": WEBHOOKS_MANAGE,
    _PAYMENTS + "RedeliverWebhook": WEBHOOKS_MANAGE,
    _ROUTING + "GetRoutingConfig": ROUTING_READ,
    _ROUTING + "ListChannelHealth": ROUTING_READ,
    _ROUTING + "ReplaceRoutingConfig": ROUTING_MANAGE,
    _ROUTING + "SetChannelEnabled": ROUTING_MANAGE,
    _ROUTING + "ForceBreaker": ROUTING_MANAGE,
    _CLEARING + "RecordObligation": CLEARING_MANAGE,
    _CLEARING + "CloseWindow": CLEARING_MANAGE,
    _CLEARING + "GetPositions": CLEARING_READ,
    _CLEARING + "GetWindow": CLEARING_READ,
    _CLEARING + "ListSettlements": CLEARING_READ,
    _CLEARING + "GetPoolBalances": CLEARING_READ,
    _RECONCILIATION + "RunReconciliation": RECONCILIATION_MANAGE,
    _RECONCILIATION + "AssignDiscrepancy": RECONCILIATION_MANAGE,
    _RECONCILIATION + "ResolveDiscrepancy": RECONCILIATION_MANAGE,
    _RECONCILIATION + "GetRun": RECONCILIATION_READ,
    _RECONCILIATION + "ListRuns": RECONCILIATION_READ,
    _RECONCILIATION + "ListDiscrepancies": RECONCILIATION_READ,
    _RECONCILIATION + "GetDiscrepancyHistory": RECONCILIATION_READ,
    _RECONCILIATION + "ListRunResults": RECONCILIATION_READ,
    _RECONCILIATION + "RunInternalCheck": RECONCILIATION_READ,
})

# Services anyone may call without credentials: load balancers probe health and
# grpcurl lists services before it has a key.
PUBLIC_SERVICES: Final[frozenset[str]] = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})

ALL_MERCHANTS: Final = "*"

# ------------------------------------------------------------------ callers


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client: what it may call and for which merchants."""

    name: str
    merchants: frozenset[str]  # merchant ids, or {"*"} for all
    permissions: frozenset[str]  # with ADMIN expanded to every permission

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def may_act_for(self, merchant_id: str) -> bool:
        return merchant_id in self.merchants or ALL_MERCHANTS in self.merchants

    def check_merchant(self, merchant_id: str) -> None:
        """Raise PermissionDenied (MERCHANT_NOT_ALLOWED) unless this caller acts for `merchant_id`."""
        if merchant_id in self.merchants or ALL_MERCHANTS in self.merchants:
            return
        raise PermissionDenied(
            f"caller {self.name!r} may not act for merchant {merchant_id!r}",
            reason="MERCHANT_NOT_ALLOWED",
            metadata={"merchant_id": merchant_id},
        )


def expand_permissions(names: Sequence[str] | frozenset[str]) -> frozenset[str]:
    granted = frozenset(names)
    unknown = granted - PERMISSIONS
    assert not unknown, f"unknown permissions {sorted(unknown)} (config validation lets none through)"
    return PERMISSIONS if ADMIN in granted else granted


# Every call of a dualflow service when no caller is configured (auth disabled).
ANONYMOUS: Final = Caller("anonymous", frozenset({ALL_MERCHANTS}), PERMISSIONS)

_CURRENT_CALLER: ContextVar[Caller] = ContextVar("dualflow_caller")


def current_caller() -> Caller:
    """The caller of the RPC being served (ANONYMOUS when authentication is disabled).

    The interceptor sets it for every call of a dualflow service before the
    servicer runs; each grpc.aio call runs in its own task, so its own context.
    Outside a call there is no caller and this raises LookupError rather than
    guess: use `caller_scope()` in tests that call a servicer directly.
    """
    try:
        return _CURRENT_CALLER.get()
    except LookupError:
        raise LookupError("current_caller() outside a dualflow RPC: no caller was admitted in this context; "
                          "tests that call servicers directly wrap them in caller_scope(...)") from None


def set_current_caller(caller: Caller) -> None:
    """For the interceptor: the admitted caller of the call running in this task."""
    _CURRENT_CALLER.set(caller)


@contextlib.contextmanager
def caller_scope(caller: Caller) -> Iterator[Caller]:
    """Make `caller` current inside the block (tests, background work on a caller's behalf)."""
    token = _CURRENT_CALLER.set(caller)
    try:
        yield caller
    finally:
        _CURRENT_CALLER.reset(token)


# ------------------------------------------------------------------ credentials


def hash_api_key(key: str) -> str:
    """The SHA-256 of an API key, lowercase hex: what the config stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def server_credentials(cert_file: str | Path, key_file: str | Path,
                       client_ca_file: str | Path) -> grpc.ServerCredentials:
    """TLS for a server port that requires every client to present a certificate signed by the CA.

    Only certificates verified this way may authenticate a caller by common name
    (`mtls_common_name`): grpc reports the peer's common name even when a port
    was set up to request a certificate without verifying it, so never trust
    that name on a port made with other credentials.
    """
    return grpc.ssl_server_credentials(
        [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
        root_certificates=Path(client_ca_file).read_bytes(),
        require_client_auth=True,
    )


class _CallContext(Protocol):
    """The parts of grpc.aio.ServicerContext that authentication reads."""

    def invocation_metadata(self) -> Any: ...

    def auth_context(self) -> Mapping[str, Sequence[bytes]]: ...


@dataclass(frozen=True, slots=True)
class _Principal:
    caller: Caller
    key_sha256: str | None
    limiter: RateLimiter | None


Admission = Callable[[_CallContext], Caller]


def _anonymous(context: _CallContext) -> Caller:
    return ANONYMOUS


class AccessControl:
    """The caller table and rate limiters; admits or refuses each call.

    With no callers, authentication is disabled and every call of a dualflow
    service runs as ANONYMOUS.
    """

    def __init__(self, callers: Sequence[CallerConfig] = (), *,
                 clock: Callable[[], float] = time.monotonic,
                 method_permissions: Mapping[str, str] = METHOD_PERMISSIONS) -> None:
        self._method_permissions = method_permissions
        self._by_key_sha256: dict[str, _Principal] = {}
        self._by_common_name: dict[str, _Principal] = {}
        self.callers: tuple[Caller, ...] = ()
        for c in callers:
            caller = Caller(c.name, frozenset(c.merchants), expand_permissions(c.permissions))
            limiter = RateLimiter(c.name, c.rate_per_s, c.burst, clock=clock) if c.rate_per_s > 0 else None
            principal = _Principal(caller, c.api_key_sha256, limiter)
            if c.api_key_sha256 is not None:
                assert c.api_key_sha256 not in self._by_key_sha256, "two callers share a key (config rejects this)"
                self._by_key_sha256[c.api_key_sha256] = principal
            if c.mtls_common_name is not None:
                assert c.mtls_common_name not in self._by_common_name, "two callers share a certificate name"
                self._by_common_name[c.mtls_common_name] = principal
            self.callers += (caller,)
        self.enabled = bool(self.callers)

    @classmethod
    def from_config(cls, config: PlatformConfig | None, *,
                    clock: Callable[[], float] = time.monotonic) -> AccessControl:
        return cls(config.callers if config is not None else (), clock=clock)

    def permission_for(self, full_method: str) -> str | None:
        """The permission `full_method` needs; None when it is public or missing from the table."""
        return self._method_permissions.get(full_method)

    def admission(self, full_method: str) -> Admission | None:
        """The check to run on every call of `full_method`, decided once per method.

        None: a public service, nothing to check and no caller. Otherwise a
        function of the call's context that returns the admitted Caller or
        raises Unauthenticated / PermissionDenied / Overloaded.
        """
        service = full_method.lstrip("/").partition("/")[0]
        if service in PUBLIC_SERVICES:
            return None
        if not self.enabled:
            return _anonymous
        permission = self._method_permissions.get(full_method)
        authenticate = self._authenticate
        if permission is None:
            log.error("no permission is defined for %s: every call of it is refused "
                      "(add it to gateway.auth.METHOD_PERMISSIONS)", full_method)

            def refuse(context: _CallContext) -> Caller:
                authenticate(context)  # an unauthenticated call learns no more than UNAUTHENTICATED
                raise PermissionDenied(f"{full_method} is not open to any caller on this server",
                                       reason="METHOD_NOT_ALLOWED", metadata={"method": full_method})

            return refuse

        def admit(context: _CallContext) -> Caller:
            principal = authenticate(context)
            caller = principal.caller
            if permission not in caller.permissions:
                raise PermissionDenied(f"caller {caller.name!r} lacks permission {permission!r} for {full_method}",
                                       reason="PERMISSION_MISSING", metadata={"permission": permission})
            if principal.limiter is not None:
                principal.limiter.acquire()
            return caller

        return admit

    def authenticate(self, context: _CallContext) -> Caller:
        """The caller presenting this call's credentials; raises Unauthenticated."""
        return self._authenticate(context).caller

    def _authenticate(self, context: _CallContext) -> _Principal:
        key = None
        malformed_authorization = False
        for name, value in context.invocation_metadata() or ():
            if name == "authorization":
                scheme, _, token = value.partition(" ")
                token = token.strip()
                if scheme.lower() == "bearer" and token:
                    key = token
                    break
                malformed_authorization = True
            elif name == "x-api-key" and key is None:
                key = value.strip() or None
        if key is not None:
            digest = hash_api_key(key)
            principal = self._by_key_sha256.get(digest)
            # The dict finds the entry by hash; compare_digest keeps the final
            # comparison constant-time whatever the lookup did.
            if principal is None or not hmac.compare_digest(principal.key_sha256 or "", digest):
                raise Unauthenticated("the API key is not known to this server", reason="API_KEY_UNKNOWN")
            return principal
        if self._by_common_name:
            common_name = _peer_common_name(context)
            if common_name is not None:
                principal = self._by_common_name.get(common_name)
                if principal is None:
                    raise Unauthenticated(f"no caller is configured for the client certificate {common_name!r}",
                                          reason="CLIENT_CERT_UNKNOWN")
                return principal
        hint = "the authorization metadata is not 'Bearer <key>'; " if malformed_authorization else ""
        raise Unauthenticated(f"{hint}no API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'",
                              reason="API_KEY_MISSING")


def _peer_common_name(context: _CallContext) -> str | None:
    """The common name of the peer's verified certificate, None on plaintext or without a certificate."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    name = names[0]
    return name.decode() if isinstance(name, bytes) else str(name)
