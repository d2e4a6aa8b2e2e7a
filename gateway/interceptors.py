"""Cross-cutting work for every RPC: malformed-input handling, error mapping, metrics.

Servicers stay thin: they raise domain errors and return protobufs. This
interceptor wraps each method handler once so that
- a request that does not decode is INVALID_ARGUMENT (reason MALFORMED_REQUEST)
  instead of grpc's INTERNAL, and reaches no servicer;
- a DualflowError becomes its status with rich details (gateway/errors.py);
- any other exception is logged and answered as a bare INTERNAL;
- calls are counted by method and status code, with a latency histogram.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from dualflow.core.errors import DualflowError, Unavailable

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
    def __init__(self) -> None:
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
        if handler.unary_unary is not None:
            return handler._replace(
                unary_unary=_wrap_unary(handler.unary_unary, service, method, self),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
        if handler.unary_stream is not None:
            return handler._replace(
                unary_stream=_wrap_stream(handler.unary_stream, service, method),
                request_deserializer=_tolerant(handler.request_deserializer),
            )
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


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], service: str, method: str,
                gate: ServerInterceptor) -> Callable[..., Awaitable[Any]]:
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


def _wrap_stream(behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
    latency = HANDLING_SECONDS.labels(service, method)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
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
