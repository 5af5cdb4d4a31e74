"""catalogue change feed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalogue_changes",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("bundles", sa.JSON(), nullable=False),
        sa.Column("availability", sa.JSON(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_catalogue_changes")),
    )
    # sequence: bumped by every catalogue write, availability included; numbers catalogue_changes.
    op.execute("INSERT INTO catalogue_meta (key, value) VALUES ('sequence', 0)")


def downgrade() -> None:
    op.drop_table("catalogue_changes")
    op.execute("DELETE FROM catalogue_meta WHERE key = 'sequence'")
