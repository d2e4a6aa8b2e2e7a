"""The `dualflow.v1.Clearing` gRPC service: protobuf <-> clearing/service.py's `ClearingService`,
which validates, stores and answers. Domain errors become statuses in the interceptor."""

from __future__ import annotations

import grpc

from dualflow.clearing.caps import Admission
from dualflow.clearing.netting import Obligation
from dualflow.clearing.service import ClearingService, PositionView
from dualflow.clearing.window import InstructionState, SettlementInstruction, SettlementWindow, WindowState
from dualflow.core.errors import FieldViolation, InvalidRequest
from dualflow.v1 import clearing_pb2 as pb
from dualflow.v1 import clearing_pb2_grpc

_WINDOW_STATE = {WindowState.OPEN: pb.WINDOW_OPEN, WindowState.CLOSED: pb.WINDOW_CLOSED,
                 WindowState.SETTLING: pb.WINDOW_SETTLING, WindowState.SETTLED: pb.WINDOW_SETTLED,
                 WindowState.PARTIALLY_SETTLED: pb.WINDOW_PARTIALLY_SETTLED}
_INSTRUCTION_STATE = {InstructionState.PENDING: pb.INSTRUCTION_PENDING,
                      InstructionState.SUCCEEDED: pb.INSTRUCTION_SUCCEEDED,
                      InstructionState.FAILED: pb.INSTRUCTION_FAILED,
                      InstructionState.UNKNOWN: pb.INSTRUCTION_UNKNOWN}
_INSTRUCTION_STATE_FROM_PB = {v: k for k, v in _INSTRUCTION_STATE.items()}
_ADMISSION = {Admission.ADMITTED: pb.OBLIGATION_ADMITTED, Admission.QUEUED: pb.OBLIGATION_QUEUED}


def obligation_to_pb(o: Obligation) -> pb.Obligation:
    return pb.Obligation(obligation_id=o.obligation_id, debtor_pool=o.debtor_pool, creditor_pool=o.creditor_pool,
                         amount_minor=o.amount_minor, currency=o.currency)


def position_to_pb(view: PositionView) -> pb.Position:
    p = view.position
    return pb.Position(pool=p.pool, currency=p.currency, owes_minor=p.debits_minor, owed_minor=p.credits_minor,
                       net_minor=p.net_minor, net_debit_minor=p.net_debit_minor, cap_minor=view.cap_minor,
                       queued_count=view.queued_count, queued_minor=view.queued_minor)


def instruction_to_pb(i: SettlementInstruction) -> pb.SettlementInstruction:
    return pb.SettlementInstruction(
        instruction_id=i.instruction_id, window_id=i.window_id, index=i.index, payer_pool=i.payer_pool,
        payee_pool=i.payee_pool, amount_minor=i.amount_minor, currency=i.currency,
        state=_INSTRUCTION_STATE[i.state], reason=i.reason, reference=i.reference, retry_of=i.retry_of or "",
        retried_by=i.retried_by or "", carried_as=i.carried_as or "", attempts=i.attempts,
        updated_at_ns=i.updated_at_ns)


class ClearingServicer(clearing_pb2_grpc.ClearingServicer):
    def __init__(self, clearing: ClearingService) -> None:
        self.clearing = clearing

    def _window_to_pb(self, w: SettlementWindow) -> pb.Window:
        next_cutoff = self.clearing.next_cutoff_ns() if w.state is WindowState.OPEN else None
        return pb.Window(
            window_id=w.window_id, state=_WINDOW_STATE[w.state], opened_at_ns=w.opened_at_ns,
            closed_at_ns=w.closed_at_ns, finished_at_ns=w.finished_at_ns, next_cutoff_ns=next_cutoff or 0,
            obligation_count=len(w.obligations), queued_count=len(w.queued),
            positions=[position_to_pb(v) for v in self.clearing.positions_of(w)],
            netting=[pb.CurrencyNetting(
                currency=s.currency, gross_minor=s.gross_minor, net_minor=s.net_minor, efficiency=float(s.efficiency),
                obligation_count=s.obligation_count, pools_nonzero=s.pools_nonzero,
                transfer_count=s.transfer_count, transfer_bound=max(s.pools_nonzero - 1, 0), optimal=s.optimal)
                for s in w.summaries],
            instructions=[instruction_to_pb(i) for i in w.instructions],
            failed_instruction_ids=w.failed_instruction_ids)

    async def RecordObligation(self, request: pb.RecordObligationRequest,
                               context: grpc.aio.ServicerContext) -> pb.RecordObligationResponse:
        o = request.obligation
        recorded = await self.clearing.record(o.obligation_id, o.debtor_pool, o.creditor_pool, o.amount_minor,
                                              o.currency)
        return pb.RecordObligationResponse(
            obligation=obligation_to_pb(recorded.obligation), status=_ADMISSION[recorded.status],
            window_id=recorded.window_id, replayed=recorded.replayed,
            released_obligation_ids=list(recorded.released))

    async def GetPositions(self, request: pb.GetPositionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetPositionsResponse:
        window_id, views = await self.clearing.positions(request.currency)
        return pb.GetPositionsResponse(window_id=window_id, positions=[position_to_pb(v) for v in views])

    async def CloseWindow(self, request: pb.CloseWindowRequest, context: grpc.aio.ServicerContext) -> pb.Window:
        return self._window_to_pb(await self.clearing.close_window(request.window_id))

    async def GetWindow(self, request: pb.GetWindowRequest, context: grpc.aio.ServicerContext) -> pb.Window:
        return self._window_to_pb(await self.clearing.window(request.window_id))

    async def ListSettlements(self, request: pb.ListSettlementsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListSettlementsResponse:
        states = []
        for i, value in enumerate(request.states):
            if value not in _INSTRUCTION_STATE_FROM_PB:
                raise InvalidRequest("states holds a value that is not an instruction state",
                                     reason="STATE_INVALID",
                                     violations=(FieldViolation(f"states[{i}]", "must be PENDING, SUCCEEDED, "
                                                                                "FAILED or UNKNOWN"),))
            states.append(_INSTRUCTION_STATE_FROM_PB[value])
        found, token = await self.clearing.settlements(window_id=request.window_id, states=states,
                                                       page_size=request.page_size, page_token=request.page_token)
        return pb.ListSettlementsResponse(instructions=[instruction_to_pb(i) for i in found], next_page_token=token)

    async def GetPoolBalances(self, request: pb.GetPoolBalancesRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetPoolBalancesResponse:
        report = await self.clearing.pool_report(request.currency)
        return pb.GetPoolBalancesResponse(
            pools=[pb.PoolBalance(pool=b.pool, currency=b.currency, account_id=b.account_id,
                                  balance_minor=b.balance_minor, pending_in_minor=b.pending_in_minor,
                                  pending_out_minor=b.pending_out_minor) for b in report.balances],
            invariant=[pb.PoolInvariant(currency=i.currency, pools_minor=i.pools_minor,
                                        in_transit_minor=i.in_transit_minor, wallets_minor=i.wallets_minor,
                                        merchants_minor=i.merchants_minor, own_funds_minor=i.own_funds_minor,
                                        unclassified_minor=i.unclassified_minor,
                                        difference_minor=i.difference_minor) for i in report.invariant])
