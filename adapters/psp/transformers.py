"""The PSP's own request and answer shapes, and pure conversions to our outcomes.

No I/O here: request bodies from instructions, `trade_state` / refund `status` / error `code`
to ChannelResult, decrypted callback resources to CallbackEvents, and the daily bill (CSV) to
StatementLines. Only an explicit success and an explicit decline are final; every state or
code this module does not know maps to PENDING (or UNKNOWN on a query), never to FAILED.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import IO, Any

from dualflow.adapters.contract import CallbackEvent, ChannelResult, Outcome, StatementLine, StatementRejected
from dualflow.core.money import exponent

# out_trade_no / out_refund_no: WeChat allows 6..32 of these characters.
TRADE_NO = re.compile(r"^[A-Za-z0-9_\-|*]{6,32}$")
BILL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# trade_state -> (outcome, our reason). REFUND: the payment happened and a refund exists.
TRADE_STATES: dict[str, tuple[Outcome, str]] = {
    "SUCCESS": (Outcome.SUCCEEDED, ""),
    "REFUND": (Outcome.SUCCEEDED, ""),
    "NOTPAY": (Outcome.PENDING, "NOT_PAID_YET"),
    "USERPAYING": (Outcome.PENDING, "USER_PAYING"),
    "PAYERROR": (Outcome.FAILED, "PAYMENT_ERROR"),  # the error code refines the reason
    "CLOSED": (Outcome.FAILED, "CLOSED"),
    "REVOKED": (Outcome.FAILED, "REVOKED"),
}

# The code a PAYERROR carries (our mock sets `payerror_code`) -> our reason.
PAYERROR_REASONS: dict[str, str] = {
    "NOTENOUGH": "INSUFFICIENT_FUNDS",
    "TRADE_ERROR": "CARD_DECLINED",
    "BANKERROR": "CARD_DECLINED",
    "RULE_LIMIT": "LIMIT_EXCEEDED",
    "ACCOUNT_ERROR": "ACCOUNT_BLOCKED",
}

# Refund status -> (outcome, reason). ABNORMAL: the refund bounced at the user's bank and waits
# for a person at the PSP; it is not final, so it stays PENDING with a reason that says why.
REFUND_STATES: dict[str, tuple[Outcome, str]] = {
    "SUCCESS": (Outcome.SUCCEEDED, ""),
    "PROCESSING": (Outcome.PENDING, "REFUND_PROCESSING"),
    "ABNORMAL": (Outcome.PENDING, "REFUND_ABNORMAL"),
    "CLOSED": (Outcome.FAILED, "REFUND_CLOSED"),
}

# Error `code` of a signed 4xx to a pay or refund request -> (outcome, reason). Codes that say
# "that instruction already exists" are not here: the adapter queries and the original stands.
ERROR_CODES: dict[str, tuple[Outcome, str]] = {
    "PARAM_ERROR": (Outcome.FAILED, "INVALID_REQUEST"),
    "INVALID_REQUEST": (Outcome.FAILED, "INVALID_REQUEST"),
    "APPID_MCHID_NOT_MATCH": (Outcome.FAILED, "INVALID_REQUEST"),
    "MCH_NOT_EXISTS": (Outcome.FAILED, "MERCHANT_NOT_FOUND"),
    "NO_AUTH": (Outcome.FAILED, "NOT_PERMITTED"),
    "SIGN_ERROR": (Outcome.FAILED, "SIGNATURE_REJECTED"),  # the PSP could not verify us: not processed
    "NOTENOUGH": (Outcome.FAILED, "INSUFFICIENT_FUNDS"),
    "NOT_ENOUGH": (Outcome.FAILED, "INSUFFICIENT_FUNDS"),  # refunds: the merchant's balance
    "TRADE_ERROR": (Outcome.FAILED, "CARD_DECLINED"),
    "RULE_LIMIT": (Outcome.FAILED, "LIMIT_EXCEEDED"),
    "ACCOUNT_ERROR": (Outcome.FAILED, "ACCOUNT_BLOCKED"),
    "USER_ACCOUNT_ABNORMAL": (Outcome.FAILED, "ACCOUNT_BLOCKED"),
    "RESOURCE_NOT_EXISTS": (Outcome.FAILED, "ORIGINAL_NOT_FOUND"),  # refund of a payment the PSP lacks
    # The PSP is busy or failing: it may or may not have acted. Query, never resend.
    "SYSTEM_ERROR": (Outcome.UNKNOWN, "CHANNEL_ERROR"),
    "BANK_ERROR": (Outcome.UNKNOWN, "CHANNEL_ERROR"),
    "FREQUENCY_LIMITED": (Outcome.UNKNOWN, "RATE_LIMITED"),
    "ORDER_NOT_EXIST": (Outcome.UNKNOWN, "NOT_FOUND"),
}
DUPLICATE_CODES = frozenset({"ORDERPAID", "OUT_TRADE_NO_USED", "ORDER_CLOSED"})


def pay_body(mch_id: str, instruction_id: str, payment_id: str, merchant_id: str, amount: int, currency: str,
             description: str, notify_url: str) -> dict[str, Any]:
    """A native-like order. `attach` carries our ids back in callbacks and bills."""
    body: dict[str, Any] = {
        "mchid": mch_id,
        "out_trade_no": instruction_id,
        "description": (description or "dualflow payment")[:127],
        "attach": f"{payment_id}|{merchant_id}"[:128],
        "amount": {"total": amount, "currency": currency},
    }
    if notify_url:
        body["notify_url"] = notify_url
    return body


def refund_body(instruction_id: str, original_instruction_id: str, original_reference: str, amount: int,
                currency: str, notify_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "out_trade_no": original_instruction_id,
        "out_refund_no": instruction_id,
        "amount": {"refund": amount, "currency": currency},
    }
    if original_reference:
        body["transaction_id"] = original_reference
    if notify_url:
        body["notify_url"] = notify_url
    return body


def transaction_result(tx: Mapping[str, Any]) -> ChannelResult:
    """A transaction object (reply or decrypted callback) -> our result. Unknown states: PENDING."""
    state = str(tx.get("trade_state", ""))
    outcome, reason = TRADE_STATES.get(state, (Outcome.PENDING, "UNMAPPED_STATE"))
    if state == "PAYERROR":
        reason = PAYERROR_REASONS.get(str(tx.get("payerror_code", "")), reason)
    reference = tx.get("transaction_id")
    return ChannelResult(outcome, reason, channel_code=state,
                         channel_reference=reference if isinstance(reference, str) else "")


def refund_result(refund: Mapping[str, Any]) -> ChannelResult:
    status = str(refund.get("status", refund.get("refund_status", "")))
    outcome, reason = REFUND_STATES.get(status, (Outcome.PENDING, "UNMAPPED_STATE"))
    reference = refund.get("refund_id")
    return ChannelResult(outcome, reason, channel_code=status,
                         channel_reference=reference if isinstance(reference, str) else "")


def error_result(code: str) -> ChannelResult:
    """A signed 4xx's error code -> result. An unmapped code is PENDING, never a failure."""
    outcome, reason = ERROR_CODES.get(code, (Outcome.PENDING, "UNMAPPED_CODE"))
    return ChannelResult(outcome, reason, channel_code=code)


def amount_matches(tx: Mapping[str, Any], amount: int, currency: str) -> bool:
    got = tx.get("amount")
    if not isinstance(got, Mapping):
        return False
    total = got.get("total")
    return type(total) is int and total == amount and got.get("currency", currency) == currency


def callback_event(notification_id: str, event_type: str, original_type: str,
                   resource: Mapping[str, Any]) -> CallbackEvent:
    """A decrypted resource -> CallbackEvent; raises ValueError when it is not one we know."""
    kind = {"transaction": "pay", "refund": "refund"}.get(original_type)
    said = "pay" if event_type.startswith("TRANSACTION.") else "refund" if event_type.startswith("REFUND.") else None
    if kind is None:
        kind = said
    elif said is not None and said != kind:
        raise ValueError(f"event type {event_type!r} contradicts resource type {original_type!r}")
    if kind == "pay":
        out_trade_no = resource.get("out_trade_no")
        if not isinstance(out_trade_no, str) or not TRADE_NO.match(out_trade_no):
            raise ValueError("transaction resource without a valid out_trade_no")
        if not isinstance(resource.get("trade_state"), str):
            raise ValueError("transaction resource without a trade_state")
        return CallbackEvent(out_trade_no, transaction_result(resource), kind="pay", notification_id=notification_id)
    if kind == "refund":
        out_refund_no = resource.get("out_refund_no")
        if not isinstance(out_refund_no, str) or not TRADE_NO.match(out_refund_no):
            raise ValueError("refund resource without a valid out_refund_no")
        if not isinstance(resource.get("refund_status", resource.get("status")), str):
            raise ValueError("refund resource without a status")
        return CallbackEvent(out_refund_no, refund_result(resource), kind="refund", notification_id=notification_id)
    raise ValueError(f"unknown notification type {original_type!r}/{event_type!r}")


# ---- the daily trade bill (bill_type=ALL), WeChat's CSV: every value prefixed with a backquote,
# amounts in major units ("10.00"), fees with five decimals, then a summary header and line.

BILL_COLUMNS = ("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
                "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
                "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
                "手续费", "费率", "订单金额", "申请退款金额", "费率备注")
SUMMARY_COLUMNS = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                   "申请退款总金额")
_REFUND_LINE_STATUS = {"SUCCESS": Outcome.SUCCEEDED, "CLOSED": Outcome.FAILED, "FAIL": Outcome.FAILED}


class BillError(StatementRejected):
    """The bill does not parse or its summary does not add up: do not reconcile against it.
    `reason` and `line_number` as in contract.StatementRejected."""


def _cell(value: str) -> str:
    value = value.strip()
    return value[1:] if value.startswith("`") else value


def to_minor(text: str, currency: str) -> int:
    """Major units as printed ("10.00", "0.06000") -> minor units, rounded half up."""
    try:
        value = Decimal(text) * (10 ** exponent(currency))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not an amount: {text!r} ({exc})") from None
    if not value.is_finite():
        raise ValueError(f"not an amount: {text!r}")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_bill(text: str, business_date: str) -> Iterator[StatementLine]:
    """The bill's lines as StatementLines, all checked (summary included) before the first is
    yielded; an empty text is a day without business. Raises BillError."""
    if not text.strip():
        return
    lines: list[StatementLine] = []
    scan_bill(io.BytesIO(text.encode("utf-8")), business_date,
              lambda *row: lines.append(StatementLine(business_date, *row[:5], _LINE_STATUS[row[5]], row[6])))
    yield from lines


_LINE_STATUS = {"SUCCEEDED": Outcome.SUCCEEDED, "FAILED": Outcome.FAILED}


def scan_bill(binary: IO[bytes], business_date: str, emit: Any) -> int:
    """Read a whole bill once, checking every line and the summary; `emit(out_no, psp_no, kind,
    amount, currency, status, fee)` for each booked line (status SUCCEEDED or FAILED; a refund
    still processing is counted by the summary but not booked yet). Returns the booked lines.
    Reports, in this order: TRUNCATED (no summary, or the file ends inside a line), BAD_ROW (the
    first), WRONG_TOTALS. Line numbers count physical lines (the header is line 1)."""
    binary.seek(0, io.SEEK_END)
    size = binary.tell()
    if size:
        binary.seek(-1, io.SEEK_END)
        ends_in_newline = binary.read(1) == b"\n"
    else:
        ends_in_newline = False
    binary.seek(0)
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    bad: tuple[int, str] | None = None
    booked = rows_seen = 0
    pay_total = refund_total = fee_total = Decimal(0)
    summary: tuple[int, list[str]] | None = None
    col: dict[str, int] = {}
    last_line = 0
    try:
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                last_line = number
                continue
            if not col:
                header = tuple(cell.strip() for cell in row)
                if header[: len(BILL_COLUMNS)] != BILL_COLUMNS:
                    bad = (number, "the header is not the trade bill's")
                    break
                col = {name: i for i, name in enumerate(header)}
            elif row[0].strip() == SUMMARY_COLUMNS[0]:
                values = next(reader, None)
                summary = (reader.line_num, [_cell(c) for c in values or ()])
                last_line = reader.line_num
                break
            else:
                rows_seen += 1
                if bad is None:
                    try:
                        line = _bill_line(row, col)
                    except ValueError as exc:
                        bad = (number, str(exc))
                    else:
                        pay_total += line[0]
                        refund_total += line[1]
                        fee_total += line[2]
                        if line[3] is not None:
                            booked += 1
                            emit(*line[3])
            last_line = number
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BillError("BAD_ROW", reader.line_num + 1, f"not UTF-8 CSV ({exc.__class__.__name__})") from None
    finally:
        text.detach()
    if summary is None and bad is not None and bad[0] == 1:
        raise BillError("BAD_ROW", *bad)
    if not ends_in_newline:
        raise BillError("TRUNCATED", last_line, "the file ends in the middle of a line")
    if summary is None or not summary[1]:
        raise BillError("TRUNCATED", last_line + 1, "the bill ends without its summary")
    if bad is not None:
        raise BillError("BAD_ROW", *bad)
    summary_line, values = summary
    try:
        count, pay_sum, refund_sum, fee_sum = int(values[0]), Decimal(values[1]), Decimal(values[2]), \
            Decimal(values[4])
    except (IndexError, ValueError, InvalidOperation):
        raise BillError("BAD_ROW", summary_line, "the summary does not parse") from None
    if (count, pay_sum, refund_sum, fee_sum) != (rows_seen, pay_total, refund_total, fee_total):
        raise BillError("WRONG_TOTALS", summary_line,
                        f"the summary ({count} lines, {pay_sum} paid, {refund_sum} refunded, {fee_sum} fees) does "
                        f"not match its lines ({rows_seen}, {pay_total}, {refund_total}, {fee_total})")
    return booked


def _bill_line(row: list[str], col: dict[str, int]) -> tuple[Decimal, Decimal, Decimal, tuple[Any, ...] | None]:
    """(paid, refunded, fee as printed, the booked line or None) of one detail row; ValueError."""
    if len(row) < len(BILL_COLUMNS):
        raise ValueError(f"{len(row)} columns, the header has {len(BILL_COLUMNS)}")
    cells = [_cell(c) for c in row]
    currency, state = cells[col["货币种类"]], cells[col["交易状态"]]
    try:
        fee_text = cells[col["手续费"]] or "0"
        fee_value, fee = Decimal(fee_text), to_minor(fee_text, currency)
        if state == "REFUND":
            refund_text = cells[col["退款金额"]]
            status = _REFUND_LINE_STATUS.get(cells[col["退款状态"]])
            line = None if status is None else (cells[col["商户退款单号"]], cells[col["微信退款单号"]], "refund",
                                                 to_minor(refund_text, currency), currency, status.value, fee)
            return Decimal(0), Decimal(refund_text), fee_value, line
        if state == "SUCCESS":
            amount_text = cells[col["应结订单金额"]]
            return Decimal(amount_text), Decimal(0), fee_value, (
                cells[col["商户订单号"]], cells[col["微信订单号"]], "pay", to_minor(amount_text, currency), currency,
                "SUCCEEDED", fee)
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"not an amount or currency ({exc.__class__.__name__})") from None
    raise ValueError(f"unknown 交易状态 {state!r}")
