"""Card vault: the one place a card number (PAN) is kept, encrypted, behind an opaque token.

The rest of the system sees only a `CardRef` (token, BIN, last four, brand, expiry); the PAN comes
back out only through `CardVault.reveal`, which only the channel dispatch calls. Each PAN is sealed
with AES-256-GCM under the ring's active key, with a fresh 96-bit nonce and the token as associated
data (so a ciphertext copied onto another token's row does not decrypt). The key id is stored with
every record, so keys can rotate: old keys keep decrypting, `rotate` re-seals a record under the
active key. A keyed HMAC-SHA256 fingerprint of the PAN (separate key, never rotated with the
encryption keys) makes tokenizing the same card twice answer the same token without storing
anything that could be reversed or brute-forced offline.

Nothing here logs, raises or reprs a PAN, a middle digit of one, or a key: errors name the field
and the rule that failed, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dualflow.core.database import Database
from dualflow.core.errors import DualflowError, FieldViolation, InvalidRequest, NotFound

KEY_BYTES = 32  # AES-256
FINGERPRINT_KEY_MIN_BYTES = 32
NONCE_BYTES = 12  # 96 bits: the size GCM is specified and analysed for
TOKEN_PREFIX = "tok_"
_TOKEN_RE = re.compile(r"tok_[A-Za-z0-9_-]{24}")
_PAN_RE = re.compile(r"[0-9]{12,19}")  # ASCII digits only: str.isdigit() also accepts "²" and "٣"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Bound to every ciphertext with the token: a versioned context string, so a future record format
# cannot be confused with this one.
_AAD_PREFIX = b"dualflow.vault.v1:"
# A card expiring further out than this is a typo or garbage, not a card.
_EXPIRY_YEARS_AHEAD_MAX = 50

VAULT_SCHEMA: list[str] = [
    # Bytes are base64 in TEXT and times are unix milliseconds (core/database.py: BIGINT and TEXT
    # only). bin6, last4, brand and expiry are kept in the clear: they are what CardRef shows and
    # what PCI DSS allows to be displayed; the PAN itself exists only as ciphertext.
    """CREATE TABLE IF NOT EXISTS card_vault (
        token TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        key_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        ciphertext TEXT NOT NULL,
        bin6 TEXT NOT NULL,
        last4 TEXT NOT NULL,
        brand TEXT NOT NULL,
        exp_month BIGINT NOT NULL,
        exp_year BIGINT NOT NULL,
        holder_name_masked TEXT,
        created_at BIGINT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS card_vault_key_id ON card_vault (key_id)",
]

_COLUMNS = (
    "token, fingerprint, key_id, nonce, ciphertext, bin6, last4, brand, exp_month, exp_year, "
    "holder_name_masked, created_at"
)


class VaultIntegrityError(DualflowError):
    """A stored record does not decrypt: tampered, corrupted, or sealed under a key the ring no
    longer holds. An operator problem (the gateway answers INTERNAL), never the caller's."""

    reason = "CARD_VAULT_INTEGRITY"


@dataclass(frozen=True, slots=True)
class CardRef:
    """What the rest of the system may know about a stored card."""

    token: str
    bin6: str
    last4: str
    brand: str
    exp_month: int
    exp_year: int
    holder_name_masked: str | None = None

    def __repr__(self) -> str:
        # Written out (not the dataclass default) so that a field added later cannot leak by default.
        return (
            f"CardRef(token={self.token!r}, bin6={self.bin6!r}, last4={self.last4!r}, "
            f"brand={self.brand!r}, exp={self.exp_month:02d}/{self.exp_year}, "
            f"holder_name_masked={self.holder_name_masked!r})"
        )


class KeyRing:
    """The vault's keys: AES-256 keys by id (one of them active for new seals) and the separate
    HMAC key for PAN fingerprints. Never shows a key in its repr or its errors."""

    __slots__ = ("_keys", "_active_key_id", "_fingerprint_key")

    def __init__(self, keys: dict[str, bytes], active_key_id: str, *, fingerprint_key: bytes) -> None:
        if not isinstance(keys, dict) or not keys:
            raise ValueError("key ring needs at least one encryption key")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
                raise ValueError("key ids must be 1 to 64 characters of [A-Za-z0-9_.-]")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be exactly {KEY_BYTES} bytes")
        if active_key_id not in keys:
            raise ValueError(f"active key id {active_key_id!r} is not in the key ring")
        if not isinstance(fingerprint_key, bytes) or len(fingerprint_key) < FINGERPRINT_KEY_MIN_BYTES:
            raise ValueError(f"fingerprint key must be at least {FINGERPRINT_KEY_MIN_BYTES} bytes")
        # A fingerprint key equal to an encryption key would let one leaked secret do both jobs.
        if any(hmac.compare_digest(fingerprint_key, key) for key in keys.values()):
            raise ValueError("fingerprint key must differ from every encryption key")
        self._keys = dict(keys)
        self._active_key_id = active_key_id
        self._fingerprint_key = fingerprint_key

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeyRing:
        """`{"active": "k2", "keys": {"k1": "<base64 32 bytes>", ...}, "fingerprint_key": "<base64>"}`.

        Keys are standard base64 (e.g. `base64.b64encode(os.urandom(32))`). Raises ValueError naming
        the offending entry, never its value.
        """
        if not isinstance(config, Mapping):
            raise ValueError("key ring config must be a mapping")
        active = config.get("active")
        if not isinstance(active, str) or not active:
            raise ValueError("key ring config needs 'active': the id of the key for new records")
        raw_keys = config.get("keys")
        if not isinstance(raw_keys, Mapping) or not raw_keys:
            raise ValueError("key ring config needs 'keys': a non-empty mapping of key id to base64 key")
        keys = {str(key_id): _b64_key(value, f"key {key_id!r}") for key_id, value in raw_keys.items()}
        if "fingerprint_key" not in config:
            raise ValueError("key ring config needs 'fingerprint_key' (base64, at least 32 bytes)")
        fingerprint_key = _b64_key(config["fingerprint_key"], "fingerprint_key")
        return cls(keys, active, fingerprint_key=fingerprint_key)

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def key(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def fingerprint(self, pan: str) -> str:
        """HMAC-SHA256 of the PAN: equal for equal PANs, useless without the key (a bare hash of
        a PAN is brute-forced in minutes: BIN and last four leave ~10^6 candidates)."""
        return hmac.new(self._fingerprint_key, pan.encode("ascii"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._keys)!r}, active_key_id={self._active_key_id!r})"

    __str__ = __repr__


def _b64_key(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the decoder's own message is not shown either, to be sure nothing of the
        # value travels with the error.
        raise ValueError(f"{what} is not valid base64") from None


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def brand_of(pan_or_bin: str) -> str:
    """Card brand from the leading digits: visa, mastercard, amex, unionpay or unknown."""
    p = pan_or_bin
    if p[:2] in ("34", "37"):
        return "amex"
    if "51" <= p[:2] <= "55" or (len(p) >= 4 and "2221" <= p[:4] <= "2720"):
        return "mastercard"
    if p[:2] == "62":
        return "unionpay"
    if p[:1] == "4":
        return "visa"
    return "unknown"


def mask(pan: str) -> str:
    """`4111111111111111` -> `411111******1111`: BIN and last four, the rest starred."""
    if not isinstance(pan, str) or not _PAN_RE.fullmatch(pan):
        raise ValueError("mask expects a card number of 12 to 19 digits")
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def mask_holder_name(name: str) -> str:
    """`Jane Q Doe` -> `J*** Q*** D***`: enough to recognise, not enough to use."""
    return " ".join(part[0] + "***" for part in name.split())


def validate_card(pan: object, exp_month: object, exp_year: object, *, now_s: float) -> None:
    """Raise InvalidRequest(CARD_INVALID) listing every rule the card breaks; never echoes it."""
    violations: list[FieldViolation] = []
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit():
        violations.append(FieldViolation("card_number", "must be a string of digits only"))
    elif not 12 <= len(pan) <= 19:
        violations.append(FieldViolation("card_number", "must be 12 to 19 digits long"))
    elif not luhn_ok(pan):
        violations.append(FieldViolation("card_number", "fails the Luhn check"))
    month_ok = isinstance(exp_month, int) and not isinstance(exp_month, bool) and 1 <= exp_month <= 12
    if not month_ok:
        violations.append(FieldViolation("exp_month", "must be an integer from 1 to 12"))
    today = datetime.fromtimestamp(now_s, tz=timezone.utc)
    year_ok = isinstance(exp_year, int) and not isinstance(exp_year, bool)
    if not year_ok or not today.year <= exp_year <= today.year + _EXPIRY_YEARS_AHEAD_MAX:  # type: ignore[operator]
        violations.append(FieldViolation(
            "exp_year", f"must be a four-digit year, this year or up to {_EXPIRY_YEARS_AHEAD_MAX} ahead"))
    elif month_ok and (exp_year, exp_month) < (today.year, today.month):
        # A card is good through the last day of its expiry month.
        violations.append(FieldViolation("exp_month", "the card has expired"))
    if violations:
        raise InvalidRequest("card details are invalid", reason="CARD_INVALID", violations=tuple(violations))


def _check_token(token: object) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        # Not echoed: a caller that confuses fields might pass a PAN here.
        raise InvalidRequest(
            "card token is malformed", reason="CARD_TOKEN_MALFORMED",
            violations=(FieldViolation("token", "must be 'tok_' followed by 24 URL-safe characters"),),
        )
    return token


def _aad(token: str) -> bytes:
    return _AAD_PREFIX + token.encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Row:
    token: str
    fingerprint: str
    key_id: str
    nonce: str
    ciphertext: str
    bin6: str
    last4: str
    brand: str
    exp_month: int
    exp_year: int
    holder_name_masked: str | None
    created_at: int

    def ref(self) -> CardRef:
        return CardRef(self.token, self.bin6, self.last4, self.brand, int(self.exp_month),
                       int(self.exp_year), self.holder_name_masked)

    def __repr__(self) -> str:
        return f"_Row(token={self.token!r}, key_id={self.key_id!r})"


class CardVault:
    """Tokenize, look up, reveal and re-key cards, stored through the `Database` interface.

    The tables are `VAULT_SCHEMA`, applied by the store when it opens.
    """

    def __init__(self, db: Database, keyring: KeyRing, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._keyring = keyring
        self._clock = clock  # unix seconds; injected so tests can move "today" past an expiry

    def __repr__(self) -> str:
        return f"CardVault(active_key_id={self._keyring.active_key_id!r})"

    async def tokenize(self, pan: str, exp_month: int, exp_year: int, *,
                       holder_name: str | None = None) -> CardRef:
        """Store a card and answer its reference; the same PAN always answers the same token.

        Tokenizing a known PAN with a later expiry (a reissued card) moves the stored expiry
        forward; an earlier one leaves it as it is.
        """
        validate_card(pan, exp_month, exp_year, now_s=self._clock())
        fingerprint = self._keyring.fingerprint(pan)
        row = await self._by_fingerprint(fingerprint)
        if row is None:
            token = TOKEN_PREFIX + secrets.token_urlsafe(18)  # 18 bytes -> 24 characters, 144 bits
            key_id, nonce, ciphertext = self._seal(pan, token)
            masked_name = mask_holder_name(holder_name) if holder_name and holder_name.strip() else None
            # DO NOTHING on the fingerprint: if another request stored this card in the meantime,
            # its token wins and we read it back below (write() reports no row counts).
            await self._db.write([(
                f"INSERT INTO card_vault ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (fingerprint) DO NOTHING",
                (token, fingerprint, key_id, nonce, ciphertext, pan[:6], pan[-4:], brand_of(pan),
                 exp_month, exp_year, masked_name, int(self._clock() * 1000)),
            )])
            row = await self._by_fingerprint(fingerprint)
            assert row is not None, "card_vault row vanished right after its insert"
        if (row.exp_year, row.exp_month) < (exp_year, exp_month):
            # The condition is repeated in SQL so a concurrent, even later, expiry is not undone.
            await self._db.write([(
                "UPDATE card_vault SET exp_month = ?, exp_year = ? "
                "WHERE token = ? AND exp_year * 100 + exp_month < ?",
                (exp_month, exp_year, row.token, exp_year * 100 + exp_month),
            )])
            row = await self._by_token(row.token)
            assert row is not None
        return row.ref()

    async def card(self, token: str) -> CardRef:
        return (await self._require(token)).ref()

    async def reveal(self, token: str) -> str:
        """The PAN behind a token: the only way back to it (for the channel dispatch alone)."""
        row = await self._require(token)
        return self._open(row)

    async def reveal_card(self, token: str) -> tuple[CardRef, str]:
        """The card's public view and its PAN from one read (what a card adapter needs at send time)."""
        row = await self._require(token)
        return row.ref(), self._open(row)

    async def rotate(self, token: str) -> str:
        """Re-seal the token's record under the active key (fresh nonce); answers the key id the
        record is now under. A no-op for a record already under the active key."""
        row = await self._require(token)
        active = self._keyring.active_key_id
        if row.key_id == active:
            return active
        pan = self._open(row)
        key_id, nonce, ciphertext = self._seal(pan, row.token)
        # Guarded by the old nonce: if someone re-sealed it meanwhile, their result stands.
        await self._db.write([(
            "UPDATE card_vault SET key_id = ?, nonce = ?, ciphertext = ? WHERE token = ? AND nonce = ?",
            (key_id, nonce, ciphertext, row.token, row.nonce),
        )])
        return key_id

    async def tokens_to_rotate(self, limit: int = 100) -> list[str]:
        """Tokens whose record is not under the active key: feed them to `rotate` after a key
        change, then drop the old key from the ring once this answers []."""
        rows = await self._db.query(
            "SELECT token FROM card_vault WHERE key_id <> ? ORDER BY token LIMIT ?",
            (self._keyring.active_key_id, limit),
        )
        return [r[0] for r in rows]

    # -- internals -------------------------------------------------------------------------

    def _seal(self, pan: str, token: str) -> tuple[str, str, str]:
        key_id = self._keyring.active_key_id
        key = self._keyring.key(key_id)
        assert key is not None
        nonce = os.urandom(NONCE_BYTES)  # random per seal: never reuse a (key, nonce) pair
        ciphertext = AESGCM(key).encrypt(nonce, pan.encode("ascii"), _aad(token))
        return key_id, _b64(nonce), _b64(ciphertext)

    def _open(self, row: _Row) -> str:
        key = self._keyring.key(row.key_id)
        if key is None:
            raise VaultIntegrityError(
                "card record is sealed under a key the key ring does not hold",
                reason="CARD_VAULT_KEY_UNKNOWN", metadata={"token": row.token, "key_id": row.key_id},
            )
        try:
            nonce = base64.b64decode(row.nonce, validate=True)
            plaintext = AESGCM(key).decrypt(nonce, base64.b64decode(row.ciphertext, validate=True),
                                            _aad(row.token))
            pan = plaintext.decode("ascii")
        except (InvalidTag, binascii.Error, ValueError):
            # `from None`: nothing of the record or the key rides along in a traceback's context.
            raise VaultIntegrityError(
                "card record failed its integrity check",
                metadata={"token": row.token, "key_id": row.key_id},
            ) from None
        # The clear-text columns are not authenticated; a mismatch means someone edited the row.
        if pan[:6] != row.bin6 or pan[-4:] != row.last4:
            raise VaultIntegrityError(
                "card record does not match its stored BIN and last four",
                metadata={"token": row.token, "key_id": row.key_id},
            )
        return pan

    async def _require(self, token: str) -> _Row:
        row = await self._by_token(_check_token(token))
        if row is None:
            raise NotFound("no card for this token", reason="CARD_TOKEN_UNKNOWN", metadata={"token": token})
        return row

    async def _by_token(self, token: str) -> _Row | None:
        rows = await self._db.query(f"SELECT {_COLUMNS} FROM card_vault WHERE token = ?", (token,))
        return _Row(*rows[0]) if rows else None

    async def _by_fingerprint(self, fingerprint: str) -> _Row | None:
        rows = await self._db.query(f"SELECT {_COLUMNS} FROM card_vault WHERE fingerprint = ?", (fingerprint,))
        return _Row(*rows[0]) if rows else None
