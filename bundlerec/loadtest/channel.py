"""The one way the load generator opens a channel (and the metadata every call carries).

Nothing given: plaintext, no token. A CA file (and, for mutual TLS, a client certificate and key):
TLS. A token file: every call carries `authorization: Bearer <token>` — as a gRPC call credential
on a TLS channel; on a plaintext channel, where gRPC refuses call credentials, as call metadata
(cheaper per call than a client interceptor, which matters in a load generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Security:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    token_file: str = ""
    server_name: str = ""  # the name in the server's certificate, when not the address's host


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"{what}: cannot read {path} ({exc.strerror})") from None
    if not data.strip():
        raise SystemExit(f"{what}: {path} is empty")
    return data


def _token(security: Security) -> str | None:
    return _read(security.token_file, "token file").decode("utf-8").strip() if security.token_file else None


def open_channel(
    address: str, security: Security | None = None
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """The channel and the metadata to send with every call on it (empty unless a plaintext channel
    carries a token)."""
    security = security or Security()
    if bool(security.cert_file) != bool(security.key_file):
        raise SystemExit("--cert-file and --key-file go together: give both or neither")
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    token = _token(security)
    if not (security.ca_file or security.cert_file):
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return grpc.aio.insecure_channel(address, options=options), metadata
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(security.ca_file, "--ca-file") if security.ca_file else None,
        private_key=_read(security.key_file, "--key-file") if security.key_file else None,
        certificate_chain=_read(security.cert_file, "--cert-file") if security.cert_file else None,
    )
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(address, credentials, options=options), ()
