"""Assembles and runs a grpc.aio server for any bundlerec service.

Each service provides a `ServiceParts` (what to register, how to tell it is ready, how to close);
this module adds what every service shares: the interceptor, the standard health service driven
by real readiness checks, reflection, Prometheus metrics, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bundlerec.runtime.auth import AuthInterceptor, AuthPolicy
from bundlerec.runtime.interceptor import ServiceInterceptor
from bundlerec.runtime.metrics import start_metrics_endpoint, time_garbage_collections
from bundlerec.runtime.settings import ServiceSettings
from bundlerec.runtime.tls import server_credentials
from bundlerec.runtime.tracing import server_interceptors

log = logging.getLogger("bundlerec.server")

READINESS_TIMEOUT_SECONDS = 5.0
# Liveness, apart from readiness: SERVING while the process answers at all, so a probe of it does not
# restart a pod that is only waiting for its database or model (readiness: the "" service).
LIVENESS_SERVICE = "bundlerec.liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _always_ready() -> str | None:
    return None


async def _nothing_to_close() -> None:
    return None


@dataclass
class ServiceParts:
    """What one service contributes to its server."""

    name: str  # "profile", "candidate"...
    register: Callable[[grpc.aio.Server], None]  # adds the servicers
    service_names: list[str]  # full gRPC service names, for health and reflection
    # Returns None when ready to serve, else why not (logged, and health says NOT_SERVING).
    readiness: Callable[[], Awaitable[str | None]] = _always_ready
    close: Callable[[], Awaitable[None]] = _nothing_to_close


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    parts: ServiceParts
    grace_seconds: float
    health_server: grpc.aio.Server | None = None  # on health_port (plaintext, health only), when one is set
    health_port: int = 0
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def stop(self) -> None:
        """Stop accepting calls, let in-flight ones finish within the grace period, close.
        Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        if self._watcher:  # let a readiness check in progress finish (it is bounded): cancelling could leak
            await self._watcher
        await self.server.stop(self.grace_seconds)
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.parts.close()
        log.info("stopped", extra={"fields": {"service": self.parts.name}})


async def _watch_readiness(
    health_servicer: health.aio.HealthServicer, parts: ServiceParts, interval: float, stopping: asyncio.Event
) -> None:
    last: str | None = "starting"
    while not stopping.is_set():
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
                problem = await parts.readiness()
        except TimeoutError:
            problem = f"readiness check took over {READINESS_TIMEOUT_SECONDS} s"
        except Exception as exc:  # a readiness check must never kill the server
            problem = f"readiness check failed: {type(exc).__name__}"
        if problem != last:
            state = "ready" if problem is None else "not ready"
            log.info(state, extra={"fields": {"service": parts.name, "reason": problem}})
            if (problem is None) != (last is None):  # the health status changes (nothing else sets it)
                status = SERVING if problem is None else NOT_SERVING
                for name in ["", *parts.service_names]:
                    await health_servicer.set(name, status)
            last = problem
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)


async def _start_health_server(settings: ServiceSettings, servicer: health.aio.HealthServicer) -> grpc.aio.Server:
    """Only the health service, plaintext, on its own port: the kubelet's gRPC probes speak neither
    TLS nor tokens, so a service with TLS on its main port is probed here. It tells nothing but the
    state that the main port's health service also reports."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a port taken by another process: fail
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{settings.host}:{settings.health_port}") == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.health_port} (health_port)")
    await server.start()
    return server


async def start_server(settings: ServiceSettings, parts: ServiceParts) -> RunningServer:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    credentials = server_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    # tracing (when on) outermost, so its span covers everything, refusals included
    # then authorization, before anything looks at the request (it counts its refusals itself)
    interceptors: list[grpc.aio.ServerInterceptor] = list(server_interceptors(parts.name, settings))
    if settings.auth_file and credentials is None:
        log.warning("authentication without TLS: tokens cross the network in the clear",
                    extra={"fields": {"service": parts.name}})
    if settings.auth_file:
        interceptors.append(AuthInterceptor(AuthPolicy.load(settings.auth_file, parts.service_names), parts.name))
    interceptors.append(ServiceInterceptor())
    server = grpc.aio.server(interceptors=interceptors, options=options)
    parts.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *parts.service_names]:
        await health_servicer.set(name, NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, SERVING)
    reflection.enable_server_reflection(
        [*parts.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    health_server = await _start_health_server(settings, health_servicer) if settings.health_port else None
    start_metrics_endpoint(settings.host, settings.metrics_port)
    await server.start()
    running = RunningServer(
        server, port, health_servicer, parts, settings.grace_seconds, health_server, settings.health_port
    )
    running._watcher = asyncio.create_task(
        _watch_readiness(health_servicer, parts, settings.health_interval_seconds, running._stopping)
    )
    log.info(
        "listening",
        extra={
            "fields": {
                "service": parts.name,
                "address": f"{settings.host}:{port}",
                "metrics_port": settings.metrics_port,
                "tls": "mutual" if settings.tls_client_ca_file else ("on" if credentials else "off"),
                "authentication": "on" if settings.auth_file else "off",
            }
        },
    )
    return running


def run_loop(main: Coroutine[Any, Any, None], event_loop: str = "auto") -> None:
    """Runs a service's main coroutine on uvloop (libuv's event loop: less CPU per gRPC call than
    the standard loop) when asked or, with "auto", when it is installed; else with asyncio.run."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise SystemExit("event_loop = uvloop, but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def serve_until_signal(settings: ServiceSettings, parts: ServiceParts) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(settings, parts)
    # What start-up built (models, indexes, catalogues, vocabularies) lives as long as the process:
    # out of the collector's sight, a full collection no longer walks it and pauses every call in
    # flight (seen as 70-100 ms outliers every 15-30 s under load, bench/loadtest.py).
    gc.collect()
    gc.freeze()
    time_garbage_collections()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"fields": {"service": parts.name, "grace_seconds": settings.grace_seconds}})
    await running.stop()
