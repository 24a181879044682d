"""Declaring agents and tools (DESIGN.md "Agent", "Tool").

Declarations are pure data, importable from workflow code: the implementations of tools (which do
I/O) are bound to these names in `activities/`, and `worker.py` joins the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lockgate.models import ToolCall

__all__ = [
    "AgentRegistry",
    "AgentSpec",
    "LLMPlanner",
    "Planner",
    "Run",
    "Script",
    "ToolSpec",
    "describe_validation",
    "load_agent_modules",
    "registry",
]

DataClass = Literal["public", "internal", "regulated"]


class ToolSpec(BaseModel):
    """A tool's metadata. `name` is also its Cedar action id and (as `tool.<name>`) its activity."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str = ""
    args: type[BaseModel]
    # Vault path of the dynamic secret the tool needs for one call, e.g. database/creds/shop-refunds.
    secret: str | None = None
    production: bool = False
    data_class: DataClass = "internal"
    reversible: bool = True
    egress: bool = False
    compensation: str | None = None
    cost_arg: str | None = None

    @property
    def activity_name(self) -> str:
        return f"tool.{self.name}"

    def labels(self) -> dict[str, Any]:
        """Risk labels as Cedar sees them on the `Tool` resource."""
        return {
            "production": self.production,
            "data_class": self.data_class,
            "reversible": self.reversible,
            "egress": self.egress,
        }

    def cost_of(self, args: dict[str, Any]) -> int:
        if self.cost_arg is None:
            return 0
        value = args.get(self.cost_arg, 0)
        return int(value) if isinstance(value, (int, float)) else 0


# A planner sees the run's input and the steps done so far and proposes the next call, or None to
# finish. Scripted planners are deterministic and run inside the workflow.
Planner = Callable[[dict[str, Any], list[dict[str, Any]]], ToolCall | None]


class LLMPlanner(BaseModel):
    """A planner that asks an OpenAI-compatible chat-completions model for the next tool call.

    It runs as the activity `planner.llm`; the API key is read from Vault (`key_path`, a kv-v1 path
    the worker's AppRole can read) inside that activity and never enters history.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Empty: from LOCKGATE_LLM_BASE_URL / LOCKGATE_LLM_MODEL in the worker's environment.
    base_url: str = ""
    model: str = ""
    key_path: str = "lockgate/worker/llm"
    system_prompt: str = "You are an agent. Call exactly one tool per turn, or answer in text when done."
    max_tokens: int = 512
    timeout_seconds: float = 30.0


class Run(Protocol):
    """What a scripted agent sees: `await run.call(tool, args)` is one governed tool call."""

    async def call(
        self, tool: str, args: dict[str, Any], *, confidence: float = 1.0, rationale: str | None = None
    ) -> dict[str, Any]: ...


# A script is the other way to write an agent: plain (deterministic) async code that calls tools.
Script = Callable[[Run, Any], Awaitable[None]]


class AgentSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    owner: str
    purpose: str
    tools: tuple[ToolSpec, ...]
    input_model: type[BaseModel]
    # Exactly one of: a scripted planner, an LLM planner, or a script.
    planner: Planner | LLMPlanner | None = None
    script: Script | None = None
    max_steps: int = 20
    budget: int | None = None
    deadline: timedelta = timedelta(hours=1)
    approval_ttl: timedelta = timedelta(hours=24)
    # Autonomy thresholds. A crossed threshold whose gate is in `escalations` asks that group for
    # approval; any other crossed threshold denies.
    min_confidence: float | None = None
    rate_limits: dict[str, tuple[int, timedelta]] = Field(default_factory=dict)
    escalations: dict[str, str] = Field(default_factory=dict)
    # Which group may let a run that read regulated data send it out (data-flow gate).
    taint_approver: str | None = None
    # Agents this one may start as sub-agents (with a subset of its own boundary and budget).
    delegates: tuple[str, ...] = ()
    # Continue-as-new once a run's history is this long (Temporal warns at 10,240 events).
    history_limit: int = 8000
    vault_policy: str = Field(default="")

    def model_post_init(self, _context: Any) -> None:
        if (self.planner is None) == (self.script is None):
            raise ValueError(f"agent {self.name!r} needs exactly one of planner= or script=")
        if not self.vault_policy:
            object.__setattr__(self, "vault_policy", f"lockgate-agent-{self.name}")

    @property
    def boundary(self) -> frozenset[str]:
        """The task boundary: every tool this agent may ever call."""
        return frozenset(t.name for t in self.tools)

    def tool(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == name), None)

    def secrets(self) -> list[str]:
        return sorted({t.secret for t in self.tools if t.secret})


class AgentRegistry:
    """Agents by name. The process-wide `registry` is filled by importing agent modules."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentSpec] = {}

    def add(self, agent: AgentSpec) -> AgentSpec:
        for tool in agent.tools:
            other = self.tool(tool.name)
            if other is not None and other != tool:
                raise ValueError(f"tool {tool.name!r} is declared twice with different metadata")
        self._agents[agent.name] = agent
        return agent

    def get(self, name: str) -> AgentSpec | None:
        return self._agents.get(name)

    def names(self) -> list[str]:
        return sorted(self._agents)

    def agents(self) -> list[AgentSpec]:
        return [self._agents[n] for n in self.names()]

    def tool(self, name: str) -> ToolSpec | None:
        for agent in self._agents.values():
            found = agent.tool(name)
            if found is not None:
                return found
        return None

    def tools(self) -> list[ToolSpec]:
        seen: dict[str, ToolSpec] = {}
        for agent in self._agents.values():
            for tool in agent.tools:
                seen.setdefault(tool.name, tool)
        return [seen[n] for n in sorted(seen)]


registry = AgentRegistry()


def load_agent_modules(spec: str | None = None) -> list[str]:
    """Imports the modules that declare agents: lockgate's own, plus `LOCKGATE_AGENT_MODULES`
    (comma-separated module paths; their tools' implementations register on import too)."""
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `LOCKGATE_AGENT_MODULES=examples.report_agent lockgate ...` from a checkout
    names = ["lockgate.agents"]
    raw = spec if spec is not None else os.environ.get("LOCKGATE_AGENT_MODULES", "")
    names += [n.strip() for n in raw.split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def describe_validation(err: ValidationError) -> str:
    """One line naming each bad field, for denials and CLI errors."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
