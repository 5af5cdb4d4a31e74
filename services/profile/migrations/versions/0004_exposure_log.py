"""exposure log: pages served, outcomes, per-bundle counts

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "profile_exposures",
        sa.Column("seq", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("recommendation_id", sa.String(length=256), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("variant_share", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=256), nullable=False),
        sa.Column("placement", sa.String(length=32), nullable=False),
        sa.Column("personalized", sa.Boolean(), nullable=False),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("served_at_us", sa.BigInteger(), nullable=False),
        sa.Column("segment", sa.String(length=128), nullable=False),
        sa.Column("bundles", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_profile_exposures")),
        sa.UniqueConstraint("recommendation_id", name=op.f("uq_profile_exposures_recommendation_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_profile_exposures_requester"), "profile_exposures", ["requester"])
    op.create_index(op.f("ix_profile_exposures_served_at_us"), "profile_exposures", ["served_at_us"])
    op.create_table(
        "profile_outcomes",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("recommendation_id", sa.String(length=256), nullable=False),
        sa.Column("target_type", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.String(length=256), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_outcomes")),
    )
    op.create_index(op.f("ix_profile_outcomes_recommendation_id"), "profile_outcomes", ["recommendation_id"])
    op.create_index(op.f("ix_profile_outcomes_occurred_at_us"), "profile_outcomes", ["occurred_at_us"])
    op.create_table(
        "profile_bundle_outcomes",
        sa.Column("bundle_id", sa.String(length=256), nullable=False),
        sa.Column("segment", sa.String(length=128), nullable=False),
        sa.Column("measure", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bundle_id", "segment", "measure", name=op.f("pk_profile_bundle_outcomes")),
    )


def downgrade() -> None:
    op.drop_table("profile_bundle_outcomes")
    op.drop_table("profile_outcomes")
    op.drop_table("profile_exposures")
