"""TLS for servers and channels, and the bearer token a caller presents.

Server: with a certificate and key the service speaks TLS; with a client CA as well it asks every
caller for a certificate signed by that CA (mutual TLS). Channel: with a CA (and, for mutual TLS,
the caller's certificate and key) the channel is secure; with a token file every call carries
`authorization: Bearer <token>`. Nothing configured: plaintext, no token (the embedded default).
Files are read once, at start; a missing or unreadable one stops the start, naming the setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"{setting}: cannot read {path} ({exc.strerror})") from None
    if not data.strip():
        raise SystemExit(f"{setting}: {path} is empty")
    return data


def server_credentials(cert_file: str, key_file: str, client_ca_file: str) -> grpc.ServerCredentials | None:
    """None when no certificate is configured (plaintext)."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise SystemExit("tls_client_ca_file needs tls_cert_file and tls_key_file (the server's own certificate)")
        return None
    if not cert_file or not key_file:
        raise SystemExit("tls_cert_file and tls_key_file go together: set both or neither")
    pair = (_read(key_file, "tls_key_file"), _read(cert_file, "tls_cert_file"))
    client_ca = _read(client_ca_file, "tls_client_ca_file") if client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


@dataclass(frozen=True)
class ChannelSecurity:
    """How a caller reaches a service: the CA that signed the service's certificate, the caller's own
    certificate for mutual TLS, and its bearer token. All empty: plaintext, anonymous."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token_file: str = ""
    server_name: str = ""  # the name the service's certificate carries, when it is not the address's host

    def credentials(self) -> grpc.ChannelCredentials | None:
        if bool(self.cert_file) != bool(self.key_file):
            raise SystemExit("the client certificate and key go together: set both or neither")
        if not (self.ca_file or self.cert_file):
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "client CA file") if self.ca_file else None,
            private_key=_read(self.key_file, "client key file") if self.key_file else None,
            certificate_chain=_read(self.cert_file, "client certificate file") if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, str]]:
        """Channel options: the name to check on the service's certificate, when set."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def token(self) -> str | None:
        return _read(self.token_file, "token file").decode("utf-8").strip() if self.token_file else None


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds the token to every call (on a plaintext channel too, where gRPC's own call credentials
    refuse to go: in production the channel is TLS; on a laptop a token still names the caller)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        # ClientCallDetails is a namedtuple at run time; its type stub does not say so
        replaced: grpc.aio.ClientCallDetails = getattr(details, "_replace")(  # noqa: B009
            metadata=grpc.aio.Metadata(*metadata, self._header)
        )
        return replaced

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def open_channel(
    address: str,
    security: ChannelSecurity = ChannelSecurity(),
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    options = [*options, *security.options()]
    token = security.token()
    chain = [*interceptors, *([_BearerToken(token)] if token else [])]
    credentials = security.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=chain or None)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=chain or None)


def token_metadata(security: ChannelSecurity) -> list[tuple[str, str]]:
    """The token as call metadata, for sync channels (the command-line client)."""
    token = security.token()
    return [("authorization", f"Bearer {token}")] if token else []


def open_sync_channel(address: str, security: ChannelSecurity = ChannelSecurity()) -> grpc.Channel:
    options = security.options()
    credentials = security.credentials()
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)
