"""Alembic's entry point: runs the revisions on the connection `motif.service.migrations` hands it."""

from __future__ import annotations

from alembic import context

from motif.service.store import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things in place; Alembic copies the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
