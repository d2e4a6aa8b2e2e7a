"""Bytes on the wire: length framing, ISO 8583 encoding and decoding (pyiso8583 with our `SPEC`),
the MAC, and DE 48's tag-length-value items. Pure functions and one small stateful frame
splitter; no I/O, no logging.

The MAC is the last field of every message, DE 64, or DE 128 when the secondary bitmap is
present (and then DE 64 is absent). Its value is the first 8 bytes of AES-CMAC (RFC 4493, via
`cryptography`) under the channel's AES-128 key, computed over every message byte before it:
the MTI, the bitmaps (with the MAC field's bit already set) and all other fields in order,
i.e. `message[:-8]`. The 2-byte frame length is not covered.

Errors (never carrying field values, so never a card number):

    Iso8583Error
    ├── FrameError     the byte stream is not a sequence of length-prefixed frames
    ├── MessageError   a frame is not a message of our dialect (field, position); or a local
    │                  message that cannot be encoded
    └── MacError       decoded, but the MAC is missing, misplaced or wrong; `.message` is the
                       untrusted decoded message (its STAN tells which request it claims to answer)
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import iso8583
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from .spec import MAC_LEN, SPEC

_STRUCTURE = ("h", "t", "p", "1")


class Iso8583Error(Exception):
    """Base of everything this codec raises on bad input."""


class FrameError(Iso8583Error):
    pass


class MessageError(Iso8583Error):
    def __init__(self, message: str, field: str = "", position: int = -1) -> None:
        super().__init__(message if not field else f"{message} (field {field}, position {position})")
        self.field = field
        self.position = position


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: its MTI and fields by number ("2", "11", ...), MAC and bitmaps left out.
    Binary fields are upper-case hex; the repr masks the card number."""

    mti: str
    fields: Mapping[str, str]

    def get(self, field: str, default: str = "") -> str:
        return self.fields.get(field, default)

    @property
    def stan(self) -> str:
        return self.fields.get("11", "")

    def __repr__(self) -> str:
        shown = {k: (mask_pan(v) if k == "2" else v) for k, v in self.fields.items()}
        return f"Message(mti={self.mti!r}, fields={shown!r})"


class MacError(Iso8583Error):
    def __init__(self, message: Message, why: str) -> None:
        super().__init__(f"bad MAC on {message.mti} STAN {message.stan or '?'}: {why}")
        self.message = message


def mask_pan(pan: str) -> str:
    return f"{pan[:6]}{'*' * max(0, len(pan) - 10)}{pan[-4:]}" if len(pan) >= 13 else "*" * len(pan)


def mac(key: bytes, data: bytes) -> bytes:
    """The first 8 bytes of AES-CMAC(key, data)."""
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()[:MAC_LEN]


def mac_field(field_numbers: set[int]) -> str:
    return "128" if any(n > 64 for n in field_numbers - {64, 128}) else "64"


def _check(field: str, value: str) -> None:
    kind = SPEC[field]["kind"]
    ok = value.isascii() and (
        (kind == "n" and value.isdigit())
        or (kind == "an" and value.isalnum())
        or (kind == "ans" and all(0x20 <= ord(c) <= 0x7E for c in value))
        or (kind == "xn" and value[:1] in ("C", "D") and value[1:].isdigit())
        or kind == "b")
    if not ok:
        raise MessageError(f"not {kind}", field)


def encode(mti: str, fields: Mapping[str, str], key: bytes) -> bytes:
    """A message with its MAC as the last field."""
    numbers = {int(k) for k in fields}
    doc: dict[str, str] = {"t": mti}
    for k, v in fields.items():
        if k not in SPEC or k in _STRUCTURE or k in ("64", "128"):
            raise MessageError("not a data field of our spec", k)
        _check(k, v)
        doc[k] = v
    doc[mac_field(numbers)] = "00" * MAC_LEN
    try:
        raw, _ = iso8583.encode(doc, SPEC)
    except iso8583.EncodeError as exc:  # its .doc_dec holds the card number: do not chain it
        raise MessageError(exc.msg, exc.field) from None
    unsigned = bytes(raw[:-MAC_LEN])
    return unsigned + mac(key, unsigned)


def decode(body: bytes) -> Message:
    """Decode without checking the MAC."""
    try:
        decoded, _ = iso8583.decode(body, SPEC)
    except iso8583.DecodeError as exc:
        raise MessageError(exc.msg, exc.field, exc.pos) from None
    except KeyError as exc:  # a bitmap bit for a field our spec does not have (or a tertiary bitmap)
        raise MessageError("field not in our spec", str(exc.args[0]) if exc.args else "?") from None
    if not decoded.get("t", "").isdigit():
        raise MessageError("not numeric", "t")
    fields = {k: v for k, v in decoded.items() if k not in _STRUCTURE}
    for k, v in fields.items():
        _check(k, v)
    return Message(decoded["t"], fields)


def verify(body: bytes, message: Message, key: bytes) -> None:
    numbers = {int(k) for k in message.fields}
    expected = mac_field(numbers)
    if expected not in message.fields:
        raise MacError(_without_mac(message), f"no DE {expected}")
    if max(numbers) != int(expected) or (expected == "128" and "64" in message.fields):
        raise MacError(_without_mac(message), f"DE {expected} is not the last field")
    if not hmac.compare_digest(body[-MAC_LEN:], mac(key, body[:-MAC_LEN])):
        raise MacError(_without_mac(message), "MAC mismatch")


def _without_mac(message: Message) -> Message:
    return Message(message.mti, {k: v for k, v in message.fields.items() if k not in ("64", "128")})


def parse(body: bytes, key: bytes) -> Message:
    """Decode and verify; the returned message is trustworthy (MAC fields left out)."""
    message = decode(body)
    verify(body, message, key)
    return _without_mac(message)


def frame(body: bytes) -> bytes:
    if not 0 < len(body) <= 0xFFFF:
        raise MessageError("message does not fit a 2-byte length")
    return len(body).to_bytes(2, "big") + body


class FrameDecoder:
    """Splits a byte stream into frame bodies: feed whatever the socket gave, get whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if length == 0:
                raise FrameError("zero-length frame")
            if len(self._buffer) < 2 + length:
                break
            out.append(bytes(self._buffer[2:2 + length]))
            del self._buffer[:2 + length]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def tlv_build(items: Mapping[str, str]) -> str:
    out = []
    for tag, value in items.items():
        if not value:
            continue
        if len(tag) != 2 or not (tag.isascii() and tag.isalpha() and tag.isupper()) or len(value) > 999:
            raise MessageError("bad DE 48 item", "48")
        out.append(f"{tag}{len(value):03d}{value}")
    return "".join(out)


def tlv_parse(text: str) -> dict[str, str]:
    items: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        tag, raw_len = text[pos:pos + 2], text[pos + 2:pos + 5]
        if len(tag) != 2 or not (tag.isascii() and tag.isalpha() and tag.isupper()):
            raise MessageError("DE 48: bad tag", "48", pos)
        if len(raw_len) != 3 or not (raw_len.isascii() and raw_len.isdigit()):
            raise MessageError("DE 48: bad length", "48", pos)
        end = pos + 5 + int(raw_len)
        if end > len(text):
            raise MessageError("DE 48: item cut short", "48", pos)
        if tag in items:
            raise MessageError("DE 48: tag repeated", "48", pos)
        items[tag] = text[pos + 5:end]
        pos = end
    return items
