"""A team's existing Pydantic AI agent on Temporal whose tools come from an MCP toolset (the tests'
bank server over streamable HTTP), governed drop-in by `LockgatePlugin(govern=[GOVERNANCE])`.

The model is a `FunctionModel` that reads the prompt: `transfer N from ACCOUNT`, `balance of ACCOUNT`
(one tool call each, in order), and answers with every tool result it saw, so the test can read what
reached the model. `SEEN` keeps each model request's payload as the model received it.
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import TemporalDurability
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.messages import (
        ModelMessage,
        ModelResponse,
        RetryPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from lockgate import MCPServer, MCPTool
    from lockgate.dropin import Governance
    from lockgate.mcp import TOKEN
    from tests.mcp.dropin_where import PORT, SERVER, STATE, URL

__all__ = ["GOVERNANCE", "PORT", "SERVER", "STATE", "URL", "TellerWorkflow", "teller_agent"]

# Every request the model got, as it got it (the test's fake model endpoint).
SEEN: list[list[dict[str, Any]]] = []
# What the model was offered, per request (tool names).
OFFERED: list[list[str]] = []


def scripted_llm(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    SEEN.append(
        [{"kind": type(p).__name__, "content": str(getattr(p, "content", ""))} for m in messages for p in m.parts]
    )
    OFFERED.append(sorted(t.name for t in info.function_tools))
    prompt = next(str(p.content) for m in messages for p in m.parts if isinstance(p, UserPromptPart))
    plan: list[ToolCallPart] = []
    for m in re.finditer(r"(s_)?transfer (\d+) from ([\w-]+)|balance of ([\w-]+)", prompt):
        if m[2]:
            name = f"{m[1] or ''}transfer"
            plan.append(ToolCallPart(name, {"account": m[3], "amount_cents": int(m[2])}))
        else:
            plan.append(ToolCallPart("lookup", {"account": m[4]}))
    results = [p for m in messages for p in m.parts if isinstance(p, (ToolReturnPart, RetryPromptPart))]
    if len(results) < len(plan):
        return ModelResponse(parts=[plan[len(results)]])
    return ModelResponse(parts=[TextPart(" | ".join(str(p.content) for p in results) or "nothing to do")])


teller_agent = Agent(
    FunctionModel(scripted_llm),
    name="dropin_teller",
    # The app's toolset, as the team wrote it: its id names the server to lockgate. lockgate makes
    # the governed calls itself, so this toolset never needs (or gets) a credential of its own.
    # The same server over stdio (a fresh process per call), its tools prefixed `s_` for the model.
    toolsets=[MCPToolset(URL, id="bankd"), MCPToolset(Path(SERVER), id="bankds").prefixed("s")],
    capabilities=[
        TemporalDurability(
            activity_config=ActivityConfig(
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3)
            )
        )
    ],
)


class Ask(BaseModel):
    model_config = ConfigDict(frozen=True)
    prompt: str


@workflow.defn
class TellerWorkflow:
    @workflow.run
    async def run(self, ask: Ask) -> str:
        result = await teller_agent.run(ask.prompt)
        return str(result.output)


# lockgate: the MCP server as a lockgate agent would declare it -----------------------------------
BANKD = MCPServer(
    "bankd",
    url=URL,
    secret=TOKEN,
    tools={
        "lookup": MCPTool(data_class="regulated"),
        "transfer": MCPTool(production=True, cost_arg="amount_cents", compensation="bankd.reverse"),
        "reverse": MCPTool(production=True),
    },
)

BANKDS = MCPServer(
    "bankds",
    command=(sys.executable, SERVER, "stdio", f"DIR={STATE / 'bankds'}", "NAME=bankds"),
    env={"BANK_TOKEN": "token"},
    secret=TOKEN,
    tools={
        "transfer": MCPTool(production=True, cost_arg="amount_cents", compensation="bankds.reverse"),
        "reverse": MCPTool(production=True),
    },
)

GOVERNANCE = Governance(
    "dropin_teller",
    owner="treasury-team",
    purpose="Move money with the bank's MCP server (Pydantic AI, drop-in).",
    workflows=(TellerWorkflow,),
    tools={},
    mcp=(BANKD, BANKDS),
)
