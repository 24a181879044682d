"""The run's chain as policies see it (`context.chain`), and a call's declared resource. Pure.

The chain comes from recorded run state (`GateState.chain`, kept by the workflow from the calls
that ran), never from a live lookup, so a recorded request re-checks to the same decision.

`context.chain`:
- `on_resource`: set of the tools whose calls in this run acted on this call's resource (empty when
  the tool declares none); `context.chain.on_resource.contains("refunds.issue")`. Prefer it to
  `touched` for "this resource again": it is small, and Cedar converts every element of a set a
  policy reads on each call (a 50-element set costs several hundred microseconds).
- `calls`: record, for every tool of the agent (and any other the chain saw), how many calls ran;
  `context.chain.calls["refunds.issue"] >= 1`.
- `tools`: set of the tools that ran; `steps`: how many calls ran in all.
- `resources`: record, per resource type the agent's tools declare, the set of the ids of the
  distinct resources of that type touched, at most `CHAIN_RESOURCES`;
  `context.chain.resources.Order.contains("A-1001")`.
- `touched`: record, per tool that declares a resource, the set of the ids its calls acted on;
  `context.chain.touched["refunds.issue"].contains(context.args.order_id)`.
Ids are strings, not entity references: plain data, so a policy that does not read them costs
nothing (the gate sends Cedar only what policies read, and only plain data can be left out).
- `distinct`: record, per resource type, how many distinct ones were touched (Cedar sets have no
  size; capped at `CHAIN_RESOURCES`, see `truncated`); `context.chain.distinct.Host > 1`.
- `data_classes`: set of the data classes read; `egress`: data was sent out; `truncated`: a cap
  was reached (some resource was not remembered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lockgate.models import Chain
from lockgate.spec import AgentSpec, ToolSpec

__all__ = ["chain_context", "resource_entity", "resource_types"]


def resource_types(agent: AgentSpec) -> list[str]:
    """The entity types the agent's tools declare as their resource (by name)."""
    return sorted({t.resource_type for t in agent.tools if t.resource_type})


def chain_context(
    agent: AgentSpec,
    chain: Chain,
    resource: tuple[str, str] | None = None,
    only: frozenset[str] | None = None,
) -> dict[str, Any]:
    """`context.chain` for a call of `agent` whose run has done `chain` (see the module doc).

    Every tool of the agent is a key of `calls` (and of `touched`, if it declares a resource) and
    every resource type of its tools a key of `resources` and `distinct`, so a policy can name any
    of them without a `has` test. `only` builds just those fields (the ones policies read)."""
    tools = sorted(agent.boundary | chain.calls.keys())
    kinds = sorted(set(resource_types(agent)) | {kind for kind, _ in chain.resources})
    typed = sorted({t.name for t in agent.tools if t.resource_type} | chain.touched.keys())
    fields: dict[str, Callable[[], Any]] = {
        "on_resource": lambda: sorted(t for t, rs in chain.touched.items() if resource in rs) if resource else [],
        "calls": lambda: {t: chain.calls.get(t, 0) for t in tools},
        "tools": lambda: sorted(chain.calls),
        "steps": lambda: sum(chain.calls.values()),
        "resources": lambda: {k: [i for t, i in chain.resources if t == k] for k in kinds},
        "touched": lambda: {t: [i for _, i in chain.touched.get(t, ())] for t in typed},
        "distinct": lambda: {k: sum(1 for r in chain.resources if r[0] == k) for k in kinds},
        "data_classes": lambda: list(chain.data_classes),
        "egress": lambda: chain.egress,
        "truncated": lambda: chain.truncated,
    }
    return {name: make() for name, make in fields.items() if only is None or name in only}


def resource_entity(tool: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
    """The Cedar resource of a call, as an entity: the tool's declared resource (a child of
    `Tool::"<name>"` with the tool's risk labels, so `resource.egress` and `resource in
    Tool::"<name>"` keep working), or `Tool::"<name>"` itself."""
    declared = tool.resource_of(args)
    if declared is None:
        return {"uid": {"type": "Tool", "id": tool.name}, "attrs": tool.labels(), "parents": []}
    return {
        "uid": {"type": declared[0], "id": declared[1]},
        "attrs": tool.labels(),
        "parents": [{"type": "Tool", "id": tool.name}],
    }
