"""Reconciliation (核算): our information flow against each channel's record of the fund flow.

Public API (what the payment service wires in):

    ReconciliationService(db, adapters, resolver=, fees=)   what a server runs: validated, idempotent
                                   per (channel, day) runs, the discrepancy workflow, page tokens
    DailyReconciliation            the scheduler: every due day of every channel once, caught up
    Reconciler(db, resolver=..., fees=...).run(adapter, business_date) -> RunReport   one run
    Resolver                       protocol the payment service implements to apply MARK_SUCCEEDED /
                                   MARK_FAILED through its state machine ("resolved by reconciliation <run>")
                                   (core/payments/resolution.py StatementResolver)
    FeePoster                      protocol for posting a statement's fees (core/payments ChannelFees)
    ReconciliationStore            runs, counts per class, proposed actions, EXPECTED carried forward
    DiscrepancyService             list / assign / resolve (refund, manual_posting, write_off) with audit
    reconcile(lines, instructions, policy, lookup=..., tally=...)   the pure engine: yields Results
    read_instructions / lookup_instructions                          our side, read-only, paged
    classify, Class, Action, Instruction, Line, Result, Policy       the rule and its data

Modules: `model` (classes, actions, the rule), `engine` (the partitioned join), `ours` (payments
and refunds tables), `store` (schema, runs, discrepancies), `runner` (a run, the Resolver),
`service` (validation, idempotency, pages), `scheduler` (the daily task), `internal` (ours vs ours),
`drift` (each channel's reported balance against our receivable for it), `metrics`.
"""

from .engine import Tally, reconcile
from .model import Action, Class, Instruction, Line, Policy, Result, classify
from .ours import fee_model, lookup_instructions, read_instructions
from .runner import FeePoster, Reconciler, Resolver, RunReport
from .scheduler import DailyReconciliation, ScheduleSettings
from .service import ReconciliationService
from .store import (
    RECON_SCHEMA,
    BadResolution,
    Discrepancy,
    DiscrepancyClosed,
    DiscrepancyNotFound,
    DiscrepancyService,
    ReconciliationStore,
    Run,
    ensure_schema,
)

__all__ = [
    "RECON_SCHEMA", "Action", "BadResolution", "Class", "DailyReconciliation", "Discrepancy", "DiscrepancyClosed",
    "DiscrepancyNotFound", "DiscrepancyService", "FeePoster", "Instruction", "Line", "Policy", "Reconciler",
    "ReconciliationService", "ReconciliationStore", "Resolver", "Result", "Run", "RunReport", "ScheduleSettings",
    "Tally", "classify", "ensure_schema", "fee_model", "lookup_instructions", "read_instructions", "reconcile",
]
