"""Hypothesis fuzzing of the PSP callback parser: random headers and bodies, mutations of a
valid signed callback, and validly signed garbage never crash it (only CallbackRejected
escapes) and never produce a SUCCEEDED outcome."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import CallbackRejected, ChannelConfig, Outcome
from dualflow.adapters.psp import PspAdapter, create
from dualflow.mock_banks.psp.crypto import init_keys

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {"BAD_SIGNATURE", "STALE", "REPLAYED", "UNDECRYPTABLE", "MALFORMED", "UNKNOWN_KEY"}


class Platform:
    def __init__(self, keys_dir: Path) -> None:
        self.serial = (keys_dir / "platform_serials").read_text().split()[-1]
        key = serialization.load_pem_private_key((keys_dir / f"platform_{self.serial}_key.pem").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        self.api_key = (keys_dir / "api_v3_key").read_bytes().strip()
        self.mch_id = json.loads((keys_dir / "merchant.json").read_text())["mch_id"]

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts, nonce = str(int(time.time()) if timestamp is None else timestamp), os.urandom(16).hex()
        sig = self.key.sign(f"{ts}\n{nonce}\n".encode() + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
        return {"Wechatpay-Serial": self.serial, "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": base64.b64encode(sig).decode()}

    def envelope(self, resource: Any, original_type: str = "transaction", event: str = "TRANSACTION.SUCCESS") -> bytes:
        nonce = os.urandom(6).hex()
        plain = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
        ciphertext = AESGCM(self.api_key).encrypt(nonce.encode(), plain, original_type.encode())
        return json.dumps({"id": "EV-" + os.urandom(4).hex(), "event_type": event, "resource_type": "encrypt-resource",
                           "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                                        "ciphertext": base64.b64encode(ciphertext).decode(),
                                        "associated_data": original_type, "nonce": nonce}}).encode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PspAdapter, Platform]]:
    keys_dir = tmp_path_factory.mktemp("psp-fuzz-keys")
    init_keys(keys_dir, "1900000109")
    merchant = json.loads((keys_dir / "merchant.json").read_text())
    adapter = create(ChannelConfig(
        name="psp-fuzz", kind="psp",
        settings={"base_url": "http://127.0.0.1:9", "mch_id": merchant["mch_id"], "serial_no": merchant["serial_no"]},
        key_files={"merchant_private_key": keys_dir / "merchant_private_key.pem",
                   "platform_certificates": keys_dir / "platform_certificates.pem",
                   "api_v3_key": keys_dir / "api_v3_key"}))
    yield adapter, Platform(keys_dir)


def outcome_of(adapter: PspAdapter, headers: Any, body: Any) -> Outcome | str:
    """The parsed outcome, or the rejection reason; anything else raised fails the test."""
    try:
        outcome: Outcome | str = adapter.parse_callback(headers, body).result.outcome
    except CallbackRejected as exc:
        assert exc.reason in REASONS
        outcome = exc.reason
    event(str(outcome))  # --hypothesis-show-statistics shows which checks the inputs reached
    return outcome


header_names = st.sampled_from(["Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce",
                                "wechatpay-signature-type", "Content-Type", "X-Other"])
text = st.text(max_size=40)


@FUZZ
@given(headers=st.dictionaries(header_names, text, max_size=6), body=st.binary(max_size=400))
def test_random_headers_and_bodies(setup: tuple[PspAdapter, Platform], headers: dict[str, str], body: bytes) -> None:
    adapter, _ = setup
    assert outcome_of(adapter, headers, body) is not Outcome.SUCCEEDED


@FUZZ
@given(data=st.data())
def test_mutations_of_a_valid_callback(setup: tuple[PspAdapter, Platform], data: st.DataObject) -> None:
    adapter, platform = setup
    body = platform.envelope({"mchid": platform.mch_id, "out_trade_no": "ins_" + os.urandom(6).hex(),
                              "transaction_id": "4200", "trade_state": "SUCCESS"})
    headers = platform.headers(body)
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255))]) + body[i + 1:]
    elif how == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif how == "insert":
        i = data.draw(st.integers(0, len(body)))
        body = body[:i] + data.draw(st.binary(min_size=1, max_size=8)) + body[i:]
    else:
        name = data.draw(st.sampled_from(["Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp",
                                          "Wechatpay-Nonce"]))
        value = data.draw(text.filter(lambda v: v != headers[name]))
        headers = {**headers, name: value}
    assert outcome_of(adapter, headers, body) is not Outcome.SUCCEEDED


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)


envelopes = st.fixed_dictionaries({
    "id": st.one_of(st.text(max_size=12), st.integers()),
    "event_type": st.sampled_from(["TRANSACTION.SUCCESS", "REFUND.SUCCESS", "", "X"]),
    "resource": st.fixed_dictionaries({
        "algorithm": st.sampled_from(["AEAD_AES_256_GCM", "AEAD_AES_128_GCM", ""]),
        "nonce": st.one_of(st.text(min_size=12, max_size=12), st.text(max_size=20)),
        "associated_data": st.sampled_from(["transaction", "refund", ""]),
        "original_type": st.sampled_from(["transaction", "refund", ""]),
        "ciphertext": st.one_of(st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()), st.text())})})


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                      envelopes.map(lambda v: json.dumps(v).encode())),
       age_s=st.sampled_from([0, 0, 0, 299, 301, -400]))
def test_validly_signed_garbage(setup: tuple[PspAdapter, Platform], body: bytes, age_s: int) -> None:
    adapter, platform = setup
    assert outcome_of(adapter, platform.headers(body, int(time.time()) - age_s), body) is not Outcome.SUCCEEDED


@FUZZ
@given(resource=st.one_of(json_values, st.fixed_dictionaries({
    "out_trade_no": st.one_of(st.from_regex(r"[A-Za-z0-9_\-|*]{6,32}", fullmatch=True), st.text(max_size=40),
                              st.integers()),
    "trade_state": st.one_of(st.sampled_from(["NOTPAY", "PAYERROR", "CLOSED", "USERPAYING", "", "success"]),
                             st.text(max_size=12).filter(lambda s: s not in ("SUCCESS", "REFUND")), st.integers()),
    "mchid": st.just("1900000109")})),
    original_type=st.sampled_from(["transaction", "refund", "coupon"]))
def test_signed_and_encrypted_resources_without_success(setup: tuple[PspAdapter, Platform], resource: Any,
                                                        original_type: str) -> None:
    adapter, platform = setup
    body = platform.envelope(resource, original_type)
    result = outcome_of(adapter, platform.headers(body), body)
    assert result is not Outcome.SUCCEEDED
