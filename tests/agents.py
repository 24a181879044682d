"""Test-only agents, registered when the test session starts (before the stack is bootstrapped)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from lockgate.agents import refund
from lockgate.models import ToolCall
from lockgate.spec import AgentSpec, registry


class ScriptInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    steps: list[dict[str, Any]]


def script_plan(inp: dict[str, Any], done: list[dict[str, Any]]) -> ToolCall | None:
    """Proposes the input's steps one by one (any tool name at all, known or not)."""
    steps = inp["steps"]
    return ToolCall(**steps[len(done)]) if len(done) < len(steps) else None


SCRIPT_AGENT = registry.add(
    AgentSpec(
        name="script-agent",
        owner="bob",  # a finance member: lets tests show an owner cannot approve
        purpose="drive exact tool sequences in tests",
        tools=refund.TOOLS,
        input_model=ScriptInput,
        planner=script_plan,
        max_steps=8,
        budget=60000,
        approval_ttl=timedelta(seconds=3),
    )
)
