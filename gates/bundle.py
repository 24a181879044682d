"""A policy bundle: Cedar policies, schema and entities, parsed and checked. Pure: texts come in.

Every policy must carry a unique `@id`. Policies are kept one statement each with the file and line
they came from, so an error points at `file:line`. Evaluation (`PolicyBundle.authorize`, the gate's
one path to Cedar) looks only at what can matter, without changing any decision, deciding policy or
error (`make conformance` checks this on Cedar's own integration corpus, tests/test_gates_bundle.py
and tests/test_gates_conformance.py on generated policies):
- the policies whose action scope can match the request's action uid (type and id, any namespace):
  `action == A` matches A only; `action in [A, G]` matches A, G and every action whose parents reach
  one of them, in the same entity store Cedar is given (entities, plus the schema's action groups);
- the parts of `context` those policies read (converting context is most of a Cedar call's cost).
  Entity references and extension values (`__entity`, `__extn`) are kept whole; a part no policy
  reads is dropped only if it is plain data Cedar is sure to accept, else Cedar sees the whole
  context (so a malformed value no policy reads still fails as it would in Cedar);
- a verdict cache per slice keyed by exactly those inputs: principal, resource, pruned context.

Cedar is called without a schema: entities and context are explicit Cedar JSON. What a schema
contributes to evaluation is added ahead of time: its action hierarchy (`action a in [g]`) to the
entities, and its reading of `entities.json` (a `{"type": .., "id": ..}` record where the schema
says an entity type is an entity reference, a string where it says `ipaddr` an `ip(..)` value):
the file is read by Cedar with the schema and evaluated in the explicit form Cedar writes back. An
entity the schema refuses is refused at build with its file and line.
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
from lockgate.gates.egress import is_model_statement
from lockgate.gates.starts import START_SCHEMA, is_start_statement

__all__ = [
    "CEDAR_ESCAPES",
    "Answer",
    "EntityUid",
    "PolicyBundle",
    "PolicySlice",
    "PolicyStatement",
    "cedar_data_problem",
    "context_paths",
    "prune_context",
    "read_entities",
    "schema_entity_problems",
    "split_statements",
]


Path = tuple[str, ...]
WHOLE: Path = ()  # the whole context
EntityUid = tuple[str, str]  # (type, id), e.g. ("NS::Action", "view")

# Object keys by which Cedar's JSON format makes a value something other than a record: an entity
# reference, an extension value (ip, decimal, ...), or the retired `__expr` (an error in Cedar 4).
CEDAR_ESCAPES = frozenset({"__entity", "__extn", "__expr"})
_ESCAPE_KIND = {"__entity": "an entity reference", "__extn": "an extension value", "__expr": "an expression"}
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
# Deeper data is not called plain: it then reaches Cedar whole, and Cedar's own JSON depth limit
# decides, as it would without lockgate.
_MAX_PLAIN_DEPTH = 32
_POLICY_REF = re.compile(r"`policy(\d+)`")


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


def _escaped(value: Any) -> bool:
    return isinstance(value, dict) and not CEDAR_ESCAPES.isdisjoint(value)


def _problem(value: Any, depth: int) -> tuple[list[str], str] | None:
    """(reversed path, what is wrong) for the first part of `value` that is not plain data."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return [], "is not valid Unicode text (a lone surrogate)"
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if _I64_MIN <= value <= _I64_MAX else ([], "is outside Cedar's 64-bit integers")
    if value is None:
        return [], "is null (Cedar has no null)"
    if isinstance(value, float):
        return [], "is a number with a fraction (Cedar has only 64-bit integers)"
    if depth >= _MAX_PLAIN_DEPTH and isinstance(value, list | dict):
        return [], f"nests deeper than {_MAX_PLAIN_DEPTH} levels"
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _problem(item, depth + 1)
            if found is not None:
                found[0].append(f"[{i}]")
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return [], f"has a key that is not a string ({key!r})"
            if key in CEDAR_ESCAPES:
                return [], f"has the key {key!r}, which Cedar would read as {_ESCAPE_KIND[key]}"
            found = _problem(item, depth + 1)
            if found is not None:
                found[0].append(f".{key}")
                return found
        return None
    return [], f"is a {type(value).__name__}, not JSON data"


def cedar_data_problem(value: Any, where: str = "value") -> str | None:
    """Why `value` is not plain data, or None when it is.

    Plain data is what Cedar's JSON format reads as itself and always accepts: strings, booleans,
    64-bit integers, lists, and objects whose keys are strings other than Cedar's escapes
    (`__entity`, `__extn`, `__expr`), nested at most 32 levels (Cedar refuses about 125). So plain data can never become an entity reference or an
    extension value that a policy would trust, and never makes a Cedar request fail to build.

    Args:
        value: the data to check.
        where: how to name `value` in the answer, e.g. "args".

    Returns:
        None, or a sentence such as "args.target has the key '__entity', which Cedar would read
        as an entity reference".
    """
    found = _problem(value, 0)
    if found is None:
        return None
    path, message = found
    return f"{where}{''.join(reversed(path))} {message}"


# A trie of context paths: name -> deeper trie, or None where the value is read (kept whole).
_Trie = dict[str, Any]


def _trie(paths: frozenset[Path]) -> _Trie | None:
    """None when some policy reads the whole context."""
    if WHOLE in paths:
        return None
    root: _Trie = {}
    for path in sorted(paths, key=len):  # shorter first: a read of `a` keeps `a.b` whole too
        node: _Trie | None = root
        for i, name in enumerate(path):
            assert node is not None
            if name in node and node[name] is None:
                break
            if i == len(path) - 1:
                node[name] = None
            else:
                node = node.setdefault(name, {})
    return root


def _prune(record: dict[str, Any], trie: _Trie) -> dict[str, Any] | None:
    """`record` with only what `trie` reads; None when a part it drops is not plain data."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if not isinstance(key, str):
            return None
        if key in trie:
            sub = trie[key]
            if sub is None or not isinstance(value, dict) or _escaped(value):
                # Read here, or read deeper through a non-record (an entity reference's attribute,
                # an error on a string): Cedar must see the value exactly as it is.
                out[key] = value
            else:
                inner = _prune(value, sub)
                if inner is None:
                    return None
                out[key] = inner
        elif _problem(value, 1) is not None:
            return None
    return out


def _pruned(context: dict[str, Any], trie: _Trie | None) -> dict[str, Any]:
    if trie is None or not isinstance(context, dict) or _escaped(context):
        return context
    out = _prune(context, trie)
    return context if out is None else out


def prune_context(context: dict[str, Any], paths: frozenset[Path]) -> dict[str, Any]:
    """Only the parts of `context` the policies can read. Every attribute a policy reads or tests
    with `has` is kept exactly as it is (present or absent), and so is every entity reference or
    extension value on the way. A dropped part must be plain data (`cedar_data_problem`): if one is
    not, Cedar could refuse the request because of it, so the whole context is returned instead.
    Either way no decision can change."""
    return _pruned(context, _trie(paths))


@dataclass(frozen=True)
class Answer:
    """Cedar's answer to one request, with policies named by their statements' ids.

    Attributes:
        allowed: Cedar's decision is Allow.
        policy_ids: the deciding policies (Cedar's reasons), in Cedar's order.
        errors: evaluation (or request) errors, with Cedar's positional `policyN` names replaced
            by statement ids.
        error_ids: the ids of the policies that raised an error.
    """

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    error_ids: tuple[str, ...] = ()


@dataclass
class PolicySlice:
    """The policies that can apply to one action, what they read of `context`, and a bounded cache
    of answers keyed by exactly what they depend on: principal, resource and the pruned context
    (the policies and entities are fixed for the bundle this slice belongs to)."""

    policies: Any  # a cedarpy.PolicySet of `statements`, in this order (Cedar names them policy0..)
    statements: tuple[PolicyStatement, ...]
    paths: frozenset[Path]
    limit: int = 4096
    hits: int = 0  # answers served from the cache
    misses: int = 0  # answers Cedar computed
    _trie: _Trie | None = field(init=False, default=None)
    _cache: OrderedDict[tuple[EntityUid, EntityUid, str], Answer] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._trie = _trie(self.paths)

    @classmethod
    def of(cls, statements: list[PolicyStatement]) -> PolicySlice:
        return cls(
            policies=cedarpy.PolicySet.from_str("\n".join(s.text for s in statements)),
            statements=tuple(statements),
            paths=frozenset().union(*(s.context_paths for s in statements)),
        )

    @property
    def context_free(self) -> bool:
        return not self.paths

    def prune(self, context: dict[str, Any]) -> dict[str, Any]:
        """`prune_context` with this slice's paths."""
        return _pruned(context, self._trie)

    def cached(self, key: tuple[EntityUid, EntityUid, str]) -> Answer | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return hit

    def remember(self, key: tuple[EntityUid, EntityUid, str], answer: Answer) -> None:
        with self._lock:
            self._cache[key] = answer
            if len(self._cache) > self.limit:
                self._cache.popitem(last=False)

    def answer(self, result: Any) -> Answer:
        """Cedar's result, its positional policy names mapped back to this slice's statements."""

        def name(match: re.Match[str]) -> str:
            return f"`{self._id(int(match.group(1)))}`"

        errors = tuple(str(e) for e in result.diagnostics.errors)
        # Cedar names the policy first ("error while evaluating policy `policy3`: ..."); later
        # backquoted text may be data, so only the first reference is a policy name.
        firsts = [_POLICY_REF.search(e) for e in errors]
        return Answer(
            allowed=bool(result.allowed),
            policy_ids=tuple(self._id(int(r.removeprefix("policy"))) for r in result.diagnostics.reasons),
            errors=tuple(_POLICY_REF.sub(name, e, count=1) for e in errors),
            error_ids=tuple(self._id(int(m.group(1))) for m in firsts if m is not None),
        )

    def _id(self, index: int) -> str:
        return self.statements[index].policy_id if index < len(self.statements) else f"policy{index}"


@dataclass(frozen=True)
class PolicyStatement:
    text: str
    file: str
    line: int
    policy_id: str
    effect: str
    annotations: dict[str, str]
    # None: the policy's action scope is open (any action). Else the action uids it names, with
    # `action_op` "==" (exactly that action) or "in" (those actions and their descendants).
    actions: frozenset[EntityUid] | None
    context_paths: frozenset[Path] = frozenset()
    action_op: str = "=="

    @classmethod
    def from_est(cls, body: dict[str, Any], *, text: str, file: str, line: int, policy_id: str) -> PolicyStatement:
        """A statement from its Cedar JSON (EST) form, as `cedarpy.policies_to_json_str` gives it."""
        op, actions = _action_scope(body.get("action", {}))
        return cls(
            text=text,
            file=file,
            line=line,
            policy_id=policy_id,
            effect=body["effect"],
            annotations={k: str(v) for k, v in body.get("annotations", {}).items()},
            actions=actions,
            context_paths=frozenset(context_paths(body.get("conditions", []), set())),
            action_op=op,
        )

    def can_apply(self, action: EntityUid, reach: frozenset[EntityUid]) -> bool:
        """Whether this policy's action scope can hold for `action`, `reach` being the action and
        all its ancestors in the entity store."""
        if self.actions is None:
            return True
        if self.action_op == "==":
            return action in self.actions
        return not self.actions.isdisjoint(reach)

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


def _uid(entity: dict[str, Any]) -> EntityUid:
    inner = entity.get("__entity", entity)
    return (str(inner["type"]), str(inner["id"]))


def _safe_uid(entity: dict[str, Any]) -> EntityUid | None:
    try:
        return _uid(entity["uid"])
    except (KeyError, TypeError):
        return None


def _action_scope(action: dict[str, Any]) -> tuple[str, frozenset[EntityUid] | None]:
    """The scope's operator and the action uids it names (any namespace); None when open."""
    op = action.get("op")
    if op == "==":
        return "==", frozenset([_uid(action["entity"])])
    if op == "in":
        named = [action["entity"]] if "entity" in action else action.get("entities", [])
        return "in", frozenset(_uid(e) for e in named)
    return "==", None  # "All": any action


def _schema_actions(schema_text: str | None) -> list[dict[str, Any]]:
    """The schema's actions as Cedar entities (with their groups as parents), as Cedar derives
    them when it is given the schema: without them `action in Action::"group"` could not see a
    membership declared only in the schema."""
    if not schema_text:
        return []
    try:
        return list(json.loads(str(cedarpy.Entities.from_json_str("[]", schema_text))))
    except ValueError:
        return []  # an invalid schema is reported by `PolicyBundle.build`


_DESERIALIZATION = "error during entity deserialization"


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\n\r":
        i += 1
    return i


def _entity_lines(text: str) -> list[int]:
    """The line on which each element of the JSON list `text` starts (as far as it parses)."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    i = _skip_space(text, 0)
    if not text.startswith("[", i):
        return lines
    pos, line = 0, 1
    i = _skip_space(text, i + 1)
    while i < len(text) and not text.startswith("]", i):
        line += text.count("\n", pos, i)
        pos = i
        lines.append(line)
        try:
            _, i = decoder.raw_decode(text, i)
        except ValueError:
            break
        i = _skip_space(text, i)
        if not text.startswith(",", i):
            break
        i = _skip_space(text, i + 1)
    return lines


def _cedar_entity_error(entities_text: str, schema_text: str) -> str | None:
    """Cedar's own words for why it refuses `entities_text` with the schema (`Entities` says only
    "error during entity deserialization"; an authorization call reports the whole reason)."""
    nobody = {"type": "lockgate::Nobody", "id": ""}
    try:
        result = cedarpy.is_authorized(
            {"principal": nobody, "action": nobody, "resource": nobody, "context": {}},
            "",
            entities_text,
            schema=schema_text,
        )
    except ValueError:
        return None
    for error in result.diagnostics.errors:
        at = str(error).find(_DESERIALIZATION)
        if at >= 0:
            return str(error)[at:]
    return None


def schema_entity_problems(entities_json: str, schema_text: str, file: str = "entities.json") -> list[str]:
    """Why Cedar, reading `entities_json` with the schema as it does when given one, refuses it:
    one `file:line: reason` per refused entity (e.g. an attribute the schema types as an entity
    whose value is not an entity reference). Empty when Cedar accepts the file."""
    try:
        cedarpy.Entities.from_json_str(entities_json, schema_text)
        return []
    except ValueError as err:
        whole = f"{file}:1: {err}"
    try:
        entities = json.loads(entities_json)
    except ValueError:
        return [whole]
    if not isinstance(entities, list):
        return [whole]
    lines = _entity_lines(entities_json)
    problems = []
    for i, entity in enumerate(entities):
        one = json.dumps([entity])
        try:
            cedarpy.Entities.from_json_str(one, schema_text)
        except ValueError as err:
            line = lines[i] if i < len(lines) else 1
            problems.append(f"{file}:{line}: {_cedar_entity_error(one, schema_text) or err}")
    return problems or [whole]  # each alone is fine: together they are not (e.g. a uid twice)


def read_entities(entities_json: str, schema_text: str | None) -> list[dict[str, Any]]:
    """`entities.json` as Cedar reads it: with the schema when there is one, written back in
    explicit Cedar JSON (`__entity`, `__extn`), in the file's order. The schema's own action
    entities are not added here (`PolicyBundle` adds them after lockgate's derived entities).

    Raises:
        ValueError: Cedar refuses the entities (with the schema, when there is one).
    """
    entities = json.loads(entities_json)
    if not schema_text:
        return list(entities)
    read = json.loads(str(cedarpy.Entities.from_json_str(entities_json, schema_text)))
    by_uid = {uid: e for e in read if isinstance(e, dict) and (uid := _safe_uid(e)) is not None}
    return [by_uid.get(_safe_uid(e) or ("", ""), e) if isinstance(e, dict) else e for e in entities]


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
    _read: list[dict[str, Any]] | None = None  # entities.json as Cedar reads it
    _store: list[dict[str, Any]] | None = None
    _parents: dict[EntityUid, list[EntityUid]] | None = None
    _slices: dict[tuple[EntityUid, bool], PolicySlice] = field(default_factory=dict)
    # Entity stores with one request entity added (a tool's declared resource), by that entity.
    _with_resource: OrderedDict[Any, Any] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
                statements.append(PolicyStatement.from_est(body, text=text, file=file, line=line, policy_id=pid))
        schema = None
        if schema_text is not None:
            try:
                schema = cedarpy.Schema.from_str(schema_text)
            except ValueError as err:
                problems.append(f"{schema_file}:1: {err}")
        # Start policies (gates/starts.py) are validated against their own schema: a tool policy
        # with an open action scope must never have to type-check against a start.
        # Model-egress policies (gates/egress.py) likewise.
        starts = [s for s in statements if is_start_statement(s) or is_model_statement(s)]
        tools = [s for s in statements if not (is_start_statement(s) or is_model_statement(s))]
        for st in starts:
            if st.action_op != "==" or len(st.actions or ()) != 1:
                problems.append(f"{st.file}:{st.line}: a start or model policy names only its one lockgate::Action")
        checks = [(cedarpy.Schema.from_str(START_SCHEMA), starts)]
        if schema is not None:
            checks.append((schema, tools))
        for against, group in checks:
            if not group:
                continue
            result = cedarpy.validate_policies("\n".join(s.text for s in group), against)
            for error in result.errors:
                index = int(error.policy_id.removeprefix("policy"))
                st = group[index]
                message = error.error.replace(f"`{error.policy_id}`", f"`{st.policy_id}`")
                problems.append(f"{st.file}:{st.line}: {message}")
        try:
            entities = json.loads(entities_json)
            if not isinstance(entities, list):
                raise ValueError("expected a JSON list of entities")
            cedarpy.Entities.from_json_str(entities_json)
        except ValueError as err:
            problems.append(f"{entities_file}:1: {err}")
        else:
            if schema is not None:
                # Cedar given the schema reads the file differently (and refuses more): so does
                # the bundle, and what it refuses is refused here.
                problems.extend(schema_entity_problems(entities_json, schema_text or "", entities_file))
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
            _read=self._read,
        )

    @property
    def entities(self) -> Any:
        """The entity store Cedar is given: entities.json, lockgate's derived entities and the
        schema's actions (each once; Cedar itself rejects an entities.json action that differs
        from the schema's, so the first one seen is the only one)."""
        if self._entities is None:
            self._entities = cedarpy.Entities.from_json_str(json.dumps(self._entity_store()))
        return self._entities

    def _entity_store(self) -> list[dict[str, Any]]:
        if self._store is None:
            store: list[dict[str, Any]] = []
            seen: set[EntityUid] = set()
            for entity in self.entity_list() + _schema_actions(self.schema_text):
                try:
                    uid = _uid(entity["uid"])
                except (KeyError, TypeError):
                    store.append(entity)  # malformed: Cedar reports it
                    continue
                if uid not in seen:
                    seen.add(uid)
                    store.append(entity)
            self._store = store
        return self._store

    def _reach(self, action: EntityUid) -> frozenset[EntityUid]:
        """The action and its ancestors in the entity store, as Cedar's `in` sees them."""
        if self._parents is None:
            parents: dict[EntityUid, list[EntityUid]] = {}
            for entity in self._entity_store():
                try:
                    parents[_uid(entity["uid"])] = [_uid(p) for p in entity.get("parents", [])]
                except (KeyError, TypeError, AttributeError):
                    continue
            self._parents = parents
        out = {action}
        stack = [action]
        while stack:
            for parent in self._parents.get(stack.pop(), []):
                if parent not in out:
                    out.add(parent)
                    stack.append(parent)
        return frozenset(out)

    def slice_for(self, action: EntityUid | str, *, without_approval: bool = False) -> PolicySlice:
        """The policies that can apply to `action` (a uid, or a tool name: `Action::"<name>"`),
        pre-parsed, with what they read (cached per action uid)."""
        uid: EntityUid = ("Action", action) if isinstance(action, str) else action
        key = (uid, without_approval)
        cached = self._slices.get(key)
        if cached is None:
            reach = self._reach(uid)
            cached = PolicySlice.of(
                [s for s in self.statements if s.can_apply(uid, reach) and not (without_approval and s.approval_group)]
            )
            self._slices[key] = cached
        return cached

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
        """Cedar's answer for the action's slice and the part of `context` it reads: the same
        decision, deciding policies and erring policies as Cedar gives for every policy of the
        bundle and the whole context. The answer is a function of exactly those inputs, so a
        repeated one is served from the slice's cache.

        Args:
            principal: the principal's uid, e.g. ("Agent", "refund-agent").
            action: the action's uid, e.g. ("Action", "refunds.issue").
            resource: the resource's uid.
            context: Cedar JSON (entity references and extension values in their `__entity` and
                `__extn` forms).
            without_approval: leave out `@approval` forbids (the gate's second question).
            resource_entity: the resource as an entity (Cedar JSON) to add to the store for this
                request: a tool's declared resource, e.g. `Order::"A-1001"` with the tool's risk
                labels as attributes and `Tool::"<name>"` as parent. It must be `resource`: the
                answer cache keys on the resource uid (and the action, which names its tool).

        Raises:
            Exception: whatever cedarpy raises for input it cannot take (the gate denies).
        """
        piece = self.slice_for(action, without_approval=without_approval)
        pruned = piece.prune(context)
        # No `default=`: a value JSON cannot carry must fail here as it would in Cedar's call,
        # not be cached under the text of something else.
        text = json.dumps(pruned, sort_keys=True, separators=(",", ":")) if pruned else ""
        key = (principal, resource, text)
        hit = piece.cached(key)
        if hit is not None:
            return hit
        request = {
            "principal": {"type": principal[0], "id": principal[1]},
            "action": {"type": action[0], "id": action[1]},
            "resource": {"type": resource[0], "id": resource[1]},
            # The key's text is the context Cedar reads (cedarpy takes it as JSON text): one
            # serialisation per decision, not two.
            "context": text or "{}",
        }
        entities = self.entities if resource_entity is None else self._entities_with(resource_entity)
        answer = piece.answer(cedarpy.is_authorized(request, piece.policies, entities))
        piece.remember(key, answer)
        return answer

    def _entities_with(self, entity: dict[str, Any]) -> Any:
        """The entity store plus `entity` (unless the store already has its uid), cached."""
        try:
            # Hashable without JSON (this runs on every call with a declared resource): labels
            # are flat booleans and strings, parents a short list of uids.
            key: Any = (
                _uid(entity["uid"]),
                tuple(sorted(entity.get("attrs", {}).items())),
                tuple(_uid(p) for p in entity.get("parents", [])),
            )
            hash(key)
        except (KeyError, TypeError, AttributeError):
            key = json.dumps(entity, sort_keys=True, separators=(",", ":"))
        with self._lock:
            hit = self._with_resource.get(key)
            if hit is not None:
                self._with_resource.move_to_end(key)
                return hit
        store = self._entity_store()
        uid = _uid(entity["uid"])
        known = any(isinstance(e, dict) and _safe_uid(e) == uid for e in store)
        built = self.entities if known else cedarpy.Entities.from_json_str(json.dumps([*store, entity]))
        with self._lock:
            self._with_resource[key] = built
            if len(self._with_resource) > 1024:
                self._with_resource.popitem(last=False)
        return built

    def entity_list(self) -> list[dict[str, Any]]:
        """entities.json as Cedar reads it (with the schema, when there is one; `read_entities`),
        then lockgate's derived entities."""
        if self._read is None:
            self._read = read_entities(self.entities_json, self.schema_text)
        return list(self._read) + list(self.extra_entities)

    def by_id(self, policy_id: str) -> PolicyStatement | None:
        return next((s for s in self.statements if s.policy_id == policy_id), None)

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
