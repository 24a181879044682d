"""`lockgate policy publish | sign | promote | rollback | shadow | status | shadow-report`.

Thin shells over `activities.policystore.PolicyStore`: each act is signed by the logged-in person
with their own Transit key (as approvals are); workers verify every signature before they use a
bundle. What this command shows of signatures is what the rows claim; `status` also shows what each
worker verified and loaded (its heartbeat).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lockgate.config import Settings
from lockgate.errors import PolicyError, UserError
from lockgate.people import Act

__all__ = ["SUPPLY_ACTIONS", "cmd_policy_supply", "read_bundle_dir"]

SUPPLY_ACTIONS = ("publish", "sign", "promote", "rollback", "shadow", "status", "shadow-report")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def read_bundle_dir(directory: Path) -> dict[str, str]:
    """A team bundle's files: bundle.json, *.cedar, schema.cedarschema, entities.json, tests."""
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory")
    wanted = (".cedar", ".cedarschema", ".json", ".yaml", ".yml")
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in wanted}


def _store(settings: Settings) -> Any:
    from lockgate.activities.policystore import PolicyStore
    from lockgate.verify import open_ledger

    return PolicyStore(open_ledger(settings), quorum=settings.policy_quorum, claimed=True)


def _owner(settings: Settings, team: str) -> Any:
    from lockgate.gates.bundles import owners_group
    from lockgate.identity import load_session

    session = load_session(settings)
    # A courtesy check (workers verify every signature and the group themselves); a group the
    # person's Vault policy may not read by name shows as "group:<id>" and is given the benefit.
    unread = any(g.startswith("group:") for g in session.groups)
    if owners_group(team) not in session.groups and not unread:
        raise UserError(f"{session.name} is not in {owners_group(team)} (the owners of team {team}'s policies)")
    return session


def _signed(settings: Settings, team: str, act: Act, fields: dict[str, Any]) -> Any:
    from lockgate.identity import sign

    return sign(_owner(settings, team), act, fields)


def _diff(old: dict[str, str] | None, new: dict[str, str]) -> dict[str, Any]:
    """Which policy ids a publication adds, removes and changes against the bundle in force."""
    from lockgate.gates.bundles import build_team_bundle

    after = {s.policy_id: s.text for s in build_team_bundle(new).statements}
    before: dict[str, str] = {}
    if old is not None:
        try:
            before = {s.policy_id: s.text for s in build_team_bundle(old).statements}
        except PolicyError:
            before = {}
    return {
        "against": "in force" if old is not None else "nothing in force",
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
    }


def _tests_pass(directory: Path) -> None:
    """The bundle's own test cases (`*.tests.yaml` beside its policies) must pass before it is
    published (with the agents this shell knows; a bundle without cases publishes as is)."""
    from lockgate.policies import load_bundle
    from lockgate.policycli import agents_for_policies
    from lockgate.policytest import load_cases, run_cases

    cases = load_cases(directory)
    if not cases:
        return
    agents = agents_for_policies()
    known = [c for c in cases if agents.get(c.agent) is not None]
    failed = [r for r in run_cases(load_bundle(directory, agents), agents, known) if not r.passed]
    if failed:
        raise UserError(
            f"not published: {len(failed)} of the bundle's tests fail, e.g. {failed[0].case.where}: "
            f"{failed[0].case.name} ({'; '.join(failed[0].problems)})"
        )


def _in_force(store: Any, team: str) -> Any:
    from lockgate.activities.policystore import Refusal

    try:
        return store.in_force(team)
    except Refusal:
        return None


def _need(value: str | None, what: str) -> str:
    if not value:
        raise UserError(f"this command needs {what}")
    return value


def cmd_policy_supply(args: argparse.Namespace, settings: Settings) -> int:
    store = _store(settings)
    action = args.action
    if action == "status":
        return _status(store, args)
    if action == "shadow-report":
        return _shadow_report(store, args)
    team = _need(args.team, "--team TEAM")
    if action == "publish":
        from lockgate.gates.bundles import artifact_of

        directory = Path(_need(args.dir, "the bundle's directory"))
        try:
            artifact = artifact_of(read_bundle_dir(directory))
        except PolicyError as err:
            raise PolicyError([f"{directory / p}" for p in err.problems]) from None
        if artifact["team"] != team:
            raise UserError(f"{directory}/bundle.json names team {artifact['team']!r}, not {team!r}")
        _tests_pass(directory)
        current = _in_force(store, team)
        diff = _diff(current.files if current else None, artifact["files"])
        signed = _signed(settings, team, "policy-sign", {"team": team, "hash": artifact["hash"]})
        store.publish(artifact, signed, diff)
        out = {"team": team, "hash": artifact["hash"], "by": signed.statement.person, "diff": diff}
        if args.json:
            _print_json(out)
        else:
            print(
                f"published {team} bundle {artifact['hash']} (signed by {signed.statement.person}; "
                f"+{len(diff['added'])} -{len(diff['removed'])} ~{len(diff['changed'])} policies); "
                f"{settings.policy_quorum} owners must sign it: lockgate policy sign {artifact['hash']} --team {team}"
            )
        return 0
    if action == "sign":
        bundle_hash = _need(args.dir, "the bundle's HASH")
        if store.files(team, bundle_hash) is None:
            raise UserError(f"no published {team} bundle {bundle_hash}")
        signed = _signed(settings, team, "policy-sign", {"team": team, "hash": bundle_hash})
        store.sign(team, bundle_hash, signed)
        return _said(args, {"team": team, "hash": bundle_hash, "signed_by": store.signers(team, bundle_hash)})
    if action in ("promote", "rollback"):
        if action == "promote":
            bundle_hash = _need(args.dir, "the bundle's HASH")
        else:
            bundle_hash = _previous(store, team)
        if store.files(team, bundle_hash) is None:
            raise UserError(f"no published {team} bundle {bundle_hash}")
        switches = store.switches(team)
        last = max(switches, key=lambda s: int(s.get("seq", 0)), default=None)
        if last is not None and last.get("hash") == bundle_hash and last.get("kind") == action:
            seq = int(last["seq"])  # another owner's pending switch: co-sign it
        else:
            seq = (int(last["seq"]) if last else 0) + 1
        fields = {"team": team, "seq": seq, "hash": bundle_hash, "kind": action}
        signed = _signed(settings, team, "policy-switch", fields)
        store.switch(team, seq, bundle_hash, action, signed)
        now = _in_force(store, team)
        done = now is not None and now.seq == seq
        return _said(args, {**fields, "in_force": done, "signed_by": list(now.signers) if done and now else []})
    if action == "shadow":
        bundle_hash = "" if args.stop else _need(args.dir, "the candidate bundle's HASH (or --stop)")
        if bundle_hash and store.files(team, bundle_hash) is None:
            raise UserError(f"no published {team} bundle {bundle_hash}")
        signed = _signed(settings, team, "policy-shadow", {"team": team, "hash": bundle_hash})
        store.shadow(team, bundle_hash, signed)
        return _said(args, {"team": team, "shadow": bundle_hash or None})
    raise UserError(f"unknown policy action {action!r}")


def _said(args: argparse.Namespace, out: dict[str, Any]) -> int:
    if args.json:
        _print_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def _previous(store: Any, team: str) -> str:
    """The bundle in force before the one in force now (what a rollback switches back to)."""
    now = _in_force(store, team)
    if now is None:
        raise UserError(f"team {team} has no bundle in force to roll back")
    made: dict[int, tuple[str, set[str]]] = {}
    for s in store.switches(team):
        made.setdefault(int(s["seq"]), (str(s["hash"]), set()))[1].add(str(s.get("by")))
    for seq in sorted(made, reverse=True):
        bundle_hash, people = made[seq]
        if seq < now.seq and bundle_hash != now.hash and len(people) >= store.quorum:
            return bundle_hash
    raise UserError(f"team {team} has no earlier bundle to roll back to")


def _status(store: Any, args: argparse.Namespace) -> int:
    teams = [args.team] if args.team else store.teams()
    rows = []
    for team in teams:
        now = _in_force(store, team)
        shadow = store.shadow_of(team)
        pubs = store.publications(team)
        rows.append(
            {
                "team": team,
                "in_force": now.hash if now else None,
                "switch": now.seq if now else None,
                "kind": now.kind if now else None,
                "signed_by": list(now.signers) if now else [],
                "shadow": shadow[0] if shadow else None,
                "published": [
                    {"hash": h, "by": p.get("by"), "at": p.get("at"), "signers": store.signers(team, h)}
                    for h, p in pubs.items()
                ],
            }
        )
    workers = store.heartbeats()
    if args.json:
        _print_json({"teams": rows, "workers": workers})
        return 0
    for r in rows:
        force = f"{r['in_force'][:12]} (switch {r['switch']}, {r['kind']} by {', '.join(r['signed_by'])})"
        print(f"team {r['team']}: in force {force if r['in_force'] else 'none (local policies in dev mode)'}")
        if r["shadow"]:
            print(f"  shadow {r['shadow'][:12]}")
        for p in r["published"]:
            print(f"  published {p['hash'][:12]} by {p['by']} at {p['at']}; signed by {', '.join(p['signers'])}")
    for worker, beat in sorted(workers.items()):
        loaded = ", ".join(f"{t}={h[:18]}" for t, h in sorted(beat.get("bundles", {}).items()))
        problems = "; ".join(f"{t}: {p}" for t, p in beat.get("problems", {}).items())
        print(f"worker {worker} at {beat['at']}: {loaded}" + (f"  PROBLEMS {problems}" if problems else ""))
    return 0


def _shadow_report(store: Any, args: argparse.Namespace) -> int:
    rows = store.shadow_decisions(args.team)
    if args.dir:
        rows = [r for r in rows if str(r.get("shadow_hash", "")).startswith(args.dir)]
    differ = [r for r in rows if r.get("differs")]
    if args.json:
        _print_json({"decisions": len(rows), "differ": len(differ), "differences": differ})
    else:
        for r in differ:
            print(
                f"{r['run_id']} step {r['step']} {r['tool']}: live {r['live_outcome']} "
                f"[{','.join(r['live_policies']) or '-'}] -> shadow {r['shadow_outcome']} "
                f"[{','.join(r['shadow_policies']) or '-'}]"
            )
        print(f"{len(differ)} of {len(rows)} live decisions would differ under the shadow bundle")
    return 1 if differ else 0
