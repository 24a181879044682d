"""The policy bundle's deciding helpers, each in isolation (found by `make mutation`): plain-data
checks, group membership, the slice of an action and context pruning. Each
docstring names the control."""

from __future__ import annotations

import json
from typing import Any

from lockgate.gates.bundle import PolicyBundle, cedar_data_problem, prune_context

PERMIT = '@id("all") permit(principal, action, resource);'
ASK = '@id("a-ask") @approval("finance") forbid(principal, action, resource);'


def _bundle(*policies: str, entities: list[dict[str, Any]] | None = None) -> PolicyBundle:
    return PolicyBundle.build({"p.cedar": "\n".join(policies or (PERMIT,))}, entities_json=json.dumps(entities or []))


def test_text_with_a_lone_surrogate_is_not_plain_data_but_other_unicode_is() -> None:
    """Control: `_problem` checks non-ASCII text for lone surrogates (and reports, not raises)."""
    assert cedar_data_problem("übergröße ✓") is None
    problem = cedar_data_problem({"a": ["ok", "\ud800"]})
    assert problem is not None and "lone surrogate" in problem and ".a[1]" in problem


def test_records_nest_to_the_depth_limit_and_no_deeper() -> None:
    """Control: nesting through records counts depth as lists do (the dict branch's `depth + 1`)."""
    deep: Any = "x"
    for _ in range(33):  # the innermost record at depth 32
        deep = {"k": deep}
    assert cedar_data_problem(deep) is not None and "nests deeper" in str(cedar_data_problem(deep))
    assert cedar_data_problem(deep["k"]) is None


def test_an_actions_slice_holds_its_approval_forbids_by_default() -> None:
    """Control: `slice_for` leaves out `@approval` forbids only when asked (the engine reads the
    default slice's paths to build the context every policy reads)."""
    bundle = _bundle(PERMIT, ASK)
    assert {s.policy_id for s in bundle.slice_for("qa.mark").statements} == {"all", "a-ask"}
    assert {s.policy_id for s in bundle.slice_for("qa.mark", without_approval=True).statements} == {"all"}


def _people() -> list[dict[str, Any]]:
    def group(name: str, *parents: str) -> dict[str, Any]:
        return {
            "uid": {"type": "Group", "id": name},
            "attrs": {},
            "parents": [{"type": "Group", "id": p} for p in parents],
        }

    return [
        group("ops"),
        group("sre", "ops"),
        # A user named like a group, and a parent of another type than Group.
        {"uid": {"type": "User", "id": "ops"}, "attrs": {}, "parents": [{"type": "Group", "id": "sre"}]},
        {"uid": {"type": "User", "id": "dana"}, "attrs": {}, "parents": [{"type": "Role", "id": "admins"}]},
        {"uid": {"type": "Role", "id": "admins"}, "attrs": {}, "parents": [{"type": "Group", "id": "ops"}]},
    ]


def test_group_members_are_users_only_each_once() -> None:
    """Control: `members_of` lists User entities only (a group with a user's name is not a member)."""
    bundle = _bundle(entities=_people())
    assert bundle.members_of("ops") == ["ops"]
    assert bundle.members_of("sre") == ["ops"]


def test_a_users_groups_are_group_parents_only() -> None:
    """Control: `groups_of` follows Group parents only (a Role parent is not a group, nor are the
    groups above it)."""
    bundle = _bundle(entities=_people())
    assert bundle.groups_of("ops") == {"sre", "ops"}
    assert bundle.groups_of("dana") == set()


def test_a_context_that_is_itself_an_escape_is_not_pruned() -> None:
    """Control: `_pruned` hands Cedar a context that is an entity reference or extension value
    exactly as it is (Cedar must see it to refuse it)."""
    context = {"__entity": {"type": "User", "id": "x"}, "other": {"a": 1}}
    assert prune_context(context, frozenset({("amount",)})) == context
    assert prune_context({"amount": 1, "other": {"a": 1}}, frozenset({("amount",)})) == {"amount": 1}


def test_a_policy_reading_the_whole_context_gets_it_unpruned() -> None:
    """Control: `context_paths` marks a bare `context` as a read of everything (nothing is pruned
    for that policy: `context == {}` is false for a non-empty context)."""
    bundle = _bundle(PERMIT, '@id("empty") forbid(principal, action, resource) when { context == {} };')
    who, what, on = ("Agent", "script-agent"), ("Action", "qa.mark"), ("Tool", "qa.mark")
    assert bundle.authorize(who, what, on, {"amount": 1}).allowed
    assert not bundle.authorize(who, what, on, {}).allowed


def test_a_key_that_is_not_a_string_is_not_plain_data() -> None:
    """Control: `_problem` refuses a record key that is not a string (a policy test case or an
    in-process caller can hand the gate one; JSON would turn it into another key than the one seen)."""
    assert cedar_data_problem({"to": {7: "x"}}, "args") == "args.to has a key that is not a string (7)"
    assert cedar_data_problem({"to": {"7": "x"}}, "args") is None


def test_pruning_keeps_a_context_whose_key_is_not_a_string_whole() -> None:
    """Control: `_prune` never drops a key that is not a string: Cedar reads it through JSON as its
    string (`context has "1"` holds for the key 1), so dropping it would change the decision."""
    bundle = _bundle(PERMIT, '@id("one") forbid(principal, action, resource) when { context has "1" };')
    who, what, on = ("Agent", "script-agent"), ("Action", "qa.mark"), ("Tool", "qa.mark")
    assert prune_context({1: "x", "amount": 2}, frozenset({("1",)})) == {1: "x", "amount": 2}
    assert not bundle.authorize(who, what, on, {1: "x"}).allowed
    assert bundle.authorize(who, what, on, {2: "x"}).allowed == bundle.authorize(who, what, on, {}).allowed


def test_pruning_keeps_a_record_whose_dropped_part_is_not_plain_data_whole() -> None:
    """Control: `_prune` hands Cedar the whole context when a part it would drop inside a read record
    is not plain data (Cedar must see it and refuse it: pruning never turns a refusal into an answer)."""
    context = {"a": {"b": 1, "c": 1.5}, "d": 2}
    assert prune_context(context, frozenset({("a", "b")})) == context
    assert prune_context({"a": {"b": 1, "c": 2}, "d": 2}, frozenset({("a", "b")})) == {"a": {"b": 1}}
