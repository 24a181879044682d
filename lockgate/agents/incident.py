"""`incident-agent`: incident response (the second example agent). Declarations only, no I/O.

Collect a host's signals, open a ticket, and quarantine the host only after an on-call engineer
approves; with `page`, page the host's owning team. Compensations close the ticket and release the
quarantine. Implementations: `activities/incident.py`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lockgate.models import ToolCall
from lockgate.spec import AgentSpec, ToolSpec, registry

__all__ = ["AGENT", "IncidentInput", "plan"]

_ARGS = ConfigDict(frozen=True, extra="forbid")
_HOST = Field(pattern=r"^[a-z0-9-]{1,40}$")


class HostArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST


class TicketArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    title: str = Field(min_length=1, max_length=200)
    severity: str = Field(pattern="^(low|high)$")


class QuarantineArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    reason: str = Field(min_length=1, max_length=500)


class UndoArgs(BaseModel):
    model_config = _ARGS
    idempotency_key: str = Field(min_length=1)


class PageArgs(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    message: str = Field(min_length=1, max_length=1000)


class IncidentInput(BaseModel):
    model_config = _ARGS
    host_id: str = _HOST
    page: bool = False


READER = "database/creds/ops-reader"
RESPONDER = "database/creds/ops-responder"

TOOLS = (
    ToolSpec(name="signals.collect", description="Read a host and its open alerts.", args=HostArgs, secret=READER),
    ToolSpec(
        name="tickets.open",
        description="Open an incident ticket.",
        args=TicketArgs,
        secret=RESPONDER,
        production=True,
        compensation="tickets.close",
    ),
    ToolSpec(
        name="tickets.close",
        description="Close a ticket by its idempotency key.",
        args=UndoArgs,
        secret=RESPONDER,
        production=True,
    ),
    ToolSpec(
        name="host.quarantine",
        description="Isolate a host from the network.",
        args=QuarantineArgs,
        secret=RESPONDER,
        production=True,
        compensation="host.release",
    ),
    ToolSpec(
        name="host.release",
        description="Release a quarantine by its idempotency key.",
        args=UndoArgs,
        secret=RESPONDER,
        production=True,
    ),
    ToolSpec(name="oncall.page", description="Page the host's owning team.", args=PageArgs, secret=READER, egress=True),
)


def plan(inp: dict[str, Any], done: list[dict[str, Any]]) -> ToolCall | None:
    tools = [d["tool"] for d in done]
    host = inp["host_id"]
    if "signals.collect" not in tools:
        return ToolCall(tool="signals.collect", args={"host_id": host}, rationale="what is going on")
    signals = done[tools.index("signals.collect")]["result"]
    severity = "high" if signals.get("high_alerts") else "low"
    if "tickets.open" not in tools:
        title = f"{host}: {signals.get('worst') or 'no open alerts'}"
        return ToolCall(
            tool="tickets.open",
            args={"host_id": host, "title": title[:200], "severity": severity},
            rationale="track the incident",
        )
    if severity == "high" and "host.quarantine" not in tools:
        return ToolCall(
            tool="host.quarantine",
            args={"host_id": host, "reason": signals.get("worst") or "high alert"},
            rationale="contain a high-severity alert",
        )
    if inp.get("page") and "oncall.page" not in tools:
        return ToolCall(
            tool="oncall.page",
            args={"host_id": host, "message": f"{host} quarantined; see ticket"},
            rationale="tell the owners",
        )
    return None


AGENT = registry.add(
    AgentSpec(
        name="incident-agent",
        owner="sre-platform",
        purpose="Triage a host's alerts: ticket, quarantine after on-call approval, page the owners.",
        tools=TOOLS,
        input_model=IncidentInput,
        planner=plan,
        max_steps=10,
        deadline=timedelta(hours=2),
        approval_ttl=timedelta(minutes=30),
    )
)
