"""Audit timelines: one per run, from the ledger and the workflow's history.

The JSON form is a stable schema (version 1):
    {"schema": "lockgate.audit/v1", "run_id": str, "status": {...} | null,
     "ledger_intact": bool, "entries": [{"seq": int, "at": str, "kind": str, "step": int | null,
     "tool": str | null, "summary": str, "data": {...}}]}
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from lockgate.activities.ledger import Ledger
from lockgate.text import safe, safe_md

__all__ = ["SCHEMA", "history_entries", "render_markdown", "render_text", "timeline"]

SCHEMA = "lockgate.audit/v1"


def _chain_note(chain: object) -> str:
    """`; after orders.lookup x1, refunds.issue x1 on Order::"A-1001"`: the run's chain before the request."""
    if not isinstance(chain, dict) or not chain.get("calls"):
        return ""
    calls = ", ".join(f"{t} x{n}" for t, n in chain["calls"].items())
    on = f" on {', '.join(chain['resources'][:5])}" if chain.get("resources") else ""
    return f"; after {calls}{on}"


def _summary(kind: str, d: dict[str, Any]) -> str:
    if kind == "run.opened":
        return (
            f"run opened for agent {d.get('agent')} by {d.get('initiator')} (owner {d.get('owner')}); "
            f"identity {d.get('identity_accessor')} until {d.get('expires_at')}"
        )
    if kind == "decision":
        policies = ", ".join(d.get("policy_ids") or []) or "-"
        extra = (
            f" -> approval by {d.get('approver_group')} (quorum {d.get('quorum')})"
            if d.get("outcome") == "approval"
            else ""
        )
        return (
            f"gate {d.get('outcome').upper()} by {d.get('gate')} [{policies}] bundle {str(d.get('bundle_hash'))[:12]} "
            f"args {str(d.get('args_digest'))[:12]} confidence {d.get('confidence')}{extra}: "
            f"{'; '.join(d.get('reasons') or [])}"
        )
    if kind == "lease.issued":
        return f"lease issued {d.get('lease_id')} (ttl {d.get('ttl_seconds')}s)"
    if kind == "lease.revoked":
        return f"lease revoked {d.get('lease_id')} (by {d.get('by')})"
    if kind == "tool.completed":
        return f"tool result: {d.get('summary')}"
    if kind == "tool.failed":
        return f"tool FAILED (attempt {d.get('attempt')}): {d.get('error')}"
    if kind == "tool.refused":
        return f"tool refused: {d.get('reason')}"
    if kind == "approval.requested":
        return (
            f"approval request {d.get('request_id')} to {d.get('group')} (quorum {d.get('quorum')}), "
            f"args {str(d.get('args_digest'))[:12]}, expires {d.get('expires_at')}{_chain_note(d.get('chain'))}"
        )
    if kind == "approval.accepted":
        return (
            f"{d.get('verdict')} by {d.get('approver')} accepted for request {d.get('request_id')}: {d.get('reason')}"
        )
    if kind == "approval.refused":
        return f"REFUSED {d.get('verdict')} attempt by {d.get('approver')} on request {d.get('request_id')}: {d.get('reason')}"
    if kind == "approval.expired":
        return f"approval request {d.get('request_id')} expired"
    if kind == "run.closed":
        return f"run closed: {d.get('state')}; identity {d.get('identity_accessor')} revoked" + (
            f"; {d.get('reason')}" if d.get("reason") else ""
        )
    if kind.startswith("reaper."):
        return f"reaper: {d.get('action', kind)} {d.get('detail', '')}".strip()
    if kind == "compensation.outstanding":
        return f"COMPENSATION OUTSTANDING: {d.get('tool')} for step {d.get('step')} (the reaper retries it)"
    if kind == "compensation.resolved":
        return f"outstanding compensation {d.get('tool')} for step {d.get('step')} done by the reaper"
    if kind == "run.refused":
        return f"RUN REFUSED: {d.get('reason')}"
    return json.dumps(d, sort_keys=True)


_HISTORY = {
    "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED": "run started",
    "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED": "signal",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED": "halt requested (cancel)",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED": "TERMINATED (no workflow code runs: the reaper cleans up)",
    "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED": "run completed",
    "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED": "run failed",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED": "run halted",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT": "run timed out",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW": "continued as new",
    "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED": "sub-agent started",
}


def history_entries(events: Any, converter: Any) -> list[dict[str, Any]]:
    """The lifecycle events of a run's Temporal history that an auditor needs beside the ledger."""
    from temporalio.api.enums.v1 import EventType

    out = []
    for event in events:
        name = EventType.Name(event.event_type)
        label = _HISTORY.get(name)
        if label is None:
            continue
        detail = ""
        attr_name = event.WhichOneof("attributes")
        attrs = getattr(event, attr_name) if attr_name else None
        try:
            if name == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED":
                (inp,) = converter.payload_converter.from_payloads(attrs.input.payloads) or ({},)
                detail = f"agent {inp.get('agent')} by {inp.get('initiator')} (identity {attrs.identity})"
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED":
                args = converter.payload_converter.from_payloads(attrs.input.payloads) if attrs.input.payloads else []
                first = args[0] if args else None
                who = (
                    f" by {first.get('approver')} on request {first.get('request_id')}"
                    if isinstance(first, dict)
                    else ""
                )
                detail = f"{attrs.signal_name}{who}"
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED":
                detail = f"reason: {attrs.reason or '-'} (identity {attrs.identity})"
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED":
                detail = attrs.failure.message
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED":
                detail = f"by {attrs.identity}"
            elif name == "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED":
                detail = attrs.workflow_id
        except Exception:  # noqa: BLE001 - an undecodable payload still leaves the event itself
            detail = ""
        stamp = event.event_time.ToDatetime().replace(tzinfo=UTC).isoformat()
        out.append(
            {
                "seq": None,
                "at": stamp,
                "kind": "history",
                "step": None,
                "tool": None,
                "summary": f"{label}{': ' + detail if detail else ''}",
                "data": {"event_id": event.event_id, "event_type": name},
            }
        )
    return out


def timeline(
    ledger: Ledger, run_id: str, status: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    entries = list(history or [])
    for e in ledger.entries(run_id):
        data = json.loads(e.data)
        entries.append(
            {
                "seq": e.seq,
                "at": e.at,
                "kind": e.kind,
                "step": data.get("step"),
                "tool": data.get("tool"),
                "summary": _summary(e.kind, data),
                "data": data,
            }
        )
    # The chain is in write order; the timeline is in the order things happened.
    entries.sort(key=lambda e: (e["at"], e["seq"] or 0))
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": status,
        "ledger_intact": not ledger.verify(),
        "entries": entries,
    }


def render_text(doc: dict[str, Any]) -> str:
    # Everything shown may come from agents, tools or people: through `safe` (controls escaped).
    lines = [f"audit of run {safe(doc['run_id'])}"]
    status = doc.get("status")
    if status:
        lines.append(
            f"state: {safe(status.get('state'))}  agent: {safe(status.get('agent'))}  "
            f"initiator: {safe(status.get('initiator'))}  owner: {safe(status.get('owner'))}"
        )
    lines.append(f"ledger hash chain: {'intact' if doc['ledger_intact'] else 'BROKEN (run lockgate audit --verify)'}")
    for e in doc["entries"]:
        step = f"step {e['step']:>2}" if e.get("step") is not None else "       "
        lines.append(f"{safe(e['at'][11:23])}  {step}  {safe(e['kind']):<18} {safe(e['summary'], 2000)}")
    return "\n".join(lines)


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Audit of run {safe_md(doc['run_id'])}", ""]
    status = doc.get("status")
    if status:
        lines += [
            f"- state: **{safe_md(status.get('state'))}**",
            f"- agent: {safe_md(status.get('agent'))}",
            f"- initiator: {safe_md(status.get('initiator'))}, owner: {safe_md(status.get('owner'))}",
        ]
    lines += [
        f"- ledger hash chain: {'intact' if doc['ledger_intact'] else '**BROKEN**'}",
        "",
        "| # | time | step | event | detail |",
        "|---|---|---|---|---|",
    ]
    for e in doc["entries"]:
        detail = safe_md(e["summary"], 2000)
        lines.append(
            f"| {e['seq'] or ''} | {safe_md(e['at'])} | {e.get('step') or ''} | {safe_md(e['kind'])} | {detail} |"
        )
    return "\n".join(lines)
