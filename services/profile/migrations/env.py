"""Alembic environment of the profile store.

Migrations run through `bundlerec migrate profile` (or on start), which passes an open
connection in `config.attributes["connection"]`. For `alembic revision --autogenerate` during
development, set `sqlalchemy.url` in the config instead.
"""

from alembic import context
from bundlerec.profile.schema import Base
from sqlalchemy import create_engine

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
