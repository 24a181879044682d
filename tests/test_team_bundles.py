"""Team bundles (issue 32, part 1): each team's policies in its own Cedar namespace, deciding only
its own agents' tools; a bundle that reaches outside its namespace is refused when built. Pure."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from lockgate.demo import DEMO_AGENT_MODULES
from lockgate.errors import PolicyError
from lockgate.gates.bundles import TeamBundle, build_team_bundle, rebuild
from lockgate.gates.engine import tool_entities
from lockgate.policytest import load_cases, run_cases
from lockgate.spec import AgentRegistry, load_agents
from lockgate.teambundles import load_local_teams

BUNDLES = Path(__file__).parent / "policybundles"


def files(team: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in (BUNDLES / team).iterdir() if p.is_file()}


def test_each_teams_bundle_passes_its_own_tests_in_its_namespace() -> None:
    agents = load_agents(DEMO_AGENT_MODULES, entry_points=False)
    for team in ("support-platform", "sre-platform"):
        bundle = build_team_bundle(files(team)).with_entities(tool_entities(agents.agents()))
        assert isinstance(bundle, TeamBundle) and bundle.team == team
        results = run_cases(bundle, agents, load_cases(BUNDLES / team))
        assert results and all(r.passed for r in results), [r.problems for r in results if not r.passed]


def test_a_bundle_naming_another_namespace_or_plain_actions_is_refused() -> None:
    base = files("support-platform")
    reach = dict(base)
    reach["evil.cedar"] = '@id("evil")\npermit (principal, action == SrePlatform::Action::"host.release", resource);\n'
    with pytest.raises(PolicyError) as err:
        build_team_bundle(reach)
    assert any("outside the team's namespace SupportPlatform" in p for p in err.value.problems), err.value.problems
    plain = dict(base)
    plain["evil.cedar"] = '@id("evil")\npermit (principal == Agent::"incident-agent", action, resource);\n'
    with pytest.raises(PolicyError) as err:
        build_team_bundle(plain)
    assert any("Agent" in p and "outside" in p for p in err.value.problems), err.value.problems
    schema = dict(base)
    schema["schema.cedarschema"] = "entity Agent;\n" + base["schema.cedarschema"]
    with pytest.raises(PolicyError):
        build_team_bundle(schema)
    owners = dict(base)
    owners["bundle.json"] = '{"team": "support-platform", "namespace": "SupportPlatform", "owners": "mallorys"}'
    with pytest.raises(PolicyError):
        build_team_bundle(owners)


def test_the_recorded_content_rebuilds_the_same_team_bundle() -> None:
    bundle = build_team_bundle(files("sre-platform"))
    content = {
        "policies": bundle.sources,
        "schema": bundle.schema_text,
        "entities": bundle.entities_json,
        "namespace": bundle.namespace,
        "team": bundle.team,
    }
    again = rebuild(content)
    assert isinstance(again, TeamBundle) and again.hash == bundle.hash and again.namespace == "SrePlatform"


def _two_team_folders(target: Path) -> None:
    for team in ("support-platform", "sre-platform"):
        shutil.copytree(BUNDLES / team, target / team)


def test_a_worker_reads_only_its_teams_folder_and_ignores_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dev mode's team folders: a worker hosting only refund-agent never reads sre-platform's
    policies, even broken ones naming actions it does not know (the crash of issue 32)."""
    agents = load_agents(DEMO_AGENT_MODULES, entry_points=False)
    refund = agents.get("refund-agent")
    assert refund is not None
    _two_team_folders(tmp_path)
    (tmp_path / "sre-platform" / "broken.cedar").write_text(
        '@id("x")\npermit (principal, action == SrePlatform::Action::"not.hosted.anywhere", resource);\n'
    )
    caplog.set_level(logging.INFO, logger="lockgate.policy")
    loaded = load_local_teams(tmp_path, AgentRegistry([refund]))
    assert list(loaded) == ["support-platform"] and loaded["support-platform"].namespace == "SupportPlatform"
    assert [r.getMessage() for r in caplog.records] == [
        "policy folder sre-platform (team sre-platform) ignored: this worker hosts none of its agents"
    ]
    # The worker hosting sre-platform's agent is told exactly what is wrong, with file and line.
    incident = agents.get("incident-agent")
    assert incident is not None
    with pytest.raises(PolicyError) as err:
        load_local_teams(tmp_path, AgentRegistry([incident]))
    assert any(p.startswith("sre-platform/broken.cedar:1:") for p in err.value.problems), err.value.problems
