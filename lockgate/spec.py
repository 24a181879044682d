"""Declaring agents and tools (DESIGN.md "Agent", "Tool"): the authoring surface.

Declarations are pure data, importable from workflow code. A tool is bound to its implementation
by object (`@tool` or `Tool(fn=...)`); the implementation runs only inside its governed activity.
Nothing here imports a database or Vault client.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lockgate import names
from lockgate.context import ToolContext
from lockgate.models import ToolCall

__all__ = [
    "Agent",
    "AgentRegistry",
    "AgentSpec",
    "DatabaseSecret",
    "LLMPlanner",
    "Planner",
    "Run",
    "Script",
    "Step",
    "Tool",
    "ToolSpec",
    "agents_for",
    "bind_agents",
    "declared_governances",
    "describe_validation",
    "field_display",
    "load_agent_modules",
    "load_agents",
    "registry",
    "secret_fields",
    "shown",
    "tool",
]

DataClass = Literal["public", "internal", "regulated"]
ToolImpl = Callable[[ToolContext, Any], dict[str, Any]]
# A tool's Cedar resource id from its (validated) args, or None for none.
ResourceOf = Callable[[dict[str, Any]], "str | None"]


class DatabaseSecret(BaseModel):
    """A dynamic Postgres credential a tool needs, declared by the team that owns the tool.

    Vault's database engine issues a fresh login role per call (`database/creds/<role>`) that joins
    the group roles in `member_of`, where the grants live. `lockgate dev up` creates the Vault role
    and runs `setup_sql` (idempotent DDL and grants, as the dev superuser); in production a
    deployment creates both from the same declaration.

    Attributes:
        role: The Vault role name; the secret path is `database/creds/<role>`.
        database: The Postgres database the role connects to.
        member_of: Group roles the issued login role joins (its only privileges).
        setup_sql: Dev-stack DDL run in `database` before the role is created (schema, group roles,
            grants, seed rows). Must be idempotent.
        default_ttl: Lease TTL of one credential (a tool call revokes it at once anyway).
        max_ttl: Upper bound Vault enforces.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    database: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    member_of: tuple[str, ...] = ()
    setup_sql: str = ""
    default_ttl: str = "300s"
    max_ttl: str = "3600s"

    @property
    def path(self) -> str:
        return f"database/creds/{self.role}"


class Tool(BaseModel):
    """A governed tool. `name` is also its Cedar action id and (as `tool.<name>`) its activity.

    Attributes:
        name: Dotted id, e.g. `refunds.issue`.
        description: One line for people and models.
        args: The pydantic model its arguments must validate against.
        fn: The implementation `(ToolContext, args) -> dict`; it runs only inside the tool's
            governed activity, after the gate allowed the call and its secret was leased.
        secret: The dynamic secret one call needs: a `DatabaseSecret` or a Vault path.
        production, data_class, reversible, egress: Risk labels (Cedar sees them on the `Tool`).
        compensation: The tool (or its name) that undoes this one; it gets
            `{"idempotency_key": "<run id>:<step>"}` of the step to undo.
        cost_arg: The argument that is a cost (counted against budgets).
        resource: The Cedar resource a call acts on, from its args: the name of the argument that
            holds its id, or a function `args -> id | None`. Cedar then sees e.g. `Order::"A-1001"`
            as `resource` (a child of `Tool::"<name>"` carrying the tool's risk labels) and the
            run's chain remembers it. None: `Tool::"<name>"`.
        resource_type: The resource's Cedar entity type, e.g. `Order` (required with `resource`).
        mcp_server: Set by `lockgate.mcp.MCPServer` for the tools it contributes.
        model_sees: For a regulated tool: the fields of its results (of an MCP result, its
            structured content) a model still sees once the run is tainted, when no policy approves
            the model's endpoint (`lockgate::Action::"model.send"`); everything else is redacted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$", max_length=100)
    description: str = ""
    args: type[BaseModel]
    fn: ToolImpl | None = Field(default=None, exclude=True, repr=False)
    secret: str | None = None
    provision: DatabaseSecret | None = None
    production: bool = False
    data_class: DataClass = "internal"
    reversible: bool = True
    egress: bool = False
    compensation: str | None = None
    cost_arg: str | None = None
    resource: str | ResourceOf | None = Field(default=None, exclude=True, repr=False)
    resource_type: str | None = Field(default=None, pattern=r"^[A-Z][A-Za-z0-9_]*$")
    # The MCP server (`lockgate.mcp.MCPServer`) this tool calls, or None for a Python tool.
    mcp_server: str | None = None
    model_sees: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            secret = data.get("secret")
            if isinstance(secret, DatabaseSecret):
                data["secret"], data["provision"] = secret.path, secret
            comp = data.get("compensation")
            if isinstance(comp, Tool):
                data["compensation"] = comp.name
        return data

    @model_validator(mode="after")
    def _resource_type(self) -> Tool:
        if (self.resource is None) != (self.resource_type is None):
            raise ValueError(f"tool {self.name!r}: give resource and resource_type together")
        return self

    def resource_of(self, args: dict[str, Any]) -> tuple[str, str] | None:
        """The Cedar resource (type, id) this call acts on, or None (then `Tool::"<name>"`)."""
        if self.resource is None or self.resource_type is None:
            return None
        found = args.get(self.resource) if isinstance(self.resource, str) else self.resource(args)
        return None if found is None else (self.resource_type, str(found))

    @property
    def activity_name(self) -> str:
        return names.tool_activity(self.name)

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
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def tool(
    name: str,
    *,
    secret: str | DatabaseSecret | None = None,
    description: str | None = None,
    production: bool = False,
    data_class: DataClass = "internal",
    reversible: bool = True,
    egress: bool = False,
    compensation: str | Tool | None = None,
    cost_arg: str | None = None,
    resource: str | ResourceOf | None = None,
    resource_type: str | None = None,
) -> Callable[[ToolImpl], Tool]:
    """Declares a tool from its implementation `def fn(ctx: ToolContext, args: ArgsModel) -> dict`.

    The args model is taken from the annotation of the second parameter; the description from the
    docstring's first line. Returns the `Tool` (the function stays callable as `Tool.fn`).
    """

    def declare(fn: ToolImpl) -> Tool:
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"tool {name!r}: the implementation takes (ctx, args), got {params}")
        hints = typing.get_type_hints(fn)
        args_model = hints.get(params[1])
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise TypeError(f"tool {name!r}: annotate the args parameter with a pydantic model")
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        return Tool(
            name=name,
            description=description if description is not None else (doc[0] if doc else ""),
            args=args_model,
            fn=fn,
            secret=secret,  # type: ignore[arg-type]  # normalized by Tool's validator
            production=production,
            data_class=data_class,
            reversible=reversible,
            egress=egress,
            compensation=compensation,  # type: ignore[arg-type]
            cost_arg=cost_arg,
            resource=resource,
            resource_type=resource_type,
        )

    return declare


def shown(
    *,
    secret: str | None = None,
    money: str | None = None,
    minor_units: int = 2,
    unit: str | None = None,
    id_of: str | None = None,
    link: str | None = None,
) -> dict[str, Any]:
    """How approvers see one argument of a tool: pass it as a field's `json_schema_extra`.

    `Field(json_schema_extra=shown(money="EUR"))` on `amount_cents: int` shows `250.00 EUR` beside
    the raw value the digest covers. Nothing here changes what is signed: the card always shows every
    argument the digest covers, in full, except the ones declared secret.

    Args:
        secret: The value is withheld from the approval card (and its preview); the card says so and
            names this group as the one that may see it (in the run's history).
        money: A currency code: the value is an amount in minor units (`minor_units` digits).
        minor_units: Digits after the decimal point of `money` (2 for cents).
        unit: A unit shown after the value (`hosts`, `GiB`).
        id_of: The value is the id of this kind of thing (`order`, `customer`).
        link: An `https://` URL template with `{}` for the (URL-quoted) value: the card links the id.

    Returns:
        `{"lockgate": {...}}` for `Field(json_schema_extra=...)`.
    """
    if link is not None and not link.startswith("https://"):
        raise ValueError("shown(link=...): an https:// URL template")
    found: dict[str, Any] = {
        "secret": secret,
        "money": money,
        "minor_units": minor_units if money else None,
        "unit": unit,
        "id_of": id_of,
        "link": link,
    }
    return {"lockgate": {k: v for k, v in found.items() if v is not None}}


def field_display(model: type[BaseModel] | None) -> dict[str, dict[str, Any]]:
    """Each argument's declared display (`shown`), by its name in the args."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in (model.model_fields if model is not None else {}).items():
        extra = info.json_schema_extra
        declared = extra.get("lockgate") if isinstance(extra, dict) else None
        if isinstance(declared, dict):
            out[info.alias or name] = dict(declared)
    return out


def secret_fields(model: type[BaseModel] | None) -> dict[str, str]:
    """The arguments a tool declares secret, with the group that may see each."""
    return {name: str(d["secret"]) for name, d in field_display(model).items() if d.get("secret")}


class Step(BaseModel):
    """A step the run has done, as planners see it (results of denied steps never appear)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)


# A planner sees the run's validated input and the steps done so far and proposes the next call, or
# None to finish. Scripted planners are deterministic and run inside the workflow.
Planner = Callable[[Any, Sequence[Step]], ToolCall | None]


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
        self,
        tool: str | Tool,
        args: BaseModel | dict[str, Any],
        *,
        confidence: float = 1.0,
        rationale: str | None = None,
    ) -> dict[str, Any]: ...


# A script is the other way to write an agent: plain (deterministic) async code that calls tools.
Script = Callable[[Run, Any], Awaitable[None]]


class Agent(BaseModel):
    """An agent: a named autonomous workflow type with an owner, a purpose and a task boundary.

    Attributes:
        name: The agent's id (`lockgate run NAME`, Cedar principal `Agent::"NAME"`).
        owner: Team or person accountable for it (never an approver of its runs).
        purpose: One line for approvers.
        tools: The task boundary: every tool it may ever call (compensations included); an
            `MCPServer` here stands for the MCP tools it names.
        input_model: Validates a run's input before it starts.
        planner: A scripted planner `(input, steps) -> ToolCall | None` or an `LLMPlanner`.
        script: Or: `async def script(run, input)` calling `await run.call(tool, args)`.
        max_steps, budget, deadline, approval_ttl: Limits of one run.
        min_confidence: Autonomy threshold; below it the call is denied or escalated.
        rate_limits: Per tool: at most N calls per window.
        escalations: Gate name (`confidence`, `budget`, `step_limit`, `rate`) -> approver group.
        taint_approver: Group that may let a run that read regulated data send data out.
        delegates: Agents this one may start as sub-agents (never with more than it has).
        history_limit: Continue-as-new once a run's history is this long.
        vault_policy: The Vault policy of its run identities (default `lockgate-agent-NAME`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    owner: str
    purpose: str
    tools: tuple[Tool, ...]
    input_model: type[BaseModel]
    # Exactly one of: a scripted planner, an LLM planner, or a script.
    planner: Planner | LLMPlanner | None = None
    script: Script | None = None
    max_steps: int = 20
    budget: int | None = None
    deadline: timedelta = timedelta(hours=1)
    approval_ttl: timedelta = timedelta(hours=24)
    min_confidence: float | None = None
    rate_limits: dict[str, tuple[int, timedelta]] = Field(default_factory=dict)
    escalations: dict[str, str] = Field(default_factory=dict)
    taint_approver: str | None = None
    delegates: tuple[str, ...] = ()
    history_limit: int = 8000
    vault_policy: str = Field(default="")

    @model_validator(mode="before")
    @classmethod
    def _expand_sources(cls, data: Any) -> Any:
        # A tool source (an `MCPServer`) in `tools` stands for the tools it contributes.
        if isinstance(data, dict) and isinstance(data.get("tools"), (list, tuple)):
            data = dict(data)
            data["tools"] = tuple(
                t
                for item in data["tools"]
                for t in (item.__lockgate_tools__() if hasattr(item, "__lockgate_tools__") else (item,))
            )
        return data

    def model_post_init(self, _context: Any) -> None:
        if (self.planner is None) == (self.script is None):
            raise ValueError(f"agent {self.name!r} needs exactly one of planner= or script=")
        if not self.vault_policy:
            object.__setattr__(self, "vault_policy", f"lockgate-agent-{self.name}")
        names = {t.name for t in self.tools}
        for t in self.tools:
            if t.compensation and t.compensation not in names:
                raise ValueError(
                    f"agent {self.name!r}: tool {t.name!r} is compensated by {t.compensation!r}, "
                    "which is not among its tools"
                )

    @property
    def boundary(self) -> frozenset[str]:
        """The task boundary: every tool this agent may ever call."""
        return frozenset(t.name for t in self.tools)

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def secrets(self) -> list[str]:
        return sorted({t.secret for t in self.tools if t.secret})


# The names of round 1, kept for code that still says them.
AgentSpec = Agent
ToolSpec = Tool


class AgentRegistry:
    """Agents by name: what one worker (or CLI) is configured with."""

    def __init__(self, agents: Iterable[Agent] = ()) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            self.add(agent)

    def add(self, agent: Agent) -> Agent:
        for t in agent.tools:
            other = self.tool(t.name)
            if other is not None and other != t:
                raise ValueError(f"tool {t.name!r} is declared twice with different metadata")
        existing = self._agents.get(agent.name)
        if existing is not None and existing is not agent and existing != agent:
            raise ValueError(f"agent {agent.name!r} is declared twice")
        self._agents[agent.name] = agent
        return agent

    def extend(self, agents: Iterable[Agent]) -> AgentRegistry:
        for agent in agents:
            self.add(agent)
        return self

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    def names(self) -> list[str]:
        return sorted(self._agents)

    def agents(self) -> list[Agent]:
        return [self._agents[n] for n in self.names()]

    def tool(self, name: str) -> Tool | None:
        for agent in self._agents.values():
            found = agent.tool(name)
            if found is not None:
                return found
        return None

    def tools(self) -> list[Tool]:
        seen: dict[str, Tool] = {}
        for agent in self._agents.values():
            for t in agent.tools:
                seen.setdefault(t.name, t)
        return [seen[n] for n in sorted(seen)]

    def database_secrets(self) -> list[DatabaseSecret]:
        """The database credentials the agents' tools declare (what `dev up` provisions)."""
        seen: dict[str, DatabaseSecret] = {}
        for t in self.tools():
            if t.provision is not None:
                other = seen.setdefault(t.provision.role, t.provision)
                if other != t.provision:
                    raise ValueError(f"database secret {t.provision.role!r} is declared twice differently")
        return [seen[r] for r in sorted(seen)]


# Agents declared in this process by `registry.add` (tests and scripts). A worker runs only the
# agents it is configured with: see `bind_agents`.
registry = AgentRegistry()

# Which agents each task queue's workers run. Workflow code reads it (passed through the sandbox),
# so a run of an agent its worker was not configured with fails at once as an unknown agent.
_BY_QUEUE: dict[str, AgentRegistry] = {}


def bind_agents(task_queue: str, agents: AgentRegistry) -> None:
    """Makes `agents` the agents that workers of `task_queue` in this process run."""
    current = _BY_QUEUE.get(task_queue)
    if current is not None and current is not agents:
        current.extend(agents.agents())
        return
    _BY_QUEUE[task_queue] = agents


def agents_for(task_queue: str) -> AgentRegistry:
    """The agents of a task queue's workers (the process-wide `registry` when none were bound, as
    in a Replayer)."""
    return _BY_QUEUE.get(task_queue, registry)


# The drop-in declarations (`lockgate.dropin.Governance`) the loaded agent modules hold: what
# `lockgate replay` replays the apps' own workflows with.
_GOVERNANCES: list[Any] = []


def declared_governances() -> list[Any]:
    """Every `lockgate.dropin.Governance` the agent modules loaded in this process declare."""
    return list(_GOVERNANCES)


def _agents_in(obj: Any) -> list[Agent]:
    if isinstance(obj, Agent):
        return [obj]
    if isinstance(obj, AgentRegistry):
        return obj.agents()
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in _agents_in(item)]
    if hasattr(obj, "__lockgate_agents__"):  # lockgate.dropin.Governance: an existing app's agents
        if not any(g is obj for g in _GOVERNANCES):
            _GOVERNANCES.append(obj)
        return list(obj.__lockgate_agents__())
    if inspect.ismodule(obj):
        declared = getattr(obj, "AGENTS", None)
        if declared is not None:
            return _agents_in(declared)
        return [
            a
            for v in vars(obj).values()
            if isinstance(v, Agent) or (hasattr(v, "__lockgate_agents__") and not isinstance(v, type))
            for a in _agents_in(v)
        ]
    raise TypeError(f"not an agent, a list of agents or a module of agents: {obj!r}")


def load_agents(modules: str | Sequence[str] | None = None, *, entry_points: bool = True) -> AgentRegistry:
    """The agents a worker or CLI is configured with.

    Args:
        modules: Module paths (a comma-separated string, as in `LOCKGATE_AGENT_MODULES`). Each
            module's `AGENTS` (a list), or else every module-level `Agent`, is taken.
        entry_points: Also load the installed entry points of group `lockgate.agents` (each
            naming an `Agent`, a list of them or a module).

    Raises:
        ImportError: a module or entry point that does not load.
    """
    import importlib
    import importlib.metadata
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `LOCKGATE_AGENT_MODULES=examples.report_agent lockgate ...` from a checkout
    names = [n.strip() for n in modules.split(",")] if isinstance(modules, str) else list(modules or [])
    out = AgentRegistry()
    for name in filter(None, names):
        out.extend(_agents_in(importlib.import_module(name)))
    if entry_points:
        for ep in importlib.metadata.entry_points(group="lockgate.agents"):
            try:
                out.extend(_agents_in(ep.load()))
            except Exception as err:
                raise ImportError(f"entry point {ep.name} ({ep.value}): {err}") from err
    return out


def load_agent_modules(spec: str | None = None) -> list[str]:
    """Imports agent modules (`LOCKGATE_AGENT_MODULES` by default) and adds their agents to the
    process-wide `registry`. Returns the module names."""
    import os

    raw = spec if spec is not None else os.environ.get("LOCKGATE_AGENT_MODULES", "")
    registry.extend(load_agents(raw).agents())
    return [n.strip() for n in raw.split(",") if n.strip()]


def describe_validation(err: ValidationError) -> str:
    """One line naming each bad field, for denials and CLI errors."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
