"""The one way the load generator opens a channel (and the metadata every call carries).

The security settings are the suite's own (`bundlerec.runtime.tls.ChannelSecurity`, the flags of
`bundlerec.client.add_security_flags`): nothing given, plaintext without a token; a CA file (and, for
mutual TLS, a client certificate and key), TLS. A token travels as call metadata
(`authorization: Bearer <token>`), which costs less per call than a client interceptor, and that
matters in a load generator.
"""

from __future__ import annotations

import dataclasses

import grpc

from bundlerec.runtime import tls as secure
from bundlerec.runtime.tls import ChannelSecurity, token_metadata

MAX_MESSAGE = 16 * 1024 * 1024


def open_channel(
    address: str, security: ChannelSecurity | None = None
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """The channel and the metadata to send with every call on it."""
    security = security or ChannelSecurity()
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    channel = secure.open_channel(address, dataclasses.replace(security, token_file=""), options)
    return channel, tuple(token_metadata(security))
