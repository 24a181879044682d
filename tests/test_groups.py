"""Teams' own approver groups (issue 33.6): `lockgate groups` / `lockgate people` (and
`lockgate.teams.Directory`) create a group and change its members with the caller's own Vault token;
Vault decides who may. A person without that right changes nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

from tests.support.stack import as_person, run_cli


async def _cli(env: dict[str, str], *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    if token is None:
        return await asyncio.to_thread(run_cli, env, *args)
    return await asyncio.to_thread(run_cli, env, *args, "--vault-token-stdin", input=token + "\n")


async def test_a_team_creates_its_group_and_manages_members(env: dict[str, str]) -> None:
    root = env["VAULT_TOKEN"]
    group = f"it-security-{uuid.uuid4().hex[:6]}"
    created = await _cli(env, "groups", "create", group, token=root)
    assert created.returncode == 0 and f"group {group} created" in created.stdout, created.stderr
    again = await _cli(env, "groups", "create", group, token=root)
    assert again.returncode == 0 and "already exists" in again.stdout

    added = await _cli(env, "groups", "add", group, "carol", "dave", "--json", token=root)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"group": group, "members": ["carol", "dave"]}
    listed = json.loads((await _cli(env, "groups", "--json", token=root)).stdout)
    assert listed[group] == ["carol", "dave"] and listed["finance"] == ["alice", "bob"]
    people = json.loads((await _cli(env, "people", "--json", token=root)).stdout)
    assert group in people["carol"] and group not in people["mallory"]

    # The member's own token now reads the group's name: what approvals check (whoami shows it).
    whoami = await _cli(as_person(env, "carol"), "whoami", "--json")
    assert group in json.loads(whoami.stdout)["groups"], whoami.stdout

    removed = await _cli(env, "groups", "remove", group, "dave", "--json", token=root)
    assert json.loads(removed.stdout)["members"] == ["carol"]
    unknown = await _cli(env, "groups", "add", group, "nobody-here", token=root)
    assert unknown.returncode == 2 and "no such person: nobody-here" in unknown.stderr
    missing = await _cli(env, "groups", "add", f"{group}-x", "carol", token=root)
    assert missing.returncode == 2 and "no such group" in missing.stderr
    # The session's people keep their seed groups for the tests that follow.
    assert (await _cli(env, "groups", "remove", group, "carol", token=root)).returncode == 0


async def test_a_person_cannot_put_herself_in_an_approver_group(env: dict[str, str]) -> None:
    mallory = as_person(env, "mallory")
    for args in (["groups", "add", "finance", "mallory"], ["groups", "create", "mallory-approves"], ["groups"]):
        refused = await _cli(mallory, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert "Vault refused" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    listed = json.loads((await _cli(env, "groups", "--json", token=env["VAULT_TOKEN"])).stdout)
    assert listed["finance"] == ["alice", "bob"] and "mallory-approves" not in listed
    # Not logged in, no token: refused before Vault is asked.
    nobody = await _cli({**env, "LOCKGATE_OPERATOR_TOKEN": "", "LOCKGATE_STATE_DIR": "/nonexistent"}, "groups")
    assert nobody.returncode == 2 and "not logged in" in nobody.stderr


async def test_a_token_with_the_group_admin_policy_is_enough(env: dict[str, str]) -> None:
    """What `lockgate.teams.group_admin_policy()` says such a token needs is all it needs."""
    import hvac

    from lockgate.teams import group_admin_policy

    root = hvac.Client(url=env["VAULT_ADDR"], token=env["VAULT_TOKEN"])
    root.sys.create_or_update_policy(name="lockgate-group-admin", policy=group_admin_policy())
    admin = root.auth.token.create(policies=["lockgate-group-admin"], ttl="10m", no_parent=True)["auth"]["client_token"]
    group = f"platform-{uuid.uuid4().hex[:6]}"
    assert (await _cli(env, "groups", "create", group, token=admin)).returncode == 0
    added = await _cli(env, "groups", "add", group, "frank", "--json", token=admin)
    assert added.returncode == 0 and json.loads(added.stdout)["members"] == ["frank"], added.stderr
    whoami = await _cli(as_person(env, "frank"), "whoami", "--json")
    assert group in json.loads(whoami.stdout)["groups"], whoami.stdout
    assert (await _cli(env, "groups", "remove", group, "frank", token=admin)).returncode == 0
