"""Generated conformance: lockgate's policy pipeline decides exactly as plain Cedar does.

Cedar's integration corpus (`make conformance`) never reads `context`; these seeded generators do,
where slicing, pruning and the answer cache could go wrong: many statements per file, action scopes
in any namespace (`==`, `in [...]`, `in` a group, groups declared in entities or in the schema),
deep context paths, `has`, entity references and extension values (`ip`, `decimal`) in context,
sets and records, whole-context reads, errors, and malformed data where no policy looks. Each
request goes through `PolicyBundle.authorize` (the gate's path) twice, the second time from the
cache, and must give plain Cedar's decision, deciding policies and erring policies, with every
policy and the whole context.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

import cedarpy
import pytest

from lockgate.gates.bundle import EntityUid, PolicyBundle

ACTION_TYPES = ("Action", "NS::Action", "A::B::Action")
ACTION_IDS = ("view", "edit", "share", "grp", "all")
ACTIONS = [(t, i) for t in ACTION_TYPES for i in ACTION_IDS]
USERS = [f"u{i}" for i in range(6)]
GROUPS = [f"g{i}" for i in range(4)]
DOCS = [f"d{i}" for i in range(4)]


def ref(kind: str, ident: str) -> dict[str, Any]:
    return {"__entity": {"type": kind, "id": ident}}


def ip(text: str) -> dict[str, Any]:
    return {"__extn": {"fn": "ip", "arg": text}}


def decimal(text: str) -> dict[str, Any]:
    return {"__extn": {"fn": "decimal", "arg": text}}


def cedar_uid(uid: tuple[str, str]) -> str:
    return f'{uid[0]}::"{uid[1]}"'


def plain_cedar(policies: Any, ids: list[str], request: dict[str, Any], entities: Any, schema: Any = None):
    """Plain Cedar on every policy, the whole text parsed as one: (allowed, deciding ids, erring
    ids); `ids[n]` names policyN."""
    result = cedarpy.is_authorized(request, policies, entities, schema=schema)
    errors = []
    for e in result.diagnostics.errors:
        m = re.search(r"`policy(\d+)`", e)
        errors.append(ids[int(m.group(1))] if m else "<request>")
    reasons = sorted(ids[int(r.removeprefix("policy"))] for r in result.diagnostics.reasons)
    return result.allowed, reasons, sorted(errors)


def lockgate(
    bundle: PolicyBundle,
    request: dict[str, Any],
    uids: tuple[EntityUid, EntityUid, EntityUid],
    *,
    without_approval: bool = False,
):
    answer = bundle.authorize(*uids, request["context"], without_approval=without_approval)
    errors = sorted([*answer.error_ids, *["<request>"] * (len(answer.errors) - len(answer.error_ids))])
    return answer.allowed, sorted(answer.policy_ids), errors


# -- without a schema: anything JSON can say in context ---------------------------------------------------

CONDITIONS = [
    "context.a.b.c > {k}",
    "context.a has b",
    "context.a.b has c",
    "context has a.b.c",
    "context has a",
    "context.a.e == 1",
    'context.who in Group::"g{k}"',
    "context.who.level > {k}",
    'context.who == User::"u{k}"',
    "context.who == principal",
    'context.src.isInRange(ip("10.{k}.0.0/16"))',
    "context.src.isLoopback()",
    'context.amount.lessThan(decimal("{k}.5"))',
    'context.amount == decimal("1.2500")',
    'context.tags.contains("t{k}")',
    'context.tags.containsAny(["t{k}", "t1"])',
    'context.tags.contains(User::"u{k}")',
    'context.rec == {{"x": {k}}}',
    "context.rec.x == {k}",
    'context["odd key"] == "v{k}"',
    "context.args.target.level > {k}",
    'context.args.target in Group::"g{k}"',
    "context.args has target",
    "context has junk",
    "context == {{}}",
    'principal in Group::"g{k}"',
    "resource.owner == principal",
    "resource.public",
]


def _entities(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, g in enumerate(GROUPS):
        parents = [{"type": "Group", "id": p} for p in GROUPS[:i] if rng.random() < 0.4]
        out.append({"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": parents})
    for u in USERS:
        parents = [{"type": "Group", "id": g} for g in GROUPS if rng.random() < 0.3]
        out.append({"uid": {"type": "User", "id": u}, "attrs": {"level": rng.randint(0, 9)}, "parents": parents})
    for d in DOCS:
        attrs = {"owner": ref("User", rng.choice(USERS)), "public": rng.random() < 0.5}
        out.append({"uid": {"type": "Doc", "id": d}, "attrs": attrs, "parents": []})
    # Action groups in the entities, across namespaces; an action missing from the store is only
    # ever itself.
    for i, (kind, ident) in enumerate(ACTIONS):
        if rng.random() < 0.8:
            parents = [{"type": t, "id": a} for t, a in ACTIONS[:i] if rng.random() < 0.2]
            out.append({"uid": {"type": kind, "id": ident}, "attrs": {}, "parents": parents})
    return out


def _scope(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.15:
        return "action"
    if pick < 0.5:
        return f"action == {cedar_uid(rng.choice(ACTIONS))}"
    if pick < 0.8:
        return "action in [" + ", ".join(cedar_uid(a) for a in rng.sample(ACTIONS, rng.randint(1, 4))) + "]"
    if pick < 0.97:
        return f"action in {cedar_uid(rng.choice(ACTIONS))}"
    return "action in []"


def _policies(rng: random.Random, count: int) -> str:
    texts = []
    for i in range(count):
        effect = rng.choice(["permit", "permit", "forbid"])
        notes = f'@id("p{i}")\n'
        if effect == "forbid" and rng.random() < 0.3:
            notes += '@approval("g0")\n'
        principal = rng.choice(["principal", "principal", f'principal == User::"{rng.choice(USERS)}"'])
        resource = rng.choice(["resource", "resource", f'resource == Doc::"{rng.choice(DOCS)}"'])
        body = f"{effect} ({principal}, {_scope(rng)}, {resource})"
        for clause in ("when", "unless"):
            if rng.random() < (0.7 if clause == "when" else 0.2):
                parts = [rng.choice(CONDITIONS).format(k=rng.randint(0, 5)) for _ in range(rng.randint(1, 2))]
                body += f" {clause} {{ {rng.choice([' && ', ' || ']).join(parts)} }}"
        texts.append(f"{notes}{body};")
    return "\n\n".join(texts)


def _noise(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.4:
        return rng.choice([rng.randint(-5, 5), f"s{rng.randint(0, 9)}", True])
    if rng.random() < 0.5:
        return [_noise(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _noise(rng, depth + 1) for i in range(rng.randint(0, 3))}


def _context(rng: random.Random) -> dict[str, Any]:
    maybe = lambda p=0.6: rng.random() < p  # noqa: E731
    ctx: dict[str, Any] = {}
    if maybe():
        a: dict[str, Any] = {"e": rng.choice([1, 2])}
        if maybe(0.8):
            a["b"] = rng.choice([{"c": rng.randint(0, 5), "d": "x"}, {"d": "x"}, "not a record"])
        ctx["a"] = a
    if maybe():
        ctx["who"] = rng.choice(
            [ref("User", rng.choice(USERS))] * 4
            + [ref("Group", rng.choice(GROUPS)), {"type": "User", "id": "u1"}, "u1", ref("User", "nobody")]
        )
    if maybe():
        ctx["src"] = rng.choice([ip(f"10.{rng.randint(0, 5)}.1.2"), ip("127.0.0.1"), ip("10.2.0.0/16"), "10.1.1.1"])
    if maybe():
        ctx["amount"] = rng.choice([decimal(f"{rng.randint(0, 5)}.2500"), decimal("1.25"), "1.25"])
    if maybe():
        tags: list[Any] = [f"t{rng.randint(0, 5)}" for _ in range(rng.randint(0, 3))]
        ctx["tags"] = tags
        if maybe(0.3):
            tags.append(ref("User", rng.choice(USERS)))
    if maybe():
        ctx["rec"] = rng.choice([{"x": rng.randint(0, 5)}, {"x": rng.randint(0, 5), "y": {"z": [1, 2]}}])
    if maybe(0.3):
        ctx["odd key"] = f"v{rng.randint(0, 5)}"
    if maybe():
        target = rng.choice([ref("User", rng.choice(USERS)), ref("Group", "g1"), {"level": 7}, "u1"])
        ctx["args"] = {"target": target, "n": rng.randint(0, 9)}
    if maybe(0.4):
        ctx["noise"] = _noise(rng)
    if maybe(0.15):
        # Data Cedar refuses, where a policy may or may not look: pruning must not hide it.
        junk = rng.choice([None, 1.5, 2**70, ip("not-an-ip"), decimal("1.23456"), {"__expr": "1"}, [None]])
        where = rng.choice(["junk", "a", "noise"])
        if where == "junk" or not isinstance(ctx.get(where), dict):
            ctx["junk"] = junk
        else:
            ctx[where]["junk"] = junk
    return ctx


@pytest.mark.parametrize("seed", range(8))
def test_generated_policies_decide_as_plain_cedar(seed: int) -> None:
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
    for _ in range(4):
        text = _policies(rng, rng.randint(5, 60))
        entities = _entities(rng)
        bundle = PolicyBundle.build({"gen.cedar": text}, entities_json=json.dumps(entities))
        ids = [s.policy_id for s in bundle.statements]
        plain = [s for s in bundle.statements if not s.approval_group]
        whole = cedarpy.PolicySet.from_str(text)
        whole_plain = cedarpy.PolicySet.from_str("\n".join(s.text for s in plain))
        store = cedarpy.Entities.from_json_str(json.dumps(entities))
        requests = []
        # A few contexts recur with other principals, resources and actions: the cache must tell
        # apart exactly what Cedar would.
        recurring = [{}, _context(rng), _context(rng)]
        for _ in range(40):
            action = rng.choice([*ACTIONS, ("Action", "ghost")])
            principal, resource = ("User", rng.choice(USERS)), ("Doc", rng.choice(DOCS))
            request = {
                "principal": cedar_uid(principal),
                "action": cedar_uid(action),
                "resource": cedar_uid(resource),
                "context": rng.choice(recurring) if rng.random() < 0.3 else _context(rng),
            }
            requests.append((request, (principal, action, resource)))
        for request, uids in requests + rng.sample(requests, len(requests)):  # again: from the cache
            want = plain_cedar(whole, ids, request, store)
            assert lockgate(bundle, request, uids) == want, (text, request)
            without = plain_cedar(whole_plain, [s.policy_id for s in plain], request, store)
            assert lockgate(bundle, request, uids, without_approval=True) == without, (text, request)
            piece = bundle.slice_for(uids[1])
            pruned = piece.prune(request["context"])
            seen["allow" if want[0] else "deny"] += 1
            seen["errors"] += bool(want[2])
            seen["sliced"] += len(piece.statements) < len(bundle.statements)
            seen["pruned"] += pruned is not request["context"]
            seen["whole context, as a dropped part is not plain"] += (
                pruned is request["context"] and bool(piece.paths) and () not in piece.paths
            )
            seen["entity reference kept"] += "__entity" in json.dumps(pruned)
            seen["extension value kept"] += "__extn" in json.dumps(pruned)
        seen["cache hits"] += sum(p.hits for p in bundle._slices.values())
    # The generator reached every case it is there for.
    assert all(seen[k] > 0 for k in ("allow", "errors", "sliced", "pruned", "cache hits")), seen
    assert seen["entity reference kept"] and seen["extension value kept"], seen
    assert seen["whole context, as a dropped part is not plain"], seen


# -- with a schema: action groups declared only in the schema ---------------------------------------------

SCHEMA_HEAD = """
entity Group in [Group];
entity User in [Group] { level: Long };
entity Doc { owner: User, public: Bool };
type Ctx = {
  who: User, src: ipaddr, amount: decimal, tags: Set<String>,
  rec: { a: Long, b?: { c: Long } }, n?: Long,
};
"""
# Cedar forbids a namespace to shadow the empty one's names: each namespace has its own.
LEAVES = {"": ["view", "list", "edit", "purge"], "App": ["read", "write"]}
GROUPS_OF = {"": ("reads", "all"), "App": ("readers", "everything")}
TYPED_CONDITIONS = [
    'context.who in Group::"g{k}"',
    "context.who.level > {k}",
    "context.who == principal",
    'context.src.isInRange(ip("10.{k}.0.0/16"))',
    'context.amount.lessThan(decimal("{k}.5"))',
    'context.tags.contains("t{k}")',
    "context.rec.a > {k}",
    "context.rec has b && context.rec.b.c > {k}",
    "context has n && context.n == {k}",
    'principal in Group::"g{k}"',
    "resource.owner == principal",
    "resource.public",
]


def _schema(rng: random.Random) -> str:
    """Actions in two namespaces; each leaf in a random set of its namespace's groups (the first
    leaf always in the first group, which is in the second), so only the schema knows them."""
    parts = [SCHEMA_HEAD]
    for ns, leaves in LEAVES.items():
        small, big = GROUPS_OF[ns]
        decls = [f'action "{big}";', f'action "{small}" in ["{big}"];']
        for leaf in leaves:
            groups = [g for g in (small, big) if rng.random() < 0.5 or (leaf, g) == (leaves[0], small)]
            member = f" in [{', '.join(f'{chr(34)}{g}{chr(34)}' for g in groups)}]" if groups else ""
            decls.append(f'action "{leaf}"{member} appliesTo {{ principal: User, resource: Doc, context: Ctx }};')
        block = "\n".join(decls)
        parts.append(f"namespace {ns} {{\n{block}\n}}" if ns else block)
    return "\n".join(parts)


def _typed_scope(rng: random.Random) -> str:
    ns = rng.choice(list(LEAVES))  # the validator wants one namespace per list

    def pick(groups: bool) -> str:
        names = GROUPS_OF[ns] if groups else LEAVES[ns]
        return f'{ns + "::" if ns else ""}Action::"{rng.choice(names)}"'

    return rng.choice(
        [
            "action",
            f"action == {pick(False)}",
            f"action in {pick(True)}",
            f"action in [{pick(True)}, {pick(False)}]",
            f"action in [{pick(False)}, {pick(False)}]",
        ]
    )


@pytest.mark.parametrize("seed", range(4))
def test_schema_action_groups_decide_as_plain_cedar_with_the_schema(seed: int) -> None:
    rng = random.Random(100 + seed)
    schema = _schema(rng)
    entities = [e for e in _entities(rng) if e["uid"]["type"] in ("Group", "User", "Doc")]
    texts = []
    for i in range(rng.randint(10, 40)):
        effect = rng.choice(["permit", "permit", "forbid"])
        cond = " && ".join(rng.choice(TYPED_CONDITIONS).format(k=rng.randint(0, 5)) for _ in range(rng.randint(0, 2)))
        texts.append(
            f'@id("s{i}")\n{effect} (principal, {_typed_scope(rng)}, resource)'
            + (f" when {{ {cond} }}" if cond else "")
            + ";"
        )
    text = "\n".join(texts)
    bundle = PolicyBundle.build({"typed.cedar": text}, schema_text=schema, entities_json=json.dumps(entities))
    ids = [s.policy_id for s in bundle.statements]
    whole, parsed_schema = cedarpy.PolicySet.from_str(text), cedarpy.Schema.from_str(schema)
    store = cedarpy.Entities.from_json_str(json.dumps(entities), parsed_schema)
    group_decided = 0
    actions = [(f"{ns}::Action" if ns else "Action", leaf) for ns, leaves in LEAVES.items() for leaf in leaves]
    for _ in range(150):
        action = rng.choice(actions)
        principal, resource = ("User", rng.choice(USERS)), ("Doc", rng.choice(DOCS))
        ctx: dict[str, Any] = {
            "who": ref("User", rng.choice(USERS)),
            "src": ip(f"10.{rng.randint(0, 5)}.3.4"),
            "amount": decimal(f"{rng.randint(0, 5)}.2500"),
            "tags": [f"t{rng.randint(0, 5)}" for _ in range(rng.randint(0, 2))],
            "rec": {"a": rng.randint(0, 5), **({"b": {"c": rng.randint(0, 5)}} if rng.random() < 0.5 else {})},
            **({"n": rng.randint(0, 5)} if rng.random() < 0.5 else {}),
        }
        request = {
            "principal": cedar_uid(principal),
            "action": cedar_uid(action),
            "resource": cedar_uid(resource),
            "context": ctx,
        }
        want = plain_cedar(whole, ids, request, store, parsed_schema)
        for _ in range(2):
            assert lockgate(bundle, request, (principal, action, resource)) == want, (schema, text, request)
        deciding = [bundle.by_id(i) for i in want[1]]
        # Decided by a policy whose scope names only groups of this action, known from the schema.
        group_decided += any(s and s.actions is not None and action not in s.actions for s in deciding)
    assert group_decided > 0
