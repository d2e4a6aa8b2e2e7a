"""Domain errors -> gRPC statuses with google.rpc rich details, in one place.

Every status carries exactly one ErrorInfo (reason in UPPER_SNAKE_CASE, domain =
the gRPC service) and at most one of each other detail type: BadRequest for
field violations, RetryInfo when a retry later can succeed. Messages never
carry card numbers, keys or other secrets; domain errors are written that way
and unexpected exceptions are reported as a bare INTERNAL.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dualflow.core.errors import (
    Aborted,
    AlreadyExists,
    DualflowError,
    FieldViolation,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
    Unavailable,
)

_CODES: tuple[tuple[type[DualflowError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (PreconditionFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (Aborted, grpc.StatusCode.ABORTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)


def status_code_for(exc: DualflowError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    domain: str,
    metadata: dict[str, str] | None = None,
    violations: tuple[FieldViolation, ...] = (),
    retry_after_ms: int | None = None,
) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})
    status.details.add().Pack(info)
    if violations:
        bad = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations
        ])
        status.details.add().Pack(bad)
    if retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_after_ms)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


def status_for(exc: DualflowError, domain: str) -> grpc.Status:
    return rich_status(
        status_code_for(exc),
        exc.message,
        reason=exc.reason,
        domain=domain,
        metadata=exc.metadata,
        violations=exc.violations,
        retry_after_ms=exc.retry_after_ms if isinstance(exc, Overloaded) else None,
    )
