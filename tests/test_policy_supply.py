"""Policies as a supply chain (issue 32), on the real stack: two teams' signed bundles on one cluster,
each worker hosting one team's agent; publication, owners' quorum, promotion and rollback through
the CLI; a tampered bundle, an under-signed one and a database write switching bundles refused; a
rollout switched mid-traffic; a shadow bundle that would deny, reported without denying.

The cluster has its own ledger (a file of this module): the session's workers never see these
bundles."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from lockgate import worker
from lockgate.activities.ledger import Ledger
from lockgate.activities.policystore import PolicyStore
from lockgate.config import Settings
from lockgate.demo import DEMO_AGENT_MODULES
from lockgate.gates.bundles import TeamBundle
from lockgate.identity import login_userpass, sign
from lockgate.models import GateRequest, RunInput, args_digest
from lockgate.people import FieldValue
from lockgate.spec import AgentRegistry, load_agents
from lockgate.teambundles import DENY_ALL
from tests.support.stack import Outside, cli, finish, ledger_events, pending_request, start
from tests.support.vault import read_data

BUNDLES = Path(__file__).parent / "policybundles"
SP, SRE = "support-platform", "sre-platform"
OWNERS = {SP: ("alice", "bob"), SRE: ("carol", "dave")}


# Groups this module adds to the session's Vault (and removes again: other tests read people's groups).
GROUPS = {
    **{f"{team}-policy-owners": people for team, people in OWNERS.items()},
    "tenant-acme": ("erin",),
    "tenant-globex": ("erin",),
}


def _groups(outside: Outside, present: bool) -> None:
    for group, people in GROUPS.items():
        if not present:
            outside.vault.delete(f"identity/group/name/{group}")
            continue
        ids = [read_data(outside.vault, f"identity/entity/name/{p}")["id"] for p in people]
        outside.vault.write_data(f"identity/group/name/{group}", data={"member_entity_ids": ids})


class Cluster:
    def __init__(self, settings: Settings, env: dict[str, str], base: Path, client: Client, outside: Outside) -> None:
        self.env, self.base, self.client, self.outside = env, base, client, outside
        self.settings = settings
        self.deps: dict[str, Any] = {}
        self.queues: dict[str, str] = {}
        self.tokens: dict[str, str] = {}

    def as_(self, name: str) -> dict[str, str]:
        if name not in self.tokens:
            session = login_userpass(self.env["VAULT_ADDR"], name, self.env["LOCKGATE_DEV_PASSWORD"])
            self.tokens[name] = session.token
        return {**self.env, "LOCKGATE_OPERATOR_TOKEN": self.tokens[name]}

    async def policy(self, who: str, *args: str, ok: bool = True) -> dict[str, Any]:
        done = await cli(self.as_(who), "policy", *args, "--json")
        if ok:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {"rc": done.returncode}

    async def release(self, team: str, directory: Path) -> str:
        """Published by the first owner, signed by the second, promoted by both: in force."""
        first, second = OWNERS[team]
        published = await self.policy(first, "publish", str(directory), "--team", team)
        bundle_hash = published["hash"]
        await self.policy(second, "sign", bundle_hash, "--team", team)
        await self.policy(first, "promote", bundle_hash, "--team", team)
        done = await self.policy(second, "promote", bundle_hash, "--team", team)
        assert done["in_force"] is True, done
        return bundle_hash

    def bundle_of(self, team: str, agent: str) -> Any:
        deps = self.deps[team]
        deps.teams.refresh(force=True)
        return deps.current_bundle(agent)


def _variant(base: Path, team: str, name: str, extra: str) -> Path:
    target = base / f"{team}-{name}"
    shutil.copytree(BUNDLES / team, target)
    (target / "extra.cedar").write_text(extra)
    return target


@pytest.fixture(scope="module")
async def cluster(
    settings: Settings, env: dict[str, str], client: Client, outside: Outside, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    _groups(outside, True)
    base = tmp_path_factory.mktemp("supply")
    url = f"sqlite:///{base / 'ledger.db'}"
    env = {**env, "LOCKGATE_LEDGER_URL": url}
    everyone = load_agents(DEMO_AGENT_MODULES, entry_points=False)
    c = Cluster(settings.model_copy(update={"ledger_url": url}), env, base, client, outside)
    workers = []
    for team, agent in ((SP, "refund-agent"), (SRE, "incident-agent")):
        spec = everyone.get(agent)
        assert spec is not None and spec.owner == team
        queue = f"supply-{team}-{uuid.uuid4().hex[:6]}"
        deps = worker.build_deps(c.settings.model_copy(update={"task_queue": queue}), AgentRegistry([spec]))
        c.deps[team], c.queues[team] = deps, queue
        workers.append(worker.build_worker(client, deps, task_queue=queue))
    for w in workers:
        await w.__aenter__()
    try:
        yield c
    finally:
        for w in workers:
            await w.__aexit__(None, None, None)
        for deps in c.deps.values():
            deps.ledger.dispose()
        _groups(outside, False)


async def _refund(c: Cluster, cents: int = 1500) -> tuple[str, BaseException | None]:
    with c.outside.pg() as conn:  # the order fully refundable again
        conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
    handle = await start(
        c.client, c.queues[SP], "refund-agent", {"order_id": "A-1001", "amount_cents": cents, "reason": "supply"}
    )
    return handle.id, await finish(handle)


def _hashes(deps: Any, run_id: str) -> list[str]:
    return [d["bundle_hash"] for d in ledger_events(deps, run_id, "decision")]


async def test_two_teams_signed_bundles_each_worker_deciding_only_its_own(
    cluster: Cluster, worker_running: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = cluster
    caplog.set_level(logging.INFO, logger="lockgate.policy")
    sp = await c.release(SP, BUNDLES / SP)
    sre = await c.release(SRE, BUNDLES / SRE)
    # Each worker loads its own team's bundle and says, once, that it ignores the other's.
    assert isinstance(c.bundle_of(SP, "refund-agent"), TeamBundle) and c.bundle_of(SP, "refund-agent").hash == sp
    assert c.bundle_of(SRE, "incident-agent").hash == sre
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert any(f"team {SRE} ignored" in m for m in ignored) and any(f"team {SP} ignored" in m for m in ignored)
    # Real runs: every decision names its team's bundle.
    run_id, failure = await _refund(c)
    assert failure is None
    assert set(_hashes(c.deps[SP], run_id)) == {sp}
    handle = await start(c.client, c.queues[SRE], "incident-agent", {"host_id": "web-2"})
    req = await pending_request(handle)
    assert req.tool == "host.quarantine" and req.group == "sre-oncall"  # the SRE bundle's forbid
    assert set(_hashes(c.deps[SRE], handle.id)) == {sre}
    await handle.cancel()
    await finish(handle)
    # status: what is in force, and what each worker verified and loaded (its heartbeat).
    status = await c.policy("alice", "status")
    forced = {t["team"]: t["in_force"] for t in status["teams"]}
    assert forced == {SP: sp, SRE: sre}
    loaded = {w: b["bundles"] for w, b in status["workers"].items()}
    assert {c.deps[SP].teams.worker, c.deps[SRE].teams.worker} <= set(loaded) or len(loaded) >= 1
    beats = [b for b in loaded.values() if b.get(SP) == sp or b.get(SRE) == sre]
    assert beats, loaded
    # Publication recorded: who, what hash, what changed.
    store = PolicyStore(c.deps[SP].ledger)
    pub = store.publications(SP)[sp]
    assert pub["by"] == "alice" and "sp.refund-agent.tools" in pub["diff"]["added"]


async def test_rollout_mid_traffic_rollback_and_refusals(cluster: Cluster, worker_running: str) -> None:
    c = cluster
    deps = c.deps[SP]
    v1 = c.bundle_of(SP, "refund-agent").hash
    if not isinstance(c.bundle_of(SP, "refund-agent"), TeamBundle):
        v1 = await c.release(SP, BUNDLES / SP)  # this test alone
    v2_dir = _variant(
        c.base,
        SP,
        "v2",
        '@id("sp.v2.marker")\npermit (principal, action == SupportPlatform::Action::"orders.lookup", resource);\n',
    )
    # Traffic on the worker while the owners switch the bundle in force.
    traffic: list[str] = []
    switched, first = asyncio.Event(), asyncio.Event()

    async def drive() -> None:
        # Until two runs after the switch were decided under the new bundle (workers look for a
        # switch at most once a second, so a run or two right after it may still be decided by v1).
        after = 0
        while after < 2:
            run_id, failure = await _refund(c, 1200)
            assert failure is None
            traffic.append(run_id)
            first.set()
            if switched.is_set() and set(_hashes(deps, run_id)) == {v2_hash[0]}:
                after += 1
            assert len(traffic) < 60, "the switch never took effect"

    v2_hash: list[str] = []
    driving = asyncio.create_task(drive())
    await first.wait()  # one run decided under v1 before the switch
    v2 = await c.release(SP, v2_dir)
    v2_hash.append(v2)
    switched.set()
    await driving
    decided = sorted(
        (e.at, json.loads(e.data)["bundle_hash"])
        for run_id in traffic
        for e in deps.ledger.entries(run_id)
        if e.kind == "decision"
    )
    seen = [h for _, h in decided]
    # Every decision names exactly one bundle, the ledger holds that bundle's content, and the
    # worker switched once: v1 up to a point, v2 from then on.
    assert set(seen) == {v1, v2}, seen
    assert seen == [v1] * seen.count(v1) + [v2] * seen.count(v2), seen
    for h in set(seen):
        assert deps.ledger.bundle(h) is not None
    run_id, _ = await _refund(c, 1200)
    assert set(_hashes(deps, run_id)) == {v2}
    assert "sp.v2.marker" in [p for d in ledger_events(deps, run_id, "decision") for p in d["policy_ids"]]

    # Rollback: the owners' quorum switches back to v1, atomically, recorded.
    await c.policy("alice", "rollback", "--team", SP)
    back = await c.policy("bob", "rollback", "--team", SP)
    assert back["hash"] == v1 and back["in_force"] is True
    assert c.bundle_of(SP, "refund-agent").hash == v1

    # Someone with database write access switches to v2 with no owner's signature for it: a row
    # copying bob's signature of an earlier switch. Nothing changes; the refusal is recorded.
    store = PolicyStore(Ledger(c.settings.ledger_url))
    old = next(s for s in store.switches(SP) if s["hash"] == v2)
    forged = {**old, "seq": 99}
    forged.pop("at")
    store._ledger.append("policy.switch:forged", f"policy:{SP}", "policy.switch", forged)
    assert c.bundle_of(SP, "refund-agent").hash == v1
    refusals = [json.loads(e.data) for e in deps.ledger.entries_of_chains("policy:") if e.kind == "policy.refused"]
    assert any("does not count" in r["reason"] for r in refusals), refusals

    # A bundle only its publisher signed (quorum 2), switched in by both: refused, and the team's
    # agents are denied rather than decided under the old bundle.
    v3_dir = _variant(c.base, SP, "v3", '@id("sp.v3")\nforbid (principal, action, resource) when { false };\n')
    v3 = (await c.policy("alice", "publish", str(v3_dir), "--team", SP))["hash"]
    await c.policy("alice", "promote", v3, "--team", SP)
    await c.policy("bob", "promote", v3, "--team", SP)
    assert c.bundle_of(SP, "refund-agent") is DENY_ALL
    run_id, failure = await _refund(c, 1200)
    assert failure is not None
    refusals = [json.loads(e.data) for e in deps.ledger.entries_of_chains("policy:") if e.kind == "policy.refused"]
    assert any("signed by 1 of 2 owners" in r["reason"] for r in refusals), refusals

    # Signed by both, but its files edited in the database after signing: refused as tampered.
    await c.policy("bob", "sign", v3, "--team", SP)
    db = sqlite3.connect(c.settings.ledger_url.removeprefix("sqlite:///"))
    with db:
        row = db.execute(
            "SELECT rowid, data FROM ledger WHERE kind = 'policy.published' AND data LIKE ?", (f'%"{v3}"%',)
        ).fetchone()
        data = json.loads(row[1])
        data["files"]["extra.cedar"] = '@id("sp.v3")\npermit (principal, action, resource);\n'
        db.execute("UPDATE ledger SET data = ? WHERE rowid = ?", (json.dumps(data), row[0]))
    db.close()
    assert c.bundle_of(SP, "refund-agent") is DENY_ALL
    refusals = [json.loads(e.data) for e in deps.ledger.entries_of_chains("policy:") if e.kind == "policy.refused"]
    assert any("tampered" in r["reason"] for r in refusals), refusals
    # Back to v1 by the owners, which a later test starts from.
    await c.policy("alice", "promote", v1, "--team", SP)
    await c.policy("bob", "promote", v1, "--team", SP)
    assert c.bundle_of(SP, "refund-agent").hash == v1


async def test_deleting_the_newest_switch_brings_back_no_older_bundle(cluster: Cluster, worker_running: str) -> None:
    """Someone with database write access deletes the newest switch (and sets the chain's head row
    to match) to bring back the older, properly signed bundle: a worker that never saw the newer
    switch (a restart) must not take the older one. The signed checkpoint still counts the rows.
    (The other team's chain: the test above wrote rows no worker MACs there, and a chain holding
    such a row is never sealed again, so only its head row would count it.)"""
    c = cluster
    deps = c.deps[SRE]
    if not isinstance(c.bundle_of(SRE, "incident-agent"), TeamBundle):
        await c.release(SRE, BUNDLES / SRE)  # this test alone
    v1 = c.bundle_of(SRE, "incident-agent").hash
    path = c.settings.ledger_url.removeprefix("sqlite:///")
    db = sqlite3.connect(path)
    before = db.execute("SELECT size, head FROM ledger_heads WHERE chain = ?", (f"policy:{SRE}",)).fetchone()
    v2 = await c.release(
        SRE, _variant(c.base, SRE, "v2-del", '@id("sre.v2del")\nforbid (principal, action, resource) when { false };\n')
    )
    assert c.bundle_of(SRE, "incident-agent").hash == v2 != v1
    assert deps.ledger.seal() is not None  # a signed checkpoint counts the chain with the switch
    columns = [r[1] for r in db.execute("PRAGMA table_info(ledger)")]
    heads = db.execute("SELECT * FROM ledger_heads WHERE chain = ?", (f"policy:{SRE}",)).fetchone()
    gone = db.execute(
        "SELECT rowid, * FROM ledger WHERE chain = ? AND chain_seq > ?", (f"policy:{SRE}", before[0])
    ).fetchall()
    assert gone and any(json.loads(r[1 + columns.index("data")]).get("hash") == v2 for r in gone)
    with db:
        db.execute("DELETE FROM ledger WHERE chain = ? AND chain_seq > ?", (f"policy:{SRE}", before[0]))
        db.execute("UPDATE ledger_heads SET size = ?, head = ? WHERE chain = ?", (*before, f"policy:{SRE}"))
    try:
        restarted = PolicyStore(Ledger(c.settings.ledger_url))
        with pytest.raises(Exception, match="deleted or rewritten"):
            restarted.in_force(SRE)
        # The running worker: the team's agents are denied, not decided under v1; recorded.
        assert c.bundle_of(SRE, "incident-agent") is DENY_ALL
        refusals = [json.loads(e.data) for e in deps.ledger.entries_of_chains("policy:") if e.kind == "policy.refused"]
        assert any("deleted or rewritten" in r["reason"] for r in refusals), refusals
    finally:
        with db:  # the rows back as they were (later tests start from the owners' v1)
            db.execute("DELETE FROM ledger WHERE chain = ? AND chain_seq > ?", (f"policy:{SRE}", before[0]))
            marks = ",".join("?" * (len(columns) + 1))
            db.executemany(f"INSERT INTO ledger (rowid, {', '.join(columns)}) VALUES ({marks})", gone)
            db.execute("DELETE FROM ledger_heads WHERE chain = ?", (f"policy:{SRE}",))
            db.execute(f"INSERT INTO ledger_heads VALUES ({','.join('?' * len(heads))})", heads)
        db.close()
    await c.policy("carol", "promote", v1, "--team", SRE)
    await c.policy("dave", "promote", v1, "--team", SRE)
    assert c.bundle_of(SRE, "incident-agent").hash == v1


async def test_a_shadow_bundle_that_would_deny_is_reported_without_denying(
    cluster: Cluster, worker_running: str
) -> None:
    c = cluster
    strict = _variant(
        c.base,
        SP,
        "strict",
        '@id("sp.no-refunds")\nforbid (principal, action == SupportPlatform::Action::"refunds.issue", resource);\n',
    )
    # Its own tests still expect refunds to run: not published.
    refused = await cli(c.as_("alice"), "policy", "publish", str(strict), "--team", SP)
    assert refused.returncode == 2 and "not published" in refused.stderr, refused.stderr
    (strict / "refund-agent.tests.yaml").unlink()
    candidate = (await c.policy("alice", "publish", str(strict), "--team", SP))["hash"]
    await c.policy("alice", "shadow", candidate, "--team", SP)
    c.bundle_of(SP, "refund-agent")
    run_id, failure = await _refund(c, 1300)
    assert failure is None  # the live bundle decided: the refund ran
    report = await cli(c.as_("alice"), "policy", "shadow-report", "--team", SP, "--json")
    assert report.returncode == 1, report.stderr  # differences found
    found = json.loads(report.stdout)
    mine = [d for d in found["differences"] if d["run_id"] == run_id]
    assert [(d["tool"], d["live_outcome"], d["shadow_outcome"]) for d in mine] == [("refunds.issue", "allow", "deny")]
    assert mine[0]["shadow_hash"] == candidate and "sp.no-refunds" in mine[0]["shadow_policies"]
    # Stopping the shadow: later decisions are not shadowed.
    await c.policy("alice", "shadow", "--stop", "--team", SP)
    c.bundle_of(SP, "refund-agent")
    run_id, failure = await _refund(c, 1300)
    assert failure is None
    assert not [d for d in PolicyStore(c.deps[SP].ledger).shadow_decisions(SP) if d["run_id"] == run_id]


async def _tenant_refund(c: Cluster, tenant: str) -> tuple[str, BaseException | None]:
    with c.outside.pg() as conn:
        conn.execute("UPDATE refunds SET reversed_at = now() WHERE reversed_at IS NULL")
    data = {"order_id": "A-1001", "amount_cents": 1100, "reason": "tenant"}
    run_id = f"refund-agent-{uuid.uuid4().hex[:10]}"
    session = login_userpass(c.env["VAULT_ADDR"], "erin", c.env["LOCKGATE_DEV_PASSWORD"])
    fields: dict[str, FieldValue] = {
        "run_id": run_id,
        "agent": "refund-agent",
        "input_digest": args_digest(data),
        "tenant": tenant,
    }
    signed = await asyncio.to_thread(sign, session, "start", fields)
    handle = await c.client.start_workflow(
        "lockgate.agent",
        RunInput(agent="refund-agent", input=data, initiator="erin", start=signed),
        id=run_id,
        task_queue=c.queues[SP],
    )
    return run_id, await finish(handle)


async def test_a_tenant_from_the_signed_start_is_what_policies_see(cluster: Cluster, worker_running: str) -> None:
    c = cluster
    deps = c.deps[SP]
    # Orders A-* are tenant acme's: a run acting for another tenant may not refund them.
    only = _variant(
        c.base,
        SP,
        "tenants",
        '@id("sp.tenant.own-orders-only")\n'
        'forbid (principal, action == SupportPlatform::Action::"refunds.issue", resource)\n'
        'when { context.run.tenant != "" && context.run.tenant != "acme" };\n',
    )
    await c.release(SP, only)
    run_id, failure = await _tenant_refund(c, "acme")
    assert failure is None
    opened = ledger_events(deps, run_id, "run.opened")[0]
    assert opened["tenant"] == "acme"
    run_id, failure = await _tenant_refund(c, "globex")
    assert failure is not None
    denied = [d for d in ledger_events(deps, run_id, "decision") if d["tool"] == "refunds.issue"]
    assert denied and denied[0]["outcome"] == "deny" and denied[0]["policy_ids"] == ["sp.tenant.own-orders-only"]
    # A tenant the person is not in group tenant-<name> of: the run is refused at its start.
    run_id, failure = await _tenant_refund(c, "initech")
    assert failure is not None and "may not act for tenant 'initech'" in str(failure)
    # The workflow's claim of a tenant counts for nothing: the gate takes the verified start's.
    request = GateRequest.model_validate({**denied[0]["request"], "decision_id": f"{denied[0]['decision_id']}-claim"})
    assert request.state.tenant == "globex"  # what the gate saw: the verified start's tenant
    claim = request.model_copy(update={"state": request.state.model_copy(update={"tenant": "acme"})})
    decision = worker.build_governance(deps).decide(claim)
    assert decision.outcome == "deny" and decision.policy_ids == ("sp.tenant.own-orders-only",)


def test_a_worker_starts_and_reloads_beside_another_teams_broken_folder(settings: Settings, tmp_path: Path) -> None:
    """Dev mode: team folders in the local policies; a worker hosting refund-agent only starts and
    reloads whatever sre-platform's folder says, and a bad reload of its own team's folder is refused
    loudly, the last good bundle kept."""
    policies = tmp_path / "policies"
    shutil.copytree(settings.policy_dir, policies)
    for team in (SP, SRE):
        shutil.copytree(BUNDLES / team, policies / team)
    (policies / SRE / "broken.cedar").write_text(
        '@id("x")\npermit (principal, action == SrePlatform::Action::"nope", resource);\n'
    )
    refund = load_agents(DEMO_AGENT_MODULES, entry_points=False).get("refund-agent")
    assert refund is not None
    local = settings.model_copy(update={"policy_dir": policies, "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"})
    deps = worker.build_deps(local, AgentRegistry([refund]))
    try:
        first = deps.current_bundle("refund-agent")
        assert isinstance(first, TeamBundle) and first.team == SP
        (policies / SRE / "broken2.cedar").write_text("not cedar at all")
        assert deps.reload_policies() == []
        (policies / SP / "broken.cedar").write_text('@id("y")\npermit (principal, action == Action::"x", resource);\n')
        problems = deps.reload_policies()
        assert problems and any("support-platform/broken.cedar:1:" in p for p in problems), problems
        assert deps.current_bundle("refund-agent").hash == first.hash
    finally:
        deps.ledger.dispose()
