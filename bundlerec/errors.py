"""Domain errors. Domain code raises these; the runtime maps them to gRPC status codes.

Nothing here imports grpc: the mapping lives in bundlerec.runtime.interceptor.
"""

from __future__ import annotations


class BundlerecError(Exception):
    """Base of every error a caller should see. `reason` is machine-readable (AIP-193)."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(BundlerecError):
    """The request is wrong; retrying it unchanged will fail again. Names the field."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {problem}", reason=reason)
        self.field = field
        self.problem = problem


class NotFound(BundlerecError):
    reason = "NOT_FOUND"


class FailedPrecondition(BundlerecError):
    """The system is not in a state to do this (no model loaded, migrations missing...)."""

    reason = "FAILED_PRECONDITION"


class Unavailable(BundlerecError):
    """A dependency is down or overloaded; retrying later may succeed."""

    reason = "UNAVAILABLE"
