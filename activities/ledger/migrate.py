"""The ledger's schema: versioned, forward-only Alembic migrations shipped inside the package.

`upgrade(url)` brings a database to the schema this code needs (`lockgate migrate`, and
`lockgate setup`, run it with the migration role: the owner of the tables). Workers run with a
runtime role that may only read and append (`RUNTIME_GRANTS`); a worker finding the schema behind
or unknown stops with a clear error (`check`). Nothing is ever set aside or recreated silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from lockgate.errors import UserError

__all__ = ["HEAD", "RUNTIME_GRANTS", "LedgerSchemaError", "Migrated", "check", "current", "runtime_grants", "upgrade"]

_SCRIPTS = Path(__file__).resolve().parent / "migrations"

# Workers starting together on a fresh database: one migrates at a time.
_PG_LOCK = 727275


class LedgerSchemaError(UserError):
    """The ledger's schema is not the one this lockgate knows (behind, ahead, or not a ledger)."""


@dataclass(frozen=True)
class Migrated:
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = conn
    return cfg


def _script() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return ScriptDirectory.from_config(cfg)


HEAD: str = _script().get_current_head() or ""
"""The schema revision this code needs."""


def current(conn: Connection) -> str | None:
    """The database's revision (None: never migrated)."""
    return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str | None) -> bool:
    if revision is None:
        return True
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises for unknown ids
        return False


@contextlib.contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(url: str) -> Migrated:
    """Migrates the ledger at `url` (a SQLAlchemy URL) to `HEAD`, forward only; idempotent.

    Raises:
        LedgerSchemaError: The database is at a revision this code does not know (a newer
            lockgate migrated it), or holds something it must not migrate.
    """
    with _engine(url) as engine:
        return upgrade_engine(engine)


def upgrade_engine(engine: Engine) -> Migrated:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        before = current(conn)
        if not _known(before):
            raise LedgerSchemaError(
                f"the ledger's schema is at revision {before}, which this lockgate does not know "
                f"(it knows up to {HEAD}): upgrade lockgate, never the other way round"
            )
        if before != HEAD:
            try:
                command.upgrade(_config(conn), "head")
            except RuntimeError as err:
                raise LedgerSchemaError(f"ledger migration refused: {err}") from None
        return Migrated(before, HEAD)


def check(engine: Engine) -> None:
    """A worker's start: the schema must be exactly `HEAD`.

    Raises:
        LedgerSchemaError: Behind (run `lockgate migrate`), or unknown.
    """
    with engine.connect() as conn:
        rev = current(conn)
    if rev == HEAD:
        return
    if rev is None:
        raise LedgerSchemaError(
            "the ledger database has no lockgate schema (or one from before migrations): run "
            "`lockgate migrate` with the migration role"
        )
    if not _known(rev):
        raise LedgerSchemaError(
            f"the ledger's schema is at revision {rev}, which this lockgate does not know (it knows up to {HEAD})"
        )
    raise LedgerSchemaError(
        f"the ledger's schema is at revision {rev}, this lockgate needs {HEAD}: run `lockgate migrate` "
        "with the migration role"
    )


# What a worker's runtime role needs on PostgreSQL, and nothing more: it reads everything, appends
# rows, moves the chains' head rows and the kill switch's index, and never alters, deletes or
# truncates anything.
RUNTIME_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON alembic_version, ledger, ledger_heads, ledger_checkpoints, ledger_checkpoint_heads, "
    "ledger_keys, ledger_meta, policy_bundles, freezes TO {role}",
    "GRANT INSERT ON ledger, ledger_heads, ledger_checkpoints, ledger_checkpoint_heads, ledger_keys, "
    "ledger_meta, policy_bundles, freezes TO {role}",
    # Archived histories (revision 0003; that migration also grants them to every role that may
    # append to the ledger, so a schema migrated later needs no new grants).
    "DO $$ BEGIN IF to_regclass('public.history_archive') IS NOT NULL THEN "
    "GRANT SELECT, INSERT ON history_archive TO {role}; END IF; END $$",
    "GRANT UPDATE (size, head, closed, dirty, sealed_size, sealed_final) ON ledger_heads TO {role}",
    'GRANT UPDATE (frozen, "by", reason, at, evidence) ON freezes TO {role}',
    "GRANT USAGE ON SEQUENCE ledger_seq_seq TO {role}",
)


def runtime_grants(role: str) -> list[str]:
    """The GRANT statements for a runtime role (PostgreSQL), for `lockgate setup` or a DBA."""
    if not role.replace("_", "").isalnum():
        raise ValueError(f"not a plain role name: {role!r}")
    return [g.format(role=role) for g in RUNTIME_GRANTS]
