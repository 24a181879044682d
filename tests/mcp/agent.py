"""An agent whose tools come from MCP servers (tests/mcp/bank_server.py), over stdio and HTTP.

`STATE` is where the servers keep their effects and where the test writes their knobs; `PORT` is
where the test serves the HTTP one. Both are fixed at import, before the stack bootstraps.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lockgate import Agent, LLMPlanner, MCPServer, MCPTool
from lockgate.mcp import TOKEN

# The test sets both in the environment, so its CLI processes see the same servers.
STATE = Path(os.environ.get("MCP_TEST_STATE") or Path(tempfile.gettempdir()) / f"lockgate-mcp-bank-{os.getpid()}")
SERVER = str(Path(__file__).with_name("bank_server.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = int(os.environ.get("MCP_TEST_PORT") or _free_port())


def _tools() -> dict[str, MCPTool | None]:
    return {
        "lookup": MCPTool(data_class="regulated"),
        "transfer": MCPTool(production=True, cost_arg="amount_cents", compensation="{server}.reverse"),
        "reverse": MCPTool(production=True),
        # The server says read-only, non-destructive: lockgate declares what it knows instead.
        "purge": MCPTool(production=True, reversible=False),
    }


def _server(name: str, **where: Any) -> MCPServer:
    tools = {
        k: (v.model_copy(update={"compensation": v.compensation.format(server=name)}) if v and v.compensation else v)
        for k, v in _tools().items()
    }
    return MCPServer(name, tools=tools, secret=TOKEN, **where)


BANK = _server(
    "bank",
    command=(sys.executable, SERVER, "stdio", f"DIR={STATE / 'bank'}", "NAME=bank"),
    env={"BANK_TOKEN": "token"},
)
BANK_HTTP = _server("bankhttp", url=f"http://127.0.0.1:{PORT}/mcp")


class Calls(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    calls: list[dict[str, Any]]


async def script(run: Any, inp: Calls) -> None:
    for call in inp.calls:
        await run.call(call["tool"], call.get("args", {}))


TELLER = Agent(
    name="mcp-teller",
    owner="treasury-team",
    purpose="Move money with the bank's MCP servers.",
    tools=(*BANK.as_tools(), *BANK_HTTP.as_tools()),
    input_model=Calls,
    script=script,
    max_steps=10,
)


class Account(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    account: str


# The same HTTP server's tools, planned by a chat-completions model (the test serves a fake one at
# LOCKGATE_LLM_BASE_URL): what reaches the model after the regulated `lookup` is gated egress.
LLM_TELLER = Agent(
    name="mcp-llm-teller",
    owner="treasury-team",
    purpose="Answer balance questions with the bank's MCP server.",
    tools=(*BANK_HTTP.as_tools(),),
    input_model=Account,
    planner=LLMPlanner(model="fake-model", key_path="lockgate/worker/llm-test"),
    max_steps=5,
)

AGENTS = [TELLER, LLM_TELLER]
