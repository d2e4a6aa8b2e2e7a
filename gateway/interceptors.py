"""Cross-cutting work for every RPC: malformed-input handling, error mapping, metrics.

Servicers stay thin: they raise domain errors and return protobufs. This
interceptor wraps each method handler once so that
- a call of a dualflow service is admitted by access control (gateway/auth.py:
  caller authenticated, permission checked, rate-limit token taken) and its
  caller made current before the servicer runs; a refused call reaches no
  servicer;
- a request that does not decode is INVALID_ARGUMENT (reason MALFORMED_REQUEST)
  instead of grpc's INTERNAL, and reaches no servicer;
- a DualflowError becomes its status with rich details (gateway/errors.py);
- any other exception is logged and answered as a bare INTERNAL;
- calls are counted by method and status code, with a latency histogram.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from dualflow.core.errors import DualflowError, Unavailable

from .auth import AccessControl, Admission, set_current_caller
from .errors import rich_status, status_for

log = logging.getLogger(__name__)

HANDLED = Counter(
    "dualflow_grpc_server_handled_total",
    "RPCs completed, by method and gRPC status code.",
    ["service", "method", "code"],
)
HANDLING_SECONDS = Histogram(
    "dualflow_grpc_server_handling_seconds",
    "RPC latency from the first byte of the request to the last of the response.",
    ["service", "method"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
IN_FLIGHT = Gauge("dualflow_grpc_server_in_flight", "RPCs being handled now.", ["service"])


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the caller's malformed input
            return _Malformed(exc)

    return parse


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, access: AccessControl | None = None) -> None:
        # No access control given: no callers, so authentication is disabled and every
        # dualflow call runs as auth.ANONYMOUS.
        self.access = access if access is not None else AccessControl()
        # Graceful shutdown (Platform.stop in gateway/server.py): once `draining`, new dualflow
        # calls are answered UNAVAILABLE at once, and the server waits for `in_flight` to reach
        # zero before it stops grpc.
        self.draining = False
        self.in_flight = 0
        # grpc.aio asks the interceptor on every call; wrapping once per method keeps
        # the per-call cost to one dict lookup (it is a large share of a unary call).
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method  # "/dualflow.v1.Ledger/CreateTransfers"
        key = (full, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._wrap(handler, full)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full: str) -> grpc.RpcMethodHandler:
        service, _, method = full.lstrip("/").partition("/")
        # Decided once per method: which permission it needs (None: a public service).
        admit = self.access.admission(full)
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=_wrap_unary(handler.unary_unary, service, method, self, admit),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_wrap_stream(handler.unary_stream, service, method, admit),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        if admit is None:
            return handler
        # Client-streaming methods (none in dualflow.v1 yet) must not slip past access control.
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_admit_unary(handler.stream_unary, service, admit))
        if handler.stream_stream is not None:
            behavior = handler.stream_stream
            # A bidirectional method is either an async generator or a coroutine that calls context.write.
            wrap = _wrap_admit_stream if inspect.isasyncgenfunction(behavior) else _wrap_admit_unary
            return handler._replace(stream_stream=wrap(behavior, service, admit))
        return handler


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, service: str) -> None:
    if isinstance(exc, DualflowError):
        status = status_for(exc, service)
    elif isinstance(exc, _Malformed):
        status = rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request message could not be decoded",
            reason="MALFORMED_REQUEST",
            domain=service,
        )
    else:
        log.error("unexpected error in %s", service, exc_info=exc)
        status = rich_status(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL", domain=service)
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


async def _admit(admit: Admission, context: grpc.aio.ServicerContext, service: str) -> None:
    """Authenticate, authorize and rate-limit the call, or abort it with the refusal's status.

    The caller is set in the call's own task context (grpc.aio runs each call in
    its own task), so it needs no reset and cannot leak into another call.
    """
    try:
        set_current_caller(admit(context))
    except DualflowError as exc:
        await _abort_for(exc, context, service)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], service: str, method: str,
                gate: ServerInterceptor, admit: Admission | None) -> Callable[..., Awaitable[Any]]:
    handled = {}
    latency = HANDLING_SECONDS.labels(service, method)
    in_flight = IN_FLIGHT.labels(service)

    def count(code: str) -> None:
        c = handled.get(code)
        if c is None:
            c = handled[code] = HANDLED.labels(service, method, code)
        c.inc()

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        in_flight.inc()
        gate.in_flight += 1
        try:
            if gate.draining and service.startswith("dualflow."):  # health and reflection keep answering
                await _abort_for(Unavailable("the server is shutting down; retry on another instance",
                                             reason="SHUTTING_DOWN"), context, service)
            if admit is not None:  # inline of _admit: this is the ledger's hot path
                try:
                    set_current_caller(admit(context))
                except DualflowError as exc:
                    await _abort_for(exc, context, service)
            if isinstance(request, _Malformed):
                await _abort_for(request, context, service)
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure becomes one status, in _abort_for
                await _abort_for(exc, context, service)
        finally:
            gate.in_flight -= 1
            in_flight.dec()
            latency.observe(time.perf_counter() - started)
            count(_code_of(context))

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], service: str, method: str,
                 admit: Admission | None) -> Callable[..., Any]:
    latency = HANDLING_SECONDS.labels(service, method)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            if admit is not None:
                await _admit(admit, context, service)
            if isinstance(request, _Malformed):
                await _abort_for(request, context, service)
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await _abort_for(exc, context, service)
        finally:
            latency.observe(time.perf_counter() - started)
            HANDLED.labels(service, method, _code_of(context)).inc()

    return wrapped


def _wrap_admit_unary(behavior: Callable[..., Awaitable[Any]], service: str,
                      admit: Admission) -> Callable[..., Awaitable[Any]]:
    """Access control and error mapping for a client-streaming method answered by a coroutine."""

    async def wrapped(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await _admit(admit, context, service)
        try:
            return await behavior(request_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort_for(exc, context, service)

    return wrapped


def _wrap_admit_stream(behavior: Callable[..., Any], service: str, admit: Admission) -> Callable[..., Any]:
    """Access control and error mapping for a bidirectional method written as an async generator."""

    async def wrapped(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await _admit(admit, context, service)
        try:
            async for item in behavior(request_iterator, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort_for(exc, context, service)

    return wrapped
