"""The mock bank's side of the rail's HMAC signing, written from the protocol text, not from
dualflow's code (a shared signer could not catch the adapter's bugs).

Signed string: METHOD, PATH (as received, no query), TIMESTAMP, NONCE and the hex SHA-256 of
the body, joined by single newlines. Signature: hex HMAC-SHA256 under the key whose id is the
first 16 hex digits of SHA-256(key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time

HEADERS = ("x-rail-key-id", "x-rail-timestamp", "x-rail-nonce", "x-rail-signature")
_NONCE_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
_HEX = frozenset("0123456789abcdef")


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def mac(key: bytes, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class Keys:
    """The keys this bank shares with its client: the first signs, all verify."""

    def __init__(self, keys: list[bytes]) -> None:
        assert keys, "at least one key"
        self.by_id = {fingerprint(k): k for k in keys}
        self.current = fingerprint(keys[0])

    def headers(self, method: str, path: str, body: bytes, kid: str | None = None,
                corrupt: bool = False) -> dict[str, str]:
        kid = kid if kid in self.by_id else self.current
        ts = str(int(time.time()))
        nonce = secrets.token_urlsafe(18)
        sig = mac(self.by_id[kid], method, path, ts, nonce, body)
        if corrupt:  # the profile's bad_signature_rate: a reply the client must not believe
            sig = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        return {"X-Rail-Key-Id": kid, "X-Rail-Timestamp": ts, "X-Rail-Nonce": nonce, "X-Rail-Signature": sig}


class Nonces:
    """Nonces seen in the last 2 x window seconds (older ones would be stale anyway)."""

    def __init__(self, window_s: int) -> None:
        self.ttl_s = 2 * window_s
        self.seen: dict[str, float] = {}

    def fresh(self, nonce: str, now: float) -> bool:
        if len(self.seen) > 10_000:
            self.seen = {n: t for n, t in self.seen.items() if now - t <= self.ttl_s}
        if nonce in self.seen and now - self.seen[nonce] <= self.ttl_s:
            return False
        self.seen[nonce] = now
        return True


def check(keys: Keys, nonces: Nonces, method: str, path: str, headers: dict[str, str], body: bytes,
          window_s: int) -> tuple[str, str]:
    """(error code, key id): the code is '' when the request is authentic."""
    kid, ts, nonce, sig = (headers.get(h, "") for h in HEADERS)
    if not (kid and ts and nonce and sig):
        return "MISSING_SIGNATURE", ""
    key = keys.by_id.get(kid)
    if key is None:
        return "UNKNOWN_KEY", ""
    if not (ts.isascii() and ts.isdigit() and len(ts) <= 12 and 16 <= len(nonce) <= 64
            and set(nonce) <= _NONCE_CHARS and len(sig) == 64 and set(sig) <= _HEX):
        return "MALFORMED_SIGNATURE", kid
    if not hmac.compare_digest(mac(key, method, path, ts, nonce, body), sig):
        return "BAD_SIGNATURE", kid
    now = time.time()
    if abs(now - int(ts)) > window_s:
        return "STALE_TIMESTAMP", kid
    if not nonces.fresh(nonce, now):
        return "REPLAYED_NONCE", kid
    return "", kid
