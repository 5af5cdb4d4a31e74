"""anonymous behaviour log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # PostgreSQL: the writing transaction's id, which readers compare with the oldest one running
    txid_default = sa.text("(pg_current_xact_id()::text::bigint)") if postgres else sa.text("0")
    op.create_table(
        "profile_behaviour_log",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("txid", sa.BigInteger(), server_default=txid_default, nullable=False),
        sa.Column("target_type", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.String(length=256), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger(), nullable=False),
        sa.Column("partners", sa.JSON(), nullable=False),
        sa.Column("logged_at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_profile_behaviour_log")),
        sqlite_autoincrement=True,  # never reuse a number, even after the log was trimmed empty
    )
    op.create_index("ix_profile_behaviour_log_position", "profile_behaviour_log", ["txid", "seq"])
    op.create_index(op.f("ix_profile_behaviour_log_logged_at_us"), "profile_behaviour_log", ["logged_at_us"])


def downgrade() -> None:
    op.drop_table("profile_behaviour_log")
