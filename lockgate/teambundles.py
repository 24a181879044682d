"""Which bundle decides each hosted agent, on a worker: its team's signed bundle in force, else
(dev mode only) the local policy folder.

A worker hosts some agents; each agent's `owner` is its team. For each team with a bundle in force
(`PolicyStore.in_force`, verified from owners' signatures) the worker loads that team's bundle
only if it hosts one of the team's agents, and logs one line for each team it ignores. A team's
bundle decides only its own agents (and, being in its own namespace, only its own tools). When the
bundle in force cannot be verified or built here, the team's agents are denied (fail closed) and
the refusal is recorded: a worker never goes on deciding under an older bundle unnoticed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lockgate.activities.policystore import PolicyStore, Refusal
from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle
from lockgate.gates.bundles import TeamBundle, build_team_bundle
from lockgate.gates.engine import evaluate, tool_entities
from lockgate.models import Decision, GateRequest
from lockgate.spec import AgentRegistry

__all__ = ["DENY_ALL", "TeamBundles", "load_local_teams", "worker_id"]

log = logging.getLogger("lockgate.policy")

# No policy: Cedar's default deny, for agents whose bundle cannot be had (fail closed).
DENY_ALL = PolicyBundle.build({})


def load_local_teams(policy_dir: Path, agents: AgentRegistry) -> dict[str, TeamBundle]:
    """Dev mode's unsigned team folders, `<policy_dir>/<folder>/bundle.json`: the bundles of the
    teams whose agents this worker hosts (one log line for each other team's, which is not read
    further: another team's policies can never stop this worker).

    Raises:
        PolicyError: a hosted team's folder is invalid (`folder/file:line: ...`), or two folders
            name the same team.
    """
    from lockgate.gates.bundles import BUNDLE_MANIFEST, TeamManifest

    hosted = {a.owner for a in agents.agents()}
    out: dict[str, TeamBundle] = {}
    for folder in (
        sorted(p for p in policy_dir.iterdir() if (p / BUNDLE_MANIFEST).is_file()) if policy_dir.is_dir() else []
    ):
        try:
            team = TeamManifest.parse((folder / BUNDLE_MANIFEST).read_text()).team
        except PolicyError as err:
            raise PolicyError([f"{folder.name}/{p}" for p in err.problems]) from None
        if team not in hosted:
            log.info("policy folder %s (team %s) ignored: this worker hosts none of its agents", folder.name, team)
            continue
        if team in out:
            raise PolicyError([f"{folder.name}/{BUNDLE_MANIFEST}:1: team {team} has another folder"])
        files = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}
        try:
            bundle = build_team_bundle(files)
        except PolicyError as err:
            raise PolicyError([f"{folder.name}/{p}" for p in err.problems]) from None
        out[team] = bundle.with_entities(tool_entities([a for a in agents.agents() if a.owner == team]))
    return out


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def team_content(bundle: TeamBundle) -> dict[str, object]:
    """What the ledger registers under the bundle's hash (replay rebuilds it: `gates.bundles.rebuild`)."""
    return {
        "policies": bundle.sources,
        "schema": bundle.schema_text,
        "entities": bundle.entities_json,
        "namespace": bundle.namespace,
        "team": bundle.team,
    }


class TeamBundles:
    """The bundles a worker decides with, refreshed from the ledger at most every `interval` s.

    Args:
        store: The policy chains, with the worker's verifier.
        agents: The hosted agents.
        local: The local policy folder's bundle (dev mode), or `DENY_ALL` (production).
        worker: This worker's name in heartbeats.
        interval: How stale the view of the ledger may be.
    """

    HEARTBEAT_SECONDS = 30.0

    def __init__(
        self,
        store: PolicyStore,
        agents: AgentRegistry,
        local: PolicyBundle,
        *,
        worker: str | None = None,
        interval: float = 1.0,
        local_teams: dict[str, TeamBundle] | None = None,
    ) -> None:
        self.store = store
        self._agents = agents
        self.local = local
        # Dev mode: unsigned team folders beside the local policies (`policies/<team>/bundle.json`).
        self.local_teams = dict(local_teams or {})
        self.worker = worker or worker_id()
        self._interval = interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._beat = 0.0
        self._bundles: dict[str, TeamBundle] = {}
        self._seqs: dict[str, int] = {}
        self._broken: dict[str, str] = {}
        self._ignored: set[str] = set()
        self._shadows: dict[str, TeamBundle] = {}
        self._heads: tuple[tuple[str, int, str], ...] | None = None

    @property
    def hosted_teams(self) -> set[str]:
        return {a.owner for a in self._agents.agents()}

    def bundle_for(self, agent: str | None = None) -> PolicyBundle:
        """The bundle that decides `agent`'s calls and starts (None: the local one)."""
        self.refresh()
        spec = self._agents.get(agent) if agent else None
        if spec is None:
            return self.local
        team = spec.owner
        if team in self._broken:
            return DENY_ALL
        return self._bundles.get(team) or self.local_teams.get(team) or self.local

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self._interval:
            return
        with self._lock:
            if not force and now - self._checked < self._interval:
                return
            self._checked = now
            changed = False
            try:
                heads = self.store.heads()
                quiet = not heads or now - self._beat <= self.HEARTBEAT_SECONDS
                if heads == self._heads and not force and quiet:
                    return  # no row appended to any policy chain: nothing to re-read
                self._heads = heads
                teams = self.store.teams()
            except Exception:
                log.exception("cannot read the policy chains; keeping the bundles loaded")
                return
            for team in teams:
                if team not in self.hosted_teams:
                    if team not in self._ignored:
                        self._ignored.add(team)
                        log.info("policy bundle of team %s ignored: this worker hosts none of its agents", team)
                    continue
                changed |= self._load(team)
                self._load_shadow(team)
            # A heartbeat once there are team bundles to report on (a dev ledger without any gets none).
            if teams and (changed or now - self._beat > self.HEARTBEAT_SECONDS):
                self._beat = now
                self.heartbeat()

    def _load(self, team: str) -> bool:
        try:
            found = self.store.in_force(team)
        except Refusal as err:
            return self._break(team, str(err))
        if found is None:
            return False
        current = self._bundles.get(team)
        if current is not None and current.hash == found.hash and self._seqs.get(team) == found.seq:
            return False
        if found.seq < self._seqs.get(team, 0):
            # Switch rows this worker saw are gone (deleted in the database): keep the newer one.
            self.store.refuse(team, found.hash, f"switch {found.seq} is older than {self._seqs[team]} seen here")
            return False
        try:
            bundle = build_team_bundle(found.files)
        except PolicyError as err:
            return self._break(team, f"bundle {found.hash[:12]} does not build: {'; '.join(err.problems)[:300]}")
        if bundle.hash != found.hash or bundle.team != team:
            return self._break(team, f"bundle {found.hash[:12]}'s files hash to {bundle.hash[:12]} (tampered)")
        mine = [a for a in self._agents.agents() if a.owner == team]
        bundle = bundle.with_entities(tool_entities(mine))
        self.store._ledger.register_bundle(bundle.hash, team_content(bundle))
        before = current.hash[:12] if current else "local"
        self._bundles[team] = bundle
        self._seqs[team] = found.seq
        self._broken.pop(team, None)
        log.warning(
            "policy bundle of team %s in force: %s -> %s (switch %d, %s by %s)",
            team,
            before,
            bundle.hash[:12],
            found.seq,
            found.kind,
            ", ".join(found.signers),
        )
        return True

    def _break(self, team: str, reason: str) -> bool:
        if self._broken.get(team) == reason:
            return False
        self._broken[team] = reason
        self.store.refuse(team, "in-force", reason)
        log.error("POLICY: team %s's agents are denied on this worker: %s", team, reason)
        return True

    def _load_shadow(self, team: str) -> None:
        try:
            found = self.store.shadow_of(team)
        except Exception:
            log.exception("shadow bundle of team %s unreadable", team)
            found = None
        if found is None:
            self._shadows.pop(team, None)
            return
        bundle_hash, files = found
        if team in self._shadows and self._shadows[team].hash == bundle_hash:
            return
        try:
            bundle = build_team_bundle(files)
        except PolicyError as err:
            self.store.refuse(team, bundle_hash, f"shadow bundle does not build: {err.problems[:3]}")
            return
        if bundle.hash != bundle_hash:
            self.store.refuse(team, bundle_hash, "shadow bundle's files do not hash to its name (tampered)")
            return
        self._shadows[team] = bundle.with_entities(tool_entities([a for a in self._agents.agents() if a.owner == team]))
        log.warning("policy bundle %s of team %s decides in shadow (no effect)", bundle_hash[:12], team)

    def heartbeat(self) -> None:
        bundles = {t: b.hash for t, b in self._bundles.items()}
        for team in self.hosted_teams - set(bundles):
            local = self.local_teams.get(team) or self.local
            bundles[team] = f"local:{local.hash}"
        try:
            self.store.loaded(self.worker, bundles, dict(self._broken), datetime.now(UTC).isoformat())
        except Exception:
            log.exception("policy heartbeat not written")

    def shadow(self, request: GateRequest, live: Decision) -> None:
        """Decides `request` again under the team's shadow bundle and records both answers."""
        spec = self._agents.get(request.agent)
        if spec is None or spec.owner not in self._shadows:
            return
        candidate = self._shadows[spec.owner]
        try:
            would = evaluate(candidate, spec, request, now=datetime.now(UTC), lookup=self._agents.get)
        except Exception as err:  # noqa: BLE001 - never affects the live decision
            log.warning("shadow decision failed: %s", err)
            return
        data: dict[str, Any] = {
            "decision_id": live.decision_id,
            "run_id": live.run_id,
            "step": live.step,
            "tool": live.tool,
            "agent": request.agent,
            "live_hash": live.bundle_hash,
            "live_outcome": live.outcome,
            "live_policies": list(live.policy_ids),
            "shadow_hash": candidate.hash,
            "shadow_outcome": would.outcome,
            "shadow_policies": list(would.policy_ids),
            "differs": would.outcome != live.outcome,
        }
        try:
            self.store.record_shadow(spec.owner, data)
        except Exception:
            log.exception("shadow decision not recorded")
