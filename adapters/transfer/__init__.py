"""The bank transfer / payout rail: account-to-account transfers over signed HTTP JSON.

This package owns one channel kind, `transfer`: collections (debit a payer's account into our
pool account at the bank), payouts (credit a beneficiary from our pool), return payments
(refunds of collections), status queries, signed callbacks and daily CSV statements. The
reserve-fund pools and clearing will use it too. `create(config)` builds the adapter; the mock
bank that speaks the same protocol is `dualflow.mock_banks.transfer` (written separately from
this code, so the two cannot share a bug).

Protocol
--------
HTTP/1.1, JSON bodies (UTF-8), amounts as integers in minor units with an ISO 4217 currency.

Signing (both ways). Every request, every response and every callback carries

    X-Rail-Key-Id:    first 16 hex digits of SHA-256(key)
    X-Rail-Timestamp: unix seconds
    X-Rail-Nonce:     16..64 of [A-Za-z0-9_-], fresh per message
    X-Rail-Signature: hex HMAC-SHA256(key, METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nhex SHA-256(BODY))

PATH is the request path exactly as sent (percent-encoding included, a base_url path prefix
included, no query string). A
response is signed over its request's METHOD and PATH with its own timestamp and nonce; a
callback over `POST` and the path of the callback URL. The receiver refuses an unknown key
id, a bad signature, a timestamp more than 5 minutes off its clock, and a nonce it has seen
inside the window. Both sides hold up to two keys while keys roll: the newest signs, both
verify. The adapter believes nothing in an unsigned or badly signed reply: even a 2xx is
UNKNOWN (reason BAD_SIGNATURE, UNKNOWN_KEY, STALE_REPLY or REPLAYED_REPLY).

Endpoints (the bank):

    POST /transfers                  {"instruction_id", "direction": "collect"|"payout", "amount",
                                      "currency", "debtor": ACCOUNT, "creditor": ACCOUNT,
                                      "end_to_end_id", "description"?, "callback_url"?}
                                     -> 201 TRANSFER (new) | 200 TRANSFER (same instruction again)
                                     | 409 INSTRUCTION_REUSED (same id, other fields) | 4xx ERROR
    GET  /transfers/{instruction_id} -> 200 TRANSFER | 404 NOT_FOUND
    POST /transfers/{id}/return      {"return_id", "amount", "currency", "end_to_end_id",
                                      "callback_url"?} -> a return payment: 201/200 TRANSFER with
                                     direction "return" and original_id; queried like any transfer
                                     by its return_id. Errors: ORIGINAL_NOT_FOUND,
                                     ORIGINAL_NOT_SETTLED, NOT_RETURNABLE, CURRENCY_MISMATCH,
                                     RETURN_EXCEEDS_ORIGINAL.
    GET  /statements/{YYYY-MM-DD}?account=<bank_code>:<number>
                                  -> 200 text/csv, header `business_date, instruction_id,
                                     reference, direction, original_id, amount, currency, status,
                                     code, fee, final_at`: every transfer that became final that UTC day
                                     whose debtor or creditor is that account (we ask for our pool
                                     account's: other channels on the same rail network are not ours).
                                     The signed PATH includes the query. Errors: INVALID_ACCOUNT.

    ACCOUNT  = {"bank_code", "last4", "name", "number"?}
    TRANSFER = {"instruction_id", "reference" (the bank's), "direction", "original_id"?, "amount",
                "currency", "status", "code", "fee", "returned_amount", "created_at", "final_at"?,
                "business_date"?}
    ERROR    = {"error": {"code", "message"}}

A collection's debtor may be named without its number (bank code, last four digits, holder
name): the bank resolves it through the customer's direct-debit mandate. Our payment model only
knows those three (`PayInstruction.bank_account`); where the full number is known it comes from
the channel's `accounts` setting. A credit (payout) needs the full number:
`PayoutInstruction.beneficiary_number` or the `accounts` setting, else NOT_SUBMITTED.

States and outcomes. ACCEPTED -> PENDING; SETTLED -> SUCCEEDED (with the bank's fee); REJECTED
with a code -> FAILED (ACCOUNT_CLOSED, INSUFFICIENT_FUNDS, INVALID_ACCOUNT,
NAME_MISMATCH -> ACCOUNT_NAME_MISMATCH, NO_MANDATE, LIMIT_EXCEEDED, DECLINED; another code ->
BANK_REJECTED); RETURNED (the counterparty's bank sent the money back before settlement, with a
code) -> FAILED; any other state -> PENDING. Settlement is asynchronous: most transfers answer
ACCEPTED and settle later; the bank then POSTs a signed callback to `callback_url`

    {"event_id", "type": "transfer.settled"|"transfer.rejected"|"transfer.returned", "transfer": TRANSFER}

and redelivers it (same event_id, fresh timestamp and nonce) until it gets a 2xx.

Errors. Connection refused or a connect timeout -> NOT_SUBMITTED (nothing was written). A
timeout or lost connection after that -> UNKNOWN. A signed 400/409/422 whose code proves nothing
was created (INVALID_REQUEST, INVALID_ACCOUNT, INVALID_AMOUNT, UNSUPPORTED_CURRENCY and the
return errors above) -> FAILED; INSTRUCTION_REUSED, 401 (our signature refused), 404 on a query,
5xx and anything else -> UNKNOWN. Reversals do not exist on this rail (FlowNotSupported).

Configuration (ChannelConfig, kind "transfer")
----------------------------------------------
settings: `base_url`; `pool_account` = {bank_code, number, name}; `currencies` (default
["CNY"]); `min_amount`, `max_amount`; `fees` = {CUR: {fixed, bps}} (also `minimum`, `maximum`,
`tiers`: adapters/contract.py FeeSchedule); `same_bank_fees` = {CUR: {fixed, bps, ...}}, the
same tables, for a payment whose payer's (or beneficiary's) bank is the pool account's bank_code
(an intra-bank move): the channel describes that bank as its `home_bank`, and the router prices
such a payment with this schedule instead of `fees`; `timeout_ms` (10000),
`connect_timeout_ms` (2000), `statement_timeout_ms` (30000); `callback_url` (sent with each
transfer; without it the bank uses the URL agreed out of band) and `callback_path` (what callbacks
are signed over; default: callback_url's path, else `/callbacks/<channel name>`, where the
financial gateway's listener serves this channel);
`accounts` = {"BANK_CODE:last4": full number}; `window_s` (300); `max_connections` (32).
key_files: `hmac_key` (hex, at least 16 bytes; signs and verifies), `hmac_key_previous`
(optional, verifies only).
"""

from __future__ import annotations

from dualflow.adapters.contract import ChannelConfig

from .adapter import PayoutInstruction, StatementUnavailable, TransferAdapter
from .config import ConfigError, TransferSettings
from .signing import KeyRing, NonceCache, SignatureError, canonical, key_id, signature

__all__ = [
    "ConfigError",
    "KeyRing",
    "NonceCache",
    "PayoutInstruction",
    "SignatureError",
    "StatementUnavailable",
    "TransferAdapter",
    "TransferSettings",
    "canonical",
    "create",
    "key_id",
    "signature",
]


def create(config: ChannelConfig) -> TransferAdapter:
    """The entry point `dualflow.adapters: transfer`: an adapter for one transfer channel."""
    return TransferAdapter(config.name, TransferSettings.from_config(config))
