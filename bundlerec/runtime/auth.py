"""Per-caller authentication and authorization for every RPC of a service.

A service started with an auth file (`BUNDLEREC_<SERVICE>_AUTH_FILE`) accepts a call only from a
caller that file lists, and only for the RPCs listed for that caller:

    [[caller]]
    name = "gateway"
    token_sha256 = ["<sha256 hex of the bearer token>"]   # sent as `authorization: Bearer <token>`
    certificate_names = ["gateway.bundlerec.svc"]         # or a client certificate (mutual TLS)
    allow = ["bundlerec.v1.ProfileService/*"]              # full gRPC names; "Service/*"; "*"

The file holds digests, never tokens, so it is not a secret (a ConfigMap); the tokens live in the
callers' secrets. A call without credentials, with an unknown token or with an unknown certificate
gets UNAUTHENTICATED; a known caller calling an RPC it is not allowed gets PERMISSION_DENIED. The
health service stays open (the kubelet probes it without credentials).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import tomllib
from asyncio import iscoroutine
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bundlerec.runtime.interceptor import Context, Handler
from bundlerec.runtime.metrics import RPC_REQUESTS

log = logging.getLogger("bundlerec.auth")

OPEN_SERVICES = ("grpc.health.v1.Health",)
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


class Caller(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    token_sha256: list[str] = Field(default_factory=list)
    certificate_names: list[str] = Field(default_factory=list)
    allow: list[str] = Field(min_length=1)

    @field_validator("token_sha256")
    @classmethod
    def _hex_digests(cls, digests: list[str]) -> list[str]:
        for digest in digests:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("each entry must be the 64-character hex SHA-256 of a token")
        return [d.lower() for d in digests]

    def allows(self, method: str) -> bool:
        service = method.rpartition("/")[0]
        return any(rule in ("*", method, f"{service}/*") for rule in self.allow)


class AuthPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    caller: list[Caller] = Field(min_length=1)

    @classmethod
    def load(cls, path: str, known_services: Iterable[str]) -> AuthPolicy:
        """Reads and checks an auth file; a bad one stops the start, naming the problem."""
        policy = cls.parse(path)
        policy._check(path, set(known_services) | {REFLECTION_SERVICE})
        return policy

    @classmethod
    def parse(cls, path: str, what: str = "auth file") -> AuthPolicy:
        """The file's callers, checked field by field only (the operator console checks its own
        allow rules); a file that cannot be read or parsed stops the start, naming the problem."""
        try:
            return cls.model_validate(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            raise SystemExit(f"{what} {path}: cannot read it ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"{what} {path}: not valid TOML ({exc})") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise SystemExit(f"{what} {path}: {problems}") from None

    def _check(self, path: str, services: set[str]) -> None:
        names = [c.name for c in self.caller]
        if len(set(names)) != len(names):
            raise SystemExit(f"auth file {path}: caller names must be unique")
        digests = [d for c in self.caller for d in c.token_sha256]
        if len(set(digests)) != len(digests):
            raise SystemExit(f"auth file {path}: a token digest is listed for two callers")
        certificates = [n for c in self.caller for n in c.certificate_names]
        if len(set(certificates)) != len(certificates):
            raise SystemExit(f"auth file {path}: a certificate name is listed for two callers")
        for index, caller in enumerate(self.caller):
            if not caller.token_sha256 and not caller.certificate_names:
                raise SystemExit(
                    f"auth file {path}: caller.{index} ({caller.name}) has no token_sha256 "
                    "and no certificate_names: it could never authenticate"
                )
            for rule in caller.allow:
                service, _, method = rule.rpartition("/")
                if rule != "*" and service not in services:
                    raise SystemExit(
                        f"auth file {path}: caller.{index}.allow: {rule!r} names no service of "
                        f"this server ({', '.join(sorted(services))})"
                    )
                if rule != "*" and method != "*" and method not in _methods(service):
                    raise SystemExit(
                        f"auth file {path}: caller.{index}.allow: {rule!r}: {service} has no method {method!r} "
                        f"({', '.join(sorted(_methods(service)))})"
                    )

    def by_token(self, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        found = None
        for caller in self.caller:  # compare with every digest, in constant time each
            for known in caller.token_sha256:
                if hmac.compare_digest(known, digest):
                    found = caller
        return found

    def by_certificate(self, names: Iterable[str]) -> Caller | None:
        presented = set(names)
        return next((c for c in self.caller if presented.intersection(c.certificate_names)), None)


def _methods(service: str) -> set[str]:
    try:
        return set(descriptor_pool.Default().FindServiceByName(service).methods_by_name)
    except KeyError:
        return set()


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _certificate_names(context: Context) -> list[str]:
    auth = context.auth_context()
    values = [*auth.get("x509_common_name", []), *auth.get("x509_subject_alternative_name", [])]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


# Returns None to let a call through, else the status and details to refuse it with.
Decide = Callable[[Context], tuple[grpc.StatusCode, str] | None]


def _guarded(handler: Handler, decide: Decide) -> Handler:
    """The same handler, with `decide` run before its behaviour (and the call aborted if refused)."""
    if handler.unary_unary or handler.stream_unary:  # one reply
        inner = handler.unary_unary or handler.stream_unary
        reply_field = "unary_unary" if handler.unary_unary else "stream_unary"

        async def single(request_or_requests: Any, context: Context) -> Any:
            if refusal := decide(context):
                await context.abort(*refusal)
            result = inner(request_or_requests, context)
            return await result if iscoroutine(result) or isinstance(result, Awaitable) else result

        return handler._replace(**{reply_field: single})
    inner_stream = handler.unary_stream or handler.stream_stream
    field = "unary_stream" if handler.unary_stream else "stream_stream"

    async def streaming(request_or_requests: Any, context: Context) -> Any:
        if refusal := decide(context):
            await context.abort(*refusal)
        result = inner_stream(request_or_requests, context)
        if hasattr(result, "__aiter__"):
            async for reply in result:
                yield reply
        else:
            await result  # a handler that writes with context.write()

    return handler._replace(**{field: streaming})


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """grpc calls `intercept_service` for every call: the guarded handler of a method is made once,
    on its first call, and reused; the credentials are read from each call's own context."""

    def __init__(self, policy: AuthPolicy, service: str) -> None:
        self.policy = policy
        self.service = service
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._guarded.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        method = handler_call_details.method.lstrip("/")
        guarded = handler if method.rpartition("/")[0] in OPEN_SERVICES else _guarded(handler, self._decider(method))
        self._guarded[handler_call_details.method] = (handler, guarded)
        return guarded

    def _decider(self, method: str) -> Decide:
        # The callers this method admits, found once (by identity: the policy is frozen and lives
        # as long as this interceptor, and so do its callers).
        admitted = frozenset(id(caller) for caller in self.policy.caller if caller.allows(method))

        def decide(context: Context) -> tuple[grpc.StatusCode, str] | None:
            token = _bearer(context.invocation_metadata())
            if token is not None:  # a token decides alone: a bad one never falls back to the certificate
                caller = self.policy.by_token(token) if token else None
            else:
                caller = self.policy.by_certificate(_certificate_names(context))
            if caller is None:
                self._refused(method, None, "unauthenticated", grpc.StatusCode.UNAUTHENTICATED)
                return (
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method}: no valid credentials (a bearer token or a client certificate this service knows)",
                )
            if id(caller) not in admitted:
                self._refused(method, caller.name, "permission_denied", grpc.StatusCode.PERMISSION_DENIED)
                return grpc.StatusCode.PERMISSION_DENIED, f"{method}: caller {caller.name!r} may not call this RPC"
            return None

        return decide

    def _refused(self, method: str, caller: str | None, why: str, code: grpc.StatusCode) -> None:
        service, _, name = method.rpartition("/")
        RPC_REQUESTS.labels(service.rsplit(".", 1)[-1], name, code.name).inc()
        log.warning(
            "call refused", extra={"fields": {"service": self.service, "rpc": method, "caller": caller, "reason": why}}
        )
