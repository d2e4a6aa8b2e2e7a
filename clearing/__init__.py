"""The clearing center (清算中心): inter-pool obligations, netting at cut-off, settlement.

The domain, pure and without I/O: `netting` (obligations, net positions,
settlement transfers and their figures), `caps` (net debit caps: refuse or
queue), `window` (the settlement window and instruction state machines),
`center` (the sequence of windows and the hand-overs between them), `errors`
(the domain error types), `settings` (what the service is configured with).

The service around it: `store` (the tables, chained writes in the ledger's group
commit, rebuild), `pools` (pool accounts in the ledger and the reserve-fund
invariant), `settlement` (the `SettlementExecutor` interface the payment gateway
implements, and a scripted twin), `service` (`ClearingService`: validation,
idempotency, cut-off, the settlement driver), `metrics`.
"""

from .caps import Admission, CapPolicy, NetDebitCaps, NO_CAPS, PoolPosition, PositionBook, Submission
from .center import ClearingCenter, default_window_id
from .errors import (
    IllegalTransition,
    InvalidObligation,
    NetDebitCapExceeded,
    ObligationConflict,
    SettlementIncomplete,
    UnknownInstruction,
    UnknownWindow,
)
from .netting import (
    CurrencyNetting,
    net,
    net_positions,
    NettingOptions,
    NettingResult,
    Obligation,
    settle_positions,
    SettlementTransfer,
)
from .window import (
    carried_obligation_id,
    CurrencySummary,
    instruction_id_for,
    InstructionState,
    SettlementInstruction,
    SettlementWindow,
    WindowState,
)

__all__ = [
    "Admission", "CapPolicy", "NetDebitCaps", "NO_CAPS", "PoolPosition", "PositionBook", "Submission",
    "ClearingCenter", "default_window_id",
    "IllegalTransition", "InvalidObligation", "NetDebitCapExceeded", "ObligationConflict",
    "SettlementIncomplete", "UnknownInstruction", "UnknownWindow",
    "CurrencyNetting", "net", "net_positions", "NettingOptions", "NettingResult", "Obligation",
    "settle_positions", "SettlementTransfer",
    "carried_obligation_id", "CurrencySummary", "instruction_id_for", "InstructionState",
    "SettlementInstruction", "SettlementWindow", "WindowState",
]
