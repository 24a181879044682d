"""`planner.llm`: the next tool call proposed by an OpenAI-compatible chat-completions model.

A proposal is only a proposal: it goes through the same gate as any other call, so an unknown tool
(boundary), malformed arguments (args schema) or low confidence (threshold) is denied or escalated,
never run. The API key is read from Vault here and used for one request; it never enters history.

The request itself is egress: once the run has read regulated data, each regulated result goes to
the model only as its tool declares (`model_sees`), unless a policy approves this model endpoint
(`gates.egress`); the decision is in the ledger (`model.egress`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Collection
from typing import Any

import requests
from temporalio import activity
from temporalio.exceptions import ApplicationError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from lockgate import names
from lockgate.activities.vault import LeaseForbidden, VaultBroker
from lockgate.errors import BAD_INPUT
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.egress import decide_model, model_view
from lockgate.models import PlanProposal, PlanRequest, ToolCall
from lockgate.spec import AgentRegistry, AgentSpec, LLMPlanner

__all__ = ["LLMPlannerActivities", "function_name", "parse_choice", "tool_schemas"]

log = logging.getLogger("lockgate.planner")

# Models see these two extra arguments on every tool; lockgate strips them before the gate.
_META = {
    "confidence": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "how sure you are this is the right call, from 0 to 1",
    },
    "rationale": {"type": "string", "description": "one sentence: why this call"},
}
# A proposal without a stated confidence counts as unsure.
DEFAULT_CONFIDENCE = 0.5


def function_name(tool: str) -> str:
    """Chat-completions function names allow [a-zA-Z0-9_-]: `orders.lookup` -> `orders__lookup`."""
    return tool.replace(".", "__")


def tool_schemas(
    agent: AgentSpec, offered: Collection[str] | None = None, policy_dir: str | None = None
) -> list[dict[str, Any]]:
    """The tools offered to the model: those of `offered` (default: the whole boundary). An MCP
    tool is described by its pinned definition (what a person approved, never the live server's);
    an unpinned one is not offered (it cannot run)."""
    out = []
    for tool in agent.tools:
        if offered is not None and tool.name not in offered:
            continue
        description = tool.description or tool.name
        if tool.mcp_server:
            pinned = _pinned(policy_dir, tool)
            if pinned is None:
                continue
            schema: dict[str, Any] = copy.deepcopy(pinned.get("inputSchema") or {"type": "object"})
            description = (
                description if not description.startswith("MCP tool ") else pinned.get("description") or description
            )
        else:
            schema = tool.args.model_json_schema()
        schema.setdefault("properties", {}).update(_META)
        schema.pop("title", None)
        out.append(
            {
                "type": "function",
                "function": {
                    "name": function_name(tool.name),
                    "description": description,
                    "parameters": schema,
                },
            }
        )
    return out


def _pinned(policy_dir: str | None, tool: Any) -> dict[str, Any] | None:
    from lockgate.mcp import pins
    from lockgate.mcp.client import MCPCall

    if not isinstance(tool.fn, MCPCall):
        return None
    try:
        pin = pins.load_pin(policy_dir, tool.fn.server.name)
    except ValueError:
        return None
    entry = (pin or {}).get("tools", {}).get(tool.fn.mcp_name)
    return entry.get("definition") if isinstance(entry, dict) else None


def parse_choice(agent: AgentSpec, message: dict[str, Any]) -> PlanProposal:
    calls = message.get("tool_calls") or []
    if not calls:
        return PlanProposal(call=None, final_answer=str(message.get("content") or ""))
    fn = calls[0].get("function") or {}
    raw_name = str(fn.get("name") or "")
    names = {function_name(t.name): t.name for t in agent.tools}
    tool = names.get(raw_name, raw_name)  # an unknown name stays unknown: the boundary gate denies it
    raw_args = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw_args) if isinstance(raw_args, str) else dict(raw_args)
        if not isinstance(args, dict):
            raise ValueError("arguments are not an object")
    except ValueError:
        # Malformed arguments become a call the args gate refuses (and the audit shows).
        return PlanProposal(
            call=ToolCall(
                tool=tool,
                args={"__malformed__": str(raw_args)[:2000]},
                confidence=0.0,
                rationale="the model's arguments were not a JSON object",
            )
        )
    confidence = args.pop("confidence", DEFAULT_CONFIDENCE)
    rationale = args.pop("rationale", None)
    try:
        confidence = min(1.0, max(0.0, float(confidence)))
    except (TypeError, ValueError):
        confidence = 0.0
    return PlanProposal(
        call=ToolCall(
            tool=tool, args=args, confidence=confidence, rationale=str(rationale)[:500] if rationale else None
        )
    )


def _messages(spec: LLMPlanner, request: PlanRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": spec.system_prompt},
        {"role": "user", "content": json.dumps(request.input, sort_keys=True)},
    ]
    for item in request.done:
        call_id = f"call_{item['step']}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function_name(item["tool"]),
                            "arguments": json.dumps(item.get("args", {})),
                        },
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps(item.get("result", {}))[:8000]})
    return messages


def _transient(err: BaseException) -> bool:
    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return True
    return (
        isinstance(err, requests.HTTPError)
        and err.response is not None
        and (err.response.status_code == 429 or err.response.status_code >= 500)
    )


class LLMPlannerActivities:
    def __init__(
        self,
        *,
        agents: AgentRegistry,
        vault: VaultBroker,
        bundle: Callable[..., PolicyBundle] | None = None,
        policy_dir: str | None = None,
        ledger: Any = None,
    ) -> None:
        self._ledger = ledger  # where model-egress decisions are recorded (None: logged only)
        self._agents = agents
        self._vault = vault
        # The bundle in force: the model is offered only tools the agent could ever be allowed.
        self._bundle = bundle
        self._policy_dir = policy_dir

    @activity.defn(name=names.PLANNER_LLM)
    def plan(self, request: PlanRequest) -> PlanProposal:
        agent = self._agents.get(request.agent)
        if agent is None or not isinstance(agent.planner, LLMPlanner):
            raise ApplicationError(f"agent {request.agent!r} has no LLM planner", type=BAD_INPUT, non_retryable=True)
        spec = agent.planner
        try:
            key = str(self._vault.worker_secret(spec.key_path).get("api_key", ""))
        except LeaseForbidden as err:
            raise ApplicationError(str(err), type=BAD_INPUT, non_retryable=True) from None
        spec = spec.model_copy(
            update={
                "base_url": spec.base_url or os.environ.get("LOCKGATE_LLM_BASE_URL", ""),
                "model": spec.model or os.environ.get("LOCKGATE_LLM_MODEL", ""),
            }
        )
        if not spec.base_url:
            raise ApplicationError(
                "no LLM base URL (set it on the planner or LOCKGATE_LLM_BASE_URL)", type=BAD_INPUT, non_retryable=True
            )
        request = self._egress(agent, spec.base_url, request)
        body = {
            "model": spec.model,
            "messages": _messages(spec, request),
            "tools": tool_schemas(agent, self._offered(agent), self._policy_dir),
            "tool_choice": "auto",
            "max_tokens": spec.max_tokens,
        }
        data = self._post(spec, key, body)
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return PlanProposal(call=None, final_answer="(the model returned no choice)")
        proposal = parse_choice(agent, message)
        log.info("planner run=%s proposes %s", request.run_id, proposal.call.tool if proposal.call else "to finish")
        return proposal

    def _egress(self, agent: AgentSpec, endpoint: str, request: PlanRequest) -> PlanRequest:
        """The request as this model endpoint may see it (see the module docstring)."""
        regulated = {t.name: t for t in agent.tools if t.data_class == "regulated"}
        steps = [int(item.get("step", 0)) for item in request.done if item.get("tool") in regulated]
        if not (steps or request.tainted):
            return request
        if self._bundle is None:
            allowed, ids, reason = False, (), "no policy bundle"
        else:
            verdict = decide_model(self._bundle(), agent.name, endpoint)
            allowed, ids, reason = verdict.allowed, verdict.policy_ids, verdict.reason
        log.info("planner run=%s model egress to %s: %s", request.run_id, endpoint, "allowed" if allowed else reason)
        if self._ledger is not None:
            self._ledger.try_append(
                f"model.egress:{request.run_id}:{len(request.done)}:{activity.info().attempt}",
                request.run_id,
                "model.egress",
                {
                    "endpoint": endpoint,
                    "allowed": allowed,
                    "policy_ids": list(ids),
                    "redacted_steps": [] if allowed else steps,
                    "reason": reason,
                },
            )
        if allowed:
            return request
        done = tuple(
            {**item, "result": model_view(item.get("result"), regulated[item["tool"]].model_sees)}
            if item.get("tool") in regulated
            else item
            for item in request.done
        )
        return request.model_copy(update={"done": done})

    def _offered(self, agent: AgentSpec) -> list[str] | None:
        if self._bundle is None:
            return None
        from lockgate.gates.offer import offered

        return offered(self._bundle(agent.name), agent.name, [t.name for t in agent.tools])

    # MODEL_CALL: rate limits, 5xx and network errors are retried briefly here, then by Temporal.
    @retry(
        retry=retry_if_exception(_transient),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_after_attempt(4),
        reraise=True,
    )
    def _post(self, spec: LLMPlanner, key: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = requests.post(
            f"{spec.base_url.rstrip('/')}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=spec.timeout_seconds,
        )
        resp.raise_for_status()
        return dict(resp.json())
