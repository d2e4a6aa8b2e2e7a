"""The mock bank's own ISO 8583 codec, MAC and private-data (DE 48) format.

Written from the ISO 8583:1987 field definitions, independently of the adapter (which uses
pyiso8583 and its own spec dict): if the two disagree about a length prefix, a padding, a bitmap
bit or the bytes the MAC covers, a test sees it as a rejected MAC or an unparseable message.

Wire format the bank publishes (and the adapter must follow):
- a frame is a 2-byte big-endian length followed by that many bytes of message;
- a message is the MTI (4 ASCII digits), the primary bitmap (8 binary bytes), the secondary
  bitmap (8 binary bytes) when any field 65..128 is present, then the fields in ascending order;
- numeric and text fields are ASCII; variable fields carry an ASCII length prefix of 2 (LLVAR)
  or 3 (LLLVAR) digits; fixed fields have exactly their length (the sender pads);
- the MAC is the last field: DE 64, or DE 128 when the secondary bitmap is present (and then
  DE 64 is absent). It is the first 8 bytes of AES-CMAC (RFC 4493) under the channel's AES-128
  key over every message byte before it: MTI, bitmaps (with the MAC's bit set) and all other
  fields, i.e. `message[:-8]`. The frame's length prefix is not covered.
- DE 48 carries tag-length-value items: a 2-letter tag, a 3-digit length, the value (printable
  ASCII). Tags: II instruction id, PI payment id, RI refund id, OI original instruction id,
  OR original reference (RRN), QK queried kind (pay, refund, reverse).
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# number: (kind, length-prefix digits (0 = fixed), length or max length, name)
# kinds: n digits; an letters and digits; ans printable ASCII; xn 'C' or 'D' then digits; b bytes
FIELDS: dict[int, tuple[str, int, int, str]] = {
    2: ("n", 2, 19, "primary account number"),
    3: ("n", 0, 6, "processing code"),
    4: ("n", 0, 12, "amount, transaction (minor units)"),
    7: ("n", 0, 10, "transmission date and time, MMDDhhmmss UTC"),
    11: ("n", 0, 6, "systems trace audit number"),
    14: ("n", 0, 4, "date, expiration YYMM"),
    28: ("xn", 0, 9, "amount, transaction fee: C or D, then n8"),
    37: ("an", 0, 12, "retrieval reference number"),
    38: ("an", 0, 6, "authorization identification response"),
    39: ("an", 0, 2, "response code"),
    41: ("ans", 0, 8, "card acceptor terminal identification"),
    42: ("ans", 0, 15, "card acceptor identification code"),
    48: ("ans", 3, 999, "additional data, private: TLV items"),
    49: ("n", 0, 3, "currency code, transaction (ISO 4217 numeric)"),
    64: ("b", 0, 8, "message authentication code"),
    70: ("n", 0, 3, "network management information code"),
    90: ("n", 0, 42, "original data elements: MTI, STAN, transmission time, acquirer, forwarder"),
    128: ("b", 0, 8, "message authentication code (secondary bitmap present)"),
}

MAC_LEN = 8


class WireError(ValueError):
    """A frame or message the bank cannot read."""


def _check_text(kind: str, value: str, number: int) -> None:
    if not value.isascii():
        raise WireError(f"DE {number}: not ASCII")
    if kind == "n" and not value.isdigit():
        raise WireError(f"DE {number}: not numeric")
    if kind == "an" and not value.isalnum():
        raise WireError(f"DE {number}: not alphanumeric")
    if kind == "ans" and not all(0x20 <= ord(c) <= 0x7E for c in value):
        raise WireError(f"DE {number}: not printable")
    if kind == "xn" and not (value[:1] in ("C", "D") and value[1:].isdigit()):
        raise WireError(f"DE {number}: not C/D + digits")


def build(mti: str, fields: dict[int, str | bytes]) -> bytes:
    """Encode a message (no MAC logic: `sign` adds it)."""
    if len(mti) != 4 or not (mti.isascii() and mti.isdigit()):
        raise WireError("MTI must be 4 digits")
    numbers = sorted(fields)
    for number in numbers:
        if number not in FIELDS:
            raise WireError(f"DE {number} is not in the bank's spec")
    bitmap = bytearray(16)
    secondary = any(n > 64 for n in numbers)
    if secondary:
        bitmap[0] |= 0x80
    for number in numbers:
        bit = number - 1
        bitmap[bit // 8] |= 0x80 >> (bit % 8)
    out = bytearray(mti.encode())
    out += bitmap if secondary else bitmap[:8]
    for number in numbers:
        kind, prefix, size, _ = FIELDS[number]
        value = fields[number]
        if kind == "b":
            assert isinstance(value, bytes)
            data = value
        else:
            assert isinstance(value, str)
            _check_text(kind, value, number)
            data = value.encode("ascii")
        if prefix == 0:
            if len(data) != size:
                raise WireError(f"DE {number}: {len(data)} bytes, fixed length is {size}")
            out += data
        else:
            if len(data) > size:
                raise WireError(f"DE {number}: {len(data)} bytes, at most {size}")
            out += str(len(data)).zfill(prefix).encode() + data
    return bytes(out)


def parse(message: bytes) -> tuple[str, dict[int, str | bytes]]:
    """Decode a message; strict: unknown fields, bad characters, short or trailing bytes fail."""
    if len(message) < 12:
        raise WireError("shorter than MTI and bitmap")
    mti_raw = message[:4]
    if not mti_raw.isdigit():
        raise WireError("MTI is not 4 digits")
    mti = mti_raw.decode()
    bitmap = message[4:12]
    pos = 12
    if bitmap[0] & 0x80:
        if len(message) < 20:
            raise WireError("secondary bitmap cut short")
        bitmap += message[12:20]
        pos = 20
    numbers = [i + 1 for i in range(len(bitmap) * 8) if bitmap[i // 8] & (0x80 >> (i % 8)) and i != 0]
    if 65 in numbers:
        raise WireError("tertiary bitmap not supported")
    fields: dict[int, str | bytes] = {}
    for number in numbers:
        spec = FIELDS.get(number)
        if spec is None:
            raise WireError(f"DE {number} is not in the bank's spec")
        kind, prefix, size, _ = spec
        if prefix:
            raw_len = message[pos:pos + prefix]
            if len(raw_len) != prefix or not raw_len.isdigit():
                raise WireError(f"DE {number}: bad length prefix")
            length = int(raw_len)
            if length > size:
                raise WireError(f"DE {number}: {length} bytes, at most {size}")
            pos += prefix
        else:
            length = size
        data = message[pos:pos + length]
        if len(data) != length:
            raise WireError(f"DE {number}: cut short")
        pos += length
        if kind == "b":
            fields[number] = bytes(data)
        else:
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                raise WireError(f"DE {number}: not ASCII") from None
            _check_text(kind, text, number)
            fields[number] = text
    if pos != len(message):
        raise WireError(f"{len(message) - pos} bytes after the last field")
    return mti, fields


# ---- AES-CMAC (RFC 4493), written out over the raw block cipher on purpose: an independent
# implementation from the adapter's (cryptography's CMAC), so the two check each other.

def _double(block: bytes) -> bytes:
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ 0x87
    return value.to_bytes(16, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def aes_cmac(key: bytes, data: bytes) -> bytes:
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes")
    encrypt = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update
    k1 = _double(encrypt(bytes(16)))
    k2 = _double(k1)
    blocks = max(1, (len(data) + 15) // 16)
    last = data[16 * (blocks - 1):]
    if len(last) == 16:
        last = _xor(last, k1)
    else:
        last = _xor(last + b"\x80" + bytes(15 - len(last)), k2)
    x = bytes(16)
    for i in range(blocks - 1):
        x = encrypt(_xor(x, data[16 * i:16 * i + 16]))
    return encrypt(_xor(x, last))


def mac_field(fields: dict[int, str | bytes]) -> int:
    return 128 if any(n > 64 for n in fields if n not in (64, 128)) else 64


def sign(mti: str, fields: dict[int, str | bytes], key: bytes) -> bytes:
    """Encode with the MAC as the last field (DE 64, or DE 128 with a secondary bitmap)."""
    body = {n: v for n, v in fields.items() if n not in (64, 128)}
    body[mac_field(body)] = bytes(MAC_LEN)
    unsigned = build(mti, body)[:-MAC_LEN]
    return unsigned + aes_cmac(key, unsigned)[:MAC_LEN]


def mac_ok(message: bytes, fields: dict[int, str | bytes], key: bytes) -> bool:
    """The parsed message's MAC is present, in the right field, last, and correct."""
    expected = mac_field(fields)
    if expected not in fields or max(fields) != expected or (expected == 128 and 64 in fields):
        return False
    return hmac.compare_digest(message[-MAC_LEN:], aes_cmac(key, message[:-MAC_LEN])[:MAC_LEN])


def frame(message: bytes) -> bytes:
    if not 0 < len(message) <= 0xFFFF:
        raise WireError("message does not fit a 2-byte length")
    return len(message).to_bytes(2, "big") + message


# ---- DE 48: tag (2 letters), length (3 digits), value

def tlv_parse(text: str) -> dict[str, str]:
    items: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        tag, raw_len = text[pos:pos + 2], text[pos + 2:pos + 5]
        if len(tag) != 2 or not (tag.isascii() and tag.isalpha() and tag.isupper()):
            raise WireError("DE 48: bad tag")
        if len(raw_len) != 3 or not raw_len.isdigit():
            raise WireError("DE 48: bad length")
        length = int(raw_len)
        value = text[pos + 5:pos + 5 + length]
        if len(value) != length:
            raise WireError("DE 48: item cut short")
        if tag in items:
            raise WireError(f"DE 48: tag {tag} twice")
        items[tag] = value
        pos += 5 + length
    return items


def tlv_build(items: dict[str, str]) -> str:
    return "".join(f"{tag}{len(value):03d}{value}" for tag, value in items.items() if value)
