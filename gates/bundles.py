"""Team bundles: one team's policies in its own Cedar namespace, schema and entities. Pure.

A team bundle decides only the tools of the agents its team owns (`AgentSpec.owner`), and only in
its namespace: its policies write `Shop::Action::"refunds.issue"`, `Shop::Agent::"refund-agent"`,
its schema is one `namespace Shop { ... }` block. The gate keeps asking in lockgate's plain names
(`Agent`, `Action`, `Tool`, a tool's resource type); a `TeamBundle` puts the question into its
namespace. A bundle whose policies name any entity type outside its namespace (another team's
actions, a plain `Action::"..."`) is refused when it is built (`namespace_problems`), so one team's
bundle can never reach another team's tools, even by sharing a tool name.

Start policies (`lockgate::Action::"start"`, gates/starts.py) keep lockgate's own `User`, `Group`
and `Agent` types; in a team bundle each must name exactly one agent (`resource == Agent::"x"`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lockgate.errors import PolicyError
from lockgate.gates.bundle import Answer, EntityUid, PolicyBundle, PolicySlice, split_statements

__all__ = [
    "BUNDLE_MANIFEST",
    "TeamBundle",
    "TeamManifest",
    "artifact_of",
    "build_team_bundle",
    "namespace_problems",
    "owners_group",
    "rebuild",
]

BUNDLE_MANIFEST = "bundle.json"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEAM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_COMMENT = re.compile(r"//[^\n]*")


def owners_group(team: str) -> str:
    """The Vault identity group whose members own `team`'s policies (they sign and promote)."""
    return f"{team}-policy-owners"


@dataclass(frozen=True)
class TeamManifest:
    """`bundle.json` beside a team's policies.

    Attributes:
        team: The team, as its agents name it in `owner=`.
        namespace: The Cedar namespace all its policies and its schema live in.
        owners: The approver group of its policy owners (always `owners_group(team)`).
    """

    team: str
    namespace: str
    owners: str

    @classmethod
    def parse(cls, text: str) -> TeamManifest:
        """Raises PolicyError naming what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise PolicyError([f"{BUNDLE_MANIFEST}:1: {err}"]) from None
        if not isinstance(data, dict):
            raise PolicyError([f"{BUNDLE_MANIFEST}:1: expected an object"])
        team, namespace = str(data.get("team", "")), str(data.get("namespace", ""))
        owners = str(data.get("owners") or owners_group(team))
        problems = []
        if not _TEAM.match(team):
            problems.append(f"{BUNDLE_MANIFEST}:1: team {team!r} is not a team name (lowercase, digits, . _ -)")
        if not _IDENT.match(namespace) or namespace == "lockgate":
            problems.append(f"{BUNDLE_MANIFEST}:1: namespace {namespace!r} is not a Cedar identifier of its own")
        if owners != owners_group(team):
            problems.append(
                f"{BUNDLE_MANIFEST}:1: owners must be the group {owners_group(team)!r} (Vault decides who is in it)"
            )
        unknown = sorted(set(data) - {"team", "namespace", "owners"})
        if unknown:
            problems.append(f"{BUNDLE_MANIFEST}:1: unknown keys {unknown}")
        if problems:
            raise PolicyError(problems)
        return cls(team=team, namespace=namespace, owners=owners)

    def text(self) -> str:
        return json.dumps({"team": self.team, "namespace": self.namespace, "owners": self.owners}, sort_keys=True)


def _types(node: Any, out: list[str]) -> list[str]:
    """Every entity type a policy's JSON (EST) form names: scopes, `is`, entity literals."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "entity_type" and isinstance(value, str):
                out.append(value)
            elif key in ("entity", "__entity") and isinstance(value, dict) and isinstance(value.get("type"), str):
                out.append(value["type"])
            elif key == "entities" and isinstance(value, list):
                out.extend(str(v["type"]) for v in value if isinstance(v, dict) and "type" in v)
            _types(value, out)
    elif isinstance(node, list):
        for value in node:
            _types(value, out)
    return out


def _policy_problems(policies: dict[str, str], namespace: str) -> list[str]:
    """Why any policy in `policies` (file -> text) names an entity type outside `namespace`."""
    import cedarpy

    prefix = f"{namespace}::"
    problems: list[str] = []
    for file in sorted(policies):
        for line, text in split_statements(policies[file]):
            where = f"{file}:{line}"
            try:
                static = json.loads(cedarpy.policies_to_json_str(text)).get("staticPolicies", {})
            except ValueError:
                continue  # `PolicyBundle.build` reports it
            for body in static.values():
                if body.get("action", {}).get("entity", {}).get("type") == "lockgate::Action":
                    res = body.get("resource", {})
                    if res.get("op") != "==" or res.get("entity", {}).get("type") != "Agent":
                        problems.append(
                            f'{where}: a start policy in a team bundle names one agent (resource == Agent::"x")'
                        )
                    continue
                outside = sorted({t for t in _types(body, []) if not t.startswith(prefix)})
                if outside:
                    problems.append(f"{where}: names {', '.join(outside)}, outside the team's namespace {namespace}")
    return problems


def namespace_problems(bundle: PolicyBundle, namespace: str) -> list[str]:
    """Why `bundle` reaches outside `namespace` (empty: it does not). Checks every policy's entity
    types (scopes and literals), the schema (one `namespace` block) and entities.json's types."""
    problems = _policy_problems(bundle.sources, namespace)
    problems.extend(_schema_problems(bundle.schema_text, namespace))
    for entity in json.loads(bundle.entities_json or "[]"):
        kind = str(entity.get("uid", {}).get("type", "")) if isinstance(entity, dict) else ""
        if not kind.startswith(f"{namespace}::"):
            problems.append(f"entities.json:1: entity type {kind!r} is outside the team's namespace {namespace}")
    return problems


def _schema_problems(schema_text: str | None, namespace: str) -> list[str]:
    text = _COMMENT.sub("", schema_text or "")
    if not re.fullmatch(rf"\s*namespace\s+{re.escape(namespace)}\s*\{{.*\}}\s*", text, re.S):
        return [f"schema.cedarschema:1: the schema must be one `namespace {namespace} {{ ... }}` block"]
    return []


def _in(namespace: str, uid: EntityUid) -> EntityUid:
    return (uid[0], uid[1]) if "::" in uid[0] else (f"{namespace}::{uid[0]}", uid[1])


def _entity_in(namespace: str, entity: dict[str, Any]) -> dict[str, Any]:
    def ref(r: dict[str, Any]) -> dict[str, Any]:
        kind = str(r.get("type", ""))
        return {**r, "type": kind if "::" in kind else f"{namespace}::{kind}"}

    return {
        **entity,
        "uid": ref(entity["uid"]),
        "parents": [ref(p) for p in entity.get("parents", [])],
    }


@dataclass
class TeamBundle(PolicyBundle):
    """A `PolicyBundle` of one team, asked in lockgate's plain names and answering in its namespace.

    `hash` is the content hash of its policies, schema and entities (what the owners sign, what
    every decision records)."""

    team: str = ""
    namespace: str = ""

    @classmethod
    def of(cls, bundle: PolicyBundle, manifest: TeamManifest) -> TeamBundle:
        """`bundle` as `manifest`'s team's. Raises PolicyError if it reaches outside its namespace."""
        problems = namespace_problems(bundle, manifest.namespace)
        if problems:
            raise PolicyError(problems)
        return cls(
            statements=bundle.statements,
            entities_json=bundle.entities_json,
            schema_text=bundle.schema_text,
            hash=bundle.hash,
            sources=bundle.sources,
            team=manifest.team,
            namespace=manifest.namespace,
        )

    def with_entities(self, extra: list[dict[str, Any]]) -> TeamBundle:
        return TeamBundle(
            statements=self.statements,
            entities_json=self.entities_json,
            schema_text=self.schema_text,
            hash=self.hash,
            sources=self.sources,
            extra_entities=[_entity_in(self.namespace, e) for e in extra],
            _read=self._read,
            team=self.team,
            namespace=self.namespace,
        )

    def _action(self, action: EntityUid | str) -> EntityUid:
        uid: EntityUid = ("Action", action) if isinstance(action, str) else action
        return (f"{self.namespace}::Action", uid[1]) if uid[0] == "Action" else uid

    def slice_for(self, action: EntityUid | str, *, without_approval: bool = False) -> PolicySlice:
        return super().slice_for(self._action(action), without_approval=without_approval)

    def authorize(
        self,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        context: dict[str, Any],
        *,
        without_approval: bool = False,
        resource_entity: dict[str, Any] | None = None,
    ) -> Answer:
        if action[0] != "Action":
            # Not a tool call (a start is decided by gates/starts.py): nothing of this team's.
            return super().authorize(
                principal,
                action,
                resource,
                context,
                without_approval=without_approval,
                resource_entity=resource_entity,
            )
        return super().authorize(
            _in(self.namespace, principal),
            self._action(action),
            _in(self.namespace, resource),
            context,
            without_approval=without_approval,
            resource_entity=None if resource_entity is None else _entity_in(self.namespace, resource_entity),
        )


def build_team_bundle(files: dict[str, str]) -> TeamBundle:
    """A team bundle from its files (`bundle.json`, `*.cedar`, `schema.cedarschema`,
    `entities.json`; other files, e.g. tests, are carried but not read).

    Raises:
        PolicyError: every problem, `file:line: message`.
    """
    if BUNDLE_MANIFEST not in files:
        raise PolicyError([f"{BUNDLE_MANIFEST}: missing (a team bundle names its team and namespace)"])
    manifest = TeamManifest.parse(files[BUNDLE_MANIFEST])
    if "schema.cedarschema" not in files:
        raise PolicyError(["schema.cedarschema: missing (a team bundle carries its own schema)"])
    policies = {k: v for k, v in files.items() if k.endswith(".cedar")}
    if not policies:
        raise PolicyError(["no *.cedar policy files"])
    # Reaching outside the namespace is named as such, before (and beside) what Cedar says of it.
    early = _policy_problems(policies, manifest.namespace) + _schema_problems(
        files["schema.cedarschema"], manifest.namespace
    )
    try:
        bundle = PolicyBundle.build(
            policies, schema_text=files["schema.cedarschema"], entities_json=files.get("entities.json", "[]")
        )
    except PolicyError as err:
        raise PolicyError(early + err.problems) from None
    if early:
        raise PolicyError(early)
    return TeamBundle.of(bundle, manifest)


def artifact_of(files: dict[str, str]) -> dict[str, Any]:
    """What is published: the bundle's files, team, namespace and hash. The hash is the bundle's
    content hash (policies, schema, entities), the one every decision names; the manifest is bound
    by the owners' signatures, which name the team and the hash."""
    bundle = build_team_bundle(files)
    return {
        "team": bundle.team,
        "namespace": bundle.namespace,
        "hash": bundle.hash,
        "files": dict(sorted(files.items())),
        "digest": hashlib.sha256(json.dumps(dict(sorted(files.items())), sort_keys=True).encode()).hexdigest(),
    }


def rebuild(content: dict[str, Any]) -> PolicyBundle:
    """A bundle from the content the ledger records (`register_bundle`): a team bundle when the
    content names a namespace, else a plain one. Raises PolicyError."""
    bundle = PolicyBundle.build(content["policies"], schema_text=content["schema"], entities_json=content["entities"])
    namespace = content.get("namespace")
    if not namespace:
        return bundle
    team = str(content.get("team") or "")
    return TeamBundle.of(bundle, TeamManifest(team=team, namespace=str(namespace), owners=owners_group(team)))
