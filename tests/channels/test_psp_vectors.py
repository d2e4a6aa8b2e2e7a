"""Fixed vectors and tables for the PSP adapter's pure parts: the signing string, a signature
under a known key, AES-GCM of a known resource, the state and code tables, the bill parser,
the nonce cache and the platform certificates file. No sockets."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from dualflow.adapters.contract import ChannelConfig, Outcome
from dualflow.adapters.psp import create, signing, transformers
from dualflow.adapters.psp.keys import NonceCache, PlatformKeys, load_private_key, parse_platform_keys
from dualflow.core.payments.model import Asset
from dualflow.mock_banks.psp import crypto as mock_crypto

# A throwaway 2048-bit key made for these vectors only (never used anywhere else).
TEST_KEY_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCuXTy75omt/UZ7
E56K3Bbwb3ED8p4mHdfcXqCZO49nI8gbfzWKJpwPY7bC3v8hjIlJuOXl++a8FkYx
RmgQzgUnzz+CYaIeo1lM6VyiMBFPciNgBdJGoqcMsrZ5o0GfVNd8wuT7irRl3Bl4
wPyTq357Ky4D3oBS8kWJUXMm3vPfDEoyUMZW2XuMWrbALs9oVGN4F+qhUP5h9NIw
13gaA8/x1eXxa1rQOZLINhe9RQzxZJ+yWUeaFEP5WypYwKOWuY0HIi4yslD44tf4
dkQ6auC28/w5Bh3xRJHkv9PpJxTI0gCkaH5uvsIFzOZ+ToyLfkwSM+RgDk71lYCR
yi8y4Ow9AgMBAAECggEABL5VM/I4uT3qyD4t5RT8uMWUKDY8lpV5DseYpeKInn0x
aSVKS+JZNezE0/aK4ufdJxJh8SJFUiuaKEAEMVgLEtytm4eHCHKLY0jCWnuYe1yD
2UDMFvWloFy1eYfdj3VlUVsTk9yscLL1EtbPm3LVNr0wSMgP6wtbpSAAOnf8eXGW
haYFiy8gr3u9kCd7kNqh+0ktw8AohsJoqtIDdyZh8Wlqo+QNsKe0VXzQZK5WuQVL
Gi2Y9/LK1uOnEteiDxtsf8Kq66QRRExn/Hy2PrpcR9ozQMBAOrjhbS3tA2fE/JuU
CLbrLfC0lYNDTUo4UVINCKoNt7vfjWxRqgW4NMqQYQKBgQDjTOoTqChXEHCvIpDp
SAGbAb+l0elufsQwGn4ZkRXuuzxHJU9WqfVyKI1+Kc7YzynjqiWDvfBfOvTEqsu3
oSnEXfjEu62+I9MpiRPQaybn5Q5PB/F7QiViNvyRvXmwIH+O8lVzTyw0MMGpaTbF
oGjjumpa+6UGLkx3202eFl6/kQKBgQDEYUCeuRsoGc/yo3RFN9t8h/ueoi+YbaUp
+SHNrQjGQ1AyeYirsveVSebnnaqGpOtbUQAf72pEVO/fPYrEp2VPY9uBOirwT9TX
h8tlHXKM06qA/Q8J1x+f1vqVVNE4F3LRHBdHtVIflYO77uyr3F7byLvptjMGZic8
U4AjVozj7QKBgE0HyeQzfshSt/2CV13Xm0OuygYmJ1fc+hvbPpTniGlJZtotmL+k
BZxUhe8VuBXdzzJqfSAyhH2he0YTI8rtgTwdJKt3dyATAAL5g4+EYMEB7WF3La05
83VfcSTq84xu1wvYsIDNeguN4nPJRlifTiyvBlAjK//2PM/5sEo9BoshAoGBAJKd
TSJzbqv8wX0Uvbzj3BFYcOpZihFSYwo4Px2Qf0mOffSBOiF+h0vFFgh8dRD7VeAi
VGaDV6JWi5PvHYh+tauVEQ+k/uPVpkGX16nRV3F+ogCVbkHZg3nRhdoxrdYj44vt
XhAidoKwHN8VnUseRw/uCSWO6v9vCwIGEVfQyXVtAoGBALX3U4s/iUOfQx1dVwb7
mu2n8+FeuPtC/CTqpFWaiSx1eqdaZIcIHL20/beRiQi7pihUSbVuwLng0G4sBvYn
9t77FeXwSAivLVboKne6roLJOfNmdGplBxukQ/XE8ubjIrLndKC9nZmFdkzrvonq
fQWbF+tjr2IM5t1al5mhOrrM
-----END PRIVATE KEY-----
"""
BODY = b'{"mchid":"1900000109","out_trade_no":"ins_0001","amount":{"total":100,"currency":"CNY"}}'
NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"
SIGNATURE = (
    "TkEEArvLLCiu9mcuSvFogxt/NU3tkxwtITrDQFCzA7WiGfIssetczfNKQwIDn4bJtWOTaRN+bo9+/VwBZ0woaBx1SUOJgBpUArTGYjPMOI+M"
    "QOx0AA4ibNqYTqZ6N2Wr3mQJCmGRnq8yXfQUaPqcfGIhAx2txDLlY3GLblwE2O5u7zQ3OkjL2/SjRL2nFA+tFhYK49kcNcJA1QpsPFVuHq6V"
    "nP3QjvYt/2ldtgUgpci223ZVBS2AlgYkS34aIylqXYQLmoaWuSY5Z8VgVydAYuMv6nmAYWpHyE4504wNwKQcSRdg+MHG7fKgHTxAcZMaBmXK"
    "b2w1zocmG1gYnlk0Ig=="
)
API_V3_KEY = b"dualflowTestApiV3Key0123456789ab"
RESOURCE = {"nonce": "fixednonce12", "associated_data": "transaction", "ciphertext": (
    "OVmghuMGCidcEbDwlpb77Kwp3kBWIvi+QcV5e2BteSbthdlcf68wQTh8fKy9RKawe9EOZ7z03yNqPx8C7CV0gl9qxivx5b+MTK7UC8pdf+Vw"
    "5arQCmrmzh2prDvT58gtG9nDbYEiS7MO206Ie+rAZApejFvrmNyLgv0fb8UrPFGvJyipdyi2PdsZNlhZxvHG6vKwVgWmSlFyrS1yAE5yrcD2"
    "rZfRUWhWsrNKmwzvqA8=")}
PLAINTEXT = {"mchid": "1900000109", "out_trade_no": "ins_0001", "transaction_id": "4200001234202401011234567890",
             "trade_state": "SUCCESS", "amount": {"total": 100, "currency": "CNY"}}


def test_request_signing_string() -> None:
    assert signing.request_message("post", "/v3/pay/transactions/native", 1700000000, NONCE, BODY) == (
        b"POST\n/v3/pay/transactions/native\n1700000000\n593BEC0C930BF1AFEB40B4A08C8FB242\n" + BODY + b"\n")
    # GET: the query is part of the path, the body is empty but still ends with a newline.
    assert signing.request_message("GET", "/v3/bill/tradebill?bill_date=2024-01-02&bill_type=ALL", "1", "n", b"") \
        == b"GET\n/v3/bill/tradebill?bill_date=2024-01-02&bill_type=ALL\n1\nn\n\n"
    assert signing.response_message(1700000000, NONCE, b"{}") == b"1700000000\n" + NONCE.encode() + b"\n{}\n"


def test_signature_with_a_known_key() -> None:
    key = load_private_key(TEST_KEY_PEM)
    message = signing.request_message("POST", "/v3/pay/transactions/native", 1700000000, NONCE, BODY)
    assert signing.sign(key, message) == SIGNATURE  # PKCS#1 v1.5 is deterministic
    assert signing.verify(key.public_key(), message, SIGNATURE)
    assert not signing.verify(key.public_key(), message.replace(b"100", b"101"), SIGNATURE)
    for garbage in ("", "not base64!", SIGNATURE[:-4], "\u00e9t\u00e9"):
        assert not signing.verify(key.public_key(), message, garbage)
    header = signing.sign_request(key, "1900000109", "5157F09EFDC096DE15EBE81A47057A72", "POST",
                                  "/v3/pay/transactions/native", BODY, 1700000000, NONCE)
    assert header == ('WECHATPAY2-SHA256-RSA2048 mchid="1900000109",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",'
                      f'signature="{SIGNATURE}",timestamp="1700000000",serial_no="5157F09EFDC096DE15EBE81A47057A72"')


def test_signatures_agree_with_the_mocks_own_implementation() -> None:
    key = load_private_key(TEST_KEY_PEM)
    header = signing.sign_request(key, "1900000109", "AB12", "GET", "/v3/refund/domestic/refunds/rfi_1", b"",
                                  1700000000, NONCE)
    auth = mock_crypto.parse_authorization(header)
    assert auth is not None and auth["serial_no"] == "AB12" and auth["mchid"] == "1900000109"
    assert mock_crypto.rsa_verify(key.public_key(), mock_crypto.request_string(
        "GET", "/v3/refund/domestic/refunds/rfi_1", auth["timestamp"], auth["nonce_str"], b""), auth["signature"])
    reply_sig = mock_crypto.rsa_sign(key, mock_crypto.reply_string("1700000000", NONCE, b'{"a":1}'))
    assert signing.verify(key.public_key(), signing.response_message("1700000000", NONCE, b'{"a":1}'), reply_sig)
    sealed = mock_crypto.seal(API_V3_KEY, "refund", '{"x":"é"}'.encode())
    assert signing.decrypt_resource(API_V3_KEY, sealed["nonce"], "refund", sealed["ciphertext"]).decode() == '{"x":"é"}'


def test_aes_gcm_published_vector() -> None:
    # AES-256-GCM test vector (libsodium aead_aes256gcm2 / Wycheproof): key, nonce, ad -> ciphertext || tag.
    key = bytes.fromhex("92ace3e348cd821092cd921aa3546374299ab46209691bc28b8752d17f123c20")
    sealed = bytes.fromhex("e27abdd2d2a53d2f136b" "9a4a2579529301bcfb71c78d4060f52c")
    assert AESGCM(key).decrypt(bytes.fromhex("00112233445566778899aabb"), sealed,
                               bytes.fromhex("00000000ffffffff")) == bytes.fromhex("00010203040506070809")


def test_decrypt_a_known_resource() -> None:
    plaintext = signing.decrypt_resource(API_V3_KEY, RESOURCE["nonce"], RESOURCE["associated_data"],
                                         RESOURCE["ciphertext"])
    assert json.loads(plaintext) == PLAINTEXT
    bad_cases = [
        (API_V3_KEY, RESOURCE["nonce"], "refund", RESOURCE["ciphertext"]),  # other associated data
        (API_V3_KEY[::-1], RESOURCE["nonce"], "transaction", RESOURCE["ciphertext"]),  # other key
        (API_V3_KEY, "fixednonce13", "transaction", RESOURCE["ciphertext"]),  # other nonce
        (API_V3_KEY, "short", "transaction", RESOURCE["ciphertext"]),
        (API_V3_KEY, RESOURCE["nonce"], "transaction", RESOURCE["ciphertext"][:-8] + "AAAAAAA="),  # tag
        (API_V3_KEY, RESOURCE["nonce"], "transaction", "%%%"),
        (API_V3_KEY[:16], RESOURCE["nonce"], "transaction", RESOURCE["ciphertext"]),
    ]
    for case in bad_cases:
        with pytest.raises(ValueError):
            signing.decrypt_resource(*case)


# trade_state, payerror_code -> outcome, reason. Unknown states are PENDING, never FAILED.
TRADE_STATE_TABLE = """
SUCCESS     -            SUCCEEDED  -
REFUND      -            SUCCEEDED  -
NOTPAY      -            PENDING    NOT_PAID_YET
USERPAYING  -            PENDING    USER_PAYING
PAYERROR    NOTENOUGH    FAILED     INSUFFICIENT_FUNDS
PAYERROR    TRADE_ERROR  FAILED     CARD_DECLINED
PAYERROR    -            FAILED     PAYMENT_ERROR
PAYERROR    NEW_CODE     FAILED     PAYMENT_ERROR
CLOSED      -            FAILED     CLOSED
REVOKED     -            FAILED     REVOKED
ACCEPT      -            PENDING    UNMAPPED_STATE
-           -            PENDING    UNMAPPED_STATE
"""


def _rows(table: str) -> list[list[str]]:
    return [["" if cell == "-" else cell for cell in line.split()] for line in table.strip().splitlines()]


@pytest.mark.parametrize("state,code,outcome,reason", _rows(TRADE_STATE_TABLE))
def test_trade_states(state: str, code: str, outcome: str, reason: str) -> None:
    tx = {"trade_state": state, "payerror_code": code, "transaction_id": "42"} if state else {}
    result = transformers.transaction_result(tx)
    assert (result.outcome, result.reason) == (Outcome[outcome], reason)
    assert result.channel_code == state


REFUND_AND_ERROR_TABLE = """
refund  SUCCESS            SUCCEEDED  -
refund  PROCESSING         PENDING    REFUND_PROCESSING
refund  ABNORMAL           PENDING    REFUND_ABNORMAL
refund  CLOSED             FAILED     REFUND_CLOSED
refund  SOMETHING_NEW      PENDING    UNMAPPED_STATE
error   PARAM_ERROR        FAILED     INVALID_REQUEST
error   SIGN_ERROR         FAILED     SIGNATURE_REJECTED
error   NOTENOUGH          FAILED     INSUFFICIENT_FUNDS
error   NOT_ENOUGH         FAILED     INSUFFICIENT_FUNDS
error   SYSTEM_ERROR       UNKNOWN    CHANNEL_ERROR
error   FREQUENCY_LIMITED  UNKNOWN    RATE_LIMITED
error   ORDER_NOT_EXIST    UNKNOWN    NOT_FOUND
error   BRAND_NEW_CODE     PENDING    UNMAPPED_CODE
"""


@pytest.mark.parametrize("kind,code,outcome,reason", _rows(REFUND_AND_ERROR_TABLE))
def test_refund_states_and_error_codes(kind: str, code: str, outcome: str, reason: str) -> None:
    result = transformers.refund_result({"status": code}) if kind == "refund" else transformers.error_result(code)
    assert (result.outcome, result.reason, result.channel_code) == (Outcome[outcome], reason, code)


def test_callback_resources_map_to_events() -> None:
    event = transformers.callback_event("EV-1", "TRANSACTION.SUCCESS", "transaction", PLAINTEXT)
    assert (event.instruction_id, event.kind, event.notification_id) == ("ins_0001", "pay", "EV-1")
    assert event.result.outcome is Outcome.SUCCEEDED and event.result.channel_reference == PLAINTEXT["transaction_id"]
    refund = transformers.callback_event("EV-2", "REFUND.SUCCESS", "refund", {
        "out_refund_no": "rfi_0001", "refund_id": "50300", "refund_status": "SUCCESS"})
    assert (refund.kind, refund.instruction_id, refund.result.outcome) == ("refund", "rfi_0001", Outcome.SUCCEEDED)
    for resource in ({}, {"out_trade_no": "x"}, {"out_trade_no": "ins_0001"}, {"out_trade_no": 5, "trade_state": 1}):
        with pytest.raises(ValueError):
            transformers.callback_event("EV-3", "TRANSACTION.SUCCESS", "transaction", resource)
    with pytest.raises(ValueError):
        transformers.callback_event("EV-4", "COUPON.USE", "coupon", PLAINTEXT)


HEADER = ",".join(transformers.BILL_COLUMNS)
SUMMARY = ",".join(transformers.SUMMARY_COLUMNS)


def bill_line(when: str, tx_id: str, out_trade_no: str, state: str, currency: str, amount: str, refund_id: str = "0",
              out_refund_no: str = "0", refund: str = "0.00", refund_status: str = "", fee: str = "0.00000") -> str:
    cells = [when, "wx2421b1c4370ec43b", "1900000109", "0", "", tx_id, out_trade_no, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
             "NATIVE", state, "OTHERS", currency, amount, "0.00", refund_id, out_refund_no, refund, "0.00",
             "ORIGINAL" if refund_status else "", refund_status, "top-up, with a comma", "pay_1|shop-1", fee, "0.60%",
             amount, refund, ""]
    return ",".join(f'"`{c}"' if "," in c else f"`{c}" for c in cells)


def test_bill_parses_wechat_csv() -> None:
    text = "\r\n".join([
        "\ufeff" + HEADER,
        bill_line("2024-01-02 10:00:00", "4200000001", "ins_aaaa01", "SUCCESS", "CNY", "19.99", fee="0.12000"),
        bill_line("2024-01-02 10:05:00", "4200000002", "ins_aaaa02", "SUCCESS", "JPY", "500", fee="3.00000"),
        bill_line("2024-01-02 11:00:00", "4200000001", "ins_aaaa01", "REFUND", "CNY", "19.99", "5030001",
                  "rfi_aaaa01", "5.00", "SUCCESS"),
        bill_line("2024-01-02 11:30:00", "4200000001", "ins_aaaa01", "REFUND", "CNY", "19.99", "5030002",
                  "rfi_aaaa02", "1.00", "PROCESSING"),
        SUMMARY,
        "`4,`519.99,`6.00,`0.00,`3.12000,`519.99,`6.00",
        "",
    ])
    lines = list(transformers.parse_bill(text, "2024-01-02"))
    got = [(x.kind, x.instruction_id, x.channel_reference, x.amount, x.currency, x.status.value, x.fee) for x in lines]
    assert got == [
        ("pay", "ins_aaaa01", "4200000001", 1999, "CNY", "SUCCEEDED", 12),
        ("pay", "ins_aaaa02", "4200000002", 500, "JPY", "SUCCEEDED", 3),
        ("refund", "rfi_aaaa01", "5030001", 500, "CNY", "SUCCEEDED", 0),
    ]  # the processing refund is not booked yet
    assert all(x.business_date == "2024-01-02" for x in lines)
    # A summary that does not add up, a truncated bill, an unknown state: refused, not half-read.
    broken = [text.replace("`4,`519.99", "`4,`519.98"), text.split(SUMMARY)[0],
              text.replace("`SUCCESS,`OTHERS,`JPY", "`WHATEVER,`OTHERS,`JPY"),
              text.replace("`19.99,`0.00,`0,", "`19.9x,`0.00,`0,", 1), "not,a,bill\r\n"]
    for bad in broken:
        with pytest.raises(transformers.BillError):
            list(transformers.parse_bill(bad, "2024-01-02"))
    assert list(transformers.parse_bill("", "2024-01-02")) == []


def test_nonce_cache_ttl_and_bound() -> None:
    cache = NonceCache(ttl_s=600, max_entries=3)
    assert cache.check_and_add("a", now=0) and not cache.check_and_add("a", now=599)
    assert cache.check_and_add("a", now=600.5)  # expired, so new again
    for n, nonce in enumerate("bcde"):
        assert cache.check_and_add(nonce, now=601 + n)
    assert len(cache) == 3  # bounded: the oldest went first


def _cert(key: rsa.RSAPrivateKey, days: tuple[int, int] = (-1, 30), serial: int = 0x5157F09EFDC096DE) -> bytes:
    now = datetime.now(timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now + timedelta(days=days[0]))
            .not_valid_after(now + timedelta(days=days[1])).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_platform_certificates_file(tmp_path: Path) -> None:
    key = load_private_key(TEST_KEY_PEM)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = (_cert(key) + b"\nserial_no=PUB_KEY_ID_0114232134912410000000000001\n" + public
            + _cert(key, days=(-30, -1), serial=0xDEAD))  # the last one has expired
    keys = parse_platform_keys(text)
    assert set(keys) == {"5157F09EFDC096DE", "PUB_KEY_ID_0114232134912410000000000001"}
    with pytest.raises(ValueError):
        parse_platform_keys(public)  # a bare key needs its serial
    with pytest.raises(ValueError):
        parse_platform_keys(b"nothing here")
    path = tmp_path / "platform.pem"
    path.write_bytes(_cert(key))
    platform = PlatformKeys(path)
    assert platform.get("5157F09EFDC096DE") is not None and platform.get("ABCD") is None
    path.write_bytes(_cert(key) + _cert(key, serial=0xABCD))
    assert platform.get("ABCD") is not None  # picked up without a restart


@pytest.mark.parametrize(("bin_ranges", "expected"), [
    # the setting                      describe().bin_ranges and the cards it takes, or the error
    (None,                             ((), "visa mastercard")),
    ([],                               ((), "visa mastercard")),
    ([["4", "4"]],                     ((("4", "4"),), "visa")),
    ([["51", "55"], ["2221", "2720"]], ((("51", "55"), ("2221", "2720")), "mastercard")),
    ("4",                              "must be a list"),
    ([["4"]],                          "must be [low, high]"),
    ([[4, 4]],                         "must be [low, high]"),
    ([["4a", "4b"]],                   "must be [low, high]"),
    ([["4000000", "4999999"]],         "must be [low, high]"),
    ([["4", "49"]],                    "as many digits"),
    ([["5", "4"]],                     "is above high"),
])
def test_bin_ranges_setting(tmp_path: Path, bin_ranges: object, expected: tuple[object, str] | str) -> None:
    (tmp_path / "merchant.pem").write_bytes(TEST_KEY_PEM)
    (tmp_path / "platform.pem").write_bytes(_cert(load_private_key(TEST_KEY_PEM)))
    (tmp_path / "api_v3_key").write_bytes(API_V3_KEY)
    settings: dict[str, object] = {"base_url": "http://127.0.0.1:9", "mch_id": "1900000109",
                                   "serial_no": "5157F09EFDC096DE"}
    if bin_ranges is not None:
        settings["bin_ranges"] = bin_ranges
    config = ChannelConfig(name="psp-visa", kind="psp", settings=settings, key_files={
        "merchant_private_key": tmp_path / "merchant.pem", "platform_certificates": tmp_path / "platform.pem",
        "api_v3_key": tmp_path / "api_v3_key"})
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            create(config)
        return
    ranges, takes = expected
    caps = create(config).describe()
    assert caps.bin_ranges == ranges
    # As the router asks (routing/policy.py): by the card's BIN.
    cards = {"visa": "411111", "mastercard": "555555"}
    assert {brand for brand, bin6 in cards.items() if caps.accepts(Asset.BANK_CARD, "CNY", 100, bin6)} \
        == set(takes.split())
