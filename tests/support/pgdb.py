"""A fresh PostgreSQL database of the session's server, for tests that need a ledger there."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from lockgate.config import Settings


def _admin(settings: Settings) -> str:
    assert settings.pg_dsn
    return settings.pg_dsn.replace("/shop?", "/postgres?")


@contextlib.contextmanager
def fresh_database(settings: Settings, prefix: str = "ledger") -> Iterator[tuple[str, str]]:
    """(database name, SQLAlchemy URL) of a new database, dropped afterwards (its connections too)."""
    assert settings.pg_dsn
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name, settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")
    finally:
        with psycopg.connect(_admin(settings), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connections_to(settings: Settings, database: str) -> int:
    """Open connections to `database`, as PostgreSQL counts them (pg_stat_activity)."""
    with psycopg.connect(_admin(settings), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0
