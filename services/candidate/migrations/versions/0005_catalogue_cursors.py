"""catalogue cursors (live statistics)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalogue_cursors",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("cursor", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_catalogue_cursors")),
    )
    # the profile service's behaviour log, from its oldest kept entry
    op.execute("INSERT INTO catalogue_cursors (name, cursor) VALUES ('behaviour', '')")


def downgrade() -> None:
    op.drop_table("catalogue_cursors")
