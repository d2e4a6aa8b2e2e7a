"""Webhook signatures: how dualflow signs each notification and how a merchant checks it.

Every webhook request carries a header; for the body `{"id":"evt_1"}` signed at 1767225600 with
the secret `whsec_test` it is::

    Dualflow-Signature: t=1767225600,v1=45b40331de0325606dc5400202ade162460fbe48daf9401adfdcd0d7b4f35470

where `t` is the unix time of signing and `v1` the hex HMAC-SHA256, keyed with the endpoint's
secret (the `whsec_...` string, as UTF-8 bytes), of `f"{t}."` followed by the raw request body.
Signing the timestamp with the body lets a receiver refuse replays of an old, captured request.
While a secret is being rolled the header may carry several `v1=` entries, one per secret; a
request is genuine if any of them matches. Unknown schemes (`v0=`, `v2=`) are ignored, so a
receiver keeps working when new ones are added.

This module depends on nothing outside the standard library: merchants may copy it as it is.

Usage (any web framework; verify the raw bytes, before parsing the JSON)::

    import json
    import time
    from dualflow.core.webhooks.signature import SIGNATURE_HEADER, SignatureError, verify

    def handle(request_body: bytes, headers: dict[str, str]) -> int:
        try:
            verify(b"whsec_...", request_body, headers.get(SIGNATURE_HEADER, ""), now=int(time.time()))
        except SignatureError:
            return 400  # not from dualflow, altered, or replayed: ignore it
        event = json.loads(request_body)  # {"id", "type", "created_at_ns", "data"}
        ...  # events may arrive more than once: deduplicate on event["id"]
        return 200
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "MalformedSignatureHeader",
    "NoMatchingSignature",
    "SignatureError",
    "TimestampOutsideTolerance",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "Dualflow-Signature"
DEFAULT_TOLERANCE_S = 300
_SCHEME = "v1"
_HEADER_LEN_MAX = 8192  # a handful of v1 entries fit many times over; more is not ours


class SignatureError(ValueError):
    """The request's signature does not prove it comes, unaltered and recent, from dualflow."""


class MalformedSignatureHeader(SignatureError):
    """The header is missing or not `t=<unix>,v1=<hex>[,v1=<hex>...]`."""


class TimestampOutsideTolerance(SignatureError):
    """The signed timestamp is too far from now: a replay, or a badly wrong clock."""


class NoMatchingSignature(SignatureError):
    """No `v1` entry matches the body under this secret: a wrong secret or an altered body."""


def _key(secret: bytes | str) -> bytes:
    # Secrets are handed out as text (`whsec_...`); accept that as is rather than make every
    # merchant remember to .encode() it.
    if isinstance(secret, str):
        return secret.encode("utf-8")
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    raise TypeError("secret must be bytes or str")


def _digest(key: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(key, f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(secret: bytes | str, body: bytes, timestamp: int) -> str:
    """The `Dualflow-Signature` header value for `body` signed at unix time `timestamp`."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative integer of unix seconds")
    return f"t={timestamp},{_SCHEME}={_digest(_key(secret), bytes(body), timestamp)}"


def verify(secret: bytes | str, body: bytes, header: str, *, now: int,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
    """Return if `header` is a valid signature of `body` under `secret`, made within
    `tolerance_s` seconds of `now` (either side: clocks drift); raise a SignatureError otherwise.

    `now` is required, not defaulted to the clock, so that tests are deterministic and the
    caller decides which clock it trusts.
    """
    timestamp, candidates = _parse(header)
    if abs(now - timestamp) > tolerance_s:
        raise TimestampOutsideTolerance(
            f"signature timestamp is {abs(now - timestamp)} s from now, more than the {tolerance_s} s tolerated")
    expected = _digest(_key(secret), bytes(body), timestamp)
    # compare_digest on every candidate, without stopping early, so timing reveals nothing about
    # which entry (or how much of it) matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise NoMatchingSignature("no v1 signature in the header matches the body and secret")


def _parse(header: object) -> tuple[int, list[str]]:
    if not isinstance(header, str) or not header.strip():
        raise MalformedSignatureHeader(f"missing {SIGNATURE_HEADER} header")
    if len(header) > _HEADER_LEN_MAX:
        raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header is longer than {_HEADER_LEN_MAX} characters")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header entries must be key=value")
        if key == "t":
            if timestamp is not None:
                raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header has more than one t=")
            if not value.isascii() or not value.isdigit() or len(value) > 12:
                raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header t= is not unix seconds")
            timestamp = int(value)
        elif key == _SCHEME:
            # Lower-case hex of a SHA-256 only; anything else cannot match and is not compared.
            if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
                candidates.append(value)
    if timestamp is None:
        raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header has no t=")
    if not candidates:
        raise MalformedSignatureHeader(f"{SIGNATURE_HEADER} header has no well-formed v1= signature")
    return timestamp, candidates
