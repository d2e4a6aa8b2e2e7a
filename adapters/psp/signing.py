"""The PSP's wire security as pure functions (no I/O), modeled on WeChat Pay API v3.

Requests: SHA256withRSA (PKCS#1 v1.5) by the merchant key over
`METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`, sent as
`Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",signature="..",timestamp="..",serial_no=".."`.
Replies and callbacks: the platform key signs `TIMESTAMP\\nNONCE\\nBODY\\n`, named by
`Wechatpay-Serial` and carried in `Wechatpay-Signature`, `-Timestamp`, `-Nonce`.
Callback payloads: AEAD_AES_256_GCM under the 32-byte API v3 key, with a 12-byte nonce and
associated data, the 16-byte tag appended to the base64 ciphertext.

Everything here is deterministic given its inputs, so it is tested with fixed vectors.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEME = "WECHATPAY2-SHA256-RSA2048"
API_V3_KEY_BYTES = 32
GCM_NONCE_BYTES = 12  # WeChat sends it as a 12-character string used as bytes

HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"


def new_nonce() -> str:
    """32 characters, as WeChat's nonce_str."""
    return secrets.token_hex(16).upper()


def request_message(method: str, path_query: str, timestamp: int | str, nonce: str, body: bytes) -> bytes:
    """What the merchant signs: `METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n` (BODY empty for GET)."""
    return b"%s\n%s\n%s\n%s\n%s\n" % (method.upper().encode(), path_query.encode(), str(timestamp).encode(),
                                      nonce.encode(), body)


def response_message(timestamp: int | str, nonce: str, body: bytes) -> bytes:
    """What the platform signs on replies and callbacks: `TIMESTAMP\\nNONCE\\nBODY\\n`."""
    return b"%s\n%s\n%s\n" % (str(timestamp).encode(), nonce.encode(), body)


def sign(key: RSAPrivateKey, message: bytes) -> str:
    """Base64 SHA256withRSA (PKCS#1 v1.5): deterministic for a key and message."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(key: RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    """True only for a valid signature; any malformed input is simply False."""
    try:
        signature = base64.b64decode(signature_b64.encode("ascii"), validate=True)
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, binascii.Error, UnicodeEncodeError, TypeError):
        return False
    return True


def authorization(mch_id: str, serial_no: str, nonce: str, timestamp: int | str, signature: str) -> str:
    return (f'{SCHEME} mchid="{mch_id}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


def sign_request(key: RSAPrivateKey, mch_id: str, serial_no: str, method: str, path_query: str, body: bytes,
                 timestamp: int, nonce: str) -> str:
    """The Authorization header value for one request."""
    signature = sign(key, request_message(method, path_query, timestamp, nonce, body))
    return authorization(mch_id, serial_no, nonce, timestamp, signature)


def decrypt_resource(api_v3_key: bytes, nonce: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """AEAD_AES_256_GCM open. Raises ValueError for anything that does not authenticate."""
    if len(api_v3_key) != API_V3_KEY_BYTES:
        raise ValueError("the API v3 key must be 32 bytes")
    try:
        raw = base64.b64decode(ciphertext_b64.encode("ascii"), validate=True)
        nonce_bytes = nonce.encode("utf-8")
        if len(nonce_bytes) != GCM_NONCE_BYTES or len(raw) < 16:
            raise ValueError("bad nonce or ciphertext length")
        return AESGCM(api_v3_key).decrypt(nonce_bytes, raw, associated_data.encode("utf-8"))
    except (InvalidTag, binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"resource does not authenticate ({exc.__class__.__name__})") from None


def encrypt_resource(api_v3_key: bytes, nonce: str, associated_data: str, plaintext: bytes) -> str:
    """AEAD_AES_256_GCM seal (the platform's side; used by tests to build callbacks)."""
    return base64.b64encode(AESGCM(api_v3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())).decode()


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names are case-insensitive; take the first value of each."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str):
            out.setdefault(name.lower(), value)
    return out
