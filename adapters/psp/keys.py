"""Key material the PSP adapter holds: the platform's public keys by serial (reloaded when
their file changes, so a rotation with two valid serials needs no restart) and the nonce
cache that refuses a signed reply or callback seen before.

The platform certificates file is PEM text holding any number of blocks:
- `CERTIFICATE`: an X.509 certificate; its serial (upper-case hex, as WeChat prints it) names
  it, and it is ignored outside its validity period;
- `PUBLIC KEY`: a bare key (WeChat's "platform public key" mode), named by the line
  `serial_no=<SERIAL>` right before its BEGIN line.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

log = logging.getLogger(__name__)

_BLOCK = re.compile(
    r"(?:^serial_no=(?P<serial>[A-Za-z0-9_\-]+)[ \t]*\r?\n)?"
    r"(?P<pem>-----BEGIN (?P<label>CERTIFICATE|PUBLIC KEY)-----\r?\n.*?-----END (?P=label)-----)",
    re.S | re.M,
)


def cert_serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


def load_private_key(pem: bytes) -> RSAPrivateKey:
    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the merchant private key must be an RSA key")
    return key


def parse_platform_keys(text: bytes, now: datetime | None = None) -> dict[str, RSAPublicKey]:
    """Serial -> public key for every usable block in a platform certificates file."""
    now = now or datetime.now(timezone.utc)
    keys: dict[str, RSAPublicKey] = {}
    for m in _BLOCK.finditer(text.decode("utf-8", errors="replace")):
        pem = m["pem"].encode()
        if m["label"] == "CERTIFICATE":
            cert = x509.load_pem_x509_certificate(pem)
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                log.warning("platform certificate %s is outside its validity period; ignored", cert_serial(cert))
                continue
            key = cert.public_key()
            serial = m["serial"] or cert_serial(cert)
        else:
            if not m["serial"]:
                raise ValueError("a PUBLIC KEY block needs a 'serial_no=...' line before it")
            key = load_pem_public_key(pem)
            serial = m["serial"]
        if not isinstance(key, RSAPublicKey):
            raise ValueError(f"platform key {serial} is not an RSA key")
        keys[serial] = key
    if not keys:
        raise ValueError("no usable platform certificate or public key")
    return keys


class PlatformKeys:
    """The platform keys from a file, re-read when the file changes (checked at most every
    `check_interval_s`). A file that fails to parse keeps the previous keys (an editor or a
    copy may be half-way through writing it); write the new file aside and rename it."""

    def __init__(self, path: Path, check_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._keys: dict[str, RSAPublicKey] = {}
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if force:
                raise
            log.warning("platform certificates %s unreadable (%s); keeping %d keys", self.path, exc, len(self._keys))
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp and not force:
            return
        try:
            keys = parse_platform_keys(self.path.read_bytes())
        except (ValueError, OSError) as exc:
            if force:
                raise
            log.warning("platform certificates %s did not parse (%s); keeping %d keys", self.path, exc, len(self._keys))
            return
        self._keys, self._stamp = keys, stamp
        log.info("platform certificates loaded: %s", ", ".join(sorted(keys)))

    def get(self, serial: str) -> RSAPublicKey | None:
        now = time.monotonic()
        if now - self._checked_at >= self.check_interval_s:
            self._checked_at = now
            self._reload()
        return self._keys.get(serial)

    @property
    def serials(self) -> frozenset[str]:
        return frozenset(self._keys)


class NonceCache:
    """Nonces seen in the last `ttl_s`, at most `max_entries` of them (the oldest go first
    when full). With a +/- 5 minute timestamp window, a 10 minute TTL covers every message
    that could still pass the window."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, nonce: str, now: float | None = None) -> bool:
        """True if the nonce is new (and now remembered), False if it was seen within the TTL."""
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl_s and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True
