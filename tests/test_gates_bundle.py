"""Pure unit tests of gates/bundle.py: parsing, file:line errors, slicing equivalence."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from lockgate.errors import PolicyError
from lockgate.gates.bundle import EntityUid, PolicyBundle, split_statements

ROOT = Path(__file__).resolve().parent.parent


def test_split_statements_tracks_lines_and_skips_comments_and_strings() -> None:
    text = '// a comment; with a semicolon\n@id("a")\npermit(principal, action, resource)\nwhen { "x;y" == "x;y" };\n\n@id("b") forbid(principal, action, resource);\n'
    parts = split_statements(text)
    assert [line for line, _ in parts] == [2, 6]
    assert parts[0][1].endswith('"x;y" };')


def test_repo_policies_are_valid() -> None:
    bundle = PolicyBundle.build(
        {p.name: p.read_text() for p in (ROOT / "policies").glob("*.cedar")},
        schema_text=(ROOT / "policies" / "schema.cedarschema").read_text(),
        entities_json=(ROOT / "policies" / "entities.json").read_text(),
    )
    ids = {s.policy_id for s in bundle.statements}
    assert {"refunds.large-needs-finance", "accounts.close-needs-two-leads"} <= ids
    close = bundle.by_id("accounts.close-needs-two-leads")
    assert close is not None and close.approval_group == "support-leads" and close.quorum == 2
    assert bundle.members_of("finance") == ["alice", "bob"]


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {
                "bad.cedar": '@id("ok")\npermit(principal, action, resource);\n\n@id("x")\npermit(principal, action ==, resource);\n'
            }
        )
    assert err.value.problems[0].startswith("bad.cedar:4: ")


def test_missing_and_duplicate_ids_are_errors() -> None:
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {
                "a.cedar": 'permit(principal, action, resource);\n@id("d")\npermit(principal, action, resource);\n@id("d")\nforbid(principal, action, resource);'
            }
        )
    problems = err.value.problems
    assert any("a.cedar:1:" in p and "no @id" in p for p in problems)
    assert any("a.cedar:4:" in p and "duplicate @id 'd'" in p for p in problems)


def test_schema_violation_names_file_and_line() -> None:
    schema = (ROOT / "policies" / "schema.cedarschema").read_text()
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {
                "p.cedar": '@id("fine")\npermit(principal, action == Action::"orders.lookup", resource);\n'
                '@id("typo")\npermit(principal, action == Action::"orders.lookup", resource)\n'
                "when { context.args.amount > 5 };\n"
            },
            schema_text=schema,
        )
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("p.cedar:3: ") and "typo" in err.value.problems[0]


def test_bad_entities_are_an_error() -> None:
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build({"a.cedar": '@id("a") permit(principal, action, resource);'}, entities_json="{not json")
    assert err.value.problems[0].startswith("entities.json:1:")


def test_hash_changes_with_any_content() -> None:
    a = PolicyBundle.build({"a.cedar": '@id("a") permit(principal, action, resource);'})
    b = PolicyBundle.build({"a.cedar": '@id("a") permit(principal, action, resource) when { true };'})
    assert a.hash != b.hash


def test_slicing_pruning_and_caching_never_change_a_decision() -> None:
    """Random policy sets and contexts: what the engine evaluates (the action's slice, the context
    pruned to what those policies read, cached verdicts where they read none) must decide exactly
    as evaluating every policy against the whole context does."""
    from lockgate.gates.engine import _authorize

    rng = random.Random(7)
    actions = [f"tool{i}" for i in range(12)]
    conditions = [
        "context.n > {k}",
        "context.args.amount > {k}",
        "context.args has reason",
        'context.run.groups.contains("g{k}")',
        'context.args == {{"amount": {k}}}',
        "context has extra",
        "context.run.nested.deep > {k}",
        "context.run has nested",
    ]
    texts = []
    for i in range(300):
        effect = rng.choice(["permit", "permit", "forbid"])
        scope = rng.choice(["all", "eq", "eq", "eq", "in"])
        target = rng.choice(actions)
        if scope == "all":
            action = "action"
        elif scope == "eq":
            action = f'action == Action::"{target}"'
        else:
            action = "action in [" + ", ".join(f'Action::"{a}"' for a in rng.sample(actions, 3)) + "]"
        cond = ""
        # tool0..tool3 see only policies that read no context: their verdicts are cached.
        if (scope == "eq" and target not in actions[:4] and rng.random() < 0.7) or (scope == "in" and i < 20):
            cond = " when { " + rng.choice(conditions).format(k=rng.randint(0, 9)) + " }"
        if scope in ("all", "in") and cond:
            action = "action in [" + ", ".join(f'Action::"{a}"' for a in rng.sample(actions[4:], 3)) + "]"
        texts.append(f'@id("p{i}")\n{effect}(principal, {action}, resource){cond};')
    bundle = PolicyBundle.build({"r.cedar": "\n".join(texts)})
    full = cedarpy.PolicySet.from_str("\n".join(texts))

    def context() -> dict:
        args: dict[str, Any] = {"amount": rng.randint(0, 9)}
        if rng.random() < 0.5:
            args["reason"] = "r"
        run = {"groups": [f"g{rng.randint(0, 9)}"], "other": 1}
        if rng.random() < 0.5:
            run["nested"] = {"deep": rng.randint(0, 9), "more": "x"}
        ctx = {"n": rng.randint(0, 9), "args": args, "run": run}
        if rng.random() < 0.3:
            ctx["extra"] = True
        return ctx

    names = lambda r: sorted(r.diagnostics.id_annotations_by_reason.get(x, x) for x in r.diagnostics.reasons)  # noqa: E731
    context_free = 0
    for _ in range(1500):
        act = rng.choice([*actions, "other"])
        ctx = context()
        req = {"principal": 'Agent::"a"', "action": f'Action::"{act}"', "resource": 'Tool::"t"', "context": ctx}
        whole = cedarpy.is_authorized(req, full, [])
        engine = _authorize(bundle, act, "a", "t", ctx)
        context_free += bundle.slice_for(act).context_free
        assert (whole.allowed, names(whole), bool(whole.diagnostics.errors)) == (
            engine.allowed,
            sorted(engine.policy_ids),
            bool(engine.errors),
        ), (act, ctx)
    assert context_free > 0  # slices that read no context at all were exercised too


def test_context_paths() -> None:
    from lockgate.gates.bundle import context_paths, prune_context

    body = json.loads(
        cedarpy.policies_to_json_str(
            '@id("x") permit(principal, action, resource) when { context.args.amount > 1 && context.run has tainted };'
        )
    )["staticPolicies"]["policy0"]["conditions"]
    paths = frozenset(context_paths(body, set()))
    assert paths == {("args", "amount"), ("run", "tainted")}
    ctx = {"args": {"amount": 5, "secret_stuff": "x"}, "run": {"step": 1}, "other": 2}
    assert prune_context(ctx, paths) == {"args": {"amount": 5}, "run": {}}


def test_pruning_keeps_entity_references_and_extension_values_whole() -> None:
    from lockgate.gates.bundle import prune_context

    user = {"__entity": {"type": "User", "id": "u"}}
    src = {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}
    ctx = {"args": {"x": user, "y": 1}, "src": src, "other": {"deep": [1, "a"]}}
    paths = frozenset({("args", "x", "level"), ("src", "addr")})
    assert prune_context(ctx, paths) == {"args": {"x": user}, "src": src}
    # A part no policy reads but Cedar would refuse (null, a fraction, a bad extension value):
    # dropping it would turn Cedar's error into a decision, so the whole context goes to Cedar.
    for junk in (None, 1.5, {"__extn": {"fn": "ip", "arg": "nope"}}, {"__entity": {"type": "User", "id": "v"}}):
        bad = {**ctx, "other": junk}
        assert prune_context(bad, paths) is bad


def test_an_entity_attribute_read_through_context_decides_as_cedar() -> None:
    """The case that failed: `context.args.x.level` where args.x is an entity reference."""
    entities = [{"uid": {"type": "User", "id": "u"}, "attrs": {"level": 5}, "parents": []}]
    text = '@id("lvl") permit(principal, action, resource) when { context.args.x.level > 3 };'
    bundle = PolicyBundle.build({"p.cedar": text}, entities_json=json.dumps(entities))
    ctx = {"args": {"x": {"__entity": {"type": "User", "id": "u"}}, "y": 1}}
    request = {"principal": 'A::"a"', "action": 'Action::"t"', "resource": 'T::"t"', "context": ctx}
    assert cedarpy.is_authorized(request, text, entities).allowed
    answer = bundle.authorize(("A", "a"), ("Action", "t"), ("T", "t"), ctx)
    assert (answer.allowed, answer.policy_ids, answer.errors) == (True, ("lvl",), ())


def test_slices_are_keyed_by_the_full_action_uid_in_any_namespace() -> None:
    bundle = PolicyBundle.build(
        {
            "ns.cedar": '@id("ns-list") permit(principal, action in [NS::Action::"a", NS::Action::"b"], resource);\n'
            '@id("ns-eq") permit(principal, action == A::B::Action::"a", resource);\n'
            '@id("plain") permit(principal, action == Action::"a", resource);\n'
            '@id("group") permit(principal, action in NS::Action::"g", resource);\n'
        },
        entities_json=json.dumps(
            [
                {"uid": {"type": "NS::Action", "id": "c"}, "attrs": {}, "parents": [{"type": "NS::Action", "id": "g"}]},
            ]
        ),
    )

    def ids(uid: EntityUid | str) -> list[str]:
        return [s.policy_id for s in bundle.slice_for(uid).statements]

    assert ids(("NS::Action", "a")) == ["ns-list"]
    assert ids(("NS::Action", "b")) == ["ns-list"]
    assert ids(("NS::Action", "c")) == ["group"]  # a member of NS::Action::"g" in the entities
    assert ids(("A::B::Action", "a")) == ["ns-eq"]
    assert ids(("Action", "a")) == ["plain"] and ids("a") == ["plain"]
    assert ids(("Other::Action", "a")) == []
