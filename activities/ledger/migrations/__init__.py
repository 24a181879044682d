"""The ledger's Alembic migrations (versioned, forward-only); run by `lockgate migrate`."""
