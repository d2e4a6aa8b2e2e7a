"""The mock bank's book and decisions: what it really did for each instruction, and what it answers.

No sockets here (`server.py` owns them). Every decision that is random comes from `draw()`,
one seeded RNG drawn in arrival order, so a run with the same seed and the same traffic
reproduces.

The book has one entry per (instruction id, kind). Statuses: SUCCEEDED, FAILED, PENDING
(answered 09 "request in progress", final after `settle_after_ms`), REVERSED (approved, then
undone by a 0400), VOID (a 0400 arrived before the payment was approved, or while it was still
pending: it will never be approved; a late 0200 for it gets 94). A reversal also books a
`reverse` entry whose `effect` says what it undid (reversed, voided, nothing).

Card-bank choices for the uniform profile:
- `pending_rate`: the bank answers 09 (request in progress) and books the outcome it drew as
  final `settle_after_ms` later; queries answer 09 until then. (Not 68/91: those say the
  answer is unknown, not that the request is accepted.)
- `timeout_rate`: not processed, no reply. `lost_reply_rate`: booked, no reply.
  `late_reply_ms`: every reply waits that much more (past the adapter's timeout it is a lost
  reply the adapter must not mistake for another). `bad_signature_rate`: the reply's MAC is
  corrupted. `outage`: the listening socket is closed and open connections are cut, so new
  connections are refused. `duplicate_callback_rate` is accepted and ignored: card banks do
  not call back.
- `phantom_amount`: the bank books one approved payment of that amount nobody sent (an
  invented transaction, for reconciliation tests); the field reads back 0.
- `balance_offset`: added to every balance the bank reports (minor units, may be negative), a
  drifted book for reconciliation's balance drift tests.
- A request with a bad MAC is answered 63 (security violation), properly MACed, and not
  booked. Latency and faults apply to financial messages and status queries; sign-on and echo
  are answered at once by the bank's front end (unless `outage`).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from .wire import aes_cmac, tlv_build

# ISO 4217 numeric -> alphabetic, the bank's own table.
CURRENCIES = {"036": "AUD", "124": "CAD", "756": "CHF", "156": "CNY", "978": "EUR", "826": "GBP",
              "344": "HKD", "392": "JPY", "410": "KRW", "702": "SGD", "840": "USD"}

STATEMENT_HEADER = ["business_date", "instruction_id", "reference", "kind", "amount", "currency", "status", "fee"]
STATEMENT_FAULTS = ("", "bad_row", "wrong_totals", "truncated", "bad_checksum")


@dataclass
class Profile:
    latency_ms: int = 0
    jitter_ms: int = 0
    decline_rate: float = 0.0
    insufficient_funds_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_reply_rate: float = 0.0
    late_reply_ms: int = 0
    pending_rate: float = 0.0
    settle_after_ms: int = 1_000
    duplicate_callback_rate: float = 0.0
    bad_signature_rate: float = 0.0
    outage: bool = False
    fee_fixed: int = 0
    fee_bps: int = 0
    statement_fault: str = ""
    # Book one approved payment of this amount (CNY) that nobody sent: it shows on the statement and
    # in the book, never in a reply (reconciliation must find it MISSING_INTERNALLY). Reads back 0.
    phantom_amount: int = 0
    balance_offset: int = 0  # added to every balance reported: a drifted book (may be negative)

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial profile; validates everything before changing anything."""
        known = {f.name: f.type for f in fields(self)}
        staged: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown profile field {name!r}")
            if name == "statement_fault":
                if value not in STATEMENT_FAULTS:
                    raise ValueError(f"statement_fault must be one of {STATEMENT_FAULTS}")
            elif name == "outage":
                if not isinstance(value, bool):
                    raise ValueError("outage must be true or false")
            elif name == "balance_offset":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError("balance_offset must be an integer (minor units)")
            elif name.endswith("_rate"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ValueError(f"{name} must be a number in 0..1")
                value = float(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name} must be a non-negative integer")
            staged[name] = value
        for name, value in staged.items():
            setattr(self, name, value)

    def fee_for(self, amount: int) -> int:
        return self.fee_fixed + (amount * self.fee_bps + 5_000) // 10_000


@dataclass
class Draws:
    """Everything random about one request, drawn at once when it arrives."""

    delay_s: float
    timeout: bool
    lost: bool
    bad_mac: bool
    decline: bool
    insufficient: bool
    pending: bool
    auth_code: str


@dataclass
class Entry:
    instruction_id: str
    kind: str  # pay | refund | reverse
    amount: int
    currency: str
    status: str
    reference: str
    fee: int
    business_date: str
    response_code: str
    auth_code: str = ""
    payment_id: str = ""
    original_reference: str = ""
    effect: str = ""  # reverse entries: reversed | voided | nothing
    card: str = field(default="", repr=False)  # fingerprint, for duplicate checks; never the number
    final_code: str = ""
    settle_at: float = 0.0

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        for private in ("card", "final_code", "settle_at"):
            out.pop(private)
        return out


@dataclass
class Stats:
    connections: int = 0
    sign_ons: int = 0
    echoes: int = 0
    queries: int = 0
    requests: int = 0
    duplicates: int = 0
    bad_macs: int = 0
    unreadable: int = 0
    dropped: int = 0  # not answered on purpose (timeout_rate, lost_reply_rate)


class Bank:
    def __init__(self, seed: int, profile: Profile | None = None) -> None:
        self.rng = random.Random(seed)
        self.profile = profile or Profile()
        self.book: dict[tuple[str, str], Entry] = {}
        self.by_reference: dict[str, Entry] = {}
        self.stats = Stats()
        self._pending: list[Entry] = []  # entries answered 09, until they settle
        self._refunds: dict[str, list[Entry]] = {}  # original reference -> its refunds
        self._rrn = self.rng.randrange(10_000, 99_999) * 10_000_000

    # ---- randomness and time
    def draw(self) -> Draws:
        p, r = self.profile, self.rng
        return Draws(
            delay_s=(p.latency_ms + (r.random() * p.jitter_ms if p.jitter_ms else 0.0)) / 1000,
            timeout=r.random() < p.timeout_rate,
            lost=r.random() < p.lost_reply_rate,
            bad_mac=r.random() < p.bad_signature_rate,
            decline=r.random() < p.decline_rate,
            insufficient=r.random() < p.insufficient_funds_rate,
            pending=r.random() < p.pending_rate,
            auth_code=f"{r.randrange(1_000_000):06d}",
        )

    def _next_rrn(self) -> str:
        self._rrn += 1
        return f"{self._rrn % 10**12:012d}"

    @staticmethod
    def today() -> str:
        return datetime.now(timezone.utc).date().isoformat()

    def settle_due(self) -> None:
        if not self._pending:
            return
        now = time.monotonic()
        for entry in list(self._pending):
            if entry.status != "PENDING":  # voided by a reversal meanwhile
                self._pending.remove(entry)
            elif entry.settle_at <= now:
                entry.status = "SUCCEEDED" if entry.final_code == "00" else "FAILED"
                entry.response_code = entry.final_code
                self._pending.remove(entry)

    def _book(self, entry: Entry) -> Entry:
        self.book[(entry.instruction_id, entry.kind)] = entry
        if entry.status == "PENDING":
            self._pending.append(entry)
        if entry.kind == "refund":
            self._refunds.setdefault(entry.original_reference, []).append(entry)
        if entry.reference:
            self.by_reference[entry.reference] = entry
        return entry

    # ---- replies (field number -> value; the server adds the MAC)
    @staticmethod
    def _echo(request: dict[int, str | bytes], *numbers: int) -> dict[int, str | bytes]:
        return {n: request[n] for n in numbers if n in request}

    def _financial_reply(self, request: dict[int, str | bytes], code: str, entry: Entry | None,
                         tlv: dict[str, str]) -> dict[int, str | bytes]:
        reply = self._echo(request, 3, 4, 7, 11, 41, 42, 49)
        reply[39] = code
        reply[48] = tlv_build({"II": tlv.get("II", "")})
        if entry is not None and code != "94":
            reply[37] = entry.reference
            if entry.auth_code and code == "00":
                reply[38] = entry.auth_code
            if entry.fee:
                reply[28] = f"D{entry.fee:08d}"
        return reply

    def _state_code(self, entry: Entry) -> str:
        if entry.status == "SUCCEEDED":
            return "00"
        if entry.status == "PENDING":
            return "09"
        if entry.status in ("REVERSED", "VOID"):
            return "RV"
        return entry.response_code

    # ---- flows
    def purchase(self, request: dict[int, str | bytes], tlv: dict[str, str], draws: Draws) -> dict[int, str | bytes]:
        self.settle_due()
        iid, amount, currency = tlv.get("II", ""), int(str(request.get(4, "0"))), CURRENCIES.get(str(request.get(49)))
        if not iid or currency is None or 2 not in request:
            return self._financial_reply(request, "12", None, tlv)
        card = hashlib.sha256(f"{request[2]}|{request.get(14, '')}".encode()).hexdigest()[:16]
        existing = self.book.get((iid, "pay"))
        if existing is not None:
            self.stats.duplicates += 1
            same = (existing.amount, existing.currency, existing.card) == (amount, currency, card)
            if not same or existing.status in ("REVERSED", "VOID"):
                return self._financial_reply(request, "94", existing, tlv)
            return self._financial_reply(request, self._state_code(existing), existing, tlv)
        code = "05" if draws.decline else "51" if draws.insufficient else "00"
        entry = Entry(iid, "pay", amount, currency, "SUCCEEDED" if code == "00" else "FAILED", self._next_rrn(),
                      self.profile.fee_for(amount) if code == "00" else 0, self.today(), code,
                      auth_code=draws.auth_code if code == "00" else "", payment_id=tlv.get("PI", ""), card=card)
        if draws.pending:
            entry.status, entry.response_code, entry.final_code = "PENDING", "09", code
            entry.settle_at = time.monotonic() + self.profile.settle_after_ms / 1000
        self._book(entry)
        return self._financial_reply(request, entry.response_code, entry, tlv)

    def refund(self, request: dict[int, str | bytes], tlv: dict[str, str], draws: Draws) -> dict[int, str | bytes]:
        self.settle_due()
        iid, amount, currency = tlv.get("II", ""), int(str(request.get(4, "0"))), CURRENCIES.get(str(request.get(49)))
        if not iid or currency is None:
            return self._financial_reply(request, "12", None, tlv)
        existing = self.book.get((iid, "refund"))
        if existing is not None:
            self.stats.duplicates += 1
            if (existing.amount, existing.currency) != (amount, currency):
                return self._financial_reply(request, "94", existing, tlv)
            return self._financial_reply(request, self._state_code(existing), existing, tlv)
        original = self.book.get((tlv.get("OI", ""), "pay"))
        if original is None and tlv.get("OR"):
            candidate = self.by_reference.get(tlv["OR"])
            original = candidate if candidate is not None and candidate.kind == "pay" else None
        if original is None or original.status != "SUCCEEDED" or original.currency != currency:
            code = "12"
        else:
            refunded = sum(e.amount for e in self._refunds.get(original.reference, ())
                           if e.status in ("SUCCEEDED", "PENDING"))
            code = "13" if refunded + amount > original.amount or amount <= 0 else "00"
        entry = Entry(iid, "refund", amount, currency, "SUCCEEDED" if code == "00" else "FAILED", self._next_rrn(), 0,
                      self.today(), code, payment_id=tlv.get("PI", ""),
                      original_reference=original.reference if original else tlv.get("OR", ""))
        if draws.pending and code == "00":
            entry.status, entry.response_code, entry.final_code = "PENDING", "09", code
            entry.settle_at = time.monotonic() + self.profile.settle_after_ms / 1000
        self._book(entry)
        return self._financial_reply(request, entry.response_code, entry, tlv)

    def reverse(self, request: dict[int, str | bytes], tlv: dict[str, str]) -> dict[int, str | bytes]:
        self.settle_due()
        iid, amount = tlv.get("II", ""), int(str(request.get(4, "0")))
        currency = CURRENCIES.get(str(request.get(49)), "")
        if not iid:
            return self._financial_reply(request, "12", None, tlv)
        done = self.book.get((iid, "reverse"))
        if done is not None:  # a repeated reversal changes nothing and gets the same answer
            self.stats.duplicates += 1
            return self._financial_reply(request, "00", done, tlv)
        original = self.book.get((iid, "pay"))
        if original is None:
            # Reversed before it arrived: a tombstone, so a late 0200 is never approved.
            original = self._book(Entry(iid, "pay", amount, currency, "VOID", "", 0, self.today(), "RV"))
            effect = "voided"
        elif original.status == "SUCCEEDED":
            original.status, effect = "REVERSED", "reversed"
        elif original.status == "PENDING":
            original.status, original.fee, effect = "VOID", 0, "voided"
        else:
            effect = "nothing"
        entry = self._book(Entry(iid, "reverse", original.amount if effect == "reversed" else amount,
                                 original.currency or currency, "SUCCEEDED", self._next_rrn(), 0, self.today(), "00",
                                 original_reference=original.reference, effect=effect))
        return self._financial_reply(request, "00", entry, tlv)

    def query(self, request: dict[int, str | bytes], tlv: dict[str, str]) -> dict[int, str | bytes]:
        self.settle_due()
        self.stats.queries += 1
        kind = tlv.get("QK", "pay")
        entry = self.book.get((tlv.get("II", ""), kind))
        if entry is None and tlv.get("OR"):
            candidate = self.by_reference.get(tlv["OR"])
            if candidate is not None and kind == "reverse" and candidate.kind == "pay":
                candidate = self.book.get((candidate.instruction_id, "reverse"))  # OR names what was reversed
            entry = candidate if candidate is not None and candidate.kind == kind else None
        reply = self._echo(request, 7, 11, 70)
        reply[48] = tlv_build({"II": tlv.get("II", ""), "QK": kind})
        if entry is None:
            reply[39] = "25"
            return reply
        reply[39] = self._state_code(entry)
        reply[4] = f"{entry.amount:012d}"
        numeric = {v: k for k, v in CURRENCIES.items()}.get(entry.currency)
        if numeric:
            reply[49] = numeric
        if entry.reference:
            reply[37] = entry.reference
        if entry.fee:
            reply[28] = f"D{entry.fee:08d}"
        return reply

    def invent(self, amount: int, currency: str = "CNY") -> Entry:
        """A transaction nobody asked for (profile `phantom_amount`): approved and booked today
        under an instruction id no platform issued. Draws nothing from the seeded generator."""
        serial = sum(1 for e in self.book.values() if e.payment_id == "phantom") + 1
        iid = "pay_" + hashlib.sha256(f"phantom-{self._rrn}-{serial}".encode()).hexdigest()[:24] + "-1"
        return self._book(Entry(iid, "pay", amount, currency, "SUCCEEDED", self._next_rrn(),
                                self.profile.fee_for(amount), self.today(), "00", auth_code="000000",
                                payment_id="phantom"))

    # ---- admin views
    def book_view(self) -> list[dict[str, Any]]:
        self.settle_due()
        return [entry.public() for entry in self.book.values()]

    def balance(self, currency: str, mac_key: bytes, now_s: int) -> bytes:
        """What the bank holds for us in `currency`, as its settlement files count it (every line
        that moved money: approved payments, reversals that undid one, approved refunds), net of
        fees, plus the profile's `balance_offset`. One line, MACed like a settlement file under
        AES-CMAC(MAC key, "DUALFLOW BALANCE REPORT"):

            BALANCE,<currency>,<amount>,<as of, unix seconds>,<MAC>\n

        the MAC (32 upper-case hex digits) over every byte before it, the last comma included."""
        self.settle_due()
        total = self.profile.balance_offset
        for e in self.book.values():
            if e.currency != currency:
                continue
            if e.kind == "reverse":
                moved = e.effect == "reversed"
            else:
                moved = e.status in ("SUCCEEDED", "REVERSED")
            if moved:
                total += (e.amount if e.kind == "pay" else -e.amount) - e.fee
        head = f"BALANCE,{currency},{total},{now_s},".encode()
        mac = aes_cmac(aes_cmac(mac_key, b"DUALFLOW BALANCE REPORT"), head).hex().upper()
        return head + mac.encode() + b"\n"

    def statement(self, business_date: str, mac_key: bytes) -> bytes:
        """The day's settlement file: what moved money (or was refused), as the bank booked it.
        A reversed payment shows as SUCCEEDED plus a `reverse` line that undoes it; a voided one
        as FAILED; pending ones are not on a statement until they settle.

        Format (the adapter's reader is written from this description, not from this code): a
        header line, one comma-separated line per booking, then `TRAILER,<lines>,<amount total>,
        <fee total>,<MAC>` where the MAC is AES-CMAC, 32 upper-case hex digits, over every byte
        before it, under AES-CMAC(MAC key, "DUALFLOW SETTLEMENT FILE"). Lines end in LF."""
        self.settle_due()
        rows: list[list[str | int]] = []
        for e in self.book.values():
            if e.business_date != business_date:
                continue
            if e.kind == "reverse":
                if e.effect != "reversed":
                    continue
                status = "SUCCEEDED"
            elif e.status == "PENDING":
                continue
            else:
                status = "SUCCEEDED" if e.status in ("SUCCEEDED", "REVERSED") else "FAILED"
            rows.append([e.business_date, e.instruction_id, e.reference, e.kind, e.amount, e.currency, status, e.fee])
        fault = self.profile.statement_fault
        amount_total = sum(int(r[4]) for r in rows)
        fee_total = sum(int(r[7]) for r in rows)
        if fault == "bad_row" and rows:
            rows[len(rows) // 2][4] = "12x"
        if fault == "wrong_totals":
            amount_total += 1
        lines = [",".join(STATEMENT_HEADER)] + [",".join(str(c) for c in r) for r in rows]
        body = "".join(line + "\n" for line in lines).encode()
        if fault == "truncated":
            last = lines[-1].encode()
            return body[: len(body) - len(last) - 1 + len(last) // 2]
        head = body + f"TRAILER,{len(rows)},{amount_total},{fee_total},".encode()
        mac = aes_cmac(aes_cmac(mac_key, b"DUALFLOW SETTLEMENT FILE"), head).hex().upper()
        if fault == "bad_checksum":
            mac = ("0" if mac[0] != "0" else "1") + mac[1:]
        return head + mac.encode() + b"\n"
