"""The console's settings (env prefix BUNDLEREC_CONSOLE_; `bundlerec console` flags override them)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bundlerec.runtime.settings import CallerSettings

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConsoleSettings(CallerSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_CONSOLE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on; other than loopback only with an auth file.")
    port: int = Field(8090, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    auth_file: str = Field(
        "",
        description="Who may use the console (the services' auth file format, bundlerec/runtime/auth.py, with "
        "allow rules 'console/view' and 'console/models'); empty: a one-off token is made and printed at start.",
    )
    tls_cert_file: str = Field("", description="The console's certificate (PEM); with tls_key_file: HTTPS.")
    tls_key_file: str = Field("", description="Its private key (PEM).")
    tls_client_ca_file: str = Field(
        "", description="CA of the operators' client certificates (PEM): set, a browser without one cannot connect."
    )
    gateway_address: str = Field("127.0.0.1:50050", description="The gateway (previews).")
    profile_address: str = Field("127.0.0.1:50051", description="The profile service (consent, exposure log).")
    candidate_address: str = Field("127.0.0.1:50052", description="The candidate service (catalogue search).")
    ranker_address: str = Field("127.0.0.1:50053", description="The ranker (the version it serves).")
    gateway_metrics_url: str = Field(
        "http://127.0.0.1:9100/metrics", description="The gateway's Prometheus endpoint (degradations); empty: none."
    )
    metrics_period_seconds: float = Field(
        10.0, gt=0, le=300, description="How often the gateway's counters are read (the last 10 minutes are kept)."
    )
    models_dir: str = Field("var/bundlerec/models", description="The models directory the ranker serves from.")
    timeout_seconds: float = Field(5.0, gt=0, le=60, description="Deadline of each call to the services.")
    max_model_age_days: float = Field(
        30.0, gt=0, description="Promote and rollback refuse a version whose lineage is older (as bundlerec models)."
    )
