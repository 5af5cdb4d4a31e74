"""Settings of the candidate service (env prefix BUNDLEREC_CANDIDATE_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bundlerec.runtime.settings import CallerSettings, ServiceSettings


class CandidateSettings(ServiceSettings, CallerSettings):
    model_config = SettingsConfigDict(env_prefix="BUNDLEREC_CANDIDATE_")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(9102, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    database_url: str = Field(
        "sqlite:///var/bundlerec/catalogue.sqlite3",
        description="sqlite:///FILE (embedded default) or postgresql+psycopg://USER@HOST/DB.",
    )
    migrate_on_start: bool = Field(True, description="Apply pending database migrations at start.")
    pool_size: int = Field(10, ge=1, le=200, description="Database connections kept open.")
    encoder_dir: str = Field(
        "var/bundlerec/encoder", description="The exported text encoder (`bundlerec encoder export --out DIR`)."
    )
    index_dir: str = Field(
        "var/bundlerec/index",
        description="Where the vector indexes are saved (at start after a rebuild, and at shutdown) "
        "so a restart of an unchanged catalogue skips the rebuild; empty: never saved.",
    )
    external_vector_dim: int = Field(
        0, ge=0, le=4096, description="Dimension of items' external vectors (image embeddings...); 0 disables them."
    )
    exact_search_below: int = Field(
        100_000, ge=0, description="Exact vector search below this many vectors, HNSW above (bench/retrieval.py)."
    )
    search_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="OpenMP threads of FAISS (one search, index builds). 1: a query of one "
        "vector gains nothing from more, and on a machine shared with other services their threads wait on "
        "each other (measured: bench/loadtest.py).",
    )
    models_dir: str = Field(
        "var/bundlerec/models",
        description="The ranker's models directory (as `bundlerec train` writes it): the collaborative vectors of "
        "its serving version (the promotion pointer's, else the newest) are fused into item and bundle vectors, "
        "and a Retrieve user_vector of the model's dimension searches them (two-tower retrieval); empty: text and "
        "external vectors only.",
    )
    model_poll_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds between looks for a newer model version (then the vector indexes are rebuilt and "
        "swapped in); 0: only at start.",
    )
    feed_poll_seconds: float = Field(
        0.25,
        ge=0,
        description="Seconds between looks at the catalogue's change feed, which brings other replicas' writes and "
        "imports to this replica's index (PostgreSQL: writes also notify, and the poll runs ten times less "
        "often while the listener is connected); 0: never (a single replica that alone writes its catalogue).",
    )
    profile_address: str = Field(
        "",
        description="host:port of the profile service, whose anonymous behaviour log (ReadBehaviour) keeps "
        "popularity and co-occurrence live (client_* settings: how to reach it); empty: the statistics stay as "
        "`bundlerec import` computed them.",
    )
    behaviour_poll_seconds: float = Field(
        1.0, gt=0, description="Seconds between reads of the behaviour log when it had nothing new."
    )
    statistics_half_life_days: float = Field(
        30.0,
        gt=0,
        description="Half-life of behaviour in the statistics (popularity, co-occurrence), as `bundlerec import` "
        "decays it.",
    )
