"""The ledger's schema is migrated (Alembic, forward only) by a migration role; a worker runs with
a runtime role that may only read and append, and stops with a clear error on a schema it does not
know. Nothing is ever set aside or recreated silently."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import LiteralString, cast

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from temporalio.client import Client

from lockgate.activities.ledger import Ledger
from lockgate.activities.ledger.migrate import HEAD, LedgerSchemaError, runtime_grants, upgrade
from lockgate.config import Settings, load_settings
from tests.support.stack import Outside, cli, finish, start


async def test_migrate_is_idempotent_forward_only_and_refuses_what_it_does_not_know(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = await cli(env, "migrate", "--url", url)
    assert first.returncode == 0 and f"none -> {HEAD}" in first.stdout, first.stderr
    again = await cli(env, "migrate", "--url", url)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    newer = await cli(env, "migrate", "--url", url)
    assert newer.returncode == 2 and "9999" in newer.stderr and "does not know" in newer.stderr
    with pytest.raises(LedgerSchemaError, match="9999"):
        Ledger(url)
    # A ledger from before per-run chains is refused, and left exactly where it was.
    legacy = tmp_path / "legacy.db"
    with sqlite3.connect(legacy) as conn:
        conn.execute("CREATE TABLE ledger (seq INTEGER PRIMARY KEY, event_key TEXT, kind TEXT, data TEXT)")
        conn.execute("INSERT INTO ledger VALUES (1, 'k', 'decision', '{}')")
    with pytest.raises(LedgerSchemaError, match="never sets it aside"):
        Ledger(f"sqlite:///{legacy}")
    with sqlite3.connect(legacy) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"ledger"} and conn.execute("SELECT count(*) FROM ledger").fetchone() == (1,)


def _database(settings: Settings) -> tuple[str, str]:
    """A fresh PostgreSQL database: (its name, its URL as the migration role, the owner)."""
    assert settings.pg_dsn
    name = f"ledger_rt_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.pg_dsn.replace("/shop?", "/postgres?"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, settings.pg_dsn.replace("postgresql://", "postgresql+psycopg://").replace("/shop?", f"/{name}?")


def _runtime_role(admin_url: str, name: str) -> str:
    """A login role with exactly the documented runtime grants; its URL."""
    role, password = f"lg_rt_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    plain = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(sql.Identifier(role)))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for grant in runtime_grants(role):
            # runtime_grants returns SQL text (for a DBA too) built from a role name it checked.
            conn.execute(cast(LiteralString, grant))
    return make_url(admin_url).set(username=role, password=password).render_as_string(hide_password=False)


async def test_a_runtime_role_with_only_its_grants_runs_a_governed_call(
    client: Client, env: dict[str, str], settings: Settings, outside: Outside
) -> None:
    from lockgate import worker

    name, admin = _database(settings)
    assert upgrade(admin).after == HEAD  # the migration role
    runtime = _runtime_role(admin, name)
    queue = f"rt-{uuid.uuid4().hex[:8]}"
    rt_settings = load_settings({**env, "LOCKGATE_LEDGER_URL": runtime, "LOCKGATE_TASK_QUEUE": queue})
    deps = worker.build_deps(rt_settings)
    try:
        async with worker.build_worker(client, deps):
            handle = await start(
                client, queue, "refund-agent", {"order_id": "A-1001", "amount_cents": 200, "reason": "runtime role"}
            )
            assert await finish(handle) is None
        assert len(outside.refunds(handle.id)) == 1
        kinds = [e.kind for e in deps.ledger.entries(handle.id)]
        # The start's authorization is recorded as the run opens, then the run itself.
        assert kinds[:2] == ["start.decision", "run.opened"] and kinds[-1] == "run.closed" and "tool.completed" in kinds
        deps.ledger.seal()
        # What the runtime role may not do: alter, delete, truncate.
        plain = make_url(runtime).set(drivername="postgresql").render_as_string(hide_password=False)
        for statement in (
            "DELETE FROM ledger",
            "UPDATE ledger SET data = '{}'",
            "DELETE FROM freezes",
            "ALTER TABLE ledger ADD COLUMN x int",
            "TRUNCATE ledger_checkpoints",
            "CREATE TABLE other (x int)",
        ):
            with psycopg.connect(plain, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    finally:
        deps.ledger.dispose()
    verified = await cli({**env, "LOCKGATE_LEDGER_URL": runtime}, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def test_a_worker_on_a_schema_behind_stops_with_a_clear_error(env: dict[str, str], settings: Settings) -> None:
    name, admin = _database(settings)
    from alembic import command

    from lockgate.activities.ledger import migrate

    with migrate._engine(admin) as engine, engine.begin() as conn:  # pyright: ignore[reportPrivateUsage]
        command.upgrade(migrate._config(conn), "0001")  # pyright: ignore[reportPrivateUsage]
    runtime = _runtime_role(admin, name)
    with pytest.raises(LedgerSchemaError, match="run `lockgate migrate` with the migration role"):
        Ledger(runtime)
    worker = await cli({**env, "LOCKGATE_LEDGER_URL": runtime}, "worker", timeout=60)
    assert worker.returncode == 2 and "lockgate migrate" in worker.stderr, worker.stderr[-2000:]
    assert "Traceback" not in worker.stderr
