"""Evidence bundles: one file that proves what a run did, checkable with every server stopped.

`lockgate audit RUN --export FILE` writes (schema `lockgate.evidence/v1`):
    {"schema", "run_id", "ledger_id",
     "chains": [{"chain", "entries": [...], "proofs": [{size, head, final, index, path,
                 "checkpoint": {seq, body, hash, signature, at}}]}],
     "keys": {"<version>": "<base64 ed25519 public key>"},
     "histories": [{"workflow_id", "run_id", "history": <History JSON as the Temporal UI/CLI write it>}],
     "policy_bundles": {"<bundle hash>": {"policies", "schema", "entities"}},
     "approvals": [...]}

Nothing in it stands on its own word: entries are proven by signed checkpoint heads (Merkle audit
paths), each history by the digest the ledger recorded when it was archived, each policy bundle by
its hash named in the decisions, approvals are what the entries say. `verify_bundle` checks all of it
offline; the only thing from outside is which public keys to trust.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockgate.errors import PolicyError, UserError
from lockgate.evidence import check_run_evidence, fingerprint
from lockgate.files import write_private

__all__ = ["SCHEMA", "BundleReport", "approvals_of", "build_bundle", "load_bundle_file", "verify_bundle"]

SCHEMA = "lockgate.evidence/v1"
_FIELDS = {"schema", "run_id", "ledger_id", "chains", "keys", "histories", "policy_bundles", "approvals"}
_ARCHIVED = "history.archived"


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for chain in bundle.get("chains", []) for e in chain.get("entries", [])]


def approvals_of(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Approval evidence as the ledger recorded it: requests, accepted and refused attempts (with the
    approver identity as recorded), expiries, in chain order."""
    out = []
    for chain in chains:
        for e in chain.get("entries", []):
            if e["kind"].startswith("approval."):
                out.append({"kind": e["kind"], "at": e["at"], "event_key": e["event_key"], **json.loads(e["data"])})
    return out


def build_bundle(ledger: Any, archive: Any, run_id: str) -> dict[str, Any]:
    """The evidence bundle of a closed, archived run (UserError if it cannot be had yet)."""
    evidence = ledger.run_evidence(run_id)
    if not evidence["chains"]:
        raise UserError(f"unknown run {run_id!r} (no ledger entries)")
    histories, problems = archive.load(run_id)
    if problems:
        raise UserError(f"run {run_id}: archived history unusable: {'; '.join(problems)}")
    if not histories:
        raise UserError(f"run {run_id} has no archived history yet (it archives once the run has closed)")
    bundles: dict[str, Any] = {}
    for e in _entries(evidence):
        if e["kind"] == "decision":
            digest = json.loads(e["data"]).get("bundle_hash")
            if digest and digest not in bundles:
                bundles[digest] = ledger.bundle(digest)
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "ledger_id": evidence["ledger_id"],
        "chains": evidence["chains"],
        "keys": evidence["keys"],
        "histories": [
            {"workflow_id": run_id, "run_id": h.history.run_id, "history": h.history.to_json_dict()} for h in histories
        ],
        "policy_bundles": bundles,
        "approvals": approvals_of(evidence["chains"]),
    }


def load_bundle_file(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise UserError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{path} is not a lockgate evidence bundle ({SCHEMA})")
    return data


@dataclass
class BundleReport:
    run_id: str
    problems: list[str] = field(default_factory=list)
    entries: int = 0
    proven: int = 0
    checkpoints: list[int] = field(default_factory=list)
    histories: int = 0
    events: int = 0
    decisions: int = 0
    bundles: int = 0
    approvals: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    trust: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.ok,
            "run_id": self.run_id,
            "entries": self.entries,
            "proven": self.proven,
            "checkpoints": self.checkpoints,
            "histories": self.histories,
            "events": self.events,
            "decisions": self.decisions,
            "policy_bundles": self.bundles,
            "approvals": self.approvals,
            "keys": self.keys,
            "trusted_keys_from": self.trust,
            "problems": self.problems,
        }

    def lines(self) -> list[str]:
        cps = ", ".join(f"#{c}" for c in self.checkpoints) or "none"
        keys = ", ".join(f"v{v} {k}" for v, k in self.keys.items()) or "none"
        out = [
            f"evidence bundle of run {self.run_id}",
            f"ledger: {self.proven} of {self.entries} entries proven by signed checkpoints {cps}",
            f"signing keys: {keys} (trusted from: {self.trust})",
            f"histories: {self.histories} ({self.events:,} events), each matching the digest the ledger recorded",
            f"policy bundles: {self.bundles}, re-hashed; {self.decisions} decisions name them",
            f"approvals: {self.approvals} records, as the ledger recorded them",
        ]
        out += [f"  {p}" for p in self.problems]
        out.append("bundle intact" if self.ok else f"bundle NOT intact: {len(self.problems)} problem(s)")
        return out


def verify_bundle(
    bundle: dict[str, Any], *, trusted_keys: dict[int, str] | None, trust: str = "--keys"
) -> BundleReport:
    """Checks every part of a bundle offline. `trusted_keys`: the ledger key's public keys from
    outside the bundle (None: nothing anchors the bundle's own keys, which is itself a problem)."""
    from temporalio.client import WorkflowHistory

    from lockgate.activities.archive import history_digest
    from lockgate.gates.bundle import PolicyBundle

    run_id = str(bundle.get("run_id"))
    report = BundleReport(run_id=run_id)
    extra = set(bundle) - _FIELDS
    if extra:
        report.problems.append(f"unexpected fields {sorted(extra)}")
    missing = _FIELDS - set(bundle)
    if missing:
        report.problems.append(f"missing fields {sorted(missing)}")
        return report

    # 1. keys: the bundle's own must be ones the verifier trusts
    embedded = {int(v): str(k) for v, k in bundle["keys"].items()}
    report.keys = {str(v): fingerprint(k) for v, k in sorted(embedded.items())}
    if trusted_keys is None:
        report.trust = "nothing (the bundle's own keys)"
        report.problems.append(
            "no trusted public key: the checkpoints verify only against keys inside the bundle; "
            "pass --keys FILE (or verify once where Vault answers, which pins them)"
        )
        keys = embedded
    else:
        report.trust = trust
        keys = dict(trusted_keys)
        for v, k in embedded.items():
            if trusted_keys.get(v) != k:
                report.problems.append(f"bundle key version {v} is not a trusted key (replaced or forged)")

    # 2. the run's chains against their signed heads; a bundle is complete: nothing pending
    proof = check_run_evidence(
        {"ledger_id": bundle["ledger_id"], "run_id": run_id, "chains": bundle["chains"]}, keys=keys
    )
    report.problems += proof.problems
    report.entries, report.proven, report.checkpoints = proof.entries, proof.proven, sorted(proof.checkpoints)
    entries = _entries(bundle)
    for e in entries:
        if not proof.is_proven(e["chain"], int(e["chain_seq"])) and proof.ok:
            report.problems.append(f"seq {e['seq']} ({e['kind']}): not covered by a signed checkpoint")

    # 3. histories: each exactly the one whose digest the ledger recorded at archiving
    recorded: dict[str, str] = {}
    for e in entries:
        if e["kind"] == _ARCHIVED:
            for item in json.loads(e["data"]).get("histories", []):
                recorded[str(item["temporal_run_id"])] = str(item["sha256"])
    if not recorded:
        report.problems.append("no archived-history record in the ledger entries: the histories are unanchored")
    seen = set()
    for h in bundle["histories"]:
        where = f"history {h.get('run_id')}"
        try:
            parsed = WorkflowHistory.from_json(run_id, h["history"])
            actual_run = parsed.run_id
        except Exception as err:  # noqa: BLE001 - a malformed history is a finding, not a crash
            report.problems.append(f"{where}: not a Temporal history ({err})")
            continue
        if h.get("workflow_id") != run_id or actual_run != h.get("run_id"):
            report.problems.append(f"{where}: names another workflow or run than its events")
        if recorded.get(actual_run) != history_digest(h["history"]):
            report.problems.append(f"{where}: does not match the digest the ledger recorded (edited or foreign)")
        seen.add(actual_run)
        report.histories += 1
        report.events += len(parsed.events)
    for missing_run in sorted(set(recorded) - seen):
        report.problems.append(f"history {missing_run}: recorded in the ledger but missing from the bundle")

    # 4. policy bundles: each rebuilds to the hash its decisions name
    named = set()
    for e in entries:
        if e["kind"] == "decision":
            report.decisions += 1
            named.add(json.loads(e["data"]).get("bundle_hash"))
    for digest, content in bundle["policy_bundles"].items():
        report.bundles += 1
        if digest not in named:
            report.problems.append(f"policy bundle {digest[:12]}: named by no decision of this run")
        try:
            rebuilt = PolicyBundle.build(
                content["policies"], schema_text=content["schema"], entities_json=content["entities"]
            )
        except (PolicyError, KeyError, TypeError) as err:
            report.problems.append(f"policy bundle {digest[:12]}: does not build ({err})")
            continue
        if rebuilt.hash != digest:
            report.problems.append(f"policy bundle {digest[:12]}: content hashes to {rebuilt.hash[:12]} (edited)")
    for digest in sorted(d for d in named if d and d not in bundle["policy_bundles"]):
        report.problems.append(f"policy bundle {digest[:12]}: named by a decision but missing")

    # 5. approvals: exactly what the proven entries say
    derived = approvals_of(bundle["chains"])
    report.approvals = len(derived)
    if derived != bundle["approvals"]:
        report.problems.append("approval evidence differs from the approvals the ledger entries record (edited)")
    return report


def write_bundle(bundle: dict[str, Any], path: str) -> None:
    # Evidence (and possibly regulated data): this OS user's only.
    write_private(Path(path), json.dumps(bundle, indent=1, sort_keys=True))
