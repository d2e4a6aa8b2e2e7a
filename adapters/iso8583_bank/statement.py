"""The card bank's daily settlement file: format, MAC, and the verifying reader.

In real life an SFTP file; here the bank's `GET /statement?date=` admin endpoint. Plain
comma-separated UTF-8 lines ending in "\\n", no quoting (no field may hold a comma, a quote or a
line end: a fixed-format bank file, not general CSV):

    business_date,instruction_id,reference,kind,amount,currency,status,fee          (line 1)
    2024-01-02,pay_...-1,000012345678,pay,1999,CNY,SUCCEEDED,11                      (one per booking)
    TRAILER,<records>,<amount total>,<fee total>,<MAC>                               (last line)

`kind` is pay, refund or reverse; `status` SUCCEEDED or FAILED; amounts and fees are integers in
minor units. The trailer counts the detail lines and sums their amounts and fees (control totals,
minor units summed across currencies: a check, not money). The MAC is AES-CMAC (RFC 4493, 32
upper-case hex digits) over every byte of the file before it, i.e. up to and including the comma
that precedes it, under the statement key: AES-CMAC(channel MAC key, "DUALFLOW SETTLEMENT FILE"),
so the file and the ISO 8583 messages never share a key.

`scan` reads a file once and checks everything; when several things are wrong it reports, in this
order, TRUNCATED (no trailer as the last, complete line), BAD_CHECKSUM, BAD_ROW (the first one),
WRONG_TOTALS: the file's integrity before its content.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from dualflow.adapters.contract import StatementRejected
from dualflow.adapters.statements import Spool

HEADER = "business_date,instruction_id,reference,kind,amount,currency,status,fee"
HEADER_LINE = (HEADER + "\n").encode()
TRAILER = b"TRAILER,"
KEY_LABEL = b"DUALFLOW SETTLEMENT FILE"
KINDS = frozenset({"pay", "refund", "reverse"})
STATUSES = frozenset({"SUCCEEDED", "FAILED"})
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_DIGITS = 18  # below 2^63
_MAC_BLOCK = 1 << 20


def cmac(key: bytes, data: bytes) -> bytes:
    c = CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def statement_key(mac_key: bytes) -> bytes:
    return cmac(mac_key, KEY_LABEL)


Emit = Callable[[str, str, str, int, str, str, int], Any]


def scan(binary: IO[bytes], business_date: str, key: bytes, emit: Emit) -> int:
    """Check every line of a settlement file, its trailer and its MAC, calling `emit(instruction_id,
    reference, kind, amount, currency, status, fee)` for each detail line in order; returns how
    many. Raises StatementRejected. `key` is the statement key (`statement_key`)."""
    bad: tuple[int, str] | None = None
    count = amount_total = fee_total = 0
    number = offset = 0
    trailer: tuple[int, int, bytes] | None = None  # (line number, offset of the MAC, the line)
    after_trailer = 0
    ended = True
    currency_ok = _CURRENCY.fullmatch
    for raw in binary:
        number += 1
        ended = raw.endswith(b"\n")
        if not ended:
            break
        if trailer is not None:
            after_trailer = after_trailer or number
        elif number == 1:
            if raw != HEADER_LINE:
                bad = bad or (1, "the header is not " + HEADER)
        elif raw.startswith(TRAILER):
            trailer = (number, offset + raw.rfind(b",") + 1, raw)
        elif bad is None:
            try:
                d, iid, ref, kind, amount, currency, status, fee = raw[:-1].decode("utf-8").split(",")
            except (UnicodeDecodeError, ValueError):
                bad = (number, "not 8 comma-separated UTF-8 fields")
            else:
                if d != business_date:
                    bad = (number, f"business date {d!r} is not {business_date}")
                elif not iid or kind not in KINDS or status not in STATUSES or not currency_ok(currency):
                    bad = (number, "instruction id, kind, currency or status is not valid")
                elif not (amount.isdigit() and fee.isdigit() and amount.isascii() and fee.isascii()
                          and len(amount) <= _MAX_DIGITS and len(fee) <= _MAX_DIGITS):
                    bad = (number, "amount and fee must be non-negative integers (minor units)")
                else:
                    a, f = int(amount), int(fee)
                    count += 1
                    amount_total += a
                    fee_total += f
                    emit(iid, ref, kind, a, currency, status, f)
        offset += len(raw)
    if not ended:
        raise StatementRejected("TRUNCATED", number, "the file ends in the middle of a line")
    if trailer is None:
        raise StatementRejected("TRUNCATED", number + 1, "the file ends without its trailer")
    trailer_line, mac_at, raw_trailer = trailer
    expected = _mac(binary, mac_at, key)
    given = raw_trailer[raw_trailer.rfind(b",") + 1:].strip()
    if not hmac.compare_digest(given.upper(), expected.hex().upper().encode()):
        raise StatementRejected("BAD_CHECKSUM", trailer_line, "the trailer's MAC does not verify")
    if bad is not None:
        raise StatementRejected("BAD_ROW", *bad)
    if after_trailer:
        raise StatementRejected("BAD_ROW", after_trailer, "a line after the trailer")
    try:
        _, records, amounts, fees, _mac_hex = raw_trailer.decode("ascii").split(",")
        totals = (int(records), int(amounts), int(fees))
    except ValueError:
        raise StatementRejected("BAD_ROW", trailer_line, "the trailer is not TRAILER,records,amounts,fees,mac") \
            from None
    if totals != (count, amount_total, fee_total):
        raise StatementRejected("WRONG_TOTALS", trailer_line,
                                f"the trailer says {totals[0]} lines, amounts {totals[1]}, fees {totals[2]}; the "
                                f"file has {count}, {amount_total}, {fee_total}")
    return count


def _mac(binary: IO[bytes], length: int, key: bytes) -> bytes:
    """AES-CMAC of the file's first `length` bytes, read again in large blocks (C speed)."""
    c = CMAC(algorithms.AES(key))
    binary.seek(0)
    left = length
    while left > 0:
        block = binary.read(min(_MAC_BLOCK, left))
        if not block:
            break
        c.update(block)
        left -= len(block)
    return c.finalize()


def read_statement(binary: IO[bytes], business_date: str, key: bytes) -> Spool:
    """Verify a whole settlement file and spool its lines; the caller streams `spool.lines()` and
    closes the spool. Raises StatementRejected (and spools nothing usable) when it does not verify."""
    spool = Spool(business_date)
    try:
        scan(binary, business_date, key, spool.add)
    except BaseException:
        spool.close()
        raise
    return spool


def render(rows: list[tuple[str, str, str, str, int, str, str, int]], key: bytes) -> bytes:
    """A settlement file for these rows (business_date, instruction id, reference, kind, amount,
    currency, status, fee): for tests and the bench. The mock bank writes its own."""
    body = HEADER_LINE + b"".join(",".join(map(str, r)).encode() + b"\n" for r in rows)
    amounts = sum(r[4] for r in rows if isinstance(r[4], int))  # a garbled test row counts for nothing
    head = body + f"TRAILER,{len(rows)},{amounts},{sum(r[7] for r in rows)},".encode()
    return head + cmac(key, head).hex().upper().encode() + b"\n"
