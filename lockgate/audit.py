"""Audit timelines: one per run, from the ledger and the workflow's history.

The JSON form is a stable schema (version 1; fields are only ever added):
    {"schema": "lockgate.audit/v1", "run_id": str, "status": {...} | null,
     "ledger_intact": bool, "ledger_problems": [str], "proof": {"checkpoints": [int], "proven": int,
     "pending": int, "entries": int}, "history_source": str | null,
     "entries": [{"seq": int, "at": str, "kind": str, "step": int | null, "tool": str | null,
     "summary": str, "data": {...}, "proven": bool | null, "pending": bool, "after_close": bool}]}

Every line of a step names its tool (approval lines take it from their request); approvals show
the approver identity as the run recorded it. `ledger_intact` is the run's own proof: its chains
checked entry by entry against the heads signed in checkpoints (lockgate.evidence).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from lockgate.activities.codec import PayloadKeyError, restore_failure
from lockgate.activities.ledger import PENDING_GRACE, Ledger
from lockgate.evidence import AFTER_CLOSE, check_run_evidence
from lockgate.text import safe, safe_md

__all__ = [
    "SCHEMA",
    "history_entries",
    "render_markdown",
    "render_text",
    "timeline",
    "timeline_from_evidence",
]

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
        phase = f"{d.get('phase')}: " if d.get("phase") else ""
        return (
            f"{phase}gate {str(d.get('outcome')).upper()} by {d.get('gate')} [{policies}] bundle {str(d.get('bundle_hash'))[:12]} "
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
        return f"{d.get('verdict')} by {_approver(d)} accepted for request {d.get('request_id')}: {d.get('reason')}"
    if kind == "approval.refused":
        return (
            f"REFUSED {d.get('verdict')} attempt by {_approver(d)} on request {d.get('request_id')}: {d.get('reason')}"
        )
    if kind == "approval.expired":
        return f"approval request {d.get('request_id')} expired"
    if kind == "run.closed":
        return f"run closed: {d.get('state')}; identity {d.get('identity_accessor')} revoked" + (
            f"; {d.get('reason')}" if d.get("reason") else ""
        )
    if kind == "history.archived":
        items = d.get("histories") or []
        events = sum(int(i.get("events", 0)) for i in items)
        digests = ", ".join(str(i.get("sha256"))[:12] for i in items)
        return f"history archived: {len(items)} histor{'y' if len(items) == 1 else 'ies'} ({events} events), sha256 {digests}"
    if kind.startswith("reaper."):
        return f"reaper: {d.get('action', kind)} {d.get('detail', '')}".strip()
    if kind == "compensation.outstanding":
        return f"COMPENSATION OUTSTANDING: {d.get('tool')} for step {d.get('step')} (the reaper retries it)"
    if kind == "compensation.resolved":
        return f"outstanding compensation {d.get('tool')} for step {d.get('step')} done by the reaper"
    if kind == "run.refused":
        return f"RUN REFUSED: {d.get('reason')}"
    if kind == "model.egress":
        verdict = (
            f"allowed by {', '.join(d.get('policy_ids') or [])}" if d.get("allowed") else "regulated results redacted"
        )
        return f"model request to {d.get('endpoint')}: {verdict}"
    if kind == "mcp.blocked":
        return f"MCP tool {d.get('server')}.{d.get('tool')} BLOCKED: definition {d.get('live_digest')} is not the pinned one"
    return json.dumps(d, sort_keys=True)


# Identity fields an approval record may carry beside the name the approver gave.
_IDENTITY_FIELDS = ("identity", "entity_id", "entity", "verified_identity", "signed_by")


def _approver(d: dict[str, Any]) -> str:
    """The approver as recorded: the name, and the verified identity when the record has one."""
    who = str(d.get("approver"))
    extra = [f"{k} {d[k]}" for k in _IDENTITY_FIELDS if d.get(k) and d.get(k) != who]
    return f"{who} ({', '.join(extra)})" if extra else who


_HISTORY = {
    "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED": "run started",
    "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED": "signal",
    "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED": "update",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED": "halt requested (cancel)",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED": "TERMINATED (no workflow code runs: the reaper cleans up)",
    "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED": "run completed",
    "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED": "run failed",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED": "run halted",
    "EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT": "run timed out",
    "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW": "continued as new",
    "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED": "sub-agent started",
}


def _decoded(payloads: Any, converter: Any) -> list[Any]:
    """Payloads decrypted through the converter's codec (when it can decode synchronously)."""
    decode_sync = getattr(converter.payload_codec, "decode_sync", None)
    return list(decode_sync(payloads) if decode_sync else payloads)


def _failure_message(failure: Any, converter: Any) -> str:
    if failure.HasField("encoded_attributes"):
        from temporalio.api.failure.v1 import Failure

        copy = Failure()
        copy.CopyFrom(failure)
        (plain,) = _decoded([copy.encoded_attributes], converter)
        copy.encoded_attributes.CopyFrom(plain)
        restore_failure(copy)
        return copy.message
    return failure.message


def _claimed_by(arg: Any) -> str:
    """Who a signal or update says it is from (a signed statement's person, or a bare claim): the
    ledger says whether the run verified it."""
    if not isinstance(arg, dict):
        return ""
    statement = arg.get("statement") if isinstance(arg.get("statement"), dict) else None
    if statement is not None:
        fields = statement.get("fields") or {}
        return f" by {statement.get('person')} (signed) on request {fields.get('request_id')}"
    return f" by {arg.get('approver')} (unsigned claim) on request {arg.get('request_id')}"


def _request_of(arg: Any) -> str | None:
    """The approval request a signal or update names (signed statement or bare claim)."""
    if not isinstance(arg, dict):
        return None
    statement = arg.get("statement")
    fields = statement.get("fields") if isinstance(statement, dict) else arg
    value = (fields or {}).get("request_id")
    return str(value) if value else None


def history_entries(events: Any, converter: Any) -> list[dict[str, Any]]:
    """The lifecycle events of a run's Temporal history that an auditor needs beside the ledger.

    Encrypted payloads are decrypted through `converter`'s codec, with the caller's Vault identity;
    one it may not decrypt leaves the event in the timeline with a note saying so.
    """
    from temporalio.api.enums.v1 import EventType

    out = []
    for event in events:
        name = EventType.Name(event.event_type)
        label = _HISTORY.get(name)
        if label is None:
            continue
        detail = ""
        request_id = None
        attr_name = event.WhichOneof("attributes")
        attrs: Any = getattr(event, attr_name) if attr_name else None
        try:
            if name == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED":
                (inp,) = converter.payload_converter.from_payloads(_decoded(attrs.input.payloads, converter)) or ({},)
                detail = f"agent {inp.get('agent')} by {inp.get('initiator')} (identity {attrs.identity})"
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED":
                args = (
                    converter.payload_converter.from_payloads(_decoded(attrs.input.payloads, converter))
                    if attrs.input.payloads
                    else []
                )
                detail = f"{attrs.signal_name}{_claimed_by(args[0] if args else None)}"
                request_id = _request_of(args[0] if args else None)
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
                request = attrs.accepted_request
                args = (
                    converter.payload_converter.from_payloads(_decoded(request.input.args.payloads, converter))
                    if request.input.args.payloads
                    else []
                )
                detail = f"{request.input.name}{_claimed_by(args[0] if args else None)}"
                request_id = _request_of(args[0] if args else None)
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED":
                detail = f"reason: {attrs.reason or '-'} (identity {attrs.identity})"
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED":
                detail = _failure_message(attrs.failure, converter)
            elif name == "EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED":
                detail = f"by {attrs.identity}"
            elif name == "EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED":
                detail = attrs.workflow_id
        except PayloadKeyError as err:
            detail = f"(encrypted: {err})"
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
                "data": {"event_id": event.event_id, "event_type": name}
                | ({"request_id": request_id} if request_id else {}),
            }
        )
    return out


def timeline(
    ledger: Ledger,
    run_id: str,
    status: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    *,
    trusted_keys: dict[int, str] | None = None,
    history_source: str | None = None,
) -> dict[str, Any]:
    """The run's timeline from the ledger (and its history's lifecycle events, if given). Rows no
    lockgate worker wrote (when this process may check row MACs) are left out and named."""
    doc = timeline_from_evidence(
        ledger.run_evidence(run_id),
        status,
        history,
        trusted_keys=trusted_keys,
        history_source=history_source,
    )
    found = ledger.read(run_id)
    if found.problems:
        authentic = {e.seq for e in found.entries}
        doc["entries"] = [e for e in doc["entries"] if e.get("seq") is None or e["seq"] in authentic]
        doc["ledger_intact"] = False
        doc["ledger_problems"] = [*doc["ledger_problems"], *(f"left out: {p}" for p in found.problems)]
    return doc


def timeline_from_evidence(
    evidence: dict[str, Any],
    status: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    *,
    trusted_keys: dict[int, str] | None = None,
    history_source: str | None = None,
    grace: float = PENDING_GRACE,
) -> dict[str, Any]:
    """The timeline of a run's evidence (`Ledger.run_evidence`, or an exported bundle's)."""
    run_id = str(evidence["run_id"])
    keys = trusted_keys if trusted_keys is not None else {int(v): k for v, k in evidence.get("keys", {}).items()}
    pending_after = (datetime.now(UTC) - timedelta(seconds=grace)).isoformat()
    proof = check_run_evidence(evidence, keys=keys, pending_after=pending_after)
    rows = [e for chain in evidence["chains"] for e in chain["entries"]]
    requests: dict[str, tuple[Any, Any]] = {}
    for e in rows:
        if e["kind"] == "approval.requested":
            data = json.loads(e["data"])
            requests[str(data.get("request_id"))] = (data.get("step"), data.get("tool"))
    entries = list(history or [])
    for item in entries:
        rid = item["data"].get("request_id")
        if rid in requests:
            item["step"], item["tool"] = requests[rid]
    for e in rows:
        data = json.loads(e["data"])
        step, tool = data.get("step"), data.get("tool")
        if e["kind"].startswith("approval.") and str(data.get("request_id")) in requests:
            step, tool = requests[str(data.get("request_id"))]
        proven = proof.is_proven(e["chain"], int(e["chain_seq"]))
        entries.append(
            {
                "seq": e["seq"],
                "at": e["at"],
                "kind": e["kind"],
                "step": step,
                "tool": tool,
                "summary": _summary(e["kind"], data),
                "data": data,
                "proven": proven,
                "pending": not proven and proof.ok and str(e.get("recorded_at") or "") >= pending_after,
                "after_close": e["chain"].endswith(AFTER_CLOSE),
            }
        )
    # The chains are in write order; the timeline is in the order things happened.
    entries.sort(key=lambda e: (e["at"], e["seq"] or 0))
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": status,
        "ledger_intact": proof.ok,
        "ledger_problems": proof.problems,
        "proof": {
            "checkpoints": sorted(proof.checkpoints),
            "entries": proof.entries,
            "proven": proof.proven,
            "pending": proof.pending,
        },
        "history_source": history_source,
        "entries": entries,
    }


def _proof_line(doc: dict[str, Any]) -> str:
    p = doc.get("proof") or {}
    if not doc["ledger_intact"]:
        return f"ledger: NOT PROVEN ({len(doc.get('ledger_problems') or [])} problem(s); run lockgate verify)"
    cps = p.get("checkpoints") or []
    signed = (
        f"signed in checkpoint{'s' if len(cps) != 1 else ''} #{', #'.join(map(str, cps))}"
        if cps
        else "no checkpoint yet"
    )
    return f"ledger: {p.get('proven', 0)} of {p.get('entries', 0)} entries proven ({signed}); {p.get('pending', 0)} pending"


def render_text(doc: dict[str, Any]) -> str:
    # Everything shown may come from agents, tools or people: through `safe` (controls escaped).
    lines = [f"audit of run {safe(doc['run_id'])}"]
    status = doc.get("status")
    if status:
        lines.append(
            f"state: {safe(status.get('state'))}  agent: {safe(status.get('agent'))}  "
            f"initiator: {safe(status.get('initiator'))}  owner: {safe(status.get('owner'))}"
        )
    lines.append(_proof_line(doc))
    for problem in doc.get("ledger_problems") or []:
        lines.append(f"  {problem}")
    if doc.get("history_source"):
        lines.append(f"history: {doc['history_source']}")
    for e in doc["entries"]:
        step = f"step {e['step']:>2}  {safe(e.get('tool') or '-', 40)!s:<20}" if e.get("step") is not None else " " * 29
        mark = "" if e.get("proven") is not False else "  [pending]" if e.get("pending") else "  [UNPROVEN]"
        late = "  [after close]" if e.get("after_close") else ""
        lines.append(f"{safe(e['at'][11:23])}  {step}  {safe(e['kind']):<18} {safe(e['summary'], 2000)}{late}{mark}")
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
        f"- {_proof_line(doc)}",
        "",
        "| # | time | step | tool | event | detail |",
        "|---|---|---|---|---|---|",
    ]
    for e in doc["entries"]:
        detail = safe_md(e["summary"], 2000)
        if e.get("proven") is False:
            detail += " *(pending checkpoint)*" if e.get("pending") else " **(unproven)**"
        tool = safe_md(e.get("tool") or "") if e.get("step") is not None else ""
        lines.append(
            f"| {e['seq'] or ''} | {safe_md(e['at'])} | {e.get('step') or ''} | {tool} | {safe_md(e['kind'])} | {detail} |"
        )
    return "\n".join(lines)
