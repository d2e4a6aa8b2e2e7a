"""The clearing center (清算中心): inter-pool obligations, netting at cut-off, settlement.

Pure domain, no I/O: `netting` (obligations, net positions, settlement transfers
and their figures), `errors` (the domain error types).
"""

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
__all__ = [
    "IllegalTransition", "InvalidObligation", "NetDebitCapExceeded", "ObligationConflict",
    "SettlementIncomplete", "UnknownInstruction", "UnknownWindow",
    "CurrencyNetting", "net", "net_positions", "NettingOptions", "NettingResult", "Obligation",
    "settle_positions", "SettlementTransfer",
]
