"""Channel-neutral instructions to this bank's message fields, and its replies to outcomes.

Pure functions, no I/O. The link adds DE 7 (transmission time), DE 11 (STAN) and the MAC.
"""

from __future__ import annotations

from dataclasses import dataclass

from dualflow.adapters.contract import ChannelResult, Outcome, PayInstruction, QueryRequest, RefundInstruction

from . import codec
from .spec import (
    CURRENCY_NUMERIC,
    PROCESSING_PURCHASE,
    PROCESSING_REFUND,
    PURCHASE_OR_REFUND,
    RESPONSE_CODES,
    RESPONSE_MTI,
    STATUS_QUERY,
    TAG_INSTRUCTION,
    TAG_ORIGINAL_INSTRUCTION,
    TAG_ORIGINAL_REFERENCE,
    TAG_PAYMENT,
    TAG_QUERY_KIND,
    TAG_REFUND,
)

MAX_AMOUNT = 10**12 - 1  # DE 4 is n12
QUERY_KINDS = ("pay", "refund", "reverse")


@dataclass(frozen=True, slots=True)
class Acceptor:
    terminal_id: str  # DE 41, ans 8
    acceptor_id: str  # DE 42, ans 15

    def fields(self) -> dict[str, str]:
        return {"41": self.terminal_id.ljust(8), "42": self.acceptor_id.ljust(15)}


class Invalid(ValueError):
    """An instruction this channel cannot send: answered NOT_SUBMITTED with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _printable_id(value: str, what: str) -> str:
    if not 1 <= len(value) <= 64 or not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise Invalid(f"INVALID_{what}")
    return value


def _amount(amount: int) -> str:
    if not 0 < amount <= MAX_AMOUNT:
        raise Invalid("AMOUNT_OUT_OF_RANGE")
    return f"{amount:012d}"


def _currency(currency: str) -> str:
    numeric = CURRENCY_NUMERIC.get(currency)
    if numeric is None:
        raise Invalid("UNSUPPORTED_CURRENCY")
    return numeric


def purchase(ins: PayInstruction, acceptor: Acceptor) -> dict[str, str]:
    card = ins.card
    if card is None:
        raise Invalid("CARD_REQUIRED")
    if not (card.pan.isascii() and card.pan.isdigit() and 12 <= len(card.pan) <= 19):
        raise Invalid("INVALID_CARD_NUMBER")
    if not (1 <= card.exp_month <= 12 and 2000 <= card.exp_year <= 2099):
        raise Invalid("INVALID_CARD_EXPIRY")
    return {
        "2": card.pan,
        "3": PROCESSING_PURCHASE,
        "4": _amount(ins.amount),
        "14": f"{card.exp_year % 100:02d}{card.exp_month:02d}",
        **acceptor.fields(),
        "48": codec.tlv_build({TAG_INSTRUCTION: _printable_id(ins.instruction_id, "INSTRUCTION_ID"),
                               TAG_PAYMENT: _printable_id(ins.payment_id, "PAYMENT_ID")}),
        "49": _currency(ins.currency),
    }


def refund(ins: RefundInstruction, acceptor: Acceptor) -> dict[str, str]:
    return {
        "3": PROCESSING_REFUND,
        "4": _amount(ins.amount),
        **acceptor.fields(),
        "48": codec.tlv_build({
            TAG_INSTRUCTION: _printable_id(ins.instruction_id, "INSTRUCTION_ID"),
            TAG_PAYMENT: _printable_id(ins.payment_id, "PAYMENT_ID"),
            TAG_REFUND: _printable_id(ins.refund_id, "REFUND_ID"),
            TAG_ORIGINAL_INSTRUCTION: _printable_id(ins.original_instruction_id, "INSTRUCTION_ID"),
            TAG_ORIGINAL_REFERENCE: _reference(ins.original_reference)}),
        "49": _currency(ins.currency),
    }


def _reference(reference: str) -> str:
    if reference and not (len(reference) <= 12 and reference.isascii() and reference.isalnum()):
        raise Invalid("INVALID_REFERENCE")
    return reference


def original_data(stan: str = "", transmitted: str = "") -> str:
    """DE 90: original MTI (0200), STAN, transmission time, acquirer and forwarder ids (zeros:
    we are both). Zeros for what we no longer know: the bank matches on DE 48's II first."""
    return f"{PURCHASE_OR_REFUND}{stan or '0' * 6}{transmitted or '0' * 10}{'0' * 11}{'0' * 11}"


def reversal(request: QueryRequest, amount: int, currency: str, acceptor: Acceptor,
             original: tuple[str, str] | None) -> dict[str, str]:
    stan, transmitted = original or ("", "")
    return {
        "3": PROCESSING_PURCHASE,
        "4": _amount(amount),
        **acceptor.fields(),
        "48": codec.tlv_build({TAG_INSTRUCTION: _printable_id(request.instruction_id, "INSTRUCTION_ID"),
                               TAG_ORIGINAL_REFERENCE: _reference(request.channel_reference)}),
        "49": _currency(currency),
        "90": original_data(stan, transmitted),
    }


def status_query(request: QueryRequest) -> dict[str, str]:
    if request.kind not in QUERY_KINDS:
        raise Invalid("INVALID_QUERY_KIND")
    return {
        "48": codec.tlv_build({TAG_INSTRUCTION: _printable_id(request.instruction_id, "INSTRUCTION_ID"),
                               TAG_QUERY_KIND: request.kind,
                               TAG_ORIGINAL_REFERENCE: _reference(request.channel_reference)}),
        "70": STATUS_QUERY,
    }


def _fee(value: str) -> int:
    # DE 28: D = a fee the bank charges us, C = one it credits us
    if not value:
        return 0
    return int(value[1:]) if value[0] == "D" else -int(value[1:])


def result(reply: codec.Message, *, instruction_id: str, amount: int | None = None) -> ChannelResult:
    """Map a verified reply for `instruction_id` to an outcome. Anything that does not add up
    (no response code, another instruction's id, an approval for another amount) is UNKNOWN."""
    code = reply.get("39")
    if not code:
        return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY")
    try:
        echoed = codec.tlv_parse(reply.get("48")).get(TAG_INSTRUCTION, "")
    except codec.MessageError:
        return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY", code)
    if echoed != instruction_id:
        return ChannelResult(Outcome.UNKNOWN, "MISMATCHED_REPLY", code)
    outcome, reason = RESPONSE_CODES.get(code, (Outcome.PENDING, "UNMAPPED_RESPONSE_CODE"))
    reference, fee = reply.get("37"), _fee(reply.get("28"))
    if outcome is Outcome.SUCCEEDED and amount is not None and reply.get("4") and int(reply.get("4")) != amount:
        return ChannelResult(Outcome.UNKNOWN, "AMOUNT_MISMATCH", code, reference)
    return ChannelResult(outcome, reason, code, reference, fee if outcome is Outcome.SUCCEEDED else 0)


def interpret(body: bytes, key: bytes, *, request_mti: str, instruction_id: str,
              amount: int | None = None) -> ChannelResult:
    """The whole reply path for one frame body, as the link and `result` apply it: never raises,
    never SUCCEEDED unless the bytes are a correctly MACed approval of this instruction."""
    try:
        reply = codec.parse(body, key)
    except codec.MacError:
        return ChannelResult(Outcome.UNKNOWN, "BAD_MAC")
    except codec.Iso8583Error:
        return ChannelResult(Outcome.UNKNOWN, "GARBLED_REPLY")
    if reply.mti != RESPONSE_MTI.get(request_mti):
        return ChannelResult(Outcome.UNKNOWN, "MISMATCHED_REPLY")
    return result(reply, instruction_id=instruction_id, amount=amount)
