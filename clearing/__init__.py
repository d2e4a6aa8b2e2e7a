"""The clearing center (清算中心): inter-pool obligations, netting at cut-off, settlement.

Pure domain, no I/O: `netting` (obligations, net positions, settlement transfers
and their figures), `caps` (net debit caps: refuse or queue), `window` (the
settlement window and instruction state machines), `center` (the sequence of
windows and the hand-overs between them), `errors` (the domain error types).
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
