"""Settings of the profile service (env prefix BUNDLEREC_PROFILE_)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from bundlerec.runtime.settings import ServiceSettings


class ProfileSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_PROFILE_")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    database_url: str = Field(
        "sqlite:///var/bundlerec/profile.sqlite3",
        description="sqlite:///FILE (embedded default) or postgresql+psycopg://USER@HOST/DB.",
    )
    event_key_secret: SecretStr = Field(
        SecretStr(""),
        description="Key of the hashes kept of erased and anonymous event ids (so retries are recognised). "
        "Set a random secret in production; without one the hashes are unkeyed.",
    )
    retry_window_days: int = Field(
        90, ge=1, description="How long ids of anonymous and erased events are remembered to recognise retries."
    )
    behaviour_retention_days: int = Field(
        7,
        ge=1,
        le=365,
        description="How long the anonymous behaviour log (ReadBehaviour: what the candidate service keeps its "
        "statistics live from) is kept; a reader further behind misses what was deleted.",
    )
    migrate_on_start: bool = Field(True, description="Apply pending database migrations at start.")
    pool_size: int = Field(10, ge=1, le=200, description="Database connections kept open.")
    default_personalization: bool = Field(
        True, description="Consent assumed for users who never set it: personalization allowed."
    )
    default_sensitive_categories: bool = Field(
        False, description="Consent assumed for users who never set it: use of sensitive categories."
    )
    sensitive_categories: list[str] = Field(
        default_factory=lambda: ["Health", "Medical", "Adult", "Sexual Wellness", "Religion"],
        description="Sensitive categories: a category path is sensitive when one of its levels, or "
        "its leading levels, equal an entry (case-insensitive). JSON list.",
    )
    max_batch_events: int = Field(1000, ge=1, le=100_000, description="Most events in one RecordEvents call.")
    max_future_skew_seconds: int = Field(
        300, ge=0, description="How far in the future an event timestamp may be (client clock skew)."
    )
    default_sequence_length: int = Field(50, ge=1, description="Events in a profile when the request says 0.")
    max_sequence_length: int = Field(1000, ge=1, description="Most events a profile request may ask for.")
    snapshot_sequence_length: int = Field(
        200, ge=1, description="Events kept in each user's precomputed profile; longer requests read the events."
    )
    snapshot_refresh_seconds: float = Field(
        0.2, ge=0, description="Pause between background rebuilds of stale profile snapshots; 0: reads rebuild them."
    )
    snapshot_refresh_batch: int = Field(100, ge=1, description="Stale snapshots rebuilt per background round.")
    affinity_window: int = Field(500, ge=1, description="Most recent events that category affinity looks at.")
    affinity_half_life_days: float = Field(30.0, gt=0, description="Age at which an event counts half.")
    popularity_half_life_days: float = Field(7.0, gt=0, description="Age at which a popularity count counts half.")
    attribution_window_seconds: int = Field(
        86_400,
        ge=60,
        le=90 * 86_400,
        description="Events later than this after a page are not its outcomes (experiment reports, exploration).",
    )
    exposure_retention_days: int = Field(
        180, ge=1, le=3650, description="How long pages served (the exposure log) and their outcomes are kept."
    )
    max_batch_exposures: int = Field(1000, ge=1, le=10_000, description="Most pages in one RecordExposures call.")
