"""Declaring an existing app's tools to lockgate, without touching the tools: `Governance`, `Govern`.

A team keeps its Pydantic AI agent, OpenAI Agents agent or plain Temporal activities as they are and
declares, per tool (by the name the framework gives it), what lockgate needs: the secret one call
leases, risk labels, the compensation, the cost argument and what a denial does. `Governance` turns
that into ordinary lockgate `Agent`s (one per framework agent: Cedar principal `Agent::"<slug>"`),
so the gate, the Vault bootstrap, the ledger, the reaper and the CLI treat them like any other.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from lockgate.dropin.models import jsonable
from lockgate.mcp.spec import MCPServer
from lockgate.spec import Agent, DatabaseSecret, Tool

__all__ = ["DENIAL_DEFAULT", "Denial", "Govern", "Governance", "OpenArgs", "args_of", "slug"]

Denial = Literal["fail", "retry"]

# A denial fails the run (and compensates what it did) unless the tool or the deciding policy says
# `retry`: failing closed is the safe default for a tool nobody has thought about yet.
DENIAL_DEFAULT: Denial = "fail"


class OpenArgs(BaseModel):
    """The args model of a framework tool: the framework validated them already; Cedar sees them."""

    model_config = ConfigDict(frozen=True, extra="allow")


def _is_context(hint: Any) -> bool:
    """A framework's run context parameter (Pydantic AI `RunContext`, OpenAI `RunContextWrapper`):
    not an argument the model gives."""
    origin = typing.get_origin(hint) or hint
    return isinstance(origin, type) and origin.__name__ in ("RunContext", "RunContextWrapper", "ToolContext")


def args_of(tool: Any) -> type[BaseModel]:
    """The args model of an existing tool, read from the tool itself (its signature is not changed):
    a function (Pydantic AI tool, Temporal activity; the run-context parameter is skipped) gives a
    model of its parameters, an OpenAI `FunctionTool` its `params_json_schema`. Cedar's schema
    (`lockgate policy schema`) types `context.args` from it and the gate checks args against it.
    Unknown extra args are kept (the framework validated them already)."""
    schema = getattr(tool, "params_json_schema", None)
    if isinstance(schema, dict):
        frozen = dict(schema)

        class _Declared(OpenArgs):
            @classmethod
            def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
                return frozen

        _Declared.__name__ = _Declared.__qualname__ = f"{getattr(tool, 'name', 'tool')}_args"
        return _Declared
    fn = inspect.unwrap(tool)
    hints = typing.get_type_hints(fn)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name, Any)
        if name == "self" or _is_context(hint) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        fields[name] = (hint, ... if param.default is param.empty else param.default)
    return create_model(  # type: ignore[call-overload]  # field definitions built above
        f"{fn.__name__}_args", __config__=ConfigDict(frozen=True, extra="allow"), **fields
    )


class _NoInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


def slug(name: str) -> str:
    """A framework agent's name as a lockgate agent name (`Seat Booking Agent` -> `seat-booking-agent`)."""
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not out or not out[0].isalpha():
        out = f"agent-{out}".strip("-")
    return out[:63]


class Govern(BaseModel):
    """lockgate metadata for one existing tool (the tool itself is not changed).

    Attributes:
        secret: The dynamic secret one call leases (a `DatabaseSecret` or a Vault path); the tool
            reads it with `lockgate.dropin.current_secret()`. Only tools that run as activities can
            have one (a plain OpenAI function tool runs in workflow code).
        production, data_class, reversible, egress: Risk labels (Cedar sees them on the `Tool`).
        compensation: A lockgate tool (`@lockgate.tool`, args `{"idempotency_key": ...}`) that undoes
            one call; it runs in reverse order on failure and halt, and via the reaper on terminate.
        cost_arg: The top-level argument that is a cost (counted against the budget).
        on_deny: `"fail"` (default) fails the run; `"retry"` hands the denial back to the model as a
            tool error so it can re-plan. A deciding policy annotated `@denial("...")` overrides it.
        args: The args as policies see them (Cedar schema `context.args`, checked by the gate):
            `args_of(the_tool)` reads them from the tool itself; a pydantic model also works. Open by
            default: then the tool's action and args come from a written `schema.cedarschema`.
        description: One line for people.
        model_sees: For a regulated tool: the result fields a model still sees once the run is
            tainted, when no policy approves the model endpoint (the rest is redacted).
        summary: What a completed call records in the ledger about its result: a function of the
            result (its text, cut at 200 characters), or the names of the result's fields to keep.
            Default: nothing of the result (its type only): results hold people's data, and the
            ledger is read by auditors who may not read payloads.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    secret: str | DatabaseSecret | None = None
    production: bool = False
    data_class: Literal["public", "internal", "regulated"] = "internal"
    reversible: bool = True
    egress: bool = False
    compensation: Tool | None = None
    cost_arg: str | None = None
    on_deny: Denial = DENIAL_DEFAULT
    args: type[BaseModel] = OpenArgs
    description: str = ""
    summary: Callable[[Any], object] | tuple[str, ...] = ()
    model_sees: tuple[str, ...] = ()

    def summarize(self, result: Any) -> str:
        """The ledger's account of one result, as declared (see `summary`)."""
        if callable(self.summary):
            text = str(self.summary(result))
        elif self.summary:
            plain = jsonable(result)
            kept = {k: plain[k] for k in self.summary if isinstance(plain, dict) and k in plain}
            text = json.dumps(kept, sort_keys=True, default=str)
        else:
            return f"returned {type(result).__name__} (result not recorded: declare Govern(summary=...))"
        return text if len(text) <= 200 else text[:200] + "…"


class Governance(BaseModel):
    """An existing app's agents and tools, governed by lockgate.

    Args:
        agents: The framework's agent names (Pydantic AI `Agent(name=...)`, OpenAI `Agent(name=...)`).
            Each becomes a lockgate agent named by `slug` (Cedar principal). Plain activities are
            governed as the first of them.
        owner: Team or person accountable (never an approver of its runs).
        tools: Framework tool name (or activity type) -> `Govern`. A tool not listed is outside the
            task boundary: every call of it is denied.
        purpose: One line for approvers.
        deadline: Lifetime of a run's Vault identity (and the deadline gate) from its first governed call.
        approval_ttl: How long an approval request waits.
        budget, max_steps: Limits of one run.
        vault_policy: The Vault policy of the app's run identities (default `lockgate-agent-<first agent>`).
        workflows: The app's workflow classes whose runs these tools are called from: `lockgate
            replay` replays those runs with them (found by the replayer when the module declaring
            this is in `LOCKGATE_AGENT_MODULES`). Empty: the replayer takes every workflow class
            defined in that module.
        replay_plugins: Makes the framework plugins a Replayer needs for those workflows (e.g.
            `lambda: [PydanticAIPlugin(), AgentPlugin(agent)]`, `lambda: [OpenAIAgentsPlugin()]`);
            called only by `lockgate replay`, so other commands never build them.
        unsigned_starts: Govern runs whose start no person signed (default: refused). Their
            initiator is unknown, so no approval can be shown to come from someone else: every
            call that needs an approval is denied (separation of duties fails closed).
        mcp: MCP servers the agents reach through Pydantic AI MCP toolsets (`MCPToolset(..., id=NAME)`),
            each declared as for a lockgate agent (`lockgate.MCPServer` named like the toolset's id):
            their tools are `<server>.<tool>` to Cedar, the model is offered only the pinned
            definitions of declared tools that could ever be allowed, and each `tools/call` is made
            by lockgate with that call's own credential, after checking the pin.
        model_endpoint: The Cedar id of the agents' model (`Model::"<it>"`) when a request names no
            model id: once a request carries regulated results, they reach the model as their tools
            declare (`model_sees`) unless a policy permits `lockgate::Action::"model.send"` on it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    agents: tuple[str, ...]
    owner: str
    tools: Mapping[str, Govern]
    purpose: str = "an existing agent, governed drop-in"
    deadline: timedelta = timedelta(hours=1)
    approval_ttl: timedelta = timedelta(hours=24)
    budget: int | None = None
    max_steps: int = 50
    vault_policy: str = Field(default="")
    workflows: tuple[type, ...] = ()
    replay_plugins: Callable[[], Sequence[Any]] | None = None
    unsigned_starts: bool = False
    mcp: tuple[MCPServer, ...] = ()
    model_endpoint: str = "default"

    def __init__(self, agents: str | Iterable[str], **data: Any) -> None:
        names = (agents,) if isinstance(agents, str) else tuple(agents)
        super().__init__(agents=names, **data)

    def model_post_init(self, _context: Any) -> None:
        if not self.agents:
            raise ValueError("Governance needs at least one agent name")
        if not self.vault_policy:
            object.__setattr__(self, "vault_policy", f"lockgate-agent-{slug(self.agents[0])}")
        # Where it was declared: the replayer looks for the app's workflows there.
        frame = inspect.currentframe()
        while frame is not None and frame.f_globals.get("__name__", "").startswith(("lockgate.dropin", "pydantic")):
            frame = frame.f_back
        object.__setattr__(self, "_module", frame.f_globals.get("__name__") if frame is not None else None)
        object.__setattr__(self, "_built", self._build())

    def _build(self) -> dict[str, Agent]:
        tools: list[Tool] = []
        for name, meta in self.tools.items():
            tools.append(
                Tool(
                    name=name,
                    description=meta.description,
                    args=meta.args,
                    secret=meta.secret,  # type: ignore[arg-type]  # normalized by Tool's validator
                    production=meta.production,
                    data_class=meta.data_class,
                    reversible=meta.reversible,
                    egress=meta.egress,
                    compensation=meta.compensation,  # type: ignore[arg-type]
                    cost_arg=meta.cost_arg,
                    model_sees=meta.model_sees,
                )
            )
        for server in self.mcp:
            tools.extend(server.as_tools())
        for meta in self.tools.values():
            comp = meta.compensation
            if comp is not None and comp.fn is None:
                raise ValueError(f"compensation {comp.name!r} has no implementation (declare it with @lockgate.tool)")
            if comp is not None and all(t.name != comp.name for t in tools):
                tools.append(comp)
        built: dict[str, Agent] = {}
        for framework_name in self.agents:
            agent = Agent(
                name=slug(framework_name),
                owner=self.owner,
                purpose=self.purpose,
                tools=tuple(tools),
                input_model=_NoInput,
                script=_runs_in_its_own_workflow,
                max_steps=self.max_steps,
                budget=self.budget,
                deadline=self.deadline,
                approval_ttl=self.approval_ttl,
                vault_policy=self.vault_policy,
            )
            built[framework_name] = agent
        return built

    @property
    def lockgate_agents(self) -> list[Agent]:
        """The lockgate agents this declaration stands for (what `LOCKGATE_AGENT_MODULES` loads)."""
        return list(self._built.values())  # type: ignore[attr-defined]

    def __lockgate_agents__(self) -> list[Agent]:
        return self.lockgate_agents

    def agent(self, framework_name: str) -> Agent | None:
        """The lockgate agent of a framework agent name, or None when not governed here."""
        return self._built.get(framework_name)  # type: ignore[attr-defined]

    @property
    def default_agent(self) -> Agent:
        return self._built[self.agents[0]]  # type: ignore[attr-defined]

    def mcp_server(self, name: str) -> MCPServer | None:
        """The declared MCP server of a Pydantic AI MCP toolset id, or None."""
        return next((s for s in self.mcp if s.name == name), None)

    def meta(self, tool: str) -> Govern | None:
        return self.tools.get(tool)

    def workflow_classes(self) -> list[type]:
        """The app's workflow classes (declared, else every one defined where this was declared)."""
        if self.workflows:
            return list(self.workflows)
        import sys

        module = sys.modules.get(getattr(self, "_module", "") or "")
        if module is None:
            return []
        return [
            v
            for v in vars(module).values()
            if isinstance(v, type) and v.__module__ == module.__name__ and hasattr(v, "__temporal_workflow_definition")
        ]

    def workflow_types(self) -> dict[str, type]:
        """The app's workflow types by their Temporal name."""
        from temporalio.workflow import _Definition

        out = {}
        for cls in self.workflow_classes():
            defn = _Definition.from_class(cls)
            if defn is not None and defn.name:
                out[defn.name] = cls
        return out


async def _runs_in_its_own_workflow(run: Any, inp: Any) -> None:
    from temporalio.exceptions import ApplicationError

    from lockgate.errors import BAD_INPUT

    raise ApplicationError(
        "this agent is governed drop-in: it runs in its own app's workflow, not as `lockgate run`",
        type=BAD_INPUT,
        non_retryable=True,
    )
