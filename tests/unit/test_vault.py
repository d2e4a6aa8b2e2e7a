"""Card vault: round trip, dedupe, key rotation, tampering, validation that never echoes the PAN.

Runs on SQLite in memory and, when reachable, on PostgreSQL, so the vault's SQL is proven portable.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
from helpers_db import PostgresTestDatabase, SqliteTestDatabase, apply_schema

from dualflow.core.errors import DualflowError, InvalidRequest, NotFound
from dualflow.core.payments.vault import (
    VAULT_SCHEMA,
    CardRef,
    CardVault,
    KeyRing,
    VaultIntegrityError,
    brand_of,
    luhn_ok,
    mask,
)

K1, K2, FP = os.urandom(32), os.urandom(32), os.urandom(32)
NOW_S = datetime(2030, 6, 15, 12, 0, tzinfo=timezone.utc).timestamp()
VISA = "4111111111111111"
MASTERCARD = "5555555555554444"


def with_luhn(prefix: str, length: int) -> str:
    """`prefix` padded with zeros to `length - 1` digits, plus the Luhn check digit."""
    body = prefix.ljust(length - 1, "0")
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def ring(active: str = "k1", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"k1": K1}, active, fingerprint_key=FP)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[SqliteTestDatabase | PostgresTestDatabase]:
    if request.param == "sqlite":
        database: SqliteTestDatabase | PostgresTestDatabase = SqliteTestDatabase()
    else:
        database = await PostgresTestDatabase.connect(request.getfixturevalue("pg_dsn"))
    await apply_schema(database, VAULT_SCHEMA, VAULT_SCHEMA)  # twice: IF NOT EXISTS really holds
    yield database
    await database.close()


def vault(db: object, keyring: KeyRing | None = None, now_s: float = NOW_S) -> CardVault:
    return CardVault(db, keyring or ring(), clock=lambda: now_s)  # type: ignore[arg-type]


def rendered(err: DualflowError) -> str:
    """Everything an error carries out of the process: message, str, violations, metadata."""
    return " ".join([err.message, str(err), repr(err.args), repr(err.violations), repr(err.metadata)])


# -- round trip, lookups -----------------------------------------------------------------------

async def test_round_trip(db: SqliteTestDatabase) -> None:
    v = vault(db)
    ref = await v.tokenize(VISA, 12, 2031, holder_name="Jane Q Doe")
    assert re.fullmatch(r"tok_[A-Za-z0-9_-]{24}", ref.token)
    assert ref == CardRef(ref.token, "411111", "1111", "visa", 12, 2031, "J*** Q*** D***")
    assert await v.card(ref.token) == ref
    assert await v.reveal(ref.token) == VISA
    # Nothing of the PAN beyond BIN and last four is stored in the clear.
    rows = await db.query("SELECT * FROM card_vault")
    assert len(rows) == 1 and VISA not in repr(rows) and VISA[6:12] not in repr(rows)


async def test_same_pan_same_token_other_pan_other_token(db: SqliteTestDatabase) -> None:
    v = vault(db)
    a = await v.tokenize(VISA, 12, 2031)
    b = await v.tokenize(VISA, 12, 2031)
    c = await v.tokenize(MASTERCARD, 1, 2032)
    assert a.token == b.token != c.token
    assert len(await db.query("SELECT token FROM card_vault")) == 2
    # Another vault with the same fingerprint key (another process) dedupes too, even after the
    # encryption key rotated: the fingerprint key is separate.
    other = vault(db, ring("k2", k1=K1, k2=K2))
    assert (await other.tokenize(VISA, 12, 2031)).token == a.token


async def test_reissued_card_moves_expiry_forward_only(db: SqliteTestDatabase) -> None:
    v = vault(db)
    ref = await v.tokenize(VISA, 12, 2031)
    assert (await v.tokenize(VISA, 3, 2034)).exp_year == 2034
    later = await v.tokenize(VISA, 12, 2031)  # an old copy of the card comes in again
    assert (later.token, later.exp_month, later.exp_year) == (ref.token, 3, 2034)


async def test_lookup_errors(db: SqliteTestDatabase) -> None:
    v = vault(db)
    with pytest.raises(NotFound) as nf:
        await v.card("tok_" + "A" * 24)
    assert nf.value.reason == "CARD_TOKEN_UNKNOWN"
    for bad in ["", "tok_short", "tok_" + "A" * 25, "tok_" + "A" * 23 + "!", VISA, None]:
        with pytest.raises(InvalidRequest) as ir:
            await v.reveal(bad)  # type: ignore[arg-type]
        assert ir.value.reason == "CARD_TOKEN_MALFORMED"
        assert VISA not in rendered(ir.value)


# -- keys --------------------------------------------------------------------------------------

async def test_rotation_old_key_still_decrypts_and_rotate_moves_to_active(db: SqliteTestDatabase) -> None:
    old = vault(db, ring("k1", k1=K1))
    ref = await old.tokenize(VISA, 12, 2031)
    (key_id, nonce_before), = await db.query("SELECT key_id, nonce FROM card_vault")
    assert key_id == "k1"

    new = vault(db, ring("k2", k1=K1, k2=K2))
    assert await new.reveal(ref.token) == VISA  # old key still decrypts
    assert await new.tokens_to_rotate() == [ref.token]
    assert await new.rotate(ref.token) == "k2"
    (key_id, nonce_after), = await db.query("SELECT key_id, nonce FROM card_vault")
    assert key_id == "k2" and nonce_after != nonce_before
    assert await new.tokens_to_rotate() == []
    assert await new.rotate(ref.token) == "k2"  # idempotent

    # Now k1 can leave the ring; the record opens with k2 alone, and no longer with k1 alone.
    assert await vault(db, ring("k2", k2=K2)).reveal(ref.token) == VISA
    with pytest.raises(VaultIntegrityError) as exc:
        await vault(db, ring("k1", k1=K1)).reveal(ref.token)
    assert exc.value.reason == "CARD_VAULT_KEY_UNKNOWN"


async def test_tampered_records_fail_as_domain_errors(db: SqliteTestDatabase) -> None:
    v = vault(db)
    a = await v.tokenize(VISA, 12, 2031)
    b = await v.tokenize(MASTERCARD, 12, 2031)
    (ciphertext,), = await db.query("SELECT ciphertext FROM card_vault WHERE token = ?", (a.token,))
    raw = bytearray(base64.b64decode(ciphertext))
    raw[0] ^= 1
    await db.write([("UPDATE card_vault SET ciphertext = ? WHERE token = ?",
                     (base64.b64encode(bytes(raw)).decode(), a.token))])
    with pytest.raises(VaultIntegrityError) as exc:
        await v.reveal(a.token)
    assert exc.value.reason == "CARD_VAULT_INTEGRITY"
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert VISA not in rendered(exc.value) and "InvalidTag" not in rendered(exc.value)

    # b's ciphertext and nonce copied onto a's row: the token is bound as associated data.
    await db.write([(
        "UPDATE card_vault SET nonce = (SELECT nonce FROM card_vault WHERE token = ?), "
        "ciphertext = (SELECT ciphertext FROM card_vault WHERE token = ?) WHERE token = ?",
        (b.token, b.token, a.token))])
    with pytest.raises(VaultIntegrityError):
        await v.reveal(a.token)
    assert await v.reveal(b.token) == MASTERCARD

    # Clear-text columns edited: caught by comparing with the decrypted PAN.
    await db.write([("UPDATE card_vault SET last4 = '0000' WHERE token = ?", (b.token,))])
    with pytest.raises(VaultIntegrityError):
        await v.reveal(b.token)


def test_key_ring_from_config() -> None:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    kr = KeyRing.from_config({"active": "k2", "keys": {"k1": b64(K1), "k2": b64(K2)}, "fingerprint_key": b64(FP)})
    assert kr.active_key_id == "k2" and kr.key_ids == ("k1", "k2") and kr.key("k1") == K1
    text = repr(kr) + str(kr)
    for secret in (K1, K2, FP):
        assert b64(secret) not in text and secret.hex() not in text and repr(secret) not in text


@pytest.mark.parametrize(("config", "message"), [
    # config                                                                      expected ValueError
    ({"keys": {"k1": "K1"}, "fingerprint_key": "FP"},                             "needs 'active'"),
    ({"active": "k1", "keys": {}, "fingerprint_key": "FP"},                       "needs 'keys'"),
    ({"active": "k1", "keys": {"k1": "K1"}},                                      "needs 'fingerprint_key'"),
    ({"active": "k9", "keys": {"k1": "K1"}, "fingerprint_key": "FP"},             "'k9' is not in the key ring"),
    ({"active": "k1", "keys": {"k1": "SHORT"}, "fingerprint_key": "FP"},          "key 'k1' must be exactly 32 bytes"),
    ({"active": "k1", "keys": {"k1": "not base64!"}, "fingerprint_key": "FP"},    "key 'k1' is not valid base64"),
    ({"active": "k1", "keys": {"k1": "K1"}, "fingerprint_key": "SHORT"},          "fingerprint key must be at least"),
    ({"active": "k1", "keys": {"k1": "K1"}, "fingerprint_key": "K1"},             "must differ"),
    ({"active": "k1", "keys": {"k1": 12}, "fingerprint_key": "FP"},               "must be a base64 string"),
])
def test_key_ring_config_errors_never_echo_keys(config: dict, message: str) -> None:
    values = {"K1": base64.b64encode(K1).decode(), "FP": base64.b64encode(FP).decode(),
              "SHORT": base64.b64encode(b"sixteen byte key").decode()}
    config = {k: ({i: values.get(x, x) for i, x in v.items()} if isinstance(v, dict) else values.get(v, v))
              for k, v in config.items()}
    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        KeyRing.from_config(config)
    for secret in values.values():
        assert secret not in str(exc.value)
    assert exc.value.__cause__ is None


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize(("pan", "exp_month", "exp_year", "fields"), [
    # pan                        month  year   violated fields
    ("4111111111111112",         12,    2031,  ["card_number"]),              # Luhn
    ("4111 1111 1111 1111",      12,    2031,  ["card_number"]),              # not digits only
    ("41111111111",              12,    2031,  ["card_number"]),              # 11 digits
    ("4" * 20,                   12,    2031,  ["card_number"]),              # 20 digits
    ("４１１１１１１１１１１１１１１１", 12, 2031, ["card_number"]),              # full-width digits
    (VISA,                       13,    2031,  ["exp_month"]),
    (VISA,                       0,     2031,  ["exp_month"]),
    (VISA,                       5,     2030,  ["exp_month"]),        # expired last month
    (VISA,                       12,    2029,  ["exp_year"]),         # expired last year
    (VISA,                       12,    31,    ["exp_year"]),         # two-digit year
    (VISA,                       True,  2031,  ["exp_month"]),
    ("4111111111111112",         13,    2029,  ["card_number", "exp_month", "exp_year"]),
])
async def test_invalid_cards_are_refused_without_echoing_the_pan(
        db: SqliteTestDatabase, pan: str, exp_month: int, exp_year: int, fields: list[str]) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await vault(db).tokenize(pan, exp_month, exp_year)
    err = exc.value
    assert err.reason == "CARD_INVALID"
    assert [v.field for v in err.violations] == fields
    text = rendered(err)
    middle = pan[6:-4]  # what must never show, even where BIN and last four may
    assert pan not in text and (len(middle) < 2 or middle not in text)
    assert not re.search(r"[0-9]{5,}", text), text  # no run of card digits of any kind
    assert await db.query("SELECT COUNT(*) FROM card_vault") == [(0,)]


async def test_expiry_this_month_is_still_valid(db: SqliteTestDatabase) -> None:
    ref = await vault(db).tokenize(VISA, 6, 2030)
    assert (ref.exp_month, ref.exp_year) == (6, 2030)
    with pytest.raises(InvalidRequest):  # a month later, the same card is refused
        await vault(db, now_s=datetime(2030, 7, 1, tzinfo=timezone.utc).timestamp()).tokenize(MASTERCARD, 6, 2030)


# -- brands, masking, repr ---------------------------------------------------------------------

@pytest.mark.parametrize(("pan", "brand"), [
    (VISA,                          "visa"),
    (with_luhn("4", 13),            "visa"),
    (MASTERCARD,                    "mastercard"),
    (with_luhn("51", 16),           "mastercard"),
    (with_luhn("2221", 16),         "mastercard"),
    (with_luhn("2720", 16),         "mastercard"),
    (with_luhn("2220", 16),         "unknown"),
    (with_luhn("2721", 16),         "unknown"),
    (with_luhn("56", 16),           "unknown"),
    ("378282246310005",             "amex"),
    (with_luhn("34", 15),           "amex"),
    (with_luhn("62", 19),           "unionpay"),
    (with_luhn("6011", 16),         "unknown"),
])
async def test_brand_from_bin(db: SqliteTestDatabase, pan: str, brand: str) -> None:
    assert brand_of(pan) == brand
    ref = await vault(db).tokenize(pan, 1, 2031)
    assert (ref.brand, ref.bin6, ref.last4) == (brand, pan[:6], pan[-4:])


def test_mask() -> None:
    assert mask(VISA) == "411111******1111"
    assert mask("378282246310005") == "378282*****0005"
    assert mask(with_luhn("62", 19)).count("*") == 9
    for bad in ["4111", "4111-1111-1111-1111", VISA + "1234"]:
        with pytest.raises(ValueError) as exc:
            mask(bad)
        assert bad not in str(exc.value)


async def test_reprs_never_show_pan_or_keys(db: SqliteTestDatabase) -> None:
    kr = ring("k2", k1=K1, k2=K2)
    v = vault(db, kr)
    ref = await v.tokenize(VISA, 12, 2031)
    text = " ".join(repr(x) + str(x) for x in (kr, v, ref))
    assert VISA not in text and VISA[6:12] not in text
    for secret in (K1, K2, FP):
        assert secret.hex() not in text and repr(secret) not in text
        assert base64.b64encode(secret).decode() not in text
    assert "411111" in repr(ref) and "1111" in repr(ref)
