"""Domain errors: whole-request problems, as types.

Expected per-item failures (a transfer that would overdraw a wallet) are not
exceptions: they are result values (see core.ledger.model). These exceptions are
for a request that cannot be processed at all. The gateway maps each class to a
gRPC status in one place (gateway/errors.py); `reason` becomes the ErrorInfo
reason and `violations` the BadRequest field violations.

    DualflowError
    ├── InvalidRequest        -> INVALID_ARGUMENT
    ├── NotFound              -> NOT_FOUND
    ├── AlreadyExists         -> ALREADY_EXISTS
    ├── PreconditionFailed    -> FAILED_PRECONDITION
    ├── Overloaded            -> RESOURCE_EXHAUSTED (with a retry delay)
    ├── Unavailable           -> UNAVAILABLE (shutting down, storage down)
    ├── Unauthenticated       -> UNAUTHENTICATED (no or unknown credentials)
    └── PermissionDenied      -> PERMISSION_DENIED (known caller, not allowed this)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DualflowError(Exception):
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: tuple[FieldViolation, ...] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.violations = violations
        self.metadata = dict(metadata or {})


class InvalidRequest(DualflowError):
    reason = "INVALID_REQUEST"


class NotFound(DualflowError):
    reason = "NOT_FOUND"


class AlreadyExists(DualflowError):
    reason = "ALREADY_EXISTS"


class PreconditionFailed(DualflowError):
    reason = "FAILED_PRECONDITION"


class Aborted(DualflowError):
    """A concurrent change won (optimistic concurrency): read again, then retry."""

    reason = "ABORTED"


class Overloaded(DualflowError):
    reason = "OVERLOADED"

    def __init__(self, message: str, *, retry_after_ms: int = 50, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_ms = retry_after_ms


class Unavailable(DualflowError):
    reason = "UNAVAILABLE"


class Unauthenticated(DualflowError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DualflowError):
    reason = "PERMISSION_DENIED"
