"""A team's own agent, declared with `lockgate` alone: its own database, Postgres role and tools.

Nothing in lockgate knows it: `tests/test_custom_agent.py` bootstraps a private stack for it and
runs it end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate import Agent, DatabaseSecret, Step, ToolCall, ToolContext, ToolError, tool

NOTES_SQL = """
CREATE TABLE IF NOT EXISTS notes (
    id bigserial PRIMARY KEY, body text NOT NULL, idempotency_key text NOT NULL UNIQUE,
    deleted_at timestamptz);
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notes_writer') THEN
        CREATE ROLE notes_writer NOLOGIN; END IF;
END $$;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE notes TO notes_writer;
GRANT USAGE ON SCHEMA public TO notes_writer;
GRANT SELECT, INSERT ON notes TO notes_writer;
GRANT UPDATE (deleted_at) ON notes TO notes_writer;
GRANT USAGE ON SEQUENCE notes_id_seq TO notes_writer;
"""

WRITER = DatabaseSecret(role="notes-writer", database="notes", member_of=("notes_writer",), setup_sql=NOTES_SQL)


class NoteArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    body: str = Field(min_length=1, max_length=200)


class UndoArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str


class NotesInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    bodies: list[str]


@tool("notes.delete", secret=WRITER, production=True)
def delete_note(ctx: ToolContext, args: UndoArgs) -> dict[str, Any]:
    """Delete a note by the idempotency key of the step that added it."""
    if not ctx.owns(args.idempotency_key):
        raise ToolError("not a step of this run")
    with ctx.connect("notes") as conn:
        conn.execute(
            "UPDATE notes SET deleted_at = now() WHERE idempotency_key = %s AND deleted_at IS NULL",
            (args.idempotency_key,),
        )
    return {"summary": "deleted"}


@tool("notes.add", secret=WRITER, production=True, compensation=delete_note)
def add_note(ctx: ToolContext, args: NoteArgs) -> dict[str, Any]:
    """Add a note (as this call's own Postgres role)."""
    if args.body == "fail":
        raise ToolError("refusing to write 'fail'")
    with ctx.connect("notes") as conn:
        conn.execute(
            "INSERT INTO notes (body, idempotency_key) VALUES (%s, %s) ON CONFLICT (idempotency_key) DO NOTHING",
            (args.body, ctx.idempotency_key),
        )
        (user,) = conn.execute("SELECT current_user").fetchone() or ("?",)
    return {"user": user, "summary": f"noted {args.body!r}"}


def plan(inp: NotesInput, done: Sequence[Step]) -> ToolCall | None:
    if len(done) < len(inp.bodies):
        return ToolCall(tool="notes.add", args={"body": inp.bodies[len(done)]})
    return None


AGENT = Agent(
    name="notes-agent",
    owner="notes-team",
    purpose="Write notes.",
    tools=(add_note, delete_note),
    input_model=NotesInput,
    planner=plan,
    max_steps=5,
)
