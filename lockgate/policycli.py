"""`lockgate policy test | diff | schema`: thin shells over `lockgate.policytest` and `lockgate.schema`.

Exit codes as every command: 0 done, 1 a test failed / a decision would change, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from lockgate.config import Settings
from lockgate.errors import PolicyError, UserError
from lockgate.spec import AgentRegistry

__all__ = ["agents_for_policies", "cmd_policy_more"]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def agents_for_policies() -> AgentRegistry:
    """The loaded agents (LOCKGATE_AGENT_MODULES), or the demo agents when none are configured."""
    from lockgate.spec import load_agents, registry

    if registry.agents():
        return registry
    from lockgate.demo import DEMO_AGENT_MODULES

    return load_agents(DEMO_AGENT_MODULES, entry_points=False)


def cmd_policy_more(args: argparse.Namespace, settings: Settings) -> int:
    from lockgate.policysupply import SUPPLY_ACTIONS, cmd_policy_supply

    if args.action in SUPPLY_ACTIONS:
        return cmd_policy_supply(args, settings)
    if args.action == "schema":
        from lockgate.policies import mcp_args_types
        from lockgate.schema import generate_schema

        agents = agents_for_policies()
        directory = Path(args.dir) if args.dir else settings.policy_dir
        print(generate_schema(agents.agents(), mcp_args_types(directory, agents)), end="")
        return 0
    if args.action == "test":
        return _test(Path(args.dir) if args.dir else settings.policy_dir, args.json)
    if not args.dir:
        raise UserError("policy diff needs CANDIDATE_DIR (the candidate policy directory)")
    return _diff(Path(args.dir), settings, args.json)


def _bundle(directory: Path, agents: AgentRegistry) -> Any:
    from lockgate.policies import load_bundle

    try:
        return load_bundle(directory, agents)
    except PolicyError as err:
        raise PolicyError([f"{directory / p}" for p in err.problems]) from None


def _test(directory: Path, as_json: bool) -> int:
    from lockgate.policytest import load_cases, run_cases

    agents = agents_for_policies()
    bundle = _bundle(directory, agents)
    cases = load_cases(directory)
    if not cases:
        raise UserError(f"{directory}: no policy test cases (*.tests.yaml, *.tests.json)")
    results = run_cases(bundle, agents, cases)
    failed = [r for r in results if not r.passed]
    if as_json:
        _print_json(
            {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "bundle": bundle.hash,
                "cases": [
                    {
                        "name": r.case.name,
                        "where": r.case.where,
                        "passed": r.passed,
                        "outcome": r.decision.outcome if r.decision else None,
                        "policy_ids": list(r.decision.policy_ids) if r.decision else [],
                        "problems": list(r.problems),
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            mark = "ok  " if r.passed else "FAIL"
            print(f"{mark} {r.case.where}: {r.case.name}")
            for problem in r.problems:
                print(f"       {problem}")
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({directory}, bundle {bundle.hash[:12]})")
    return 1 if failed else 0


def _diff(candidate_dir: Path, settings: Settings, as_json: bool) -> int:
    from lockgate.activities.ledger import Ledger
    from lockgate.policytest import diff_decisions

    agents = agents_for_policies()
    candidate = _bundle(candidate_dir, agents)
    ledger = Ledger(settings.ledger_url)
    try:
        entries = [
            (e.run_id, datetime.fromisoformat(e.at), json.loads(e.data))
            for e in ledger.entries()
            if e.kind == "decision"
        ]
    finally:
        ledger.dispose()
    report = diff_decisions(entries, candidate, agents)
    if as_json:
        _print_json(
            {
                "candidate": candidate.hash,
                "checked": report.checked,
                "skipped": report.skipped,
                "changed": len(report.changes),
                "by_policy": report.by_policy(),
                "by_transition": report.by_transition(),
                "changes": [c.as_dict() for c in report.changes],
            }
        )
    else:
        for c in report.changes:
            ids = ", ".join(c.after_policies or c.before_policies) or "-"
            print(f"{c.run_id} step {c.step} {c.tool}: {c.before} -> {c.after}  [{ids}]")
        for pid, n in report.by_policy().items():
            print(f"  {pid}: {n} changed")
        print(
            f"{len(report.changes)} of {report.checked} recorded decisions would change under {candidate_dir} "
            f"(bundle {candidate.hash[:12]}); {report.skipped} without a recorded request"
        )
    return 1 if report.changes else 0
