"""Webhook signatures: a fixed vector, round trips, and each way a header is refused."""

from __future__ import annotations

import ast
import hashlib
import hmac
from pathlib import Path

import pytest

from dualflow.core.webhooks import signature
from dualflow.core.webhooks.signature import (
    SIGNATURE_HEADER,
    MalformedSignatureHeader,
    NoMatchingSignature,
    SignatureError,
    TimestampOutsideTolerance,
    sign,
    verify,
)

SECRET = b"whsec_test"
BODY = b'{"id":"evt_1"}'
T = 1767225600
VECTOR = "t=1767225600,v1=45b40331de0325606dc5400202ade162460fbe48daf9401adfdcd0d7b4f35470"


def test_fixed_vector_matches_the_documented_one() -> None:
    assert sign(SECRET, BODY, T) == VECTOR
    assert VECTOR in (signature.__doc__ or "")  # the docstring's example stays true
    # Computable from the spec alone, with nothing but hmac: what a merchant in another language does.
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert VECTOR == f"t={T},v1={expected}"
    assert SIGNATURE_HEADER == "Dualflow-Signature"


def test_round_trip_and_str_secret() -> None:
    header = sign(SECRET, BODY, T)
    verify(SECRET, BODY, header, now=T)
    verify(SECRET.decode(), BODY, header, now=T + 300)  # edge of tolerance, str secret
    verify(SECRET, BODY, header, now=T - 300)  # receiver's clock behind ours
    assert sign(SECRET.decode(), BODY, T) == header


@pytest.mark.parametrize(("header", "error", "message"), [
    # header                                          error                        in the message
    ("",                                              MalformedSignatureHeader,    "missing"),
    ("   ",                                           MalformedSignatureHeader,    "missing"),
    (None,                                            MalformedSignatureHeader,    "missing"),
    ("v1=" + "0" * 64,                                MalformedSignatureHeader,    "no t="),
    (f"t={T}",                                        MalformedSignatureHeader,    "no well-formed v1="),
    (f"t={T},v1=zz",                                  MalformedSignatureHeader,    "no well-formed v1="),
    (f"t={T},v1={'A' * 64}",                          MalformedSignatureHeader,    "no well-formed v1="),
    (f"t=abc,v1={'0' * 64}",                          MalformedSignatureHeader,    "not unix seconds"),
    (f"t=-5,v1={'0' * 64}",                           MalformedSignatureHeader,    "not unix seconds"),
    (f"t={T},t={T},v1={'0' * 64}",                    MalformedSignatureHeader,    "more than one t="),
    (f"t={T};v1={'0' * 64}",                          MalformedSignatureHeader,    "not unix seconds"),
    (f"t={T},garbage",                                MalformedSignatureHeader,    "key=value"),
    (f"t={T}," + ",".join(["v1=" + "0" * 64] * 200),  MalformedSignatureHeader,    "longer than"),
    (f"t={T},v1={'0' * 64}",                          NoMatchingSignature,         "no v1 signature"),
    (VECTOR.replace("t=1767225600", f"t={T + 1}"),    NoMatchingSignature,         "no v1 signature"),
    (VECTOR.replace(f"t={T}", f"t={T - 301}"),        TimestampOutsideTolerance,   "301 s from now"),
    (VECTOR.replace(f"t={T}", f"t={T + 301}"),        TimestampOutsideTolerance,   "301 s from now"),
])
def test_refused_headers(header: str, error: type[SignatureError], message: str) -> None:
    with pytest.raises(error, match=message) as exc:
        verify(SECRET, BODY, header, now=T)
    assert isinstance(exc.value, SignatureError) and isinstance(exc.value, ValueError)
    assert SECRET.decode() not in str(exc.value)


def test_altered_body_or_wrong_secret_is_refused() -> None:
    header = sign(SECRET, BODY, T)
    with pytest.raises(NoMatchingSignature):
        verify(SECRET, BODY + b" ", header, now=T)
    with pytest.raises(NoMatchingSignature):
        verify(b"whsec_other", BODY, header, now=T)


def test_tolerance_is_configurable() -> None:
    header = sign(SECRET, BODY, T)
    verify(SECRET, BODY, header, now=T + 3600, tolerance_s=3600)
    with pytest.raises(TimestampOutsideTolerance):
        verify(SECRET, BODY, header, now=T + 11, tolerance_s=10)


def test_several_v1_entries_let_secrets_roll() -> None:
    old, new = b"whsec_old", b"whsec_new"
    header = f"t={T},v1={sign(old, BODY, T).split('v1=')[1]},v1={sign(new, BODY, T).split('v1=')[1]}"
    verify(old, BODY, header, now=T)
    verify(new, BODY, header, now=T)
    with pytest.raises(NoMatchingSignature):
        verify(b"whsec_neither", BODY, header, now=T)
    # Unknown schemes are ignored, and spaces after commas are tolerated.
    verify(new, BODY, f"t={T}, v0=abc, v2={'f' * 64}, {sign(new, BODY, T).split(',')[1]}", now=T)


@pytest.mark.parametrize("timestamp", [-1, True, 1.5, "1"])
def test_sign_refuses_bad_timestamps(timestamp: object) -> None:
    with pytest.raises(ValueError):
        sign(SECRET, BODY, timestamp)  # type: ignore[arg-type]


def test_module_depends_on_the_standard_library_only() -> None:
    tree = ast.parse(Path(signature.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "hashlib", "hmac"}, imported
