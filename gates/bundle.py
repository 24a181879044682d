"""A policy bundle: Cedar policies, schema and entities, parsed and checked. Pure: texts come in.

Every policy must carry a unique `@id`. Policies are kept one statement each with the file and line
they came from, so an error points at `file:line`. Evaluation looks only at what can matter, without
changing any decision (tests/test_gates_bundle.py checks both equivalences on random policies):
- the policies whose action scope can match (a policy scoped to another action is never satisfied);
- the parts of `context` those policies read (converting context is most of a Cedar call's cost),
  and no evaluation at all for a repeated (principal, resource) when they read none of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cedarpy

from lockgate.errors import PolicyError

__all__ = ["PolicyBundle", "PolicySlice", "PolicyStatement", "context_paths", "prune_context", "split_statements"]


Path = tuple[str, ...]
WHOLE: Path = ()  # the whole context


def _context_chain(node: Any) -> Path | None:
    """`context.a.b` as ("a", "b"); None when `node` is not an attribute chain on `context`."""
    if node == {"Var": "context"}:
        return ()
    if isinstance(node, dict) and "." in node:
        head = _context_chain(node["."].get("left"))
        return None if head is None else (*head, str(node["."]["attr"]))
    return None


def context_paths(node: Any, out: set[Path]) -> set[Path]:
    """Every part of `context` a policy body can read. A bare `context` (or one used as a whole
    value) reads everything: the empty path."""
    if isinstance(node, dict):
        for key in (".", "has"):
            if key in node and isinstance(node[key], dict) and "attr" in node[key]:
                head = _context_chain(node[key].get("left"))
                if head is not None:
                    out.add((*head, str(node[key]["attr"])))
                    return out
        if node == {"Var": "context"}:
            out.add(WHOLE)
            return out
        for value in node.values():
            context_paths(value, out)
    elif isinstance(node, list):
        for value in node:
            context_paths(value, out)
    return out


def prune_context(context: dict[str, Any], paths: frozenset[Path]) -> dict[str, Any]:
    """Only the parts of `context` the policies can read. Every attribute a policy reads or tests
    with `has` is kept exactly as it is (present or absent), so no decision can change."""
    if WHOLE in paths:
        return context
    out: dict[str, Any] = {}
    for path in paths:
        source: Any = context
        target = out
        for i, name in enumerate(path):
            if not isinstance(source, dict) or name not in source:
                break
            if i == len(path) - 1 or not isinstance(source[name], dict):
                target[name] = source[name]  # a leaf, or a non-record read deeper: keep it whole
                break
            source = source[name]
            target = target.setdefault(name, {})
    return out


@dataclass
class PolicySlice:
    """The policies that can apply to one action, what they read of `context`, and a bounded cache
    of verdicts keyed by exactly what they depend on: principal, resource and the pruned context
    (the policies and entities are fixed for the bundle this slice belongs to)."""

    policies: Any
    paths: frozenset[Path]
    limit: int = 4096
    _cache: OrderedDict[tuple[str, str, str], Any] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context_free(self) -> bool:
        return not self.paths

    def cached(self, key: tuple[str, str, str]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def remember(self, key: tuple[str, str, str], verdict: Any) -> None:
        with self._lock:
            self._cache[key] = verdict
            if len(self._cache) > self.limit:
                self._cache.popitem(last=False)


@dataclass(frozen=True)
class PolicyStatement:
    text: str
    file: str
    line: int
    policy_id: str
    effect: str
    annotations: dict[str, str]
    # None: the policy's action scope is open (any action, or an action group); else its actions.
    actions: frozenset[str] | None
    context_paths: frozenset[Path] = frozenset()

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


def _has_action_groups(schema_text: str | None, entities_json: str) -> bool:
    if schema_text and re.search(r"\baction\s+[^;{]*?\b(in|memberOf)\b", schema_text):
        return True
    try:
        entities = json.loads(entities_json)
    except ValueError:
        return False
    return any(isinstance(e, dict) and e.get("uid", {}).get("type") == "Action" for e in entities)


def _action_scope(action: dict[str, Any], groups: bool) -> frozenset[str] | None:
    """The actions a policy's scope names; None when open (any action, or an action group, whose
    members only the entity store knows)."""
    if action.get("op") == "==" and action.get("entity", {}).get("type") == "Action":
        return frozenset([str(action["entity"]["id"])])
    if action.get("op") == "in" and "entities" in action and not groups:
        return frozenset(str(e["id"]) for e in action["entities"] if e.get("type") == "Action")
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
    _slices: dict[tuple[str, bool], PolicySlice] = field(default_factory=dict)

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
        # With action groups, `action in [...]` may name a group whose members only Cedar resolves:
        # such policies are then kept in every slice.
        groups = _has_action_groups(schema_text, entities_json)
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
                        actions=_action_scope(body.get("action", {}), groups),
                        context_paths=frozenset(context_paths(body.get("conditions", []), set())),
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

    def slice_for(self, action: str, *, without_approval: bool = False) -> PolicySlice:
        """The policies that can apply to `action`, pre-parsed, with what they read (cached)."""
        key = (action, without_approval)
        cached = self._slices.get(key)
        if cached is None:
            chosen = [
                s
                for s in self.statements
                if (s.actions is None or action in s.actions) and not (without_approval and s.approval_group)
            ]
            cached = PolicySlice(
                policies=cedarpy.PolicySet.from_str("\n".join(s.text for s in chosen)),
                paths=frozenset().union(*(s.context_paths for s in chosen)),
            )
            self._slices[key] = cached
        return cached

    def members_of(self, group: str) -> list[str]:
        """Users in `group`, directly or through nested groups."""
        users = [
            e["uid"]["id"] for e in self.entity_list() if isinstance(e, dict) and e.get("uid", {}).get("type") == "User"
        ]
        return sorted(u for u in users if group in self.groups_of(u))

    def groups_of(self, user: str) -> set[str]:
        """Groups a `User` entity belongs to, directly or through group parents."""
        by_uid = {(e["uid"]["type"], e["uid"]["id"]): e for e in self.entity_list() if isinstance(e, dict)}
        out: set[str] = set()
        stack = list(by_uid.get(("User", user), {}).get("parents", []))
        while stack:
            parent = stack.pop()
            key = (parent.get("type"), parent.get("id"))
            if key[0] == "Group" and key[1] not in out:
                out.add(str(key[1]))
                stack.extend(by_uid.get(key, {}).get("parents", []))
        return out
