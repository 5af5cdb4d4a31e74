"""profile_snapshots and profile_changes: each user's precomputed profile, and the writes not in it yet

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "profile_snapshots",
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.Column("snapshot_key", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["profile_users.user_id"],
            name=op.f("fk_profile_snapshots_user_id_profile_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_profile_snapshots")),
    )
    op.create_table(
        "profile_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["profile_users.user_id"],
            name=op.f("fk_profile_changes_user_id_profile_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_changes")),
    )
    with op.batch_alter_table("profile_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profile_changes_user_id"), ["user_id"], unique=False)
    # Existing users have no snapshot yet: a change row each, so the service's refresher builds them
    # (and a read before it does builds its own).
    op.execute("INSERT INTO profile_changes (user_id) SELECT user_id FROM profile_users ORDER BY user_id")


def downgrade() -> None:
    with op.batch_alter_table("profile_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profile_changes_user_id"))
    op.drop_table("profile_changes")
    op.drop_table("profile_snapshots")
