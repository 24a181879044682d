"""Pure unit tests of gates/bundle.py: parsing, file:line errors, slicing equivalence."""

from __future__ import annotations

import random
from pathlib import Path

import cedarpy
import pytest

from gates.bundle import PolicyBundle, split_statements
from lockgate.errors import PolicyError

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
        PolicyBundle.build({"bad.cedar": '@id("ok")\npermit(principal, action, resource);\n\n@id("x")\npermit(principal, action ==, resource);\n'})
    assert err.value.problems[0].startswith("bad.cedar:4: ")


def test_missing_and_duplicate_ids_are_errors() -> None:
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build({"a.cedar": 'permit(principal, action, resource);\n@id("d")\npermit(principal, action, resource);\n@id("d")\nforbid(principal, action, resource);'})
    problems = err.value.problems
    assert any("a.cedar:1:" in p and "no @id" in p for p in problems)
    assert any("a.cedar:4:" in p and "duplicate @id 'd'" in p for p in problems)


def test_schema_violation_names_file_and_line() -> None:
    schema = (ROOT / "policies" / "schema.cedarschema").read_text()
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build(
            {"p.cedar": '@id("fine")\npermit(principal, action == Action::"orders.lookup", resource);\n'
                        '@id("typo")\npermit(principal, action == Action::"orders.lookup", resource)\n'
                        'when { context.args.amount > 5 };\n'},
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


def test_slicing_by_action_never_changes_a_decision() -> None:
    """Random policy sets: the sliced evaluation must agree with evaluating every policy."""
    rng = random.Random(7)
    actions = [f"tool{i}" for i in range(12)]
    texts = []
    for i in range(300):
        effect = rng.choice(["permit", "permit", "forbid"])
        scope = rng.choice(["all", "eq", "eq", "in"])
        if scope == "all":
            action = "action"
        elif scope == "eq":
            action = f'action == Action::"{rng.choice(actions)}"'
        else:
            action = "action in [" + ", ".join(f'Action::"{a}"' for a in rng.sample(actions, 3)) + "]"
        cond = f" when {{ context.n > {rng.randint(0, 100)} }}" if rng.random() < 0.7 else ""
        texts.append(f'@id("p{i}")\n{effect}(principal, {action}, resource){cond};')
    bundle = PolicyBundle.build({"r.cedar": "\n".join(texts)})
    full = cedarpy.PolicySet.from_str("\n".join(texts))
    for _ in range(400):
        act = rng.choice(actions + ["other"])
        req = {"principal": 'Agent::"a"', "action": f'Action::"{act}"', "resource": 'Tool::"t"',
               "context": {"n": rng.randint(0, 100)}}
        whole = cedarpy.is_authorized(req, full, [])
        sliced = cedarpy.is_authorized(req, bundle.slice_for(act), [])
        assert whole.allowed == sliced.allowed
        names = lambda r: sorted(r.diagnostics.id_annotations_by_reason.get(x, x) for x in r.diagnostics.reasons)  # noqa: E731
        assert names(whole) == names(sliced)
