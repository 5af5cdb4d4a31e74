"""Alembic environment of the profile store; see bundlerec.db.run_alembic_env."""

from bundlerec.db import run_alembic_env
from bundlerec.profile.schema import Base

run_alembic_env(Base.metadata)
