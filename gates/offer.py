"""What a model is offered: only the tools an agent could ever be allowed to call. Pure.

The task boundary is the first filter (a tool outside it is never offered). Then Cedar: a tool is
hidden when no `permit` can ever apply to this agent and that action (default deny), or when a
`forbid` with no condition and no `@approval` applies to every call of it. This is a sound
over-approximation of Cedar partial evaluation on the principal and action alone: a tool that is
offered may still be denied by its args or the run's state; a tool hidden here can never be allowed
under this bundle. Hiding is a courtesy to the model, not a control: the gate still decides every call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import cedarpy

from lockgate.gates.bundle import PolicyBundle, PolicyStatement

__all__ = ["never_allowed", "offered"]

_EST: dict[str, dict[str, Any]] = {}


def _est(statement: PolicyStatement) -> dict[str, Any]:
    body = _EST.get(statement.text)
    if body is None:
        parsed = json.loads(cedarpy.policies_to_json_str(statement.text))
        body = next(iter(parsed.get("staticPolicies", {}).values()), {})
        _EST[statement.text] = body
    return body


def _principal_may_be(scope: dict[str, Any], agent: str) -> bool:
    """Whether the principal scope can hold for `Agent::"<agent>"` (True when unsure)."""
    op = scope.get("op", "All")
    if op == "All":
        return True
    if op == "==":
        entity = scope.get("entity", {})
        return "slot" in scope or (entity.get("type") == "Agent" and entity.get("id") == agent)
    if op == "is":
        return scope.get("entity_type") == "Agent"
    return True  # `in` a group, slots: not decidable from the scope alone


def _principal_surely(scope: dict[str, Any], agent: str) -> bool:
    """Whether the principal scope certainly holds for `Agent::"<agent>"`."""
    op = scope.get("op", "All")
    if op == "All":
        return True
    if op == "==" and "slot" not in scope:
        entity = scope.get("entity", {})
        return entity.get("type") == "Agent" and entity.get("id") == agent
    return op == "is" and scope.get("entity_type") == "Agent" and "in" not in scope


def _unconditional(body: dict[str, Any]) -> bool:
    return not body.get("conditions") and body.get("resource", {}).get("op", "All") == "All"


def never_allowed(bundle: PolicyBundle, agent: str, tool: str) -> str | None:
    """Why `agent` can never be allowed `tool` under `bundle`, or None when it might be."""
    statements = bundle.slice_for(tool).statements
    permits = [s for s in statements if s.effect == "permit" and _principal_may_be(_est(s).get("principal", {}), agent)]
    if not permits:
        return "no permit policy can apply"
    for s in statements:
        body = _est(s)
        if (
            s.effect == "forbid"
            and s.approval_group is None
            and _unconditional(body)
            and _principal_surely(body.get("principal", {}), agent)
        ):
            return f"forbidden without condition by {s.policy_id}"
    return None


def offered(bundle: PolicyBundle, agent: str, boundary: Iterable[str]) -> list[str]:
    """The tools of `boundary` a model may be offered, in order."""
    return [t for t in boundary if never_allowed(bundle, agent, t) is None]
