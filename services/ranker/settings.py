"""Settings of the ranker service (env prefix BUNDLEREC_RANKER_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bundlerec.runtime.settings import CallerSettings, ServiceSettings


class RankerSettings(ServiceSettings, CallerSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_RANKER_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9103, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    models_dir: str = Field(
        "var/bundlerec/models", description="Directory of versioned model directories (as training writes them)."
    )
    model_version: str = Field(
        "",
        max_length=256,
        description="Serve this version; empty follows the models directory's promotion pointer (serving.json), "
        "or the newest version where there is none.",
    )
    use_int8: bool = Field(False, description="Serve model.int8.onnx when the version has one (CPU).")
    providers: Literal["auto", "cpu"] = Field(
        "auto", description="'auto': the CUDA execution provider when onnxruntime has it, else CPU; 'cpu': CPU only."
    )
    intra_op_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="onnxruntime intra-op threads per run; 0: its default (one per core). On CPU one thread is "
        "cheapest: the model's work grows with the batch, and a second thread costs a single request twice "
        "the CPU while taking a core from the event loop (bench/ranker.py).",
    )
    max_batch: int = Field(16, ge=1, le=1024, description="Most Rank requests fused into one model run.")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Longest a queued request waits for others to join its batch. 0: no waiting, a run takes "
        "whatever queued while the previous run was busy (bench/ranker.py: waiting only adds latency on CPU).",
    )
    max_candidates: int = Field(1000, ge=1, le=100_000, description="Most candidates in one Rank request.")
    max_members: int = Field(200, ge=1, le=10_000, description="Most item ids in one candidate.")
    max_sequence: int = Field(
        200, ge=1, le=100_000, description="Most sequence steps read from a request; older ones are dropped."
    )
    poll_seconds: float = Field(
        10.0, ge=0, description="Seconds between looks for a new version in the models directory; 0: only ReloadModel."
    )
    keep_versions: int = Field(
        2, ge=1, le=32, description="Model versions kept loaded (the current one and recent ones, for experiments)."
    )
    candidate_address: str = Field(
        "",
        description="host:port of the candidate service, asked for the text vectors of items the model never "
        "saw (text models only; client_* settings: how to reach it); empty: unknown items are scored without text.",
    )
