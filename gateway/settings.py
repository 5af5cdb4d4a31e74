"""Settings of the gateway (env prefix BUNDLEREC_GATEWAY_)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from bundlerec.gateway.experiments import Variant
from bundlerec.gateway.explain import MIN_CO_OCCURRENCE
from bundlerec.gateway.model import Placement
from bundlerec.runtime.settings import CallerSettings, ServiceSettings


class GatewaySettings(ServiceSettings, CallerSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_GATEWAY_")

    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    profile_address: str = Field("127.0.0.1:50051", description="The profile service, host:port.")
    candidate_address: str = Field("127.0.0.1:50052", description="The candidate service, host:port.")
    ranker_address: str = Field("127.0.0.1:50053", description="The ranker service, host:port.")
    deadline_ms: float = Field(
        100.0, gt=0, le=60_000, description="One deadline for a whole Recommend call, split into stage budgets."
    )
    profile_share: float = Field(0.2, gt=0, lt=1, description="Share of the deadline for the profile read.")
    candidates_share: float = Field(
        0.4, gt=0, lt=1, description="Share of the deadline for retrieval and the catalogue read."
    )
    ranker_share: float = Field(0.3, gt=0, lt=1, description="Share of the deadline for ranking.")
    # bounded by what the other services take: Retrieve reads at most 200 recent steps; Rank takes
    # at most 1000 candidates (the bundles retrieved plus those built)
    candidate_limit: int = Field(100, ge=1, le=500, description="Items and bundles asked of retrieval.")
    two_tower_retrieval: bool = Field(
        False,
        description="A consenting shopper's next page retrieves with the user vector the ranker returned for their "
        "last one (the two-tower source; kept with their impressions, erased with them). Off by default: on the "
        "demo shop it lowered candidate recall (python bench/two_tower_recall.py); measure on your own data.",
    )
    explain_min_co_occurrence: float = Field(
        MIN_CO_OCCURRENCE,
        gt=0,
        description="The least strength of a pair in the shop's behaviour statistics (1: two adjacent views by one "
        "shopper; 5: two adjacent purchases; summed over shoppers) for which an explanation says 'often bought with'.",
    )
    history_length: int = Field(50, ge=1, le=200, description="Most recent events of a profile that are used.")
    built_bundle_size: int = Field(3, ge=2, le=5, description="Items of a bundle built for the request, at most.")
    built_bundles: int = Field(10, ge=0, le=100, description="Bundles built per request around the anchor, at most.")
    rules_file: str = Field("", description="Business rules (TOML, see gateway/rules.example.toml); empty: defaults.")
    rules_poll_seconds: float = Field(2.0, gt=0, description="How often the rules file is checked for changes.")
    popular_refresh_seconds: float = Field(
        30.0, gt=0, description="How often the popular bundles kept for the candidate-service fallback refresh."
    )
    catalogue_ttl_seconds: float = Field(30.0, ge=0, description="How long catalogue item data is cached.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures of a stage that open its circuit.")
    breaker_reset_seconds: float = Field(5.0, gt=0, description="How long an open circuit waits before a probe.")
    rotate_after_impressions: int = Field(
        5, ge=0, description="Impressions without interaction after which a bundle rotates down; 0: never."
    )
    sensitive_categories: list[str] = Field(
        default_factory=lambda: ["Health", "Medical", "Adult", "Sexual Wellness", "Religion"],
        description="Categories never used as evidence or named in explanations without consent (as the "
        "profile service's). JSON list.",
    )
    experiment_salt: str = Field("bundlerec", description="Salt of the variant assignment hash.")
    experiment_variants: list[Variant] = Field(
        default_factory=list,
        description='Experiment variants, JSON: [{"name": "a", "share": 0.5, "model_version": ""}, ...]; '
        "shares sum to 1; empty: everyone in 'default'.",
    )

    impressions_url: SecretStr = Field(
        SecretStr(""),
        description="Where impressions are counted: redis://HOST:PORT/DB, shared by every replica (so one "
        "ForgetUser erases them all); empty: in this process's memory (one replica only).",
    )
    impressions_ttl_seconds: int = Field(
        7 * 86_400, ge=60, description="How long a requester's impression counts are kept after the last one."
    )
    impressions_timeout_ms: float = Field(
        20.0, gt=0, le=5_000, description="Most time one impression store call may take (a late read: no rotation)."
    )
    impressions_key_secret: SecretStr = Field(
        SecretStr(""),
        description="Key of the hash that names a requester in the impression store; "
        "required with impressions_url (set it from the environment, not the command line).",
    )

    record_exposures: bool = Field(
        True,
        description="Every page served goes to the exposure log (the profile service's ExposureService), in the "
        "background; the experiment reports and exploration read it.",
    )
    exposure_queue: int = Field(
        10_000, ge=100, le=1_000_000, description="Most pages waiting for the exposure log; more are dropped, counted."
    )
    exposure_batch: int = Field(500, ge=1, le=1000, description="Pages per RecordExposures call.")
    exposure_flush_ms: float = Field(1000.0, gt=0, le=60_000, description="How long a batch may gather.")

    exploration_share: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Share of page positions given to rarely shown bundles, chosen by Thompson sampling on what "
        "their pages drew (drawn per page: 0.1 on a page of 10 is one slot); 0: no exploration. A variant may "
        "set its own.",
    )
    exploration_placement_caps: dict[str, float] = Field(
        default_factory=dict,
        description='The most each placement\'s pages explore, JSON: {"checkout": 0}; unlisted: no cap.',
    )
    exploration_max_exposures: int = Field(
        300, ge=1, description="Pages after which a bundle is no longer explored (it has shown what it draws)."
    )
    exploration_refresh_seconds: float = Field(
        10.0, gt=0, description="How often the per-bundle counts are read from the exposure log."
    )

    @model_validator(mode="after")
    def _shares_leave_room(self) -> GatewaySettings:
        if self.profile_share + self.candidates_share + self.ranker_share > 1:
            raise ValueError("profile_share + candidates_share + ranker_share must not exceed 1")
        known = {p.value for p in Placement}
        for placement, cap in self.exploration_placement_caps.items():
            if placement not in known:
                raise ValueError(f"exploration_placement_caps: {placement!r} is not one of {', '.join(sorted(known))}")
            if not 0 <= cap <= 0.5:
                raise ValueError(f"exploration_placement_caps: {placement}: {cap} is not within 0 to 0.5")
        return self
