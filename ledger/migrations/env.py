"""Alembic's environment for the ledger: run against the connection the ledger hands over (or the URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cascade.ledger.schema import metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:                                   # `alembic -x url=...` from a shell, for developers writing a migration
    with create_engine(context.config.get_main_option("sqlalchemy.url")).connect() as conn:
        run(conn)
