"""Request, response and callback signing for the transfer rail: pure functions of the message.

The signed string is `METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nSHA256_HEX(BODY)` (no trailing newline),
and the signature is the lowercase hex HMAC-SHA256 of it under a key named by its key id. A
response is signed over the request's METHOD and PATH with its own timestamp and nonce, so it
cannot be passed off as the answer to a different path. A key's id is the first 16 hex digits of
SHA-256 of the key bytes, so the id can never disagree with the key it names. Nothing here does
I/O; the fixed vectors in tests/channels/test_transfer_signing.py pin every byte.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

KEY_ID_HEADER = "X-Rail-Key-Id"
TIMESTAMP_HEADER = "X-Rail-Timestamp"
NONCE_HEADER = "X-Rail-Nonce"
SIGNATURE_HEADER = "X-Rail-Signature"
SIGNED_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

WINDOW_S = 300  # a timestamp further than this from our clock, either way, is stale
KEY_BYTES_MIN = 16
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureError(Exception):
    """A message whose signature must not be trusted. `reason` is one of the contract's
    callback rejection codes: BAD_SIGNATURE, UNKNOWN_KEY, STALE, REPLAYED, MALFORMED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def parse_hex_key(text: bytes | str) -> bytes:
    """A key file's content (hex, surrounding whitespace ignored) as bytes; at least 16 bytes."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    try:
        key = bytes.fromhex(raw.strip())
    except ValueError:
        raise ValueError("the HMAC key file must hold the key in hex") from None
    if len(key) < KEY_BYTES_MIN:
        raise ValueError(f"the HMAC key must be at least {KEY_BYTES_MIN} bytes")
    return key


def canonical(method: str, path: str, timestamp: str, nonce: str, body: bytes, *,
              body_sha256: str | None = None) -> bytes:
    """`body_sha256`: the body's digest when the body itself was streamed to disk (statements)."""
    digest = hashlib.sha256(body).hexdigest() if body_sha256 is None else body_sha256
    return "\n".join((method.upper(), path, timestamp, nonce, digest)).encode()


def signature(key: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes, *,
              body_sha256: str | None = None) -> str:
    return hmac.new(key, canonical(method, path, timestamp, nonce, body, body_sha256=body_sha256),
                    hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys we share with the bank: `current` signs; every key in `keys` verifies (two are
    valid while a key rolls)."""

    current: str
    keys: Mapping[str, bytes]

    @classmethod
    def of(cls, current: bytes, *others: bytes) -> KeyRing:
        keys = {key_id(k): k for k in (current, *others)}
        return cls(current=key_id(current), keys=keys)

    def __repr__(self) -> str:  # never the key bytes
        return f"KeyRing(current={self.current!r}, ids={sorted(self.keys)!r})"

    def sign(self, method: str, path: str, body: bytes, *, timestamp: int | None = None,
             nonce: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or new_nonce()
        return {
            KEY_ID_HEADER: self.current,
            TIMESTAMP_HEADER: ts,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature(self.keys[self.current], method, path, ts, nonce, body),
        }

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes, *, now: float,
               nonces: NonceCache | None = None, window_s: int = WINDOW_S, body_sha256: str | None = None) -> str:
        """Check a signed message; answer its nonce. Order matters: the nonce is recorded only
        after the signature verifies, so forged messages cannot fill the cache or burn nonces."""
        fields = _signed_fields(headers)
        kid, ts, nonce, sig = (fields.get(h.lower()) for h in SIGNED_HEADERS)
        if not kid or not ts or not nonce or not sig:
            raise SignatureError("BAD_SIGNATURE", "the message is not signed")
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError("UNKNOWN_KEY", "the message is signed under a key id we do not hold")
        if not _TIMESTAMP.fullmatch(ts) or not _NONCE.fullmatch(nonce) or not _HEX64.fullmatch(sig):
            raise SignatureError("MALFORMED", "the signature headers are malformed")
        if not hmac.compare_digest(signature(key, method, path, ts, nonce, body, body_sha256=body_sha256), sig):
            raise SignatureError("BAD_SIGNATURE", "the signature does not match")
        if abs(now - int(ts)) > window_s:
            raise SignatureError("STALE", "the message's timestamp is outside the window")
        if nonces is not None and not nonces.add(nonce, now):
            raise SignatureError("REPLAYED", "the message's nonce was seen before")
        return nonce


def _signed_fields(headers: Mapping[str, str]) -> dict[str, str]:
    wanted = {h.lower() for h in SIGNED_HEADERS}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() in wanted and isinstance(value, str):
            out[name.lower()] = value.strip()
    return out


class NonceCache:
    """Nonces seen inside the window. A nonce older than twice the window can be forgotten: its
    message would be refused as stale anyway. Bounded: when full, the oldest go first."""

    def __init__(self, window_s: int = WINDOW_S, max_entries: int = 200_000) -> None:
        self._ttl_s = 2 * window_s
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now: float) -> bool:
        """Record a nonce; False if it was already there."""
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self._ttl_s and len(self._seen) < self._max:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True
