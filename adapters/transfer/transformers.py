"""The transfer rail's own wire types and the pure conversions to and from our contract.

Everything here is a function of its arguments: request bodies from instructions, the bank's
transfer objects, error objects, callbacks and statement CSV to ChannelResults, CallbackEvents
and StatementLines. Malformed input raises WireError (the adapter turns that into UNKNOWN, or a
rejected callback); nothing here ever guesses a final outcome from something it does not know.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dualflow.adapters.contract import CallbackEvent, ChannelResult, Outcome, StatementLine

DIRECTIONS = ("collect", "payout", "return")
# Our kinds (QueryRequest.kind, CallbackEvent.kind, StatementLine.kind) by the bank's direction.
KIND_BY_DIRECTION = {"collect": "pay", "payout": "payout", "return": "refund"}
DIRECTION_BY_KIND = {kind: direction for direction, kind in KIND_BY_DIRECTION.items()}

# Bank states. ACCEPTED and anything we do not know are PENDING: only SETTLED is money moved,
# only REJECTED (refused) and RETURNED (sent back by the counterparty's bank) are final failures.
SETTLED, ACCEPTED, REJECTED, RETURNED = "SETTLED", "ACCEPTED", "REJECTED", "RETURNED"

# The bank's rejection and return codes, and ours.
REJECT_REASONS: Mapping[str, str] = {
    "ACCOUNT_CLOSED": "ACCOUNT_CLOSED",
    "INSUFFICIENT_FUNDS": "INSUFFICIENT_FUNDS",
    "INVALID_ACCOUNT": "INVALID_ACCOUNT",
    "NAME_MISMATCH": "ACCOUNT_NAME_MISMATCH",
    "NO_MANDATE": "NO_MANDATE",
    "LIMIT_EXCEEDED": "LIMIT_EXCEEDED",
    "DECLINED": "DECLINED",
}
REJECTED_UNMAPPED = "BANK_REJECTED"  # an explicit rejection whose code we do not know yet
RETURNED_UNMAPPED = "TRANSFER_RETURNED"

# Request errors (signed 400/409/422 answers to a POST) that prove the bank created nothing for
# this instruction and never will: final failures. Any other error code is UNKNOWN.
REQUEST_ERROR_REASONS: Mapping[str, str] = {
    "INVALID_REQUEST": "INVALID_REQUEST",
    "INVALID_ACCOUNT": "INVALID_ACCOUNT",
    "INVALID_AMOUNT": "AMOUNT_OUT_OF_RANGE",
    "UNSUPPORTED_CURRENCY": "UNSUPPORTED_CURRENCY",
    "ORIGINAL_NOT_FOUND": "ORIGINAL_NOT_FOUND",
    "ORIGINAL_NOT_SETTLED": "ORIGINAL_NOT_SETTLED",
    "NOT_RETURNABLE": "NOT_REFUNDABLE",
    "CURRENCY_MISMATCH": "CURRENCY_MISMATCH",
    "RETURN_EXCEEDS_ORIGINAL": "REFUND_EXCEEDS_ORIGINAL",
}

STATEMENT_COLUMNS = ("business_date", "instruction_id", "reference", "direction", "original_id", "amount",
                     "currency", "status", "code", "fee", "final_at")

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BANK_CODE = re.compile(r"[A-Za-z0-9]{2,16}")
_LAST4 = re.compile(r"[0-9]{4}")
_NUMBER = re.compile(r"[0-9]{6,34}")
_INT64_MAX = 2**63 - 1


def valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def valid_date(value: str) -> bool:
    return isinstance(value, str) and _DATE.fullmatch(value) is not None


class WireError(ValueError):
    """A message that does not have the rail's shape; the text names the field, never its value."""


@dataclass(frozen=True, slots=True)
class WireAccount:
    """An account as the rail names it. A collection's debtor may be named by bank, last four
    digits and holder name alone (the bank resolves it through the direct-debit mandate the
    customer signed); a credit needs the full number."""

    bank_code: str
    name: str
    number: str = ""
    last4: str = ""

    def __post_init__(self) -> None:
        if not self.last4 and self.number:
            object.__setattr__(self, "last4", self.number[-4:])

    def problem(self) -> str:
        """Why the bank could not use this account ('' when it can)."""
        if not _BANK_CODE.fullmatch(self.bank_code):
            return "bank_code must be 2..16 letters or digits"
        if not self.name.strip() or len(self.name) > 140:
            return "holder name must be 1..140 characters"
        if self.number and not _NUMBER.fullmatch(self.number):
            return "account number must be 6..34 digits"
        if not _LAST4.fullmatch(self.last4) or (self.number and self.number[-4:] != self.last4):
            return "last4 must be the account's last four digits"
        return ""

    def to_wire(self) -> dict[str, str]:
        out = {"bank_code": self.bank_code, "last4": self.last4, "name": self.name}
        if self.number:
            out["number"] = self.number
        return out

    def __repr__(self) -> str:  # account numbers stay out of logs
        return f"WireAccount(bank_code={self.bank_code!r}, last4={self.last4!r})"


def transfer_request(*, instruction_id: str, direction: str, amount: int, currency: str, debtor: WireAccount,
                     creditor: WireAccount, reference: str, description: str = "",
                     callback_url: str = "") -> bytes:
    assert direction in ("collect", "payout"), direction
    body: dict[str, Any] = {
        "instruction_id": instruction_id,
        "direction": direction,
        "amount": amount,
        "currency": currency,
        "debtor": debtor.to_wire(),
        "creditor": creditor.to_wire(),
        "end_to_end_id": reference,
    }
    if description:
        body["description"] = description
    if callback_url:
        body["callback_url"] = callback_url
    return _dump(body)


def return_request(*, return_id: str, amount: int, currency: str, reference: str, callback_url: str = "") -> bytes:
    body: dict[str, Any] = {"return_id": return_id, "amount": amount, "currency": currency, "end_to_end_id": reference}
    if callback_url:
        body["callback_url"] = callback_url
    return _dump(body)


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("the body is not JSON") from None


@dataclass(frozen=True, slots=True)
class Transfer:
    """The bank's transfer object (`GET /transfers/{id}`, the body of POST answers and callbacks)."""

    instruction_id: str
    reference: str
    direction: str
    amount: int
    currency: str
    status: str
    code: str = ""
    fee: int = 0
    original_id: str = ""

    @property
    def kind(self) -> str:
        return KIND_BY_DIRECTION[self.direction]


def parse_transfer(obj: Any) -> Transfer:
    if not isinstance(obj, dict):
        raise WireError("the transfer is not an object")
    return Transfer(
        instruction_id=_field(obj, "instruction_id", _ID),
        reference=_field(obj, "reference", _ID),
        direction=_choice(obj, "direction", DIRECTIONS),
        amount=_int(obj, "amount", low=1),
        currency=_field(obj, "currency", _CURRENCY),
        status=_text(obj, "status", 32),
        code=_text(obj, "code", 64, required=False),
        fee=_int(obj, "fee", low=0, required=False),
        original_id=_text(obj, "original_id", 64, required=False),
    )


def outcome_of(transfer: Transfer) -> ChannelResult:
    """The bank's state as our outcome: only SETTLED succeeds, only REJECTED/RETURNED fail."""
    if transfer.status == SETTLED:
        return ChannelResult(Outcome.SUCCEEDED, channel_code=SETTLED, channel_reference=transfer.reference,
                             fee=transfer.fee)
    if transfer.status == REJECTED:
        reason = REJECT_REASONS.get(transfer.code, REJECTED_UNMAPPED)
        return ChannelResult(Outcome.FAILED, reason, _code(transfer), transfer.reference)
    if transfer.status == RETURNED:
        reason = REJECT_REASONS.get(transfer.code, RETURNED_UNMAPPED)
        return ChannelResult(Outcome.FAILED, reason, _code(transfer), transfer.reference)
    # ACCEPTED, and any state this adapter was not written for: not final.
    return ChannelResult(Outcome.PENDING, "" if transfer.status == ACCEPTED else "UNMAPPED_STATE",
                         _code(transfer), transfer.reference)


def _code(transfer: Transfer) -> str:
    return f"{transfer.status}:{transfer.code}" if transfer.code else transfer.status


def parse_error(obj: Any) -> tuple[str, str]:
    """The bank's error object `{"error": {"code", "message"}}` as (code, message)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        raise WireError("the error is not an object")
    err = obj["error"]
    return _text(err, "code", 64), _text(err, "message", 500, required=False)


@dataclass(frozen=True, slots=True)
class Notification:
    event_id: str
    type: str
    transfer: Transfer


def parse_notification(obj: Any) -> Notification:
    if not isinstance(obj, dict):
        raise WireError("the notification is not an object")
    return Notification(event_id=_field(obj, "event_id", _ID), type=_text(obj, "type", 64),
                        transfer=parse_transfer(obj.get("transfer")))


def callback_event(notification: Notification) -> CallbackEvent:
    t = notification.transfer
    return CallbackEvent(instruction_id=t.instruction_id, result=outcome_of(t), kind=t.kind,
                         notification_id=notification.event_id)


def parse_statement(text: str, business_date: str) -> Iterator[StatementLine]:
    """The bank's CSV statement, one StatementLine per final transfer of that business day."""
    try:
        yield from _statement_lines(csv.reader(io.StringIO(text, newline="")), business_date)
    except csv.Error as exc:
        raise WireError(f"the statement is not CSV: {exc}") from None


def _statement_lines(reader: Iterator[list[str]], business_date: str) -> Iterator[StatementLine]:
    header = next(reader, None)
    if header is None:
        raise WireError("the statement has no header")
    columns = {name: i for i, name in enumerate(header)}
    missing = [c for c in STATEMENT_COLUMNS if c not in columns]
    if missing:
        raise WireError(f"the statement lacks columns {missing}")
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise WireError(f"statement line {number} has {len(row)} fields, the header {len(header)}")
        cell = {name: row[i] for name, i in columns.items()}
        try:
            transfer = parse_transfer({
                "instruction_id": cell["instruction_id"], "reference": cell["reference"],
                "direction": cell["direction"], "amount": _decimal(cell["amount"]), "currency": cell["currency"],
                "status": cell["status"], "code": cell["code"], "fee": _decimal(cell["fee"] or "0"),
                "original_id": cell["original_id"],
            })
        except WireError as exc:
            raise WireError(f"statement line {number}: {exc}") from None
        if not _DATE.fullmatch(cell["business_date"]) or cell["business_date"] != business_date:
            raise WireError(f"statement line {number} is not for {business_date}")
        if transfer.status == SETTLED:
            status = Outcome.SUCCEEDED
        elif transfer.status in (REJECTED, RETURNED):
            status = Outcome.FAILED
        else:
            # A statement books only final transfers; a line we cannot classify must stop
            # reconciliation, not vanish from it.
            raise WireError(f"statement line {number} has a state that is not final")
        yield StatementLine(business_date=business_date, instruction_id=transfer.instruction_id,
                            channel_reference=transfer.reference, kind=transfer.kind, amount=transfer.amount,
                            currency=transfer.currency, status=status, fee=transfer.fee)


def _decimal(text: str) -> int | str:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else text


def _field(obj: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WireError(f"field {name} is missing or malformed")
    return value


def _text(obj: Mapping[str, Any], name: str, max_len: int, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > max_len or (required and not value):
        raise WireError(f"field {name} is missing or malformed")
    return value


def _choice(obj: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = obj.get(name)
    if value not in choices:
        raise WireError(f"field {name} is not one of {choices}")
    return str(value)


def _int(obj: Mapping[str, Any], name: str, *, low: int, required: bool = True) -> int:
    value = obj.get(name)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _INT64_MAX:
        raise WireError(f"field {name} is missing or out of range")
    return value
