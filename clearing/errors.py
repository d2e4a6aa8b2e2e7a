"""Clearing's domain errors, as types under the platform's tree (core/errors.py).

Each derives from the core class whose gRPC status it should map to, so the
gateway's one mapping (gateway/errors.py) covers them without a new entry;
`reason` is the ErrorInfo reason and `metadata` carries the figures a caller
needs to act (pool, currency, cap, position).

    DualflowError
    ├── InvalidRequest
    │   └── InvalidObligation          INVALID_OBLIGATION        (bad amount, currency, pools)
    ├── AlreadyExists
    │   └── ObligationConflict         OBLIGATION_ID_REUSED      (same id, other fields)
    ├── NotFound
    │   ├── UnknownWindow              WINDOW_NOT_FOUND
    │   └── UnknownInstruction         INSTRUCTION_NOT_FOUND
    └── PreconditionFailed
        ├── NetDebitCapExceeded        NET_DEBIT_CAP_EXCEEDED    (policy REFUSE)
        ├── IllegalTransition          ILLEGAL_TRANSITION        (window or instruction)
        └── SettlementIncomplete       SETTLEMENT_INCOMPLETE     (pending or unknown left)
"""

from __future__ import annotations

from dualflow.core.errors import AlreadyExists, InvalidRequest, NotFound, PreconditionFailed


class InvalidObligation(InvalidRequest):
    reason = "INVALID_OBLIGATION"


class ObligationConflict(AlreadyExists):
    reason = "OBLIGATION_ID_REUSED"


class UnknownWindow(NotFound):
    reason = "WINDOW_NOT_FOUND"


class UnknownInstruction(NotFound):
    reason = "INSTRUCTION_NOT_FOUND"


class NetDebitCapExceeded(PreconditionFailed):
    """Admitting the obligation would push its debtor's net debit position beyond its cap."""

    reason = "NET_DEBIT_CAP_EXCEEDED"

    def __init__(self, pool: str, currency: str, cap_minor: int, net_debit_after_minor: int,
                 obligation_id: str) -> None:
        super().__init__(
            f"obligation {obligation_id} would take pool {pool}'s net debit in {currency} to "
            f"{net_debit_after_minor}, beyond its cap {cap_minor}",
            metadata={"pool": pool, "currency": currency, "cap_minor": str(cap_minor),
                      "net_debit_after_minor": str(net_debit_after_minor), "obligation_id": obligation_id},
        )
        self.pool = pool
        self.currency = currency
        self.cap_minor = cap_minor
        self.net_debit_after_minor = net_debit_after_minor
        self.obligation_id = obligation_id


class IllegalTransition(PreconditionFailed):
    """A window or a settlement instruction was asked to move where its state machine forbids
    (in particular out of a final state)."""

    reason = "ILLEGAL_TRANSITION"

    def __init__(self, what: str, current: str, requested: str) -> None:
        super().__init__(f"{what} is {current}; it cannot become {requested}",
                         metadata={"subject": what, "current": current, "requested": requested})
        self.subject = what
        self.current = current
        self.requested = requested


class SettlementIncomplete(PreconditionFailed):
    """A window cannot finish while an instruction is pending or unknown."""

    reason = "SETTLEMENT_INCOMPLETE"
