"""The activity half of drop-in governance: the `dropin.gate` decision and the governed attempt.

Every attempt of a governed activity evaluates its gate again (a freeze or a policy reload may have
landed since the workflow asked), leases the tool's secret under the run's own Vault identity, runs
the tool with the secret in `current_secret()` only, revokes the lease and records it all in the
ledger: the same gate -> lease -> run -> revoke as `ToolRunner`, around someone else's activity.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from lockgate import names
from lockgate.activities.governance import GovernanceActivities
from lockgate.activities.ledger import Ledger
from lockgate.activities.vault import LeaseForbidden, VaultBroker
from lockgate.context import Resources, ToolContext, ToolError
from lockgate.dropin.models import DropinCall, DropinVerdict, jsonable
from lockgate.dropin.spec import DENIAL_DEFAULT, Denial
from lockgate.errors import BAD_INPUT, LEASE_FORBIDDEN, TOOL_DENIED, TOOL_FAILED, LockgateError
from lockgate.gates.bundle import PolicyBundle
from lockgate.mcp.spec import MCPServer
from lockgate.models import GateRequest, LeaseRef, RunIdentity, RunOpen, args_digest
from lockgate.spec import Agent, AgentRegistry

__all__ = ["DropinActivities", "NoSecret", "current_call", "current_secret"]

log = logging.getLogger("lockgate.dropin")

_CALL: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar("lockgate_call", default=None)


class NoSecret(LockgateError):
    """`current_secret()` outside a governed call whose tool declares a secret."""


def current_call() -> ToolContext:
    """The governed tool call running now, as lockgate's own tools see theirs: run id, step,
    `idempotency_key` (record it with the side effect: a compensation gets it), `resources`, and
    `connect(dbname)` as the call's leased database role.

    Raises:
        NoSecret: outside a governed tool activity.
    """
    ctx = _CALL.get()
    if ctx is None:
        raise NoSecret("not inside a governed tool call")
    return ctx


def current_secret() -> dict[str, Any]:
    """The dynamic secret of the governed tool call running now (e.g. `username`/`password`).

    It lives for this attempt only and is revoked when the tool returns: never return, log or store
    it (a tool's result is written to workflow history).

    Raises:
        NoSecret: outside a governed call, or the tool declares no secret.
    """
    ctx = _CALL.get()
    if ctx is None or not ctx.secret:
        raise NoSecret("no secret here: the tool declares none, or this is not a governed tool call")
    return dict(ctx.secret)


class DropinActivities:
    """Gate and governed execution for drop-in tools, over lockgate's own Vault broker and ledger."""

    def __init__(
        self,
        *,
        governance: GovernanceActivities,
        agents: AgentRegistry,
        vault: VaultBroker,
        ledger: Ledger,
        bundle: Callable[..., PolicyBundle],
        denials: dict[str, Denial] | None = None,
        resources: Resources | None = None,
        governed: frozenset[str] = frozenset(),
        unsigned: frozenset[str] = frozenset(),
        summarize: Callable[[str, Any], str] = lambda _tool, result: f"returned {type(result).__name__}",
    ) -> None:
        self._summarize = summarize  # what a completion records of its result (`Govern(summary=...)`)
        self._governed = governed  # the lockgate agent names of the governed apps' agents
        self._unsigned = unsigned  # those whose Governance declared `unsigned_starts`
        self._resources = resources or Resources()
        self._denials = denials or {}
        self._governance = governance
        self._agents = agents
        self._vault = vault
        self._ledger = ledger
        self._bundle = bundle

    # -- the gate, as the workflow asks it ---------------------------------------------------------
    def on_deny(self, request: GateRequest, policy_ids: tuple[str, ...], tool_default: Denial) -> Denial:
        """What a denial does: the deciding policy's `@denial("fail"|"retry")`, else the tool's setting."""
        bundle = self._bundle(request.agent)
        for policy_id in policy_ids:
            statement = bundle.by_id(policy_id)
            mode = statement.annotations.get("denial") if statement is not None else None
            if mode in ("fail", "retry"):
                return mode  # type: ignore[return-value]  # checked just above
        return tool_default

    @activity.defn(name=names.DROPIN_OPEN)
    def open_run(self, request: RunOpen) -> RunIdentity:
        """A governed app's run opens its Vault identity at its first governed call. Only for the
        governed apps' agents, from their own workflows: never a lockgate agent run (those open
        with `run.open`), never a sub-agent. The initiator is whoever signed the start the app's
        client sent (`lockgate.dropin.start`); an unsigned start is refused unless the app's
        `Governance(unsigned_starts=True)` says otherwise."""
        info = activity.info()
        if info.workflow_type == names.WORKFLOW_AGENT or request.agent not in self._governed:
            raise ApplicationError(
                f"dropin.open is only for the governed apps' own workflows, not {request.agent!r} in {info.workflow_type}",
                type=BAD_INPUT,
                non_retryable=True,
            )
        if request.parent is not None or request.parent_run_id is not None:
            raise ApplicationError("a drop-in run has no parent", type=BAD_INPUT, non_retryable=True)
        if request.start is None:
            if request.agent not in self._unsigned:
                raise self._governance.refuse_run(
                    request.run_id,
                    request.origin_run_id,
                    "the run's start is not signed by a person: start it from a client with "
                    "LockgatePlugin(govern=...) as a logged-in person (`lockgate login`), or declare "
                    "Governance(unsigned_starts=True)",
                )
            return self._governance.open_identity(request, start=None)
        expect = {
            "run_id": request.run_id,
            "workflow_type": info.workflow_type or "",
            "input_digest": request.input_digest,
        }
        return self._governance.open_identity(request, start=expect)

    @activity.defn(name=names.DROPIN_GATE)
    def gate(self, request: GateRequest) -> DropinVerdict:
        if request.run_id != activity.info().workflow_id:
            raise ApplicationError("gate request names another run", type=BAD_INPUT, non_retryable=True)
        if request.compensation:
            raise ApplicationError(
                "a drop-in call cannot claim to be a compensation", type=BAD_INPUT, non_retryable=True
            )
        decision = self._governance.decide(request)
        mode = self.on_deny(request, decision.policy_ids, self._denials.get(request.call.tool, DENIAL_DEFAULT))
        return DropinVerdict(decision=decision, on_deny=mode)

    # -- the governed attempt ----------------------------------------------------------------------
    async def execute(self, call: DropinCall, tool: str, actual_args: dict[str, Any] | None, run: Any) -> Any:
        """Runs one attempt of a governed activity (`run()` awaits the wrapped activity)."""
        info = activity.info()
        request = call.request
        if request is None or request.run_id != info.workflow_id or request.call.tool != tool:
            await self._refuse(tool, "the call's gate request names another run or tool")
        assert request is not None
        if actual_args is not None and args_digest(actual_args) != args_digest(request.call.args):
            await self._refuse(tool, "the activity's args are not the args the gate decided on")
        spec = self._agents.tool(tool)
        if spec is None:
            await self._refuse(tool, f"{tool} is not a governed tool")
        assert spec is not None
        request = request.model_copy(update={"decision_id": f"{request.decision_id}/attempt"})
        decision = await asyncio.to_thread(self._governance.decide, request, attempt=info.attempt)
        if decision.outcome != "allow":
            raise ApplicationError(
                f"{tool} denied at run time by {decision.gate}: {'; '.join(decision.reasons)}",
                type=TOOL_DENIED,
                non_retryable=True,
            )
        step = request.step
        lease: LeaseRef | None = None
        secret: dict[str, Any] | None = None
        if spec.secret:
            try:
                lease, secret = await asyncio.to_thread(self._vault.issue, request.run_id, spec.secret)
            except LeaseForbidden as err:
                raise ApplicationError(str(err), type=LEASE_FORBIDDEN, non_retryable=True) from None
            await asyncio.to_thread(
                self._ledger.try_append,
                f"lease.issued:{lease.lease_id}",
                request.run_id,
                "lease.issued",
                {
                    "lease_id": lease.lease_id,
                    "secret_path": lease.secret_path,
                    "ttl_seconds": lease.ttl_seconds,
                    "tool": tool,
                    "step": step,
                    "attempt": info.attempt,
                },
            )
        token = _CALL.set(ToolContext(request.run_id, step, call.idempotency_key, self._resources, secret or {}))
        try:
            result = await run()
        except ToolError as err:
            await self._failed(request, tool, str(err), info.attempt)
            record = getattr(err, "record", None)
            if callable(record):  # an MCP tool blocked by a changed definition: kept for review
                await asyncio.to_thread(
                    self._ledger.try_append,
                    f"mcp.blocked:{request.run_id}:{step}:{info.attempt}",
                    request.run_id,
                    "mcp.blocked",
                    record(),
                )
            raise ApplicationError(f"{tool}: {err}", type=TOOL_FAILED, non_retryable=not err.retryable) from None
        except BaseException as err:
            await self._failed(request, tool, f"{type(err).__name__}: {err}", info.attempt)
            raise
        finally:
            ctx = _CALL.get()
            if ctx is not None:
                ctx.secret = {}
            _CALL.reset(token)
            secret = None
            if lease is not None:
                await asyncio.to_thread(self._vault.revoke, lease.lease_id)
                await asyncio.to_thread(
                    self._ledger.try_append,
                    f"lease.revoked:{lease.lease_id}",
                    request.run_id,
                    "lease.revoked",
                    {"lease_id": lease.lease_id, "tool": tool, "step": step, "by": "tool"},
                )
        await asyncio.to_thread(
            self._ledger.try_append,
            f"tool.completed:{request.run_id}:{step}",
            request.run_id,
            "tool.completed",
            {
                "tool": tool,
                "step": step,
                "summary": self._summarize(tool, result),
                "idempotency_key": call.idempotency_key,
                "lease_id": lease.lease_id if lease else None,
                "decision_id": decision.decision_id,
                "compensates": None,
            },
        )
        return result

    # -- Pydantic AI MCP toolsets (lockgate.dropin.pydantic_ai) -------------------------------------
    def mcp_tools(self, server: MCPServer, agent: Agent) -> dict[str, Any]:
        """A governed MCP toolset's `get_tools`: the pinned definitions the model may be offered."""
        from lockgate.dropin.pydantic_ai import offered_tools

        boundary = [t.name for t in agent.tools]
        return offered_tools(server, agent, self._bundle(), self._resources.policy_dir, boundary)

    def mcp_offers(self, server: MCPServer, agent: Agent) -> list[dict[str, Any]]:
        """An OpenAI Agents MCP server's `list-tools`: the same pinned definitions, framework-neutral."""
        from lockgate.dropin.pydantic_ai import pinned_offers

        boundary = [t.name for t in agent.tools]
        return pinned_offers(server, agent, self._bundle(), self._resources.policy_dir, boundary)

    async def mcp_call(
        self, tool: str, args: dict[str, Any], shape: Callable[[dict[str, Any]], Any] | None = None
    ) -> Any:
        """One governed MCP `tools/call`, inside `execute` (the call's credential is leased); its
        result as `shape` makes it for the framework (default: Pydantic AI's `call_tool` result)."""
        from lockgate.dropin.pydantic_ai import call_result
        from lockgate.mcp.client import MCPCall

        spec = self._agents.tool(tool)
        if spec is None or not isinstance(spec.fn, MCPCall):
            await self._refuse(tool, f"{tool} is not a declared MCP tool")
        assert spec is not None and isinstance(spec.fn, MCPCall)
        out = await spec.fn.acall(current_call(), args)
        return shape(out) if shape is not None else await call_result(out)

    async def model_egress(self, agent: Agent, endpoint: str, carried: list[str]) -> bool:
        """Whether the regulated results a model request carries may reach `endpoint` as they are
        (`gates.egress`); recorded in the ledger either way."""
        from lockgate.gates.egress import decide_model

        info = activity.info()
        verdict = decide_model(self._bundle(), agent.name, endpoint)
        await asyncio.to_thread(
            self._ledger.try_append,
            f"model.egress:{info.workflow_id}:{info.activity_id}:{info.attempt}",
            info.workflow_id or "",
            "model.egress",
            {
                "endpoint": endpoint,
                "allowed": verdict.allowed,
                "policy_ids": list(verdict.policy_ids),
                "redacted_calls": [] if verdict.allowed else carried,
                "reason": verdict.reason,
            },
        )
        return verdict.allowed

    async def legacy(self, tool: str, run: Any) -> Any:
        """A run that started before lockgate was added: it stays ungoverned, and the ledger says so.
        The header only claims it; the worker decides: a run the ledger shows governed (its identity
        was opened) is never served ungoverned."""
        info = activity.info()
        events = await asyncio.to_thread(self._ledger.events, info.workflow_id or "")
        if any(e.get("kind") == "run.opened" for e in events):
            await self._refuse(tool, "an ungoverned call claimed by a run lockgate governs")
        await asyncio.to_thread(
            self._ledger.try_append,
            f"tool.ungoverned:{info.workflow_id}:{info.activity_id}",
            info.workflow_id,
            "tool.ungoverned",
            {"tool": tool, "reason": "the run reached a tool call before lockgate was added (workflow.patched)"},
        )
        return await run()

    async def _refuse(self, tool: str, reason: str) -> None:
        info = activity.info()
        await asyncio.to_thread(
            self._ledger.try_append,
            f"tool.refused:{info.workflow_id}:{info.activity_id}:{info.attempt}",
            info.workflow_id,
            "tool.refused",
            {"tool": tool, "reason": reason},
        )
        raise ApplicationError(f"{tool}: {reason}", type=BAD_INPUT, non_retryable=True)

    async def _failed(self, request: GateRequest, tool: str, error: str, attempt: int) -> None:
        await asyncio.to_thread(
            self._ledger.try_append,
            f"tool.failed:{request.run_id}:{request.step}:{attempt}",
            request.run_id,
            "tool.failed",
            {"tool": tool, "step": request.step, "error": error[:500], "attempt": attempt},
        )


def bind_named(fn: Callable[..., Any] | None, values: Sequence[Any], names: set[str]) -> dict[str, Any]:
    """An activity's positional args by parameter name, only those the gate saw (`names`)."""
    if fn is None:
        return {}
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}
    if params and params[0] == "self":
        params = params[1:]
    bound = dict(zip(params, values, strict=False))
    return {k: jsonable(v) for k, v in bound.items() if k in names and v is not None}
