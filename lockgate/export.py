"""Evidence bundles: one file that proves what a run did, checkable with every server stopped.

`lockgate audit RUN --export FILE` writes (schema `lockgate.evidence/v1`):
    {"schema", "run_id", "ledger_id",
     "chains": [{"chain", "entries": [...], "proofs": [{size, head, final, index, path,
                 "checkpoint": {seq, body, hash, signature, at}}]}],
     "keys": {"<version>": "<base64 ed25519 public key>"},
     "histories": [{"workflow_id", "run_id", "history": <History JSON as the Temporal UI/CLI write it>}],
     "policy_bundles": {"<bundle hash>": {"policies", "schema", "entities"}},
     "approvals": [...],
     "payload_keys": {...}}   (optional: the histories' data keys sealed for an auditor's key)

Nothing in it stands on its own word: entries are proven by signed checkpoint heads (Merkle audit
paths), each history by the digest the ledger recorded when it was archived, each policy bundle by
its hash named in the decisions, approvals are what the entries say. `verify_bundle` checks all of it
offline; the only thing from outside is which public keys to trust.

A bundle is complete or it fails: the run's main chain from its first entry to its signed final head
(with `run.opened` and `run.closed`), every policy bundle and every approval its decisions reference.
A bundle checked against nothing outside it is reported unanchored: its own keys prove nothing, since
anyone can re-sign a forged bundle with a key of their own.
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
# Optional: what an offline replay of encrypted histories needs (lockgate.auditkeys). Not anchored
# by the ledger and need not be: a forged key fails AES-GCM on the anchored ciphertexts.
_OPTIONAL = {"payload_keys"}
_OPENING = "run.opened"
_CLOSING = "run.closed"
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
    anchored: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lack(self, what: str) -> None:
        """A part the bundle must hold and does not: named, and the bundle is not intact."""
        self.missing.append(what)
        self.problems.append(f"missing: {what}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.ok,
            "anchored": self.anchored,
            "missing": self.missing,
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
            f"signing keys: {keys} (trusted from: {self.trust})"
            if self.anchored
            else f"UNANCHORED: nothing outside the bundle vouches for its signing keys ({keys}); "
            f"anyone can re-sign a forged bundle. Pass --keys FILE or pin the keys ({self.trust})",
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
    extra = set(bundle) - _FIELDS - _OPTIONAL
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
        report.trust = trust or "nothing pinned"
        report.problems.append(
            "no trusted public key: the checkpoints verify only against keys inside the bundle; "
            "pass --keys FILE (or verify once where Vault answers, which pins them)"
        )
        keys = embedded
    else:
        report.trust = trust
        report.anchored = True
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
    _check_complete(bundle, run_id, proof, report)

    # 3. histories: each exactly the one whose digest the ledger recorded at archiving
    recorded: dict[str, str] = {}
    for e in entries:
        if e["kind"] == _ARCHIVED:
            for item in json.loads(e["data"]).get("histories", []):
                recorded[str(item["temporal_run_id"])] = str(item["sha256"])
    if not recorded:
        report.lack("the history.archived record (the ledger's digests of the histories)")
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
        report.lack(f"history {missing_run} (recorded in the ledger)")

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
        report.lack(f"policy bundle {digest[:12]} (named by a decision)")

    # 5. approvals: exactly what the proven entries say, and every one a decision references
    derived = approvals_of(bundle["chains"])
    report.approvals = len(derived)
    listed = bundle["approvals"] if isinstance(bundle["approvals"], list) else []
    if derived and not listed:
        report.lack(f"approval evidence ({len(derived)} approval records the ledger entries hold)")
    elif derived != listed:
        report.problems.append("approval evidence differs from the approvals the ledger entries record (edited)")
    _check_referenced_approvals(entries, report)
    return report


def _check_complete(bundle: dict[str, Any], run_id: str, proof: Any, report: BundleReport) -> None:
    """The run's main chain, whole: from its first entry to the head a checkpoint signed final, with
    the run's opening and closing entries. A fragment (another chain alone, a cut chain) is not
    evidence of what the run did."""
    main = next((c for c in bundle["chains"] if c.get("chain") == run_id), None)
    if main is None or not main.get("entries"):
        report.lack(f"the run's main chain {run_id} (its entries from run.opened to run.closed)")
        return
    entries = main["entries"]
    if int(entries[0].get("chain_seq", 0)) != 1:
        report.lack(f"the start of the main chain (entries #1 to #{int(entries[0].get('chain_seq', 1)) - 1})")
    if not proof.final.get(run_id):
        report.lack("the main chain's signed final head (the checkpoint that sealed the closed run)")
    elif len(entries) != proof.proven_to.get(run_id) or int(entries[-1].get("chain_seq", 0)) != proof.proven_to[run_id]:
        report.lack(f"main chain entries up to its signed final head #{proof.proven_to[run_id]}")
    kinds = [e.get("kind") for e in entries]
    if _OPENING not in kinds:
        report.lack(f"{_OPENING} (the run's first entry)")
    elif kinds[: kinds.index(_OPENING)] != ["start.decision"] * kinds.index(_OPENING):
        # Only the start's own authorization (`start.decision`, recorded as the run opens) may come first.
        report.problems.append(f"the main chain does not begin with {_OPENING}")
    if _CLOSING not in kinds:
        report.lack(f"{_CLOSING} (the run's closing entry)")


def _check_referenced_approvals(entries: list[dict[str, Any]], report: BundleReport) -> None:
    """Each decision that asked for approval has its request; each approval a decision counted has
    its accepted record (same request, same approver)."""
    requested = set()
    accepted = set()
    for e in entries:
        if e["kind"] == "approval.requested":
            requested.add(str(json.loads(e["data"]).get("decision_id")))
        elif e["kind"] == "approval.accepted":
            d = json.loads(e["data"])
            accepted.add((str(d.get("request_id")), str(d.get("approver"))))
    for e in entries:
        if e["kind"] != "decision":
            continue
        d = json.loads(e["data"])
        if d.get("outcome") == "approval" and str(d.get("decision_id")) not in requested:
            report.lack(f"approval.requested of decision {d.get('decision_id')}")
        for approval in (d.get("request") or {}).get("approvals") or []:
            statement = (approval.get("statement") or {}) if isinstance(approval, dict) else {}
            request_id = str((statement.get("fields") or {}).get("request_id"))
            person = str(statement.get("person"))
            if (request_id, person) not in accepted:
                report.lack(
                    f"approval.accepted of request {request_id} by {person} (counted by decision {d.get('decision_id')})"
                )


def write_bundle(bundle: dict[str, Any], path: str) -> None:
    # Evidence (and possibly regulated data): this OS user's only.
    write_private(Path(path), json.dumps(bundle, indent=1, sort_keys=True))
