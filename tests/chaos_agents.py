"""`chaos-agent`: the agent tests/test_chaos_hosts.py drives across hosts (network namespaces).

Its tools write to the `chaos` database as a fresh Postgres role per call and record which host ran
them, so the test counts side effects from outside: `attempts` (every attempt that reached the
database), `effects` (a step's side effect: once per idempotency key, guarded by an advisory lock as
a tool author would) and `undos` (a compensation that undid an effect). `hold` makes an attempt
wait (at most 8 s, under the tool heartbeat timeout) until the test releases it, so a host can be
killed mid-tool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate import Agent, DatabaseSecret, Step, ToolCall, ToolContext, ToolError, tool

__all__ = ["AGENT", "CHAOS_SQL", "ChaosInput"]

CHAOS_SQL = """
CREATE TABLE IF NOT EXISTS effects (
    id bigserial PRIMARY KEY, idempotency_key text NOT NULL, run_id text NOT NULL, step integer NOT NULL,
    label text NOT NULL, host text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(),
    undone_at timestamptz, undone_by text);
CREATE TABLE IF NOT EXISTS attempts (
    id bigserial PRIMARY KEY, idempotency_key text NOT NULL, tool text NOT NULL, host text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS undos (
    id bigserial PRIMARY KEY, idempotency_key text NOT NULL, host text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chaos_writer') THEN
        CREATE ROLE chaos_writer NOLOGIN; END IF;
END $$;
REVOKE ALL ON DATABASE chaos FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE chaos TO chaos_writer;
GRANT USAGE ON SCHEMA public TO chaos_writer;
GRANT SELECT, INSERT, UPDATE ON effects, attempts, undos TO chaos_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO chaos_writer;
"""

WRITER = DatabaseSecret(role="chaos-writer", database="chaos", member_of=("chaos_writer",), setup_sql=CHAOS_SQL)
_ARGS = ConfigDict(frozen=True, extra="forbid")


class WriteArgs(BaseModel):
    model_config = _ARGS
    label: str = Field(min_length=1, max_length=100)
    hold: bool = False
    fail: bool = False


class UndoArgs(BaseModel):
    model_config = _ARGS
    idempotency_key: str = Field(min_length=1)


class ChaosInput(BaseModel):
    model_config = _ARGS
    steps: list[dict[str, Any]]


def _host() -> str:
    return os.environ.get("CHAOS_HOST", "test")


def _hold(key: str) -> None:
    folder = os.environ.get("CHAOS_HOLD_DIR")
    if not folder:
        return
    Path(folder, f"{key}.reached").write_text(_host())
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and not Path(folder, f"{key}.go").exists():
        time.sleep(0.05)


@tool("chaos.write", secret=WRITER, compensation="chaos.undo", data_class="public")
def write(ctx: ToolContext, args: WriteArgs) -> dict[str, Any]:
    """Writes the step's effect once (by its idempotency key)."""
    key = ctx.idempotency_key
    with ctx.connect("chaos") as conn:
        conn.autocommit = True
        conn.execute(
            "INSERT INTO attempts (idempotency_key, tool, host) VALUES (%s, 'chaos.write', %s)", (key, _host())
        )
        if args.hold:
            _hold(key)
        if args.fail:
            raise ToolError(f"{args.label} fails by design")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
            row = conn.execute("SELECT id FROM effects WHERE idempotency_key = %s", (key,)).fetchone()
            if row is None:
                row = conn.execute(
                    "INSERT INTO effects (idempotency_key, run_id, step, label, host) VALUES (%s, %s, %s, %s, %s) "
                    "RETURNING id",
                    (key, ctx.run_id, ctx.step, args.label, _host()),
                ).fetchone()
    assert row is not None
    return {"effect_id": row[0], "summary": f"wrote {args.label} (effect {row[0]})"}


@tool("chaos.undo", secret=WRITER, data_class="public")
def undo(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    """Undoes a step's effect (idempotent: an effect is undone once; nothing to undo is a no-op)."""
    if not ctx.owns(args.idempotency_key):
        raise ToolError(f"{args.idempotency_key} is not a step of run {ctx.run_id}")
    with ctx.connect("chaos") as conn:
        conn.autocommit = True
        conn.execute(
            "INSERT INTO attempts (idempotency_key, tool, host) VALUES (%s, 'chaos.undo', %s)",
            (args.idempotency_key, _host()),
        )
        with conn.transaction():
            row = conn.execute(
                "UPDATE effects SET undone_at = now(), undone_by = %s WHERE idempotency_key = %s "
                "AND undone_at IS NULL RETURNING id",
                (_host(), args.idempotency_key),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "INSERT INTO undos (idempotency_key, host) VALUES (%s, %s)", (args.idempotency_key, _host())
                )
    return {"undone": row is not None, "summary": f"undid {args.idempotency_key}" if row else "nothing to undo"}


def plan(inp: ChaosInput, done: Sequence[Step]) -> ToolCall | None:
    """The input's steps, one by one."""
    return ToolCall(**inp.steps[len(done)]) if len(done) < len(inp.steps) else None


AGENT = Agent(
    name="chaos-agent",
    owner="qa-team",
    purpose="Writes marked effects so chaos tests can count them across hosts.",
    tools=(write, undo),
    input_model=ChaosInput,
    planner=plan,
    max_steps=6,
)

AGENTS = [AGENT]
