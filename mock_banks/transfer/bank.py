"""The mock bank's book and its decisions: accounts, transfers, returns, the behaviour profile.

Pure state, no I/O: the server feeds it requests and the clock and delivers the notifications it
produces. The book is what the bank really did, whatever happened to its replies, so its
statement tells the truth. Every request draws the same fixed set of random numbers from the
seeded generator, so changing one rate does not reshuffle every other decision of a run.
"""

from __future__ import annotations

import csv
import io
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

PROFILE_DEFAULTS: dict[str, Any] = {
    "latency_ms": 2, "jitter_ms": 3,
    "decline_rate": 0.0, "insufficient_funds_rate": 0.0,
    "timeout_rate": 0.0, "lost_reply_rate": 0.0, "late_reply_ms": 0,
    "pending_rate": 0.8, "settle_after_ms": 300,
    "duplicate_callback_rate": 0.0, "bad_signature_rate": 0.0,
    "outage": False, "fee_fixed": 0, "fee_bps": 0,
    # this bank's own knobs
    "return_rate": 0.0,  # accepted, then sent back by the counterparty's bank (RETURNED)
    "max_amount": 0,  # above it: REJECTED LIMIT_EXCEEDED (0: no limit)
    "callback_retry_ms": 100,  # first redelivery delay; doubles up to 2 s
    "hold_ms": 30_000,  # how long a timed-out request is held before the connection drops
    # Notifications the bank never sends (a lost callback: the platform must poll or reconcile). Drawn
    # from the server's own generator, and only while the rate is above 0, so the decision draws of a
    # seeded run stay the same.
    "callback_drop_rate": 0.0,
    # A broken statement, for reconciliation tests: "" (a good one), "bad_row" (the middle line's
    # amount is garbled), "wrong_totals" (the trailer's amount total is one too many), "truncated"
    # (no trailer, the last line cut in half), "bad_checksum" (the body is changed after the reply
    # was signed). The signature covers whatever the bank sent, so only "bad_checksum" fails it.
    "statement_fault": "",
    # Added to every balance the bank reports (minor units, may be negative): a drifted book, for
    # reconciliation's balance drift tests.
    "balance_offset": 0,
}
STATEMENT_FAULTS = ("", "bad_row", "wrong_totals", "truncated", "bad_checksum")
_RATES = {k for k in PROFILE_DEFAULTS if k.endswith("_rate")}
DECLINE_CODES = ("DECLINED", "ACCOUNT_CLOSED", "INVALID_ACCOUNT")

_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_BANK = re.compile(r"[A-Za-z0-9]{2,16}")
_LAST4 = re.compile(r"[0-9]{4}")
_NUMBER = re.compile(r"[0-9]{6,34}")
_CURRENCY = re.compile(r"[A-Z]{3}")

UNIFORM = {"ACCEPTED": "PENDING", "SETTLED": "SUCCEEDED", "REJECTED": "FAILED", "RETURNED": "FAILED"}
KIND = {"collect": "pay", "payout": "payout", "return": "refund"}
EVENT_TYPES = {"SETTLED": "transfer.settled", "REJECTED": "transfer.rejected", "RETURNED": "transfer.returned"}


class RequestError(Exception):
    """An answer that is not a transfer: HTTP status and the bank's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def validate_profile(changes: Any) -> dict[str, Any]:
    if not isinstance(changes, dict):
        raise ValueError("a profile is a JSON object")
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in PROFILE_DEFAULTS:
            raise ValueError(f"unknown profile field {name!r}")
        default = PROFILE_DEFAULTS[name]
        if name == "balance_offset":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer (minor units)")
        elif isinstance(default, str):
            if value not in STATEMENT_FAULTS:
                raise ValueError(f"{name} must be one of {STATEMENT_FAULTS}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        elif name in _RATES:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in 0..1")
            value = float(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        out[name] = value
    return out


@dataclass
class Draws:
    """One request's random numbers, always drawn in this order."""

    latency: float
    timeout: float
    lost: float
    decline: float
    decline_code: float
    funds: float
    pending: float
    returned: float
    duplicate: float
    bad_signature: float

    @classmethod
    def from_rng(cls, rng: random.Random) -> Draws:
        return cls(*(rng.random() for _ in fields(cls)))


@dataclass
class Account:
    bank_code: str
    number: str = ""
    last4: str = ""
    name: str = ""
    balance: int | None = None  # None: not modelled (another bank's customer); never short
    held: int = 0
    status: str = "open"  # open | closed | invalid (no such account)


@dataclass
class Transfer:
    instruction_id: str
    reference: str
    direction: str
    amount: int
    currency: str
    debtor: dict[str, str]
    creditor: dict[str, str]
    end_to_end_id: str
    status: str
    code: str = ""
    fee: int = 0
    original_id: str = ""
    returned_amount: int = 0
    created_at: float = 0.0
    final_at: float | None = None
    settle_at: float | None = None
    planned: tuple[str, str] = ("SETTLED", "")
    planned_fee: int = 0
    callback_url: str = ""
    duplicate_callback: bool = False
    debtor_account: Account | None = field(default=None, repr=False)
    creditor_account: Account | None = field(default=None, repr=False)

    def fingerprint(self) -> tuple[Any, ...]:
        return (self.direction, self.amount, self.currency, self.debtor, self.creditor, self.end_to_end_id,
                self.original_id)

    def wire(self) -> dict[str, Any]:
        return {
            "instruction_id": self.instruction_id, "reference": self.reference, "direction": self.direction,
            "original_id": self.original_id or None, "amount": self.amount, "currency": self.currency,
            "status": self.status, "code": self.code, "fee": self.fee, "returned_amount": self.returned_amount,
            "end_to_end_id": self.end_to_end_id, "created_at": iso(self.created_at),
            "final_at": iso(self.final_at) if self.final_at is not None else None,
            "business_date": day(self.final_at) if self.final_at is not None else None,
        }

    def book_line(self) -> dict[str, Any]:
        return {
            "instruction_id": self.instruction_id, "kind": KIND[self.direction], "amount": self.amount,
            "currency": self.currency, "status": UNIFORM.get(self.status, "PENDING"), "reference": self.reference,
            "fee": self.fee, "bank_status": self.status, "code": self.code, "direction": self.direction,
            "original_id": self.original_id, "returned_amount": self.returned_amount,
            "business_date": day(self.final_at) if self.final_at is not None else None,
            "debtor": _masked(self.debtor), "creditor": _masked(self.creditor),
        }


def _masked(account: dict[str, str]) -> dict[str, str]:
    return {"bank_code": account.get("bank_code", ""), "last4": account.get("last4", "")}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).date().isoformat()


@dataclass
class Notification:
    event_id: str
    callback_url: str
    body: dict[str, Any]
    duplicate: bool


STATEMENT_COLUMNS = ("business_date", "instruction_id", "reference", "direction", "original_id", "amount",
                     "currency", "status", "code", "fee", "final_at")


class Bank:
    def __init__(self, seed: int, profile: dict[str, Any] | None = None, callback_url: str = "") -> None:
        self.rng = random.Random(seed)
        self.profile = dict(PROFILE_DEFAULTS)
        self.profile.update(validate_profile(profile or {}))
        self.callback_url = callback_url
        self.transfers: dict[str, Transfer] = {}
        self.accounts: list[Account] = []
        self._accepted: set[str] = set()  # not final yet: what the settlement clock looks at
        self._serial = 0
        self._events = 0

    # ---- profile and accounts
    def set_profile(self, changes: Any) -> dict[str, Any]:
        self.profile.update(validate_profile(changes))
        return dict(self.profile)

    def put_accounts(self, items: Any) -> list[dict[str, Any]]:
        if not isinstance(items, list):
            raise ValueError("accounts: a JSON list of {bank_code, number|last4, name, balance, status}")
        for item in items:
            if not isinstance(item, dict) or not _BANK.fullmatch(str(item.get("bank_code", ""))):
                raise ValueError("each account needs a bank_code")
            number, last4 = str(item.get("number", "")), str(item.get("last4", ""))
            if number and not _NUMBER.fullmatch(number) or not number and not _LAST4.fullmatch(last4):
                raise ValueError("each account needs a number (6..34 digits) or last4")
            status = item.get("status", "open")
            balance = item.get("balance")
            if status not in ("open", "closed", "invalid") or (balance is not None and not isinstance(balance, int)):
                raise ValueError("status is open|closed|invalid, balance an integer or null")
            account = self._find(item["bank_code"], number, last4 or number[-4:], str(item.get("name", "")))
            if account is None:
                account = Account(bank_code=item["bank_code"], number=number, last4=last4 or number[-4:])
                self.accounts.append(account)
            account.name = str(item.get("name", account.name))
            account.balance = balance
            account.status = status
        return self.account_list()

    def account_list(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.accounts]

    def _find(self, bank_code: str, number: str, last4: str, name: str) -> Account | None:
        if number:
            exact = [a for a in self.accounts if a.bank_code == bank_code and a.number == number]
            if exact:
                return exact[0]
        # Named by mandate (or not registered by number): bank, last four, then holder name.
        same = [a for a in self.accounts if a.bank_code == bank_code and a.last4 == last4
                and (not number or not a.number)]
        if len(same) > 1:
            same = [a for a in same if _norm(a.name) == _norm(name)]
        return same[0] if len(same) == 1 else None

    def _resolve(self, wire: dict[str, str]) -> Account:
        account = self._find(wire["bank_code"], wire.get("number", ""), wire["last4"], wire["name"])
        if account is None:  # another bank's customer, or a mandate we honour: open it in our book
            account = Account(bank_code=wire["bank_code"], number=wire.get("number", ""), last4=wire["last4"],
                              name=wire["name"])
            self.accounts.append(account)
        return account

    # ---- requests
    def draw(self) -> Draws:
        return Draws.from_rng(self.rng)

    def get(self, instruction_id: str, now: float) -> Transfer:
        self.due(now)
        transfer = self.transfers.get(instruction_id)
        if transfer is None:
            raise RequestError(404, "NOT_FOUND", "no transfer with this instruction id")
        return transfer

    def create(self, body: Any, draws: Draws, now: float) -> tuple[int, Transfer, list[Notification]]:
        self.due(now)
        if not isinstance(body, dict):
            raise RequestError(400, "INVALID_REQUEST", "the body is not a JSON object")
        instruction_id = _req_id(body, "instruction_id")
        direction = body.get("direction")
        if direction not in ("collect", "payout"):
            raise RequestError(400, "INVALID_REQUEST", "direction must be collect or payout")
        amount, currency = _amount(body), _currency(body)
        debtor, creditor = _account(body, "debtor"), _account(body, "creditor")
        if direction == "payout" and not creditor.get("number"):
            raise RequestError(400, "INVALID_ACCOUNT", "a credit needs the creditor's account number")
        candidate = Transfer(instruction_id=instruction_id, reference="", direction=direction, amount=amount,
                             currency=currency, debtor=debtor, creditor=creditor,
                             end_to_end_id=_req_id(body, "end_to_end_id"), status="ACCEPTED", created_at=now,
                             callback_url=_callback(body) or self.callback_url)
        existing = self._existing(candidate)
        if existing is not None:
            return 200, existing, []
        return self._book(candidate, draws, now)

    def create_return(self, original_id: str, body: Any, draws: Draws, now: float) -> tuple[int, Transfer,
                                                                                           list[Notification]]:
        self.due(now)
        if not isinstance(body, dict):
            raise RequestError(400, "INVALID_REQUEST", "the body is not a JSON object")
        return_id = _req_id(body, "return_id")
        amount, currency = _amount(body), _currency(body)
        original = self.transfers.get(original_id)
        if original is None:
            raise RequestError(422, "ORIGINAL_NOT_FOUND", "no transfer to return")
        candidate = Transfer(instruction_id=return_id, reference="", direction="return", amount=amount,
                             currency=currency, debtor=original.creditor, creditor=original.debtor,
                             end_to_end_id=_req_id(body, "end_to_end_id"), status="ACCEPTED",
                             original_id=original_id, created_at=now,
                             callback_url=_callback(body) or self.callback_url)
        existing = self._existing(candidate)
        if existing is not None:
            return 200, existing, []
        if original.direction != "collect":
            raise RequestError(422, "NOT_RETURNABLE", "only collections can be returned")
        if original.status != "SETTLED":
            raise RequestError(422, "ORIGINAL_NOT_SETTLED", "the original transfer has not settled")
        if currency != original.currency:
            raise RequestError(422, "CURRENCY_MISMATCH", "a return is in the original's currency")
        if amount > original.amount - original.returned_amount:
            raise RequestError(422, "RETURN_EXCEEDS_ORIGINAL", "more than what is left of the original")
        original.returned_amount += amount  # reserved now; released if the return fails
        return self._book(candidate, draws, now)

    def _existing(self, candidate: Transfer) -> Transfer | None:
        existing = self.transfers.get(candidate.instruction_id)
        if existing is None:
            return None
        if existing.fingerprint() != candidate.fingerprint():
            raise RequestError(409, "INSTRUCTION_REUSED", "this instruction id was used with other fields")
        return existing

    def _book(self, t: Transfer, draws: Draws, now: float) -> tuple[int, Transfer, list[Notification]]:
        p = self.profile
        self._serial += 1
        t.reference = f"TR{day(now).replace('-', '')}{self._serial:08d}"
        t.debtor_account, t.creditor_account = self._resolve(t.debtor), self._resolve(t.creditor)
        t.planned = self._decide(t, draws)
        t.planned_fee = (p["fee_fixed"] + (t.amount * p["fee_bps"] + 5_000) // 10_000
                         if t.planned[0] == "SETTLED" else 0)
        t.duplicate_callback = draws.duplicate < p["duplicate_callback_rate"]
        self.transfers[t.instruction_id] = t
        if t.planned[0] == "SETTLED" and t.debtor_account.balance is not None:
            t.debtor_account.held += t.amount
        if draws.pending < p["pending_rate"] or t.planned[0] == "RETURNED":
            t.status = "ACCEPTED"
            t.settle_at = now + p["settle_after_ms"] / 1000
            self._accepted.add(t.instruction_id)
            return 201, t, []
        return 201, t, self._finish(t, now)

    def _decide(self, t: Transfer, draws: Draws) -> tuple[str, str]:
        p = self.profile
        debtor, creditor = t.debtor_account, t.creditor_account
        assert debtor is not None and creditor is not None
        if draws.decline < p["decline_rate"]:
            return "REJECTED", DECLINE_CODES[int(draws.decline_code * len(DECLINE_CODES))]
        if draws.funds < p["insufficient_funds_rate"]:
            return "REJECTED", "INSUFFICIENT_FUNDS"
        for account, wire in ((debtor, t.debtor), (creditor, t.creditor)):
            if account.status == "invalid":
                return "REJECTED", "INVALID_ACCOUNT"
            if account.status == "closed":
                return "REJECTED", "ACCOUNT_CLOSED"
            if account.name and _norm(account.name) != _norm(wire["name"]):
                return "REJECTED", "NAME_MISMATCH"
        if p["max_amount"] and t.amount > p["max_amount"]:
            return "REJECTED", "LIMIT_EXCEEDED"
        if debtor.balance is not None and debtor.balance - debtor.held < t.amount:
            return "REJECTED", "INSUFFICIENT_FUNDS"
        if draws.returned < p["return_rate"]:
            return "RETURNED", "ACCOUNT_CLOSED"
        return "SETTLED", ""

    def due(self, now: float) -> list[Notification]:
        """Settle (or reject, or return) every accepted transfer whose time has come."""
        out: list[Notification] = []
        for instruction_id in sorted(self._accepted, key=lambda i: (self.transfers[i].settle_at or 0.0, i)):
            t = self.transfers[instruction_id]
            if t.settle_at is not None and t.settle_at <= now:
                out.extend(self._finish(t, now))
        return out

    def next_due(self) -> float | None:
        times = [self.transfers[i].settle_at for i in self._accepted]
        return min((t for t in times if t is not None), default=None)

    def _finish(self, t: Transfer, now: float) -> list[Notification]:
        status, code = t.planned
        debtor, creditor = t.debtor_account, t.creditor_account
        assert debtor is not None and creditor is not None
        if status == "SETTLED":
            if debtor.balance is not None:
                debtor.held -= t.amount
                debtor.balance -= t.amount
            if creditor.balance is not None:
                creditor.balance += t.amount
            t.fee = t.planned_fee
        elif t.direction == "return":
            original = self.transfers[t.original_id]
            original.returned_amount -= t.amount
        t.status, t.code, t.final_at, t.settle_at = status, code, now, None
        self._accepted.discard(t.instruction_id)
        if not t.callback_url:
            return []
        self._events += 1
        event_id = f"evt_{self._events:010d}"
        body = {"event_id": event_id, "type": EVENT_TYPES[status], "created_at": iso(now), "transfer": t.wire()}
        return [Notification(event_id, t.callback_url, body, t.duplicate_callback)]

    # ---- the bank's truth
    def book(self, now: float) -> list[dict[str, Any]]:
        self.due(now)
        return [t.book_line() for t in self.transfers.values()]

    def balance(self, currency: str, now: float) -> int:
        """What the bank holds for us in `currency`, from its book: settled collections less
        settled returns, less the fees of both (payouts are the clearing's, not a channel
        balance's), plus the profile's `balance_offset`."""
        self.due(now)
        total = self.profile["balance_offset"]
        for t in self.transfers.values():
            if t.currency != currency or t.status != "SETTLED" or t.direction not in ("collect", "return"):
                continue
            total += (t.amount if t.direction == "collect" else -t.amount) - t.fee
        return total

    def account_balance(self, bank_code: str, number: str, now: float) -> dict[str, Any]:
        """One registered account's balance, `{bank_code, last4, balance, held, as_of}`: `balance`
        has every settled transfer applied (fees are not taken from it), `held` is what transfers
        accepted and not yet settled will take from it (still inside `balance`). Only an account
        registered by its full number with a balance answers (NOT_FOUND otherwise); the reply never
        carries the number, only its last four digits."""
        if not _BANK.fullmatch(bank_code) or not _NUMBER.fullmatch(number):
            raise RequestError(400, "INVALID_ACCOUNT", "bank_code or account number is malformed")
        self.due(now)
        account = next((a for a in self.accounts if a.bank_code == bank_code and a.number == number), None)
        if account is None or account.balance is None or account.status == "invalid":
            raise RequestError(404, "NOT_FOUND", "no account with a balance under this bank code and number")
        return {"bank_code": account.bank_code, "last4": account.last4, "balance": account.balance,
                "held": account.held, "as_of": iso(now)}

    def statement(self, business_date: str, now: float, account: tuple[str, str] | None = None) -> str:
        """Every transfer that became final on that UTC day, as CSV with a header, then the trailer
        `TRAILER,<lines>,<amount total>,<fee total>` (control totals in minor units). With
        `account` (bank code, full number): that account's statement, only the transfers it is the
        debtor or the creditor of, the trailer over those lines; without: the whole network's."""
        self.due(now)
        if account is not None and (not _BANK.fullmatch(account[0]) or not _NUMBER.fullmatch(account[1])):
            raise RequestError(400, "INVALID_ACCOUNT", "account must be <bank_code>:<number>")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(STATEMENT_COLUMNS)
        final = sorted((t for t in self.transfers.values() if t.final_at is not None
                        and day(t.final_at) == business_date and (account is None or _touches(t, account))),
                       key=lambda t: (t.final_at, t.reference))
        fault = self.profile["statement_fault"]
        for n, t in enumerate(final):
            assert t.final_at is not None
            amount: int | str = "12x" if fault == "bad_row" and n == len(final) // 2 else t.amount
            writer.writerow((day(t.final_at), t.instruction_id, t.reference, t.direction, t.original_id, amount,
                             t.currency, t.status, t.code, t.fee, iso(t.final_at)))
        body = out.getvalue()
        if fault == "truncated":
            cut = body[:-1]
            last = cut.rfind("\n")
            return cut[: last + 1 + (len(cut) - last - 1) // 2]
        amounts = sum(t.amount for t in final) + (fault == "wrong_totals")
        writer.writerow(("TRAILER", len(final), amounts, sum(t.fee for t in final)))
        return out.getvalue()


def _touches(t: Transfer, account: tuple[str, str]) -> bool:
    """Whether `account` (bank code, full number) is the transfer's debtor or creditor: named by
    number on the wire, or the book's account the wire resolved to (a mandate names only last4)."""
    bank_code, number = account
    for wire, booked in ((t.debtor, t.debtor_account), (t.creditor, t.creditor_account)):
        if wire.get("bank_code") == bank_code and wire.get("number") == number:
            return True
        if booked is not None and booked.bank_code == bank_code and booked.number == number:
            return True
    return False


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _req_id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise RequestError(400, "INVALID_REQUEST", f"{name} must be 1..64 of A-Z a-z 0-9 _ . -")
    return value


def _amount(body: dict[str, Any]) -> int:
    value = body.get("amount")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise RequestError(400, "INVALID_AMOUNT", "amount must be a positive integer of minor units")
    return value


def _currency(body: dict[str, Any]) -> str:
    value = body.get("currency")
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise RequestError(400, "UNSUPPORTED_CURRENCY", "currency must be an ISO 4217 code")
    return value


def _callback(body: dict[str, Any]) -> str:
    value = body.get("callback_url", "")
    if not isinstance(value, str) or (value and not value.startswith(("http://", "https://"))):
        raise RequestError(400, "INVALID_REQUEST", "callback_url must be an http(s) URL")
    return value


def _account(body: dict[str, Any], name: str) -> dict[str, str]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise RequestError(400, "INVALID_REQUEST", f"{name} must be an account object")
    bank_code, last4 = value.get("bank_code"), value.get("last4")
    number, holder = value.get("number", ""), value.get("name")
    if not isinstance(bank_code, str) or not _BANK.fullmatch(bank_code):
        raise RequestError(400, "INVALID_ACCOUNT", f"{name}.bank_code is malformed")
    if not isinstance(holder, str) or not holder.strip() or len(holder) > 140:
        raise RequestError(400, "INVALID_ACCOUNT", f"{name}.name is malformed")
    if not isinstance(number, str) or (number and not _NUMBER.fullmatch(number)):
        raise RequestError(400, "INVALID_ACCOUNT", f"{name}.number is malformed")
    if not isinstance(last4, str) or not _LAST4.fullmatch(last4) or (number and number[-4:] != last4):
        raise RequestError(400, "INVALID_ACCOUNT", f"{name}.last4 is not the account's last four digits")
    out = {"bank_code": bank_code, "last4": last4, "name": holder}
    if number:
        out["number"] = number
    return out


def now_s() -> float:
    return time.time()
