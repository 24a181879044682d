"""A model request is egress: once a run has read regulated data, what it sends to a model passes a
gate. Pure: the bundle, the agent, the endpoint and the results come in.

The request is `principal = Agent::"<agent>"`, `action = lockgate::Action::"model.send"`,
`resource = Model::"<endpoint>"` (the planner's base URL, or the model a drop-in app names). Only
policies whose action scope names that action decide it (a tool policy never sees it), validated
against their own small schema (`gates.starts.START_SCHEMA`). Default deny: unless a policy permits
that endpoint for that agent, every regulated result in the request is replaced by what its tool
declares a model may see (`model_sees`: the result fields that pass; by default none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cedarpy

if TYPE_CHECKING:
    from lockgate.gates.bundle import PolicyBundle

__all__ = ["MODEL_ACTION", "REDACTED", "ModelVerdict", "decide_model", "is_model_statement", "model_view"]

MODEL_ACTION = ("lockgate::Action", "model.send")
REDACTED = "[withheld by lockgate (regulated data; this model endpoint is not approved for it)]"


@dataclass(frozen=True)
class ModelVerdict:
    """Whether regulated results may reach this model endpoint as they are.

    Attributes:
        allowed: A policy permits the endpoint for the agent (and no forbid applies).
        policy_ids: The deciding policies.
        reason: Why not ("" when allowed).
    """

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    reason: str = ""


def is_model_statement(statement: Any) -> bool:
    """Whether a policy's action scope names the model action (it then decides model egress only)."""
    actions = getattr(statement, "actions", None)
    return actions is not None and MODEL_ACTION in actions


def decide_model(bundle: PolicyBundle, agent: str, endpoint: str) -> ModelVerdict:
    """Whether `agent` may send regulated data to the model at `endpoint`. Any error is a refusal."""
    statements = [s for s in bundle.statements if is_model_statement(s)]
    if not statements:
        return ModelVerdict(False, (), f"no policy approves model endpoint {endpoint!r} for regulated data")
    try:
        entities = [e for e in bundle.entity_list() if isinstance(e, dict)]
        if not any(e.get("uid") == {"type": "Agent", "id": agent} for e in entities):
            entities.append({"uid": {"type": "Agent", "id": agent}, "attrs": {"owner": ""}, "parents": []})
        entities.append({"uid": {"type": "Model", "id": endpoint}, "attrs": {}, "parents": []})
        request = {
            "principal": {"type": "Agent", "id": agent},
            "action": {"type": MODEL_ACTION[0], "id": MODEL_ACTION[1]},
            "resource": {"type": "Model", "id": endpoint},
            "context": {},
        }
        result = cedarpy.is_authorized(request, "\n".join(s.text for s in statements), json.dumps(entities))
    except Exception as err:  # noqa: BLE001 - any error is a refusal (fail closed)
        return ModelVerdict(False, (), f"model egress policy could not be evaluated: {type(err).__name__}")
    ids = tuple(
        statements[int(r.removeprefix("policy"))].policy_id
        for r in result.diagnostics.reasons
        if r.removeprefix("policy").isdigit() and int(r.removeprefix("policy")) < len(statements)
    )
    if result.allowed:
        return ModelVerdict(True, ids)
    why = f"forbidden by {', '.join(ids)}" if ids else "no policy approves it (default deny)"
    return ModelVerdict(False, ids, f"model endpoint {endpoint!r} may not see regulated data: {why}")


def model_view(result: Any, keep: Sequence[str] = ()) -> Any:
    """What a model that may not see regulated data gets of one regulated result: the fields the
    tool declares (`keep`; for an MCP result, of its structured content), everything else redacted."""
    if isinstance(result, dict) and "server" in result and "data_class" in result:
        # A lockgate MCP result: what it is stays, its content goes.
        structured = result.get("structured")
        out: dict[str, Any] = {"server": result["server"], "tool": result.get("tool"), "content": REDACTED}
        kept = {k: structured[k] for k in keep if isinstance(structured, dict) and k in structured}
        if kept:
            out["structured"] = kept
        return out
    if isinstance(result, dict):
        return {k: (v if k in keep else REDACTED) for k, v in result.items()}
    return REDACTED
