"""A policy bundle: Cedar policies, schema and entities, parsed and checked. Pure: texts come in.

Every policy must carry a unique `@id`. Policies are kept one statement each with the file and line
they came from, so an error points at `file:line`, and evaluation can look only at the policies whose
action scope can match (a policy scoped to another action can never be satisfied, so leaving it out
changes no decision; tests/test_gates_bundle.py checks that equivalence).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from lockgate.errors import PolicyError

__all__ = ["PolicyStatement", "PolicyBundle", "split_statements"]


@dataclass(frozen=True)
class PolicyStatement:
    text: str
    file: str
    line: int
    policy_id: str
    effect: str
    annotations: dict[str, str]
    # None: the policy's action scope is open (any action, or an action group); else the one action.
    action: str | None

    @property
    def approval_group(self) -> str | None:
        return self.annotations.get("approval") if self.effect == "forbid" else None

    @property
    def quorum(self) -> int:
        try:
            return max(1, int(self.annotations.get("quorum", "1")))
        except ValueError:
            return 1


def split_statements(text: str) -> list[tuple[int, str]]:
    """Splits Cedar source into (line, statement) pairs at top-level `;`, skipping comments/strings."""
    out: list[tuple[int, str]] = []
    i, n, line = 0, len(text), 1
    start: int | None = None
    start_line = 1
    depth = 0
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif start is None and not ch.isspace():
            start, start_line = i, line
        if start is not None:
            if ch == '"':
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\":
                        i += 1
                    elif text[i] == "\n":
                        line += 1
                    i += 1
            elif ch in "({[":
                depth += 1
            elif ch in ")}]":
                depth -= 1
            elif ch == ";" and depth <= 0:
                out.append((start_line, text[start : i + 1]))
                start, depth = None, 0
        i += 1
    if start is not None and text[start:].strip():
        out.append((start_line, text[start:]))
    return out


def _action_scope(action: dict[str, Any]) -> str | None:
    if action.get("op") == "==" and action.get("entity", {}).get("type") == "Action":
        return str(action["entity"]["id"])
    return None


@dataclass
class PolicyBundle:
    """A validated bundle. Build it with `PolicyBundle.build`."""

    statements: list[PolicyStatement]
    entities_json: str
    schema_text: str | None
    hash: str
    sources: dict[str, str] = field(default_factory=dict)
    extra_entities: list[dict[str, Any]] = field(default_factory=list)
    _entities: Any = None
    _slices: dict[tuple[str, bool], Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        policies: dict[str, str],
        *,
        entities_json: str = "[]",
        schema_text: str | None = None,
        schema_file: str = "schema.cedarschema",
        entities_file: str = "entities.json",
    ) -> PolicyBundle:
        """Parses and checks every policy; raises PolicyError listing every problem with file:line."""
        problems: list[str] = []
        statements: list[PolicyStatement] = []
        seen_ids: dict[str, str] = {}
        for file in sorted(policies):
            for line, text in split_statements(policies[file]):
                where = f"{file}:{line}"
                try:
                    parsed = json.loads(cedarpy.policies_to_json_str(text))
                except ValueError as err:
                    problems.append(f"{where}: {err}")
                    continue
                static = parsed.get("staticPolicies", {})
                if parsed.get("templates") or len(static) != 1:
                    problems.append(f"{where}: expected one static policy (templates are not supported)")
                    continue
                body = next(iter(static.values()))
                notes = {k: str(v) for k, v in body.get("annotations", {}).items()}
                pid = notes.get("id")
                if not pid:
                    problems.append(f'{where}: policy has no @id("...") annotation')
                    continue
                if pid in seen_ids:
                    problems.append(f"{where}: duplicate @id {pid!r} (first at {seen_ids[pid]})")
                    continue
                seen_ids[pid] = where
                if "quorum" in notes and not notes["quorum"].isdigit():
                    problems.append(f"{where}: @quorum must be a whole number, got {notes['quorum']!r}")
                    continue
                if "approval" in notes and body["effect"] != "forbid":
                    problems.append(f"{where}: @approval belongs on a forbid policy")
                    continue
                statements.append(
                    PolicyStatement(
                        text=text,
                        file=file,
                        line=line,
                        policy_id=pid,
                        effect=body["effect"],
                        annotations=notes,
                        action=_action_scope(body.get("action", {})),
                    )
                )
        schema = None
        if schema_text is not None:
            try:
                schema = cedarpy.Schema.from_str(schema_text)
            except ValueError as err:
                problems.append(f"{schema_file}:1: {err}")
        if schema is not None and statements:
            result = cedarpy.validate_policies("\n".join(s.text for s in statements), schema)
            for error in result.errors:
                index = int(error.policy_id.removeprefix("policy"))
                st = statements[index]
                message = error.error.replace(f"`{error.policy_id}`", f"`{st.policy_id}`")
                problems.append(f"{st.file}:{st.line}: {message}")
        try:
            entities = json.loads(entities_json)
            if not isinstance(entities, list):
                raise ValueError("expected a JSON list of entities")
            cedarpy.Entities.from_json_str(entities_json)
        except ValueError as err:
            problems.append(f"{entities_file}:1: {err}")
        if problems:
            raise PolicyError(problems)
        digest = hashlib.sha256()
        for part in (
            *(f"{f}\0{policies[f]}" for f in sorted(policies)),
            schema_text or "",
            entities_json,
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        return cls(
            statements=statements,
            entities_json=entities_json,
            schema_text=schema_text,
            hash=digest.hexdigest(),
            sources=dict(policies),
        )

    def with_entities(self, extra: list[dict[str, Any]]) -> PolicyBundle:
        """This bundle plus entities that lockgate derives (agents' tools with their risk labels)."""
        return PolicyBundle(
            statements=self.statements,
            entities_json=self.entities_json,
            schema_text=self.schema_text,
            hash=self.hash,
            sources=self.sources,
            extra_entities=extra,
        )

    @property
    def entities(self) -> Any:
        if self._entities is None:
            merged = json.loads(self.entities_json) + self.extra_entities
            self._entities = cedarpy.Entities.from_json_str(json.dumps(merged))
        return self._entities

    def entity_list(self) -> list[dict[str, Any]]:
        return list(json.loads(self.entities_json)) + list(self.extra_entities)

    def by_id(self, policy_id: str) -> PolicyStatement | None:
        return next((s for s in self.statements if s.policy_id == policy_id), None)

    def slice_for(self, action: str, *, without_approval: bool = False) -> Any:
        """Pre-parsed PolicySet of the policies that can apply to `action` (cached)."""
        key = (action, without_approval)
        cached = self._slices.get(key)
        if cached is None:
            texts = [
                s.text
                for s in self.statements
                if (s.action is None or s.action == action)
                and not (without_approval and s.approval_group)
            ]
            cached = cedarpy.PolicySet.from_str("\n".join(texts))
            self._slices[key] = cached
        return cached

    def members_of(self, group: str) -> list[str]:
        """Users in `group`, directly or through nested groups."""
        users = [
            e["uid"]["id"] for e in self.entity_list()
            if isinstance(e, dict) and e.get("uid", {}).get("type") == "User"
        ]
        return sorted(u for u in users if group in self.groups_of(u))

    def groups_of(self, user: str) -> set[str]:
        """Groups a `User` entity belongs to, directly or through group parents."""
        by_uid = {
            (e["uid"]["type"], e["uid"]["id"]): e for e in self.entity_list() if isinstance(e, dict)
        }
        out: set[str] = set()
        stack = list(by_uid.get(("User", user), {}).get("parents", []))
        while stack:
            parent = stack.pop()
            key = (parent.get("type"), parent.get("id"))
            if key[0] == "Group" and key[1] not in out:
                out.add(str(key[1]))
                stack.extend(by_uid.get(key, {}).get("parents", []))
        return out
