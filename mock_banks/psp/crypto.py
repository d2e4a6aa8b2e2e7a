"""The mock PSP's own keys, signatures and AES-GCM, written independently of the adapter's
(a mock that shares our code cannot catch our bugs). Only `cryptography` is shared.

The keys directory (`--keys-dir`, created by `--init-keys`):

| file | side | holds |
| --- | --- | --- |
| `merchant.json` | both | `{"mch_id": ..., "serial_no": ...}`: the merchant and its key serial |
| `merchant_private_key.pem` | adapter | the merchant's RSA private key (PKCS#8 PEM): signs requests |
| `merchant_certificate.pem` | mock | the merchant's X.509 certificate: verifies requests; its serial is `serial_no` |
| `api_v3_key` | both | 32 ASCII characters: the AES-256-GCM key of callback resources |
| `platform_<SERIAL>_key.pem` | mock | a platform private key (one per serial) |
| `platform_<SERIAL>_cert.pem` | mock | its certificate |
| `platform_serials` | mock | the serials in rotation order, one a line; the last signs |
| `platform_certificates.pem` | adapter | every platform certificate, concatenated (rewritten on rotation) |
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

SCHEME = "WECHATPAY2-SHA256-RSA2048"
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')
_ALNUM = string.ascii_letters + string.digits


def random_text(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


def parse_authorization(header: str) -> dict[str, str] | None:
    scheme, _, params = header.partition(" ")
    if scheme != SCHEME:
        return None
    return dict(_AUTH_PARAM.findall(params))


def request_string(method: str, raw_path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method}\n{raw_path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def reply_string(timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def seal(api_v3_key: bytes, associated_data: str, plaintext: bytes) -> dict[str, str]:
    nonce = random_text(12)
    ciphertext = AESGCM(api_v3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": associated_data, "nonce": nonce}


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dualflow mock PSP")])
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=5 * 365)).sign(key, hashes.SHA256()))


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "X")


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if private:
        os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class PlatformKey:
    serial: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate


class KeyStore:
    """The mock's view of the keys directory."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = Path(keys_dir)
        merchant = json.loads((self.dir / "merchant.json").read_text())
        self.mch_id: str = merchant["mch_id"]
        self.merchant_cert = x509.load_pem_x509_certificate((self.dir / "merchant_certificate.pem").read_bytes())
        self.merchant_serial = serial_of(self.merchant_cert)
        if merchant.get("serial_no", self.merchant_serial) != self.merchant_serial:
            raise ValueError("merchant.json serial_no does not match merchant_certificate.pem")
        merchant_key = self.merchant_cert.public_key()
        assert isinstance(merchant_key, rsa.RSAPublicKey)
        self.merchant_key = merchant_key
        self.api_v3_key = (self.dir / "api_v3_key").read_bytes().strip()
        if len(self.api_v3_key) != 32:
            raise ValueError("api_v3_key must be 32 bytes")
        self.platform: list[PlatformKey] = []
        for serial in (self.dir / "platform_serials").read_text().split():
            key = serialization.load_pem_private_key((self.dir / f"platform_{serial}_key.pem").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((self.dir / f"platform_{serial}_cert.pem").read_bytes())
            assert isinstance(key, rsa.RSAPrivateKey) and serial_of(cert) == serial
            self.platform.append(PlatformKey(serial, key, cert))
        if not self.platform:
            raise ValueError("no platform keys")
        # Signs "bad signature" replies: a key no certificate vouches for.
        self.wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def current(self) -> PlatformKey:
        return self.platform[-1]

    def certificates_pem(self) -> bytes:
        return b"".join(p.cert.public_bytes(serialization.Encoding.PEM) for p in self.platform)

    def rotate(self) -> PlatformKey:
        """A new platform key and serial; the old ones stay valid (and listed)."""
        new = add_platform_key(self.dir)
        self.platform.append(new)
        return new

    @staticmethod
    def complete(keys_dir: Path) -> bool:
        d = Path(keys_dir)
        return all((d / name).exists() for name in ("merchant.json", "merchant_certificate.pem", "api_v3_key",
                                                    "platform_serials", "platform_certificates.pem"))


def add_platform_key(keys_dir: Path) -> PlatformKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, "dualflow mock PSP platform")
    serial = serial_of(cert)
    _write(keys_dir / f"platform_{serial}_key.pem", _pem_key(key), private=True)
    _write(keys_dir / f"platform_{serial}_cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    serials_file = keys_dir / "platform_serials"
    serials = serials_file.read_text().split() if serials_file.exists() else []
    serials.append(serial)
    bundle = b"".join((keys_dir / f"platform_{s}_cert.pem").read_bytes() for s in serials)
    # The bundle first, then the list: a reader never sees a serial whose certificate is missing.
    _write(keys_dir / "platform_certificates.pem", bundle)
    _write(serials_file, ("\n".join(serials) + "\n").encode())
    return PlatformKey(serial, key, cert)


def init_keys(keys_dir: Path, mch_id: str) -> None:
    """Create whatever is missing of a consistent key set (never overwrites)."""
    d = Path(keys_dir)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "merchant_certificate.pem").exists() or not (d / "merchant_private_key.pem").exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _self_signed(key, f"merchant {mch_id}")
        _write(d / "merchant_private_key.pem", _pem_key(key), private=True)
        _write(d / "merchant_certificate.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(d / "merchant.json", json.dumps({"mch_id": mch_id, "serial_no": serial_of(cert)}).encode())
    if not (d / "merchant.json").exists():
        cert = x509.load_pem_x509_certificate((d / "merchant_certificate.pem").read_bytes())
        _write(d / "merchant.json", json.dumps({"mch_id": mch_id, "serial_no": serial_of(cert)}).encode())
    if not (d / "api_v3_key").exists():
        _write(d / "api_v3_key", random_text(32).encode(), private=True)
    if not (d / "platform_serials").exists() or not (d / "platform_serials").read_text().split():
        add_platform_key(d)
