"""Alembic environment of the candidate store; see bundlerec.db.run_alembic_env."""

from bundlerec.candidate.schema import Base
from bundlerec.db import run_alembic_env

run_alembic_env(Base.metadata)
