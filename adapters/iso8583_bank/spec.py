"""Our card bank's ISO 8583 dialect, declared as data: fields, codes and tables, no logic.

`SPEC` is a pyiso8583 specification (see `iso8583.specs`): ASCII MTI, binary bitmaps, ASCII
numeric and text fields with ASCII length prefixes, binary MAC. Each field also carries `kind`
(n, an, ans, xn, b), which pyiso8583 ignores and `codec` enforces after decoding, so a reply
with letters in an amount is a parse error, not a number.

Messages this channel uses (request -> reply):
- 0200 -> 0210 financial request: purchase (DE 3 = 000000) or refund (DE 3 = 200000);
- 0400 -> 0410 reversal of an authorization, DE 90 = original data elements;
- 0800 -> 0810 network management, DE 70: 001 sign-on, 301 echo, and 900 status query.

The status query is private: ISO 8583 has no standard "what became of transaction X". We send
0800 with DE 70 = 900 and DE 48 naming the instruction (II) and its kind (QK: pay, refund,
reverse), plus the RRN (OR) when known; for QK=reverse, II is the reversed payment's instruction
id (as in the 0400) or else OR its RRN. The bank answers 0810 from its book, with DE 39 the
response code that transaction stands at now (00, 05, 51, 09 while in progress, RV if it was
reversed, 25 when the bank has no record), DE 37 its RRN, DE 4 its amount and DE 28 its fee.
A network message keeps queries off the financial path: it books nothing and can never be
mistaken by the bank for a new authorization.

DE 48 (additional data, private) carries tag-length-value items: a 2-letter tag, a 3-digit
length, the value. Tags: II our instruction id (what the bank deduplicates on; for a reversal
or a query, the instruction it is about), PI our payment id, RI our refund id, OI the original
instruction id and OR the original RRN (refunds, reversals, queries), QK the queried kind.
The bank echoes II in every reply, so a reply is matched by STAN (DE 11) and then checked
against the instruction it answers.
"""

from __future__ import annotations

from typing import Any

from dualflow.adapters.contract import Outcome


def _f(kind: str, len_type: int, max_len: int, desc: str) -> dict[str, Any]:
    # len_type is the number of ASCII length digits (0: fixed, 2: LLVAR, 3: LLLVAR)
    return {"data_enc": "b" if kind == "b" else "ascii", "len_enc": "ascii", "len_type": len_type,
            "max_len": max_len, "desc": desc, "kind": kind}


SPEC: dict[str, dict[str, Any]] = {
    "h": _f("ans", 0, 0, "Message Header (none)"),
    "t": _f("n", 0, 4, "Message Type Identifier"),
    "p": _f("b", 0, 8, "Bitmap, Primary"),
    "1": _f("b", 0, 8, "Bitmap, Secondary"),
    "2": _f("n", 2, 19, "Primary Account Number"),
    "3": _f("n", 0, 6, "Processing Code"),
    "4": _f("n", 0, 12, "Amount, Transaction (minor units)"),
    "7": _f("n", 0, 10, "Transmission Date and Time (MMDDhhmmss, UTC)"),
    "11": _f("n", 0, 6, "Systems Trace Audit Number"),
    "14": _f("n", 0, 4, "Date, Expiration (YYMM)"),
    "28": _f("xn", 0, 9, "Amount, Transaction Fee (C/D + n8)"),
    "37": _f("an", 0, 12, "Retrieval Reference Number"),
    "38": _f("an", 0, 6, "Authorization Identification Response"),
    "39": _f("an", 0, 2, "Response Code"),
    "41": _f("ans", 0, 8, "Card Acceptor Terminal Identification"),
    "42": _f("ans", 0, 15, "Card Acceptor Identification Code"),
    "48": _f("ans", 3, 999, "Additional Data, Private (TLV: II, PI, RI, OI, OR, QK)"),
    "49": _f("n", 0, 3, "Currency Code, Transaction (ISO 4217 numeric)"),
    "64": _f("b", 0, 8, "Message Authentication Code"),
    "70": _f("n", 0, 3, "Network Management Information Code"),
    "90": _f("n", 0, 42, "Original Data Elements"),
    "128": _f("b", 0, 8, "Message Authentication Code (secondary bitmap present)"),
}

MAC_LEN = 8

# MTIs
PURCHASE_OR_REFUND = "0200"
REVERSAL = "0400"
NETWORK = "0800"
RESPONSE_MTI = {"0200": "0210", "0400": "0410", "0800": "0810"}

# DE 3 processing codes (first two digits: transaction type; then from and to account: default)
PROCESSING_PURCHASE = "000000"
PROCESSING_REFUND = "200000"

# DE 70 network management codes
SIGN_ON = "001"
ECHO = "301"
STATUS_QUERY = "900"  # private: see the module docstring

# DE 48 tags
TAG_INSTRUCTION = "II"
TAG_PAYMENT = "PI"
TAG_REFUND = "RI"
TAG_ORIGINAL_INSTRUCTION = "OI"
TAG_ORIGINAL_REFERENCE = "OR"
TAG_QUERY_KIND = "QK"

# ISO 4217 alphabetic -> numeric (DE 49). A currency not here cannot be sent.
CURRENCY_NUMERIC: dict[str, str] = {
    "AUD": "036", "CAD": "124", "CHF": "756", "CNY": "156", "EUR": "978", "GBP": "826",
    "HKD": "344", "JPY": "392", "KRW": "410", "SGD": "702", "USD": "840",
}
CURRENCY_ALPHA: dict[str, str] = {v: k for k, v in CURRENCY_NUMERIC.items()}

# DE 39 response code -> (outcome, our reason). Only an explicit answer is final; a code not in
# this table is PENDING (the contract: an unknown code is never a failure).
RESPONSE_CODES: dict[str, tuple[Outcome, str]] = {
    # Approved: the issuer authorized and the bank booked it.
    "00": (Outcome.SUCCEEDED, ""),
    # Do not honour: the issuer's explicit refusal; nothing was booked.
    "05": (Outcome.FAILED, "CARD_DECLINED"),
    # Request in progress: accepted, the issuer's answer comes later; query until final.
    "09": (Outcome.PENDING, "IN_PROGRESS"),
    # Invalid transaction: an explicit refusal (e.g. a refund of a payment the bank never
    # approved); nothing was booked.
    "12": (Outcome.FAILED, "INVALID_TRANSACTION"),
    # Invalid amount: an explicit refusal (e.g. refunds above what was captured).
    "13": (Outcome.FAILED, "INVALID_AMOUNT"),
    # Unable to locate original (our query's "no record"): the request may still be on its
    # way or may never have arrived. Not a failure: query again; the dispatcher reverses
    # after its window, and the reversal makes "never" final.
    "25": (Outcome.UNKNOWN, "NOT_FOUND"),
    # Insufficient funds: the issuer's explicit refusal.
    "51": (Outcome.FAILED, "INSUFFICIENT_FUNDS"),
    # Security violation: the bank could not verify our MAC and did not process the request.
    # Explicit, and the bank books nothing, so it is a failure (reason says why).
    "63": (Outcome.FAILED, "MAC_REJECTED"),
    # Response received too late: the switch gave up waiting for the issuer, who may still
    # have authorized. Whether money moved is unknown: query, never resend.
    "68": (Outcome.UNKNOWN, "RESPONSE_TOO_LATE"),
    # Issuer or switch inoperative: the request may have reached the issuer before it failed.
    # Treated as unknown rather than a decline: a query settles it at the cost of polling,
    # a wrong FAILED would lose track of money that moved.
    "91": (Outcome.UNKNOWN, "ISSUER_UNAVAILABLE"),
    # Duplicate transmission: the bank already has this instruction id and the original
    # stands. The adapter queries the original and answers with that.
    "94": (Outcome.UNKNOWN, "DUPLICATE_TRANSMISSION"),
    # System malfunction: the bank failed somewhere in processing, maybe after booking.
    "96": (Outcome.UNKNOWN, "SYSTEM_MALFUNCTION"),
    # Private (status query replies only): the transaction was reversed or voided by our
    # 0400; no money stays moved.
    "RV": (Outcome.FAILED, "REVERSED"),
}
