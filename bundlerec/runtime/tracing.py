"""OpenTelemetry tracing, off by default, and the request id that follows a call across services.

A service traces when its `tracing_endpoint` is set (an OTLP/gRPC collector, `http://host:4317` for
plaintext, `https://...` for TLS); empty, nothing here imports OpenTelemetry and no interceptor is
added, so the hot path is exactly as without tracing. When on:

- every RPC a service handles is a server span (health checks and reflection excluded) that
  continues the caller's trace (W3C `traceparent` in the gRPC metadata), and the gateway's calls to
  the three services are client spans that carry the trace on;
- every call has a request id: the caller's `x-request-id` metadata when it sends a valid one
  (at most 128 of `A-Za-z0-9._:-`), else a new one; a Recommend call without one uses its
  recommendation_id. It is sent downstream as `x-request-id`, set on every span as
  `bundlerec.request_id`, and added to JSON log lines as `request_id` (with `trace_id`).

Spans carry no user id and no payload: methods, status codes, peers, request and recommendation ids.
Sampling follows the caller's decision when there is one, else keeps `tracing_sample_ratio` of the
traces. Tests inject an exporter with `configure_tracing(service, settings, exporter=...)`.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from bundlerec.runtime.settings import ServiceSettings

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_ATTRIBUTE = "bundlerec.request_id"
RECOMMENDATION_ID_ATTRIBUTE = "bundlerec.recommendation_id"
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The current call's request id, and whether its caller sent it (a Recommend's own id replaces one
# made up here, never one the caller chose).
_request: ContextVar[tuple[str, bool] | None] = ContextVar("bundlerec_request_id", default=None)
_providers: dict[str, Any] = {}  # service name → its TracerProvider, once tracing is configured


def request_id() -> str:
    """The request id of the call being handled; "" outside one or with tracing off."""
    current = _request.get()
    return current[0] if current else ""


def configure_tracing(service: str, settings: ServiceSettings, exporter: Any = None) -> Any:
    """The TracerProvider of `service` ("gateway", "profile"...), made on first call; None when
    tracing is off (no `tracing_endpoint` and no `exporter`). With `exporter` (a SpanExporter, for
    tests) spans go to it at once instead of in batches to the endpoint."""
    if service in _providers:
        return _providers[service]
    if exporter is None and not settings.tracing_endpoint:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as error:
        raise SystemExit(
            f"bundlerec: tracing_endpoint is set but OpenTelemetry is not installed ({error.name}); "
            "install the tracing extra: pip install 'bundlerec[tracing]'"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"bundlerec-{service}", "service.namespace": "bundlerec"}),
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_endpoint)))
    _providers[service] = provider
    return provider


def shutdown_tracing() -> None:
    """Flushes and closes every provider (their last spans are exported); tracing is off after."""
    for provider in _providers.values():
        provider.shutdown()
    _providers.clear()


def server_interceptors(service: str, settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """To put first in a server's interceptors: [] when tracing is off."""
    provider = configure_tracing(service, settings)
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=provider, filter_=_traced()), _RequestIdServerInterceptor()]


def client_interceptors(service: str, settings: ServiceSettings) -> list[grpc.aio.ClientInterceptor] | None:
    """For the channels `service` opens to others (grpc.aio.*_channel(..., interceptors=...)):
    None when tracing is off."""
    provider = configure_tracing(service, settings)
    if provider is None:
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    def on_request(span: Any, _request_message: Any) -> None:
        if span.is_recording() and (current := request_id()):
            span.set_attribute(REQUEST_ID_ATTRIBUTE, current)

    traced = aio_client_interceptors(tracer_provider=provider, filter_=_traced(), request_hook=on_request)
    return [_RequestIdClientInterceptor(), *traced]


def bind_recommendation(recommendation_id: str) -> None:
    """At the start of a Recommend call: the recommendation id goes on the span, and becomes the
    call's request id unless the caller sent one."""
    current = _request.get()
    if current is None:  # tracing is off (no interceptor set a request id)
        return
    if not current[1]:
        _request.set((recommendation_id, False))
    from opentelemetry import trace

    span = trace.get_current_span()
    span.set_attribute(RECOMMENDATION_ID_ATTRIBUTE, recommendation_id)
    span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id())


def log_fields() -> dict[str, str]:
    """The request and trace ids of the current call, for log lines ({} outside a traced call)."""
    current = _request.get()
    if current is None:
        return {}
    fields = {"request_id": current[0]}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        fields["trace_id"] = format(context.trace_id, "032x")
        fields["span_id"] = format(context.span_id, "016x")
    return fields


def _traced() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES)))


def _incoming_request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
            return value
    return ""


class _RequestIdServerInterceptor(grpc.aio.ServerInterceptor):
    """Sets the call's request id (the caller's or a new one) for the handler, its logs and spans.
    The wrapped handler of a method is made on its first call and reused."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, handler._replace(unary_unary=_with_request_id(handler.unary_unary)))
            self._wrapped[handler_call_details.method] = cached
        return cached[1]


def _with_request_id(behavior: Any) -> Any:
    from opentelemetry import trace

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        incoming = _incoming_request_id(context.invocation_metadata())
        token = _request.set((incoming, True) if incoming else (uuid.uuid4().hex, False))
        try:
            trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id())
            return await behavior(request, context)
        finally:
            _request.reset(token)

    return handle


class _RequestIdClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Sends the current call's request id on as `x-request-id`."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        current = request_id()
        if current:
            sent = [(k, v) for k, v in (client_call_details.metadata or ()) if k != REQUEST_ID_HEADER]
            metadata = grpc.aio.Metadata(*sent)
            metadata.add(REQUEST_ID_HEADER, current)
            client_call_details = client_call_details._replace(metadata=metadata)
        return await continuation(client_call_details, request)
