"""The `dualflow.v1.Reconciliation` gRPC service: protobuf <-> reconciliation/service.py's
`ReconciliationService`, which validates, runs, stores and answers. Domain errors become statuses
in the interceptor; the acting caller (for the audit trail) is the authenticated one."""

from __future__ import annotations

import json

import grpc

from dualflow.core.errors import FieldViolation, InvalidRequest
from dualflow.reconciliation.model import Class
from dualflow.reconciliation.runner import RunReport
from dualflow.reconciliation.service import ReconciliationService
from dualflow.reconciliation.store import Discrepancy, ResultRow
from dualflow.v1 import reconciliation_pb2 as pb
from dualflow.v1 import reconciliation_pb2_grpc

from .auth import current_caller

_CLASS = {c.value: getattr(pb, f"RECONCILIATION_CLASS_{c.value}") for c in Class}
_CLASS_FROM_PB = {v: k for k, v in _CLASS.items()}
_RUN_STATE = {"running": pb.RUN_STATE_RUNNING, "completed": pb.RUN_STATE_COMPLETED,
              "rejected": pb.RUN_STATE_REJECTED, "failed": pb.RUN_STATE_FAILED}
_STATUS = {"open": pb.DISCREPANCY_STATUS_OPEN, "assigned": pb.DISCREPANCY_STATUS_ASSIGNED,
           "resolved": pb.DISCREPANCY_STATUS_RESOLVED}
_STATUS_FROM_PB = {v: k for k, v in _STATUS.items()}
_ACTION = {"refund": pb.RESOLUTION_ACTION_REFUND, "manual_posting": pb.RESOLUTION_ACTION_MANUAL_POSTING,
           "write_off": pb.RESOLUTION_ACTION_WRITE_OFF}
_ACTION_FROM_PB = {v: k for k, v in _ACTION.items()}


def run_to_pb(report: RunReport) -> pb.ReconciliationRun:
    r = report.run
    counts = []
    for cls in Class:  # the engine's order: MATCHED first, EXPECTED last
        found = report.counts.get(cls.value)
        if found is None:
            continue
        counts.append(pb.ClassCount(
            match_class=_CLASS[cls.value], lines=found["lines"], instructions=found["instructions"],
            amount_minor={k.removeprefix("amount_minor:"): v for k, v in found.items()
                          if k.startswith("amount_minor:")}))
    return pb.ReconciliationRun(
        run_id=r.run_id, channel=r.channel, business_date=r.business_date, attempt=r.attempt,
        state=_RUN_STATE.get(r.state, pb.RUN_STATE_UNSPECIFIED), started_at_ns=r.started_at_ns,
        finished_at_ns=r.finished_at_ns, lines=r.lines, instructions=r.instructions, error_reason=r.error_reason,
        error_line=r.error_line, detail=r.detail, counts=counts, auto_resolved=report.applied,
        auto_refused=report.refused, replayed=report.replayed, results=report.results,
        fees=[pb.FeeTotal(currency=c, lines=n, fee_minor=f, posted_now=p)
              for c, (n, f, p) in sorted(report.fees.items())])


def discrepancy_to_pb(d: Discrepancy) -> pb.ReconciliationDiscrepancy:
    return pb.ReconciliationDiscrepancy(
        discrepancy_id=d.discrepancy_id, channel=d.channel, business_date=d.business_date,
        match_class=_CLASS[d.cls.value], instruction_id=d.instruction_id, object_id=d.object_id,
        first_run_id=d.first_run_id, last_run_id=d.last_run_id, status=_STATUS[d.status], assignee=d.assignee,
        resolution_action=_ACTION.get(d.resolution_action, pb.RESOLUTION_ACTION_UNSPECIFIED),
        resolution_reason=d.resolution_reason, opened_at_ns=d.opened_at_ns, updated_at_ns=d.updated_at_ns,
        version=d.version, detail=str(d.body.get("detail", "")),
        body_json=json.dumps(d.body, separators=(",", ":"), sort_keys=True))


def _enum(value: int, table: dict[int, str], field: str, what: str) -> str:
    if value == 0:
        return ""
    if value not in table:
        raise InvalidRequest(f"{field} is not {what}", reason="RECONCILIATION_INVALID",
                             violations=(FieldViolation(field, f"must be {what}"),))
    return table[value]


class ReconciliationServicer(reconciliation_pb2_grpc.ReconciliationServicer):
    def __init__(self, service: ReconciliationService) -> None:
        self.service = service

    async def RunReconciliation(self, request: pb.RunReconciliationRequest,
                                context: grpc.aio.ServicerContext) -> pb.ReconciliationRun:
        return run_to_pb(await self.service.run(request.channel, request.business_date, force=request.force))

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.ReconciliationRun:
        return run_to_pb(await self.service.get_run(request.run_id))

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        runs, token = await self.service.list_runs(channel=request.channel, business_date=request.business_date,
                                                   page_size=request.page_size, page_token=request.page_token)
        return pb.ListRunsResponse(runs=[run_to_pb(r) for r in runs], next_page_token=token)

    async def ListDiscrepancies(self, request: pb.ListDiscrepanciesRequest,
                                context: grpc.aio.ServicerContext) -> pb.ListDiscrepanciesResponse:
        status = _enum(request.status, _STATUS_FROM_PB, "status", "a discrepancy status")
        cls = _enum(request.match_class, _CLASS_FROM_PB, "match_class", "a reconciliation class")
        found, token = await self.service.list_discrepancies(
            status=status, cls=cls, channel=request.channel, min_age_s=request.min_age_s,
            page_size=request.page_size, page_token=request.page_token)
        return pb.ListDiscrepanciesResponse(discrepancies=[discrepancy_to_pb(d) for d in found],
                                            next_page_token=token)

    async def AssignDiscrepancy(self, request: pb.AssignDiscrepancyRequest,
                                context: grpc.aio.ServicerContext) -> pb.ReconciliationDiscrepancy:
        return discrepancy_to_pb(await self.service.assign(request.discrepancy_id, request.assignee,
                                                           current_caller().name))

    async def ResolveDiscrepancy(self, request: pb.ResolveDiscrepancyRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ReconciliationDiscrepancy:
        action = _ACTION_FROM_PB.get(request.action, "")  # unset or unknown: the service names the field
        return discrepancy_to_pb(await self.service.resolve(request.discrepancy_id, action, request.reason,
                                                            current_caller().name))

    async def GetDiscrepancyHistory(self, request: pb.GetDiscrepancyHistoryRequest,
                                    context: grpc.aio.ServicerContext) -> pb.GetDiscrepancyHistoryResponse:
        found, events = await self.service.history(request.discrepancy_id)
        return pb.GetDiscrepancyHistoryResponse(
            discrepancy=discrepancy_to_pb(found),
            events=[pb.DiscrepancyEvent(version=v, at_ns=t, actor=a, event=e, detail=x) for v, t, a, e, x in events])

    async def ListRunResults(self, request: pb.ListRunResultsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListRunResultsResponse:
        rows, token, total = await self.service.list_results(request.run_id, page_size=request.page_size,
                                                            page_token=request.page_token)
        return pb.ListRunResultsResponse(results=[result_to_pb(r) for r in rows], next_page_token=token, total=total)

    async def RunInternalCheck(self, request: pb.RunInternalCheckRequest,
                               context: grpc.aio.ServicerContext) -> pb.InternalCheckResult:
        report = await self.service.internal_check(request.findings_max)
        return pb.InternalCheckResult(
            checked_at_ns=report.checked_at_ns, counts=report.counts, payments_checked=report.payments,
            refunds_checked=report.refunds, transfers_scanned=report.transfers,
            findings=[pb.InternalFinding(kind=f.kind, subject=f.subject, detail=f.detail) for f in report.findings],
            truncated=sum(report.counts.values()) > len(report.findings))


def result_to_pb(r: ResultRow) -> pb.RunResult:
    return pb.RunResult(
        position=r.position, match_class=_CLASS.get(r.cls, pb.RECONCILIATION_CLASS_UNSPECIFIED), action=r.action,
        instruction_id=r.instruction_id, channel_reference=r.channel_reference, kind=r.kind, object_id=r.object_id,
        has_ours=r.has_ours, our_amount_minor=r.our_amount_minor, our_currency=r.our_currency,
        our_status=r.our_status, has_theirs=r.has_theirs, their_amount_minor=r.their_amount_minor,
        their_currency=r.their_currency, their_status=r.their_status, their_fee_minor=r.their_fee_minor,
        line_count=r.line_count, discrepancy_id=r.discrepancy_id, detail=r.detail)
