"""The ISO 8583 card bank's bytes: fixed vectors, round trips against the mock bank's independent
codec, the response-code table, and hypothesis fuzzing of the reply path (random and mutated
bytes never crash and never come out SUCCEEDED)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import CardData, Outcome, PayInstruction, QueryRequest
from dualflow.adapters.iso8583_bank import codec, spec, transformers
from dualflow.core.payments.model import Asset
from dualflow.mock_banks.iso8583 import wire

RFC4493_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
RFC4493_MESSAGE = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
                                "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
PAN = "4761739001010119"  # a well-known test card number
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")

# RFC 4493 section 4: message length -> AES-CMAC
CMAC_VECTORS = [
    (0, "bb1d6929e9593728 7fa37d129b756746"),
    (16, "070a16b46b4d4144 f79bdd9dd04a287c"),
    (40, "dfa66747de9ae630 30ca32611497c827"),
    (64, "51f0bebf7e3b9d92 fc49741779363cfe"),
]


@pytest.mark.parametrize(("length", "expected"), CMAC_VECTORS)
def test_both_cmac_implementations_match_rfc_4493(length: int, expected: str) -> None:
    full = bytes.fromhex(expected.replace(" ", ""))
    assert wire.aes_cmac(RFC4493_KEY, RFC4493_MESSAGE[:length]) == full  # the mock's, by hand
    assert codec.mac(RFC4493_KEY, RFC4493_MESSAGE[:length]) == full[:8]  # the adapter's (cryptography)


PURCHASE_FIELDS = {
    "2": PAN, "3": "000000", "4": "000000001000", "7": "0102030405", "11": "000001", "14": "2912",
    "41": "TERM0001", "42": "MERCHANT0000001", "48": "II005ins_1PI005pay_1", "49": "156",
}
# Written out by hand from the field definitions, not by either codec.
PURCHASE_UNSIGNED = (
    b"0200"
    + bytes.fromhex("7224000000C18001")  # fields 2 3 4 7 | 11 14 | - | - | - | 41 42 48 | 49 | 64
    + b"16" + PAN.encode()  # DE 2, LLVAR
    + b"000000" + b"000000001000" + b"0102030405" + b"000001" + b"2912"  # DE 3, 4, 7, 11, 14
    + b"TERM0001" + b"MERCHANT0000001"  # DE 41, 42
    + b"020" + b"II005ins_1PI005pay_1"  # DE 48, LLLVAR: TLV items
    + b"156"  # DE 49
)
PURCHASE_MAC = bytes.fromhex("6b22ed062223d49b")  # AES-CMAC under the RFC 4493 key, first 8 bytes


def test_a_known_purchase_encodes_to_known_bytes_and_mac() -> None:
    encoded = codec.encode("0200", PURCHASE_FIELDS, RFC4493_KEY)
    assert encoded == PURCHASE_UNSIGNED + PURCHASE_MAC
    assert wire.aes_cmac(RFC4493_KEY, PURCHASE_UNSIGNED)[:8] == PURCHASE_MAC  # the MAC covers message[:-8]
    assert wire.sign("0200", {int(k): v for k, v in PURCHASE_FIELDS.items()}, RFC4493_KEY) == encoded
    assert codec.frame(encoded)[:2] == len(encoded).to_bytes(2, "big")
    mti, fields = wire.parse(encoded)
    assert mti == "0200" and wire.mac_ok(encoded, fields, RFC4493_KEY)
    assert codec.parse(encoded, RFC4493_KEY).fields == PURCHASE_FIELDS


def test_network_messages_carry_the_mac_in_de_128() -> None:
    fields = {"7": "0102030405", "11": "000002", "70": "301"}
    encoded = codec.encode("0800", fields, RFC4493_KEY)
    # secondary bitmap flag + DE 7 + DE 11 | secondary: DE 70 and DE 128
    assert encoded[:20] == b"0800" + bytes.fromhex("8220000000000000") + bytes.fromhex("0400000000000001")
    assert encoded == wire.sign("0800", {7: "0102030405", 11: "000002", 70: "301"}, RFC4493_KEY)
    assert codec.parse(encoded, RFC4493_KEY).fields == fields
    # With a secondary bitmap, a MAC in DE 64 (and none in DE 128) is refused.
    moved = wire.build("0800", {7: "0102030405", 11: "000002", 64: encoded[-8:], 70: "301"})
    with pytest.raises(codec.MacError):
        codec.parse(moved, RFC4493_KEY)
    both = wire.build("0800", {7: "0102030405", 11: "000002", 64: encoded[-8:], 70: "301", 128: encoded[-8:]})
    with pytest.raises(codec.MacError):
        codec.parse(both, RFC4493_KEY)


def test_missing_or_wrong_mac_is_a_mac_error_that_keeps_the_stan() -> None:
    encoded = codec.encode("0210", {"11": "000123", "39": "00", "48": "II003abc"}, KEY)
    with pytest.raises(codec.MacError) as bad:
        codec.parse(encoded, bytes(16))
    assert bad.value.message.stan == "000123"
    unsigned = wire.build("0210", {11: "000123", 39: "00"})
    with pytest.raises(codec.MacError):
        codec.parse(unsigned, KEY)


@pytest.mark.parametrize(("code", "outcome", "reason"), [
    # code  outcome                 reason
    ("00", Outcome.SUCCEEDED, ""),
    ("05", Outcome.FAILED, "CARD_DECLINED"),
    ("09", Outcome.PENDING, "IN_PROGRESS"),
    ("12", Outcome.FAILED, "INVALID_TRANSACTION"),
    ("13", Outcome.FAILED, "INVALID_AMOUNT"),
    ("25", Outcome.UNKNOWN, "NOT_FOUND"),
    ("51", Outcome.FAILED, "INSUFFICIENT_FUNDS"),
    ("63", Outcome.FAILED, "MAC_REJECTED"),
    ("68", Outcome.UNKNOWN, "RESPONSE_TOO_LATE"),
    ("91", Outcome.UNKNOWN, "ISSUER_UNAVAILABLE"),
    ("94", Outcome.UNKNOWN, "DUPLICATE_TRANSMISSION"),
    ("96", Outcome.UNKNOWN, "SYSTEM_MALFUNCTION"),
    ("RV", Outcome.FAILED, "REVERSED"),
    ("N7", Outcome.PENDING, "UNMAPPED_RESPONSE_CODE"),  # a code we do not know is never a failure
    ("54", Outcome.PENDING, "UNMAPPED_RESPONSE_CODE"),
])
def test_response_codes(code: str, outcome: Outcome, reason: str) -> None:
    reply = codec.Message("0210", {"11": "000001", "39": code, "37": "000000000042", "48": "II003abc",
                                   "4": "000000000100", "28": "D00000007"})
    result = transformers.result(reply, instruction_id="abc", amount=100)
    assert (result.outcome, result.reason, result.channel_code) == (outcome, reason, code)
    assert result.fee == (7 if outcome is Outcome.SUCCEEDED else 0)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"11": "000001", "39": "00", "48": "II003xyz"}, "MISMATCHED_REPLY"),  # another instruction's answer
    ({"11": "000001", "39": "00"}, "MISMATCHED_REPLY"),  # no instruction id echoed
    ({"11": "000001", "48": "II003abc"}, "GARBLED_REPLY"),  # no response code
    ({"11": "000001", "39": "00", "48": "II9"}, "GARBLED_REPLY"),  # broken DE 48
    ({"11": "000001", "39": "00", "48": "II003abc", "4": "000000000999"}, "AMOUNT_MISMATCH"),
])
def test_replies_that_do_not_add_up_are_unknown(fields: dict[str, str], reason: str) -> None:
    result = transformers.result(codec.Message("0210", fields), instruction_id="abc", amount=100)
    assert (result.outcome, result.reason) == (Outcome.UNKNOWN, reason)


def test_purchase_fields_and_masking() -> None:
    ins = PayInstruction("ins_1", "pay_1", "shop", Asset.BANK_CARD, 1_000, "CNY", card=CardData(PAN, 12, 2029))
    fields = transformers.purchase(ins, transformers.Acceptor("T1", "M1"))
    assert fields["2"] == PAN and fields["14"] == "2912" and fields["41"] == "T1      " and fields["49"] == "156"
    assert codec.tlv_parse(fields["48"]) == {"II": "ins_1", "PI": "pay_1"}
    message = codec.Message("0200", fields)
    assert PAN not in repr(message) and PAN not in repr(ins) and "476173******0119" in repr(message)
    with pytest.raises(codec.MessageError) as bad:  # an encoding error does not carry field values
        codec.encode("0200", {**fields, "4": "12x"}, KEY)
    assert PAN not in str(bad.value) and bad.value.__cause__ is None
    for broken, reason in [
        (PayInstruction("i", "p", "m", Asset.BANK_CARD, 1, "CNY"), "CARD_REQUIRED"),
        (PayInstruction("i", "p", "m", Asset.BANK_CARD, 1, "CNY", card=CardData("4111", 1, 2030)), "INVALID_CARD_NUMBER"),
        (PayInstruction("i", "p", "m", Asset.BANK_CARD, 1, "XXX", card=CardData(PAN, 1, 2030)), "UNSUPPORTED_CURRENCY"),
        (PayInstruction("i", "p", "m", Asset.BANK_CARD, 10**12, "CNY", card=CardData(PAN, 1, 2030)), "AMOUNT_OUT_OF_RANGE"),
        (PayInstruction("i d", "p", "m", Asset.BANK_CARD, 1, "CNY", card=CardData(PAN, 1, 2030)), "INVALID_INSTRUCTION_ID"),
    ]:
        with pytest.raises(transformers.Invalid) as invalid:
            transformers.purchase(broken, transformers.Acceptor("T1", "M1"))
        assert invalid.value.reason == reason


def test_reversal_and_query_fields() -> None:
    fields = transformers.reversal(QueryRequest("ins_1", "000000000042"), 1_000, "CNY",
                                   transformers.Acceptor("T1", "M1"), ("000017", "0102030405"))
    assert fields["90"] == "0200" + "000017" + "0102030405" + "0" * 22 and len(fields["90"]) == 42
    assert codec.tlv_parse(fields["48"]) == {"II": "ins_1", "OR": "000000000042"}
    query = transformers.status_query(QueryRequest("ins_1", kind="refund"))
    assert query["70"] == "900" and codec.tlv_parse(query["48"]) == {"II": "ins_1", "QK": "refund"}
    # The mock parses what we build for each flow.
    for mti, f in (("0400", fields), ("0800", query)):
        encoded = codec.encode(mti, {**f, "7": "0102030405", "11": "000001"}, KEY)
        parsed_mti, parsed = wire.parse(encoded)
        assert parsed_mti == mti and wire.mac_ok(encoded, parsed, KEY) and 128 in parsed


def test_frame_decoder_splits_any_chunking() -> None:
    bodies = [b"a" * 5, b"b" * 300, b"c"]
    stream = b"".join(codec.frame(b) for b in bodies)
    for size in (1, 2, 3, 7, len(stream)):
        decoder, out = codec.FrameDecoder(), []
        for i in range(0, len(stream), size):
            out += decoder.feed(stream[i:i + size])
        assert out == bodies and decoder.buffered == 0
    with pytest.raises(codec.FrameError):
        codec.FrameDecoder().feed(b"\x00\x00rest")


# ---- round trips: our encoder and the mock's parser (and back) agree on generated messages

def _value(kind: str, prefix: int, size: int) -> st.SearchStrategy[str | bytes]:
    length = st.integers(1 if prefix else size, size)
    alphabets = {"n": "0123456789", "an": "ABCXYZabcxyz0189",
                 "ans": "".join(chr(c) for c in range(0x20, 0x7F))}
    if kind == "b":
        return length.flatmap(lambda n: st.binary(min_size=n, max_size=n))
    if kind == "xn":
        return st.tuples(st.sampled_from("CD"), st.text("0123456789", min_size=8, max_size=8)).map("".join)
    return length.flatmap(lambda n: st.text(alphabets[kind], min_size=n, max_size=n))


DATA_FIELDS = [n for n in wire.FIELDS if n not in (64, 128)]
messages = st.tuples(
    st.sampled_from(["0200", "0210", "0400", "0410", "0800", "0810"]),
    st.lists(st.sampled_from(DATA_FIELDS), min_size=1, unique=True).flatmap(
        lambda numbers: st.fixed_dictionaries({n: _value(*wire.FIELDS[n][:3]) for n in numbers})),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip_against_the_mocks_codec(message: tuple[str, dict[int, str | bytes]]) -> None:
    mti, fields = message
    ours = {str(n): v for n, v in fields.items() if isinstance(v, str)}
    encoded = codec.encode(mti, ours, KEY)
    assert encoded == wire.sign(mti, {int(n): v for n, v in ours.items()}, KEY)
    parsed_mti, parsed = wire.parse(encoded)
    assert parsed_mti == mti and wire.mac_ok(encoded, parsed, KEY)
    assert {str(n): v for n, v in parsed.items() if n not in (64, 128)} == ours
    decoded = codec.parse(encoded, KEY)
    assert decoded.mti == mti and dict(decoded.fields) == ours
    assert codec.encode(decoded.mti, dict(decoded.fields), KEY) == encoded  # decode -> encode -> same bytes


# ---- fuzzing: the reply path never crashes and never says SUCCEEDED for bytes it cannot trust

def _approval(instruction_id: str = "ins_1", amount: int = 1_000) -> bytes:
    return wire.sign("0210", {3: "000000", 4: f"{amount:012d}", 7: "0102030405", 11: "000001", 37: "000000000001",
                              38: "123456", 39: "00", 41: "TERM0001", 42: "MERCHANT0000001",
                              48: wire.tlv_build({"II": instruction_id}), 49: "156"}, KEY)


def test_the_untouched_approval_is_the_only_success() -> None:
    result = transformers.interpret(_approval(), KEY, request_mti="0200", instruction_id="ins_1", amount=1_000)
    assert result.outcome is Outcome.SUCCEEDED and result.channel_reference == "000000000001"
    other = transformers.interpret(_approval(), KEY, request_mti="0400", instruction_id="ins_1", amount=1_000)
    assert other.outcome is Outcome.UNKNOWN  # an 0210 does not answer an 0400


# Random bytes, and random bytes behind a plausible MTI and bitmap, so the decoder gets past the
# header into fields, secondary and tertiary bitmaps, length prefixes and fields not in our spec.
random_bodies = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.sampled_from([b"0210", b"0410", b"0810"]), st.binary(min_size=8, max_size=24),
              st.binary(max_size=300)).map(b"".join),
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_bodies)
def test_random_bytes_never_crash_and_never_succeed(data: bytes) -> None:
    try:
        codec.parse(data, KEY)
    except codec.Iso8583Error:
        pass
    result = transformers.interpret(data, KEY, request_mti="0200", instruction_id="ins_1", amount=1_000)
    assert result.outcome is Outcome.UNKNOWN
    try:
        for body in codec.FrameDecoder().feed(data):
            assert transformers.interpret(body, KEY, request_mti="0200", instruction_id="ins_1").outcome \
                is not Outcome.SUCCEEDED
    except codec.FrameError:
        pass
    try:
        codec.tlv_parse(data.decode("latin-1"))
    except codec.MessageError:
        pass


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    original = _approval()
    body = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        if op == "flip":
            body[i] ^= draw(st.integers(1, 255))
        elif op == "set":
            body[i] = draw(st.sampled_from(b"0 9A\x00\xff+-"))
        elif op == "insert":
            body.insert(i, draw(st.integers(0, 255)))
        elif op == "delete":
            del body[i]
        elif op == "truncate":
            del body[i:]
        else:
            body += draw(st.binary(min_size=1, max_size=16))
    if bytes(body) == original:  # mutations that cancelled out
        body[0] ^= 1
    return bytes(body)


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_mutated_approvals_are_unknown(body: bytes) -> None:
    result = transformers.interpret(body, KEY, request_mti="0200", instruction_id="ins_1", amount=1_000)
    assert result.outcome is Outcome.UNKNOWN, result
    assert result.reason in ("BAD_MAC", "GARBLED_REPLY", "MISMATCHED_REPLY")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=60), max_size=8), st.integers(1, 64))
def test_frame_stream_with_garbage_between_frames(chunks: list[bytes], size: int) -> None:
    stream = b"".join(codec.frame(_approval()) + c for c in chunks)
    decoder = codec.FrameDecoder()
    try:
        for i in range(0, len(stream), size):
            for body in decoder.feed(stream[i:i + size]):
                outcome = transformers.interpret(body, KEY, request_mti="0200", instruction_id="ins_1",
                                                 amount=1_000).outcome
                assert outcome is Outcome.SUCCEEDED if body == _approval() else outcome is Outcome.UNKNOWN
    except codec.FrameError:
        pass


def test_spec_and_mock_table_agree_on_every_field() -> None:
    """Written independently; a disagreement here is a codec bug on one side."""
    for number, (kind, prefix, size, _name) in wire.FIELDS.items():
        ours = spec.SPEC[str(number)]
        assert (ours["kind"], ours["len_type"], ours["max_len"]) == (kind, prefix, size), number
    assert set(spec.SPEC) - {"h", "t", "p", "1"} == {str(n) for n in wire.FIELDS}
