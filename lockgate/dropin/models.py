"""What crosses between the governed workflow and the governed activity (history-safe: no secrets)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel, ConfigDict

from lockgate.models import Decision, GateRequest

__all__ = ["HEADER", "PATCH_ID", "DropinCall", "DropinVerdict", "plain_args"]

# The activity header that carries a governed call's gate request to the activity that runs it.
HEADER = "lockgate-call"
# `workflow.patched` id: runs that reached a tool call before lockgate was added stay ungoverned.
PATCH_ID = "lockgate.dropin"

_WIRE = ConfigDict(frozen=True, extra="forbid")


class DropinVerdict(BaseModel):
    """Result of `dropin.gate`: the decision, and what a denial does (decided in the activity, from
    the tool's setting and the deciding policy's `@denial` annotation, so replay never re-decides)."""

    model_config = _WIRE

    decision: Decision
    on_deny: Literal["fail", "retry"] = "fail"


class DropinCall(BaseModel):
    """The header of a governed activity.

    `mode="governed"`: the activity evaluates `request` again (kill switch, policy reloads), leases
    the tool's secret under the run's identity, runs, revokes and records. `mode="legacy"`: the run
    started before lockgate was added to the worker and stays ungoverned (see `PATCH_ID`).
    """

    model_config = _WIRE

    mode: Literal["governed", "legacy"] = "governed"
    request: GateRequest | None = None
    idempotency_key: str = ""
    # How the activity's positional args map to the gated args: "tool_args" (Pydantic AI's
    # CallToolParams), "named" (bound to the activity's parameters), "single" (one input object).
    binding: Literal["tool_args", "named", "single"] = "single"


def _clean(value: Any) -> Any:
    """Plain data as Cedar takes it: nulls are dropped (absent and null mean the same to a policy)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    return _clean(pydantic_core.to_jsonable_python(value, fallback=str))


def plain_args(values: Sequence[Any]) -> dict[str, Any]:
    """The args of a plain activity as a policy sees them: one input object's fields, else `args`."""
    if len(values) == 1:
        one = jsonable(values[0])
        if isinstance(one, dict):
            return one
        return {"args": [one]}
    return {"args": [jsonable(v) for v in values]}
