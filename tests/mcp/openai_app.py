"""A team's existing OpenAI Agents SDK agent on Temporal whose tools come from an MCP server (the
tests' bank server over streamable HTTP, `OpenAIAgentsPlugin(mcp_servers={"bankd": ...})` and
`workflow.temporal_mcp_server("bankd")`), governed drop-in by `LockgatePlugin(govern=[GOVERNANCE])`
with the same `MCPServer` declaration (pin, Cedar types, per-call token) as tests/mcp/dropin_app.py.

The model is a scripted `TestModel` that reads the prompt: `transfer N from ACCOUNT`, `balance of
ACCOUNT` (one tool call each, in order), then answers with every tool output it saw. `OFFERED` keeps
the tool names each model request was offered.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    from agents import Agent, Runner
    from agents.mcp import MCPServerStreamableHttp
    from temporalio.openai_agents.testing import ResponseBuilders, TestModel
    from temporalio.openai_agents.workflow import temporal_mcp_server

    from lockgate.dropin import Governance
    from tests.mcp.dropin_app import BANKD
    from tests.mcp.dropin_where import URL

__all__ = ["GOVERNANCE", "OFFERED", "OpenAITellerWorkflow", "ScriptedBank", "bank_factory"]

OFFERED: list[list[str]] = []


class ScriptedBank(TestModel):
    """Stands in for the LLM: one MCP tool call per instruction of the prompt, then the outputs."""

    def __init__(self) -> None:
        super().__init__(lambda: ResponseBuilders.output_message(""))

    async def get_response(self, system_instructions: str | None, input: Any, *args: Any, **kwargs: Any) -> Any:
        tools = args[2] if len(args) > 2 else kwargs.get("tools", [])
        OFFERED.append(sorted(str(getattr(t, "name", t)) for t in tools))
        items = [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        prompt = next(str(i["content"]) for i in items if isinstance(i, dict) and i.get("role") == "user")
        outputs = [
            str(i.get("output")) for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"
        ]
        plan: list[tuple[str, dict[str, Any]]] = []
        for m in re.finditer(r"transfer (\d+) from ([\w-]+)|balance of ([\w-]+)", prompt):
            if m[1]:
                plan.append(("transfer", {"account": m[2], "amount_cents": int(m[1])}))
            else:
                plan.append(("lookup", {"account": m[3]}))
        if len(outputs) < len(plan):
            name, args_ = plan[len(outputs)]
            return ResponseBuilders.tool_call(json.dumps(args_), name, call_id=f"call-{len(items)}")
        return ResponseBuilders.output_message(" | ".join(outputs) or "nothing to do")


def bank_factory() -> MCPServerStreamableHttp:
    """The app's own server factory, as the team wrote it: no credential (lockgate makes the
    governed calls itself, with each call's own token)."""
    return MCPServerStreamableHttp(name="bankd", params={"url": URL})


class Ask(BaseModel):
    model_config = ConfigDict(frozen=True)
    prompt: str


@workflow.defn
class OpenAITellerWorkflow:
    @workflow.run
    async def run(self, ask: Ask) -> str:
        bank = temporal_mcp_server(
            "bankd",
            activity_config=ActivityConfig(
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3)
            ),
        )
        agent = Agent(name="oa_teller", instructions="You move money.", mcp_servers=[bank])
        result = await Runner.run(agent, ask.prompt)
        return str(result.final_output)


GOVERNANCE = Governance(
    "oa_teller",
    owner="treasury-team",
    purpose="Move money with the bank's MCP server (OpenAI Agents SDK, drop-in).",
    workflows=(OpenAITellerWorkflow,),
    tools={},
    mcp=(BANKD,),
)
