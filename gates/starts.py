"""Who may start which agent: one Cedar decision per start. Pure: bundle, person and groups come in.

A start is the request `principal = User::"<person>"` (a child of `Group::"<g>"` for each of the
person's groups, as Vault identity says when the start is verified), `action = lockgate::Action::
"start"`, `resource = Agent::"<agent>"` (attribute `owner`). Default deny: a start runs only where a
policy naming that action permits it and no forbid applies.

Only policies whose action scope names `lockgate::Action::"start"` decide starts (a tool policy with
an open action scope, `forbid (principal, action, resource) when { resource.egress }`, is about tool
calls and never sees a start). They are validated against their own small schema (`START_SCHEMA`),
so tool policies keep validating against the tools' schema unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import cedarpy

if TYPE_CHECKING:
    from lockgate.gates.bundle import PolicyBundle

__all__ = ["START_ACTION", "START_SCHEMA", "StartVerdict", "decide_start", "is_start_statement"]

START_ACTION = ("lockgate::Action", "start")

# What a start policy may name: people (in groups), agents (with their owner), the start action;
# and a model-egress policy (gates/egress.py): agents, model endpoints, the `model.send` action.
START_SCHEMA = """\
entity Group in [Group];
entity User in [Group];
entity Agent { owner: String };
entity Model;
namespace lockgate {
  action "start" appliesTo { principal: User, resource: Agent, context: {} };
  action "model.send" appliesTo { principal: Agent, resource: Model, context: {} };
}
"""


class _Scoped(Protocol):
    @property
    def actions(self) -> frozenset[tuple[str, str]] | None: ...


def is_start_statement(statement: _Scoped) -> bool:
    """Whether the policy's action scope names the start action (it then decides starts only)."""
    return statement.actions is not None and START_ACTION in statement.actions


@dataclass(frozen=True)
class StartVerdict:
    """The answer to one start.

    Attributes:
        allowed: Cedar allowed it.
        policy_ids: the deciding policies (the permits that allowed it, or the forbids that denied it).
        reason: for people, why it was refused ("" when allowed).
    """

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    reason: str = ""


def decide_start(
    bundle: PolicyBundle, person: str, groups: tuple[str, ...] | list[str], agent: str, owner: str
) -> StartVerdict:
    """Whether `person` (in `groups`) may start `agent`, by the bundle's start policies.

    The person's groups are the ones given (Vault identity's, read when the start is verified), never
    entities.json's: a User entity of the same name there is replaced. Group and Agent entities of
    the bundle are kept (nested groups, agents' attributes). Any error is a refusal (fail closed).
    """
    statements = [s for s in bundle.statements if is_start_statement(s)]
    if not statements:
        return StartVerdict(False, (), "no policy permits starting any agent (default deny)")
    try:
        entities: list[dict[str, Any]] = []
        has_agent = False
        for e in bundle.entity_list():
            uid = e.get("uid", {}) if isinstance(e, dict) else {}
            if uid.get("type") == "User" and uid.get("id") == person:
                continue
            has_agent = has_agent or (uid.get("type") == "Agent" and uid.get("id") == agent)
            entities.append(e)
        entities.append(
            {
                "uid": {"type": "User", "id": person},
                "attrs": {},
                "parents": [{"type": "Group", "id": g} for g in sorted(set(groups))],
            }
        )
        if not has_agent:
            entities.append({"uid": {"type": "Agent", "id": agent}, "attrs": {"owner": owner}, "parents": []})
        policies = "\n".join(s.text for s in statements)
        request = {
            "principal": {"type": "User", "id": person},
            "action": {"type": START_ACTION[0], "id": START_ACTION[1]},
            "resource": {"type": "Agent", "id": agent},
            "context": {},
        }
        result = cedarpy.is_authorized(request, policies, json.dumps(entities))
    except Exception as err:  # noqa: BLE001 - any error is a refusal (fail closed)
        return StartVerdict(False, (), f"start policy could not be evaluated: {type(err).__name__}")
    ids = tuple(
        statements[int(r.removeprefix("policy"))].policy_id
        for r in result.diagnostics.reasons
        if r.removeprefix("policy").isdigit() and int(r.removeprefix("policy")) < len(statements)
    )
    if result.allowed:
        return StartVerdict(True, ids)
    who = f"{person} (groups: {', '.join(sorted(groups)) or 'none'})"
    if ids:
        return StartVerdict(False, ids, f"{who} may not start {agent}: forbidden by {', '.join(ids)}")
    return StartVerdict(False, (), f"{who} may not start {agent}: no start policy permits it (default deny)")
