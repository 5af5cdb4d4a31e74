"""Settings every service shares. Each service subclasses with its own env prefix.

No module reads os.environ directly: everything configurable is a field of a settings class,
settable as a CLI flag (`bundlerec serve SERVICE --help`) or an environment variable
`BUNDLEREC_<SERVICE>_<FIELD>`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bundlerec.runtime.tls import ChannelSecurity


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid", cli_kebab_case=True, cli_implicit_flags=True, cli_show_env_vars=True
    )

    host: str = Field("127.0.0.1", description="Address to listen on ('0.0.0.0' or '[::]' in containers).")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 disables the endpoint.")
    grace_seconds: float = Field(10.0, gt=0, description="On SIGTERM, how long in-flight calls may take to finish.")
    max_message_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request or response message accepted."
    )
    health_interval_seconds: float = Field(
        2.0, gt=0, description="How often readiness (database, model...) is re-checked."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The asyncio event loop: uvloop (libuv; 4-8 % less CPU per page for the four services "
        "together in two A/B runs of bench/cpu_per_page.py) or the standard one; auto: uvloop where installed.",
    )
    # Security (see bundlerec/runtime/tls.py and auth.py): all empty is plaintext without
    # authentication, the embedded default for one machine.
    tls_cert_file: str = Field("", description="The server's certificate (PEM); with tls_key_file: TLS.")
    tls_key_file: str = Field("", description="The server certificate's private key (PEM).")
    tls_client_ca_file: str = Field(
        "", description="CA of the callers' certificates (PEM): set, every caller must present one (mutual TLS)."
    )
    health_port: int = Field(
        0, ge=0, le=65535, description="A plaintext port serving only grpc.health.v1, for probes that cannot "
        "speak TLS (the kubelet's); 0: none (health is on the main port)."
    )
    auth_file: str = Field(
        "", description="Callers allowed and the RPCs each may call (TOML, see bundlerec/runtime/auth.py); "
        "empty: no authentication."
    )
    # Tracing (see bundlerec/runtime/tracing.py and docs/observability.md): off unless an endpoint is set.
    tracing_endpoint: str = Field(
        "", description="OpenTelemetry collector (OTLP/gRPC), e.g. http://otel-collector:4317; empty: no tracing."
    )
    tracing_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of traces kept when the caller did not decide (parent-based sampling)."
    )


class CallerSettings(BaseSettings):
    """How a service reaches the services it calls (which list it in their auth files): the gateway
    calls the three others, the ranker the candidate service. All empty: plaintext, anonymous."""

    model_config = ServiceSettings.model_config  # mixed into a service's settings: the same rules

    client_tls_ca_file: str = Field("", description="CA of the called services' certificates (PEM); set: TLS.")
    client_tls_cert_file: str = Field("", description="This service's own client certificate, for mutual TLS (PEM).")
    client_tls_key_file: str = Field("", description="The private key of that certificate (PEM).")
    client_token_file: str = Field("", description="File holding the bearer token this service presents.")
    client_tls_server_name: str = Field(
        "", description="Name the called services' certificates carry, when it is not the host of their addresses."
    )

    def client_security(self) -> ChannelSecurity:
        return ChannelSecurity(
            ca_file=self.client_tls_ca_file,
            cert_file=self.client_tls_cert_file,
            key_file=self.client_tls_key_file,
            token_file=self.client_token_file,
            server_name=self.client_tls_server_name,
        )
