"""The one server interceptor: error mapping, undecodable requests, metrics.

- Domain errors (bundlerec.errors) become gRPC statuses with a google.rpc.ErrorInfo
  (machine-readable reason) and, for InvalidArgument, a google.rpc.BadRequest naming the field.
- A request protobuf cannot parse (invalid UTF-8 in a string...) gets INVALID_ARGUMENT naming the
  field instead of grpc's generic INTERNAL.
- Anything unexpected is logged with its traceback and an error id; the caller gets INTERNAL
  with that id and never a stack trace.
- Every call is counted and timed per method and final status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from bundlerec import errors
from bundlerec.runtime.metrics import RPC_LATENCY, RPC_REQUESTS
from bundlerec.runtime.wire import find_invalid_utf8

# grpc's RpcMethodHandler is a namedtuple at run time (interceptors swap its behaviours with
# _replace), an abstract class without those fields in its type stubs: handled as Any here.
Handler = Any
Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("bundlerec.rpc")

ERROR_DOMAIN = "bundlerec.dev"

_CODES: dict[type[errors.BundlerecError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: errors.BundlerecError) -> grpc.Status:
    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), grpc.StatusCode.UNKNOWN)
    details: list[Any] = []
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN)
    if isinstance(exc, errors.InvalidArgument):
        info.metadata["field"] = exc.field
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.problem)]
            )
        )
    details.insert(0, info)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=exc.message, details=packed)
    )
    return status


class _Undecodable:
    """Stands in for a request protobuf could not parse, so the handler can answer properly."""

    def __init__(self, field: str | None) -> None:
        self.field = field


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_class = getattr(deserialize, "__self__", None)

    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            descriptor = getattr(message_class, "DESCRIPTOR", None)
            return _Undecodable(find_invalid_utf8(descriptor, data) if descriptor else None)

    return deserialize_or_mark


_NO_REFUSAL: tuple[grpc.StatusCode, str, Any] = (grpc.StatusCode.OK, "", ())


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """grpc calls `intercept_service` for every call: the wrapped handler of a method is made once,
    on its first call, and reused (as long as the server hands out the same handler for it)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (health Watch, reflection) pass through untouched
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        wrapped = handler._replace(
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            unary_unary=self._wrap(handler.unary_unary, service.rsplit(".", 1)[-1], method),
        )
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    @staticmethod
    def _wrap(behavior: Callable[..., Any], service: str, method: str) -> Callable[..., Awaitable[Any]]:
        # The metric children of the method, each looked up once (`.labels()` takes a lock and
        # builds its key on every call); a code's counter on its first call, so that no code has a
        # series before it happens.
        ok = grpc.StatusCode.OK
        counters: dict[Any, Any] = {}
        latency = RPC_LATENCY.labels(service, method)
        clock = time.perf_counter
        iscoroutine = asyncio.iscoroutine

        async def handle(request: Any, context: Context) -> Any:
            started = clock()
            code = ok
            refusal: tuple[grpc.StatusCode, str, Any] = _NO_REFUSAL
            try:
                try:
                    if isinstance(request, _Undecodable):
                        if request.field:
                            raise errors.InvalidArgument(request.field, "is not valid UTF-8")
                        raise errors.InvalidArgument("request", "is not a valid protobuf message")
                    result = behavior(request, context)
                    return await result if iscoroutine(result) else result
                except errors.BundlerecError as exc:
                    status = status_for(exc)
                    code = status.code
                    refusal = (status.code, status.details, status.trailing_metadata)
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    remaining = context.time_remaining()
                    expired = remaining is not None and remaining <= 0
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    code = grpc.StatusCode.INTERNAL
                    refusal = (code, _log_unhandled(exc, service, method), ())
                # Aborted here, after the except blocks: raised inside one, the abort would carry the
                # original exception (and its message) as its context, which tracing records.
                await context.abort(*refusal)
            finally:
                counter = counters.get(code)
                if counter is None:
                    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                    counter = counters[code] = RPC_REQUESTS.labels(service, method, name)
                counter.inc()
                latency.observe(clock() - started)

        return handle


def _log_unhandled(exc: Exception, service: str, method: str) -> str:
    """Logs an unexpected error with its type and stack, never its message (messages can carry
    payloads); returns the details for the caller, naming the error id to find it in the log."""
    error_id = uuid.uuid4().hex[:12]
    fields = {
        "rpc": f"{service}/{method}",
        "error_id": error_id,
        "error": type(exc).__name__,
        "stack": "".join(traceback.format_tb(exc.__traceback__)),
    }
    log.error("unhandled error", extra={"fields": fields})
    return f"internal error (error id {error_id}; details are in the server log)"
