"""Test-only agents, registered when the test session starts (before the stack is bootstrapped)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from lockgate.demo import shop as refund
from lockgate.models import ToolCall
from lockgate.spec import AgentSpec, LLMPlanner, Step, registry


class ScriptInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    steps: list[dict[str, Any]]


def script_plan(inp: ScriptInput, done: Sequence[Step]) -> ToolCall | None:
    """Proposes the input's steps one by one (any tool name at all, known or not)."""
    steps = inp.steps
    return ToolCall(**steps[len(done)]) if len(done) < len(steps) else None


# -- QA tools: no Vault secret, side effects in memory, so tests can make compensations fail. --------
from pydantic import Field  # noqa: E402

from lockgate import ToolContext, ToolError, tool  # noqa: E402

MARKS: dict[str, dict[str, Any]] = {}
UNDONE: list[str] = []
# What each qa.unmark was told it undoes (`ctx.forward`, from the run's ledger), by its own key.
FORWARDS: dict[str, Any] = {}


class MarkArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    label: str
    fail_undo: bool = False
    # Acts, then raises: a call that failed after its side effect (its compensation must still run).
    fail: bool = False


class UnmarkArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    idempotency_key: str = Field(min_length=1)


class ExplodeArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    why: str = "boom"
    # A transient failure: the first `retryable_times` attempts of the call fail retryably, then it works.
    retryable_times: int = 0


EXPLODED: dict[str, int] = {}


@tool("qa.mark", compensation="qa.unmark", data_class="public")
def qa_mark(ctx: ToolContext, args: MarkArgs) -> dict[str, Any]:
    MARKS[ctx.idempotency_key] = {"label": args.label, "fail_undo": args.fail_undo}
    if args.fail:
        raise ToolError(f"marked {args.label}, then failed")
    return {"summary": f"marked {args.label}"}


@tool("qa.unmark", data_class="public")
def qa_unmark(ctx: ToolContext, args: UnmarkArgs) -> dict[str, Any]:
    FORWARDS[args.idempotency_key] = ctx.forward
    mark = MARKS.get(args.idempotency_key)
    if mark is None:
        return {"summary": "nothing to unmark"}
    if mark["fail_undo"]:
        raise ToolError(f"cannot unmark {mark['label']}")
    UNDONE.append(mark["label"])
    return {"summary": f"unmarked {mark['label']}"}


@tool("qa.explode", data_class="public")
def qa_explode(ctx: ToolContext, args: ExplodeArgs) -> dict[str, Any]:
    if not args.retryable_times:
        raise ToolError(f"exploded: {args.why}")
    EXPLODED[ctx.idempotency_key] = tries = EXPLODED.get(ctx.idempotency_key, 0) + 1
    if tries <= args.retryable_times:
        raise ToolError(f"exploded for now: {args.why}", retryable=True)
    return {"summary": f"went through at attempt {tries}"}


QA_TOOLS = (qa_mark, qa_unmark, qa_explode)


SCRIPT_AGENT = registry.add(
    AgentSpec(
        name="script-agent",
        owner="bob",  # a finance member: lets tests show an owner cannot approve
        purpose="drive exact tool sequences in tests",
        tools=refund.TOOLS + QA_TOOLS,
        input_model=ScriptInput,
        planner=script_plan,
        max_steps=8,
        budget=25000,
        approval_ttl=timedelta(
            seconds=8
        ),  # short, for expiry tests; long enough for a CLI approval on a loaded machine
        min_confidence=0.5,
        rate_limits={"qa.mark": (3, timedelta(minutes=1))},
        escalations={"budget": "finance", "confidence": "support-leads"},
        taint_approver="support-leads",
        delegates=("script-agent",),
    )
)


CHAIN_AGENT = registry.add(
    AgentSpec(
        name="chain-agent",
        owner="qa-team",
        purpose="chain-aware policies: the run's earlier calls decide the next one",
        tools=refund.TOOLS,
        input_model=ScriptInput,
        planner=script_plan,
        max_steps=8,
        approval_ttl=timedelta(minutes=2),
    )
)


LONG_AGENT = registry.add(
    AgentSpec(
        name="long-agent",
        owner="qa-team",
        purpose="long runs: continue-as-new keeps state across histories",
        tools=QA_TOOLS,
        input_model=ScriptInput,
        planner=script_plan,
        max_steps=200,
        history_limit=40,
    )
)


LLM_AGENT = registry.add(
    AgentSpec(
        name="llm-agent",
        owner="qa-team",
        purpose="plans with a (fake, local) chat-completions model",
        tools=QA_TOOLS,
        input_model=ScriptInput,
        planner=LLMPlanner(model="fake-model", key_path="lockgate/worker/llm-test"),
        max_steps=10,
        min_confidence=0.6,
        escalations={"confidence": "support-leads"},
    )
)


async def scripted_marks(run: Any, inp: ScriptInput) -> None:
    """A scripted agent: plain async code, each `run.call` a governed call."""
    first = await run.call("qa.mark", {"label": "scripted-1"})
    assert first["summary"] == "marked scripted-1"
    for step in inp.steps:
        await run.call(step["tool"], step.get("args", {}))


SCRIPTED_AGENT = registry.add(
    AgentSpec(
        name="scripted-agent",
        owner="qa-team",
        purpose="the script authoring style",
        tools=QA_TOOLS,
        input_model=ScriptInput,
        script=scripted_marks,
    )
)
