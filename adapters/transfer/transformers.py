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
from typing import IO, Any

from dualflow.adapters.contract import CallbackEvent, ChannelResult, Outcome, StatementLine, StatementRejected

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
    """The bank's CSV statement, one StatementLine per final transfer of that business day, all
    checked (the trailer included) before the first is yielded. Raises WireError (whose cause is
    the contract's StatementRejected, with the reason and the line number)."""
    lines: list[StatementLine] = []
    try:
        scan_statement(io.BytesIO(text.encode("utf-8")), business_date,
                       lambda *row: lines.append(StatementLine(business_date, *row[:5], _OUTCOME[row[5]], row[6])))
    except StatementRejected as exc:
        raise WireError(str(exc)) from exc
    yield from lines


_OUTCOME = {"SUCCEEDED": Outcome.SUCCEEDED, "FAILED": Outcome.FAILED}
TRAILER = "TRAILER"


def scan_statement(binary: IO[bytes], business_date: str, emit: Any) -> int:
    """Read a whole statement once: the header, every line, and the trailer `TRAILER,<lines>,<amount
    total>,<fee total>` that must end the file; `emit(instruction_id, reference, kind, amount,
    currency, status, fee)` per line (status SUCCEEDED or FAILED). Returns the line count. Raises
    contract.StatementRejected: TRUNCATED (no trailer, or the file ends inside a line) before
    BAD_ROW (the first) before WRONG_TOTALS. The reply's signature (checked by the adapter) is the
    checksum over the file. Line numbers count physical lines (the header is line 1)."""
    binary.seek(0, io.SEEK_END)
    ends_in_newline = binary.tell() > 0
    if ends_in_newline:
        binary.seek(-1, io.SEEK_END)
        ends_in_newline = binary.read(1) == b"\n"
    binary.seek(0)
    text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
    reader = csv.reader(text)
    bad: tuple[int, str] | None = None
    trailer: tuple[int, list[str]] | None = None
    after_trailer = count = amount_total = fee_total = last = 0
    columns: dict[str, int] = {}
    try:
        for row in reader:
            number = last = reader.line_num
            if not row:
                continue
            if trailer is not None:
                after_trailer = after_trailer or number
            elif not columns:
                columns = {name: i for i, name in enumerate(row)}
                missing = [c for c in STATEMENT_COLUMNS if c not in columns]
                if missing:
                    bad = (number, f"the header lacks columns {missing}")
                    break
            elif row[0] == TRAILER:
                trailer = (number, row)
            elif bad is None:
                try:
                    line = _statement_row(row, columns, business_date)
                except WireError as exc:
                    bad = (number, str(exc))
                else:
                    count += 1
                    amount_total += line[3]
                    fee_total += line[6]
                    emit(*line)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StatementRejected("BAD_ROW", reader.line_num + 1, f"not UTF-8 CSV ({exc.__class__.__name__})") from None
    finally:
        text.detach()
    if bad is not None and bad[0] == 1:
        raise StatementRejected("BAD_ROW", *bad)
    if not ends_in_newline:
        raise StatementRejected("TRUNCATED", last, "the file ends in the middle of a line")
    if trailer is None:
        raise StatementRejected("TRUNCATED", last + 1, "the statement ends without its trailer")
    if bad is not None:
        raise StatementRejected("BAD_ROW", *bad)
    if after_trailer:
        raise StatementRejected("BAD_ROW", after_trailer, "a line after the trailer")
    trailer_line, cells = trailer
    try:
        if len(cells) != 4 or not all(c.isascii() and c.isdigit() for c in cells[1:]):
            raise ValueError
        totals = (int(cells[1]), int(cells[2]), int(cells[3]))
    except ValueError:
        raise StatementRejected("BAD_ROW", trailer_line, "the trailer is not TRAILER,lines,amounts,fees") from None
    if totals != (count, amount_total, fee_total):
        raise StatementRejected("WRONG_TOTALS", trailer_line,
                                f"the trailer says {totals[0]} lines, amounts {totals[1]}, fees {totals[2]}; the "
                                f"statement has {count}, {amount_total}, {fee_total}")
    return count


def _statement_row(row: list[str], columns: dict[str, int], business_date: str) -> tuple[Any, ...]:
    if len(row) != len(columns):
        raise WireError(f"{len(row)} fields, the header {len(columns)}")
    cell = {name: row[i] for name, i in columns.items()}
    transfer = parse_transfer({
        "instruction_id": cell["instruction_id"], "reference": cell["reference"],
        "direction": cell["direction"], "amount": _decimal(cell["amount"]), "currency": cell["currency"],
        "status": cell["status"], "code": cell["code"], "fee": _decimal(cell["fee"] or "0"),
        "original_id": cell["original_id"],
    })
    if not _DATE.fullmatch(cell["business_date"]) or cell["business_date"] != business_date:
        raise WireError(f"the line is not for {business_date}")
    if transfer.status == SETTLED:
        status = "SUCCEEDED"
    elif transfer.status in (REJECTED, RETURNED):
        status = "FAILED"
    else:
        # A statement books only final transfers; a line we cannot classify must stop
        # reconciliation, not vanish from it.
        raise WireError("a state that is not final")
    return (transfer.instruction_id, transfer.reference, transfer.kind, transfer.amount, transfer.currency, status,
            transfer.fee)


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
