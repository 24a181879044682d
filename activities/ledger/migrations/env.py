"""Alembic's environment for the ledger: always driven from code (`lockgate.activities.ledger.migrate`)
with a connection it passes in, never from an ini file or a URL in the environment."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
