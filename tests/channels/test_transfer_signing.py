"""The transfer rail's signing: fixed vectors (computed with openssl, not with our code) that the
adapter's signer and the mock bank's independent one must both reproduce, and the verifier's
refusals one by one."""

from __future__ import annotations

import pytest

from dualflow.adapters.transfer import KeyRing, NonceCache, SignatureError, canonical, key_id, signature
from dualflow.adapters.transfer.signing import parse_hex_key
from dualflow.mock_banks.transfer import auth as mock_auth

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
BODY = b'{"amount":1000,"currency":"CNY"}'
NONCE = "0123456789abcdef0123456789abcdef"

# (method, path, timestamp, nonce, body, hex HMAC-SHA256): `openssl dgst -sha256 -mac HMAC
# -macopt hexkey:000102..1f` over the canonical string.
VECTORS = [
    ("POST", "/transfers", "1700000000", NONCE, BODY,
     "bfe4a0b55605987325974abcb7ed03dd8de7196a2e4c09fa279d29290dfdd380"),
    ("GET", "/transfers/ins_1", "1700000300", "nonce_abcdefghijkl", b"",
     "7784458bed3a909d1b1c73db354229c3b8e3e5bd6b9330de5b3ef72f1e76f0ab"),
]


def test_canonical_string_is_exact() -> None:
    assert canonical("post", "/transfers", "1700000000", NONCE, BODY) == (
        b"POST\n/transfers\n1700000000\n0123456789abcdef0123456789abcdef\n"
        b"0d5558ec7de52f369286479480ea9e2fc8a60535d1ca19ef7eb2f1de7597bee5")


@pytest.mark.parametrize("method,path,ts,nonce,body,expected", VECTORS)
def test_vectors_adapter_and_mock_agree(method: str, path: str, ts: str, nonce: str, body: bytes,
                                        expected: str) -> None:
    assert signature(KEY, method, path, ts, nonce, body) == expected
    assert mock_auth.mac(KEY, method, path, ts, nonce, body) == expected


def test_key_id_is_the_key_fingerprint() -> None:
    # openssl dgst -sha256 of the 32 key bytes, first 16 hex digits
    assert key_id(KEY) == "630dcd2966c43366" == mock_auth.fingerprint(KEY)


def test_sign_produces_the_vector_headers() -> None:
    headers = KeyRing.of(KEY).sign("POST", "/transfers", BODY, timestamp=1700000000, nonce=NONCE)
    assert headers == {"X-Rail-Key-Id": "630dcd2966c43366", "X-Rail-Timestamp": "1700000000",
                       "X-Rail-Nonce": NONCE, "X-Rail-Signature": VECTORS[0][5]}


def test_mock_verifies_what_the_adapter_signs_and_refuses_a_replay() -> None:
    ring = KeyRing.of(KEY)
    keys, nonces = mock_auth.Keys([KEY]), mock_auth.Nonces(300)
    headers = {k.lower(): v for k, v in ring.sign("POST", "/transfers", BODY).items()}
    assert mock_auth.check(keys, nonces, "POST", "/transfers", headers, BODY, 300) == ("", key_id(KEY))
    assert mock_auth.check(keys, nonces, "POST", "/transfers", headers, BODY, 300)[0] == "REPLAYED_NONCE"
    assert mock_auth.check(keys, mock_auth.Nonces(300), "POST", "/transfers/x", headers, BODY, 300)[0] == \
        "BAD_SIGNATURE"


def _verify(ring: KeyRing, headers: dict[str, str], body: bytes = BODY, *, now: float = 1700000000,
            nonces: NonceCache | None = None, path: str = "/transfers") -> str:
    return ring.verify("POST", path, headers, body, now=now, nonces=nonces)


# One refusal per line: what was done to a genuinely signed message, the reason expected.
REFUSALS = [
    ("no headers at all", lambda h, b: ({}, b), "BAD_SIGNATURE"),
    ("signature header missing", lambda h, b: ({k: v for k, v in h.items() if k != "X-Rail-Signature"}, b),
     "BAD_SIGNATURE"),
    ("body changed", lambda h, b: (h, b + b" "), "BAD_SIGNATURE"),
    ("timestamp changed", lambda h, b: ({**h, "X-Rail-Timestamp": "1700000001"}, b), "BAD_SIGNATURE"),
    ("nonce changed", lambda h, b: ({**h, "X-Rail-Nonce": "f" * 32}, b), "BAD_SIGNATURE"),
    ("signature uppercased", lambda h, b: ({**h, "X-Rail-Signature": h["X-Rail-Signature"].upper()}, b),
     "MALFORMED"),
    ("unknown key id", lambda h, b: ({**h, "X-Rail-Key-Id": "0000000000000000"}, b), "UNKNOWN_KEY"),
    ("timestamp not a number", lambda h, b: ({**h, "X-Rail-Timestamp": "17e8"}, b), "MALFORMED"),
    ("nonce too short", lambda h, b: ({**h, "X-Rail-Nonce": "abc"}, b), "MALFORMED"),
]


@pytest.mark.parametrize("what,change,reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_verify_refuses(what: str, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    ring = KeyRing.of(KEY)
    headers, body = change(ring.sign("POST", "/transfers", BODY, timestamp=1700000000, nonce=NONCE), BODY)
    with pytest.raises(SignatureError) as err:
        _verify(ring, headers, body)
    assert err.value.reason == reason


def test_window_is_five_minutes_either_way() -> None:
    ring = KeyRing.of(KEY)
    headers = ring.sign("POST", "/transfers", BODY, timestamp=1700000000, nonce=NONCE)
    for now in (1700000000 - 300, 1700000000 + 300):
        assert _verify(ring, headers, now=now) == NONCE
    for now in (1700000000 - 301, 1700000000 + 301):
        with pytest.raises(SignatureError) as err:
            _verify(ring, headers, now=now)
        assert err.value.reason == "STALE"


def test_replay_is_refused_and_forgeries_do_not_burn_nonces() -> None:
    ring, nonces = KeyRing.of(KEY), NonceCache()
    genuine = ring.sign("POST", "/transfers", BODY, timestamp=1700000000, nonce=NONCE)
    forged = {**genuine, "X-Rail-Signature": "0" * 64}
    with pytest.raises(SignatureError):
        _verify(ring, forged, nonces=nonces)
    assert _verify(ring, genuine, nonces=nonces) == NONCE  # the forgery did not record the nonce
    with pytest.raises(SignatureError) as err:
        _verify(ring, genuine, nonces=nonces)
    assert err.value.reason == "REPLAYED"


def test_header_names_are_case_insensitive() -> None:
    ring = KeyRing.of(KEY)
    headers = {k.lower(): v for k, v in ring.sign("POST", "/transfers", BODY, timestamp=1700000000).items()}
    _verify(ring, headers)


def test_two_keys_verify_during_rotation_and_the_current_one_signs() -> None:
    old_ring, new_ring = KeyRing.of(OTHER), KeyRing.of(KEY, OTHER)
    assert new_ring.sign("GET", "/x", b"")["X-Rail-Key-Id"] == key_id(KEY)
    _verify(new_ring, old_ring.sign("POST", "/transfers", BODY, timestamp=1700000000))
    with pytest.raises(SignatureError) as err:
        _verify(old_ring, new_ring.sign("POST", "/transfers", BODY, timestamp=1700000000))
    assert err.value.reason == "UNKNOWN_KEY"
    assert "bytes" not in repr(new_ring) and KEY.hex() not in repr(new_ring)


def test_nonce_cache_forgets_after_twice_the_window_and_stays_bounded() -> None:
    cache = NonceCache(window_s=300, max_entries=3)
    assert cache.add("a", 0) and not cache.add("a", 100)
    assert cache.add("a", 601)  # older than 2 x window: its message would be stale anyway
    for n in "bcdef":
        cache.add(n, 602)
    assert len(cache) <= 3


@pytest.mark.parametrize("text,ok", [(KEY.hex(), True), (KEY.hex().upper() + "\n", True), ("00" * 15, False),
                                     ("zz" * 16, False), ("", False)])
def test_key_files_hold_hex_keys_of_16_bytes_or_more(text: str, ok: bool) -> None:
    if ok:
        assert parse_hex_key(text.encode()) == KEY
    else:
        with pytest.raises(ValueError):
            parse_hex_key(text.encode())
