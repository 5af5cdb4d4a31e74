"""Experiments: each requester falls into one variant by a stable hash of their id, so a user sees
the same variant on every request and every gateway replica, and the shares hold over many users.

A variant may serve another ranker model version (an A/B test of two models), another rules file
and another exploration share; its name is in the response, the exposure log and the metrics.
With no experiment configured everyone is in "default".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    share: float = Field(gt=0, le=1, description="Share of requesters, 0 to 1; the shares of all variants sum to 1.")
    model_version: str = Field("", max_length=256, description="Ranker model version; empty: the current one.")
    strategy: Literal["model", "popularity"] = Field(
        "model",
        description="'model': retrieval and the ranker; 'popularity': popular bundles only, unranked (a baseline arm).",
    )
    rules_file: str = Field("", max_length=4096, description="Business rules of this variant; empty: the gateway's.")
    exploration_share: float | None = Field(
        None, ge=0, le=0.5, description="Share of page positions explored; unset: the gateway's setting."
    )


DEFAULT = Variant(name="default", share=1.0, model_version="")


class Experiments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    salt: str = Field("bundlerec", description="Changing it reshuffles who is in which variant.")
    variants: tuple[Variant, ...] = ()

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> Experiments:
        if self.variants:
            total = sum(v.share for v in self.variants)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"variant shares sum to {total:g}, not 1")
            names = [v.name for v in self.variants]
            if len(set(names)) != len(names):
                raise ValueError("variant names must be unique")
        return self

    def assign(self, requester_key: str) -> Variant:
        if not self.variants:
            return DEFAULT
        digest = hashlib.sha256(f"{self.salt}\0{requester_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        return _at(self.variants, point)


def _at(variants: Sequence[Variant], point: float) -> Variant:
    cumulative = 0.0
    for variant in variants:
        cumulative += variant.share
        if point < cumulative:
            return variant
    return variants[-1]  # rounding of the shares' sum
