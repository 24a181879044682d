"""The baseline: a plain Temporal workflow that runs N plain activities one after another.

Same server, same client, same data converter, same activity options and the same kind of worker
(sync activities in a thread pool of the same size) as the governed runs, so that the ratio shows
what governance costs and nothing else: no gate, no ledger, no Vault.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    # The governed tool call's options (timeouts, heartbeat, retry), shared so both sides match.
    from lockgate.workflows.agent import TOOL_CALL

__all__ = ["NOOP", "PG", "PlainActivities", "PlainInput", "PlainStep", "PlainWaitWorkflow", "PlainWorkflow"]

NOOP = "bench.plain.noop"
PG = "bench.plain.pg"


class PlainInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    activity: str
    n: int = Field(ge=0)


class PlainStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    i: int


@workflow.defn(name="bench.plain")
class PlainWorkflow:
    @workflow.run
    async def run(self, inp: PlainInput) -> int:
        for i in range(inp.n):
            await workflow.execute_activity(inp.activity, PlainStep(i=i), result_type=dict, **TOOL_CALL)
        return inp.n


@workflow.defn(name="bench.plain.wait")
class PlainWaitWorkflow:
    """The memory anchor: a plain temporalio run that waits for a signal, as a governed run waits
    for its approval (the plain worker runs it sandboxed, temporalio's default)."""

    def __init__(self) -> None:
        self._approved = False

    @workflow.run
    async def run(self) -> bool:
        await workflow.wait_condition(lambda: self._approved)
        return True

    @workflow.signal
    def approve(self) -> None:
        self._approved = True

    @workflow.query
    def waiting(self) -> bool:
        return not self._approved


class PlainActivities:
    """`dsn` is the stack's superuser DSN (a static password): kept here, never in workflow input."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    @activity.defn(name=NOOP)
    def noop(self, step: PlainStep) -> dict[str, Any]:
        return {"summary": "ok"}

    @activity.defn(name=PG)
    def pg(self, step: PlainStep) -> dict[str, Any]:
        import psycopg

        with psycopg.connect(self._dsn, connect_timeout=5) as conn:
            row = conn.execute("select 1").fetchone()
        assert row is not None
        (one,) = row
        return {"summary": f"select {one}"}

    def activities(self) -> list[Any]:
        return [self.noop, self.pg]
