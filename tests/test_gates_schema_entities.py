"""A bundle with a schema reads entities.json as Cedar does when given that schema: a plain
`{"type": .., "id": ..}` record where the schema says an entity type is an entity reference, a
string where it says `ipaddr` is an `ip(..)` value. Read without the schema, the same file decides
the other way in both directions (a forbid that never fires, a permit that never holds), silently;
each test below shows Cedar itself deciding differently without the schema, so it can fail."""

from __future__ import annotations

import json
from typing import Any

import cedarpy
import pytest

from lockgate.errors import PolicyError
from lockgate.gates.bundle import PolicyBundle, read_entities, schema_entity_problems

SCHEMA = """
entity Team;
entity User in [Team] { manager: User, ip: ipaddr };
entity Doc { owner: User };
action read appliesTo { principal: User, resource: Doc };
"""

# Written as people write them: entity references as plain records, an address as a string.
ENTITIES = """[
  {"uid": {"type": "User", "id": "bob"},
   "attrs": {"manager": {"type": "User", "id": "alice"}, "ip": "10.1.2.3"},
   "parents": [{"type": "Team", "id": "red"}]},
  {"uid": {"type": "User", "id": "alice"},
   "attrs": {"manager": {"type": "User", "id": "alice"}, "ip": "192.0.2.1"},
   "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"type": "User", "id": "bob"}}, "parents": []}
]"""

READ = ("Action", "read")


def _cedar(policies: str, principal: str, resource: str, *, schema: str | None) -> Any:
    request = {
        "principal": {"type": "User", "id": principal},
        "action": {"type": "Action", "id": "read"},
        "resource": {"type": "Doc", "id": resource},
        "context": {},
    }
    return cedarpy.is_authorized(request, policies, ENTITIES, schema=schema)


def _both(policies: str, principal: str, resource: str = "d1") -> tuple[bool, tuple[str, ...], bool]:
    """(lockgate's decision, its deciding policies, Cedar's decision with the schema)."""
    bundle = PolicyBundle.build({"p.cedar": policies}, entities_json=ENTITIES, schema_text=SCHEMA)
    answer = bundle.authorize(("User", principal), READ, ("Doc", resource), {})
    return answer.allowed, answer.policy_ids, bool(_cedar(policies, principal, resource, schema=SCHEMA).allowed)


def test_a_forbid_on_an_entity_attribute_written_as_a_record_fires_as_in_cedar() -> None:
    """Without the schema the forbid compares a record with an entity, never fires: allow where
    Cedar, given the schema, denies."""
    policies = (
        '@id("all") permit (principal, action == Action::"read", resource);\n'
        '@id("not-alices-reports") forbid (principal, action == Action::"read", resource)\n'
        '  when { principal.manager == User::"alice" };\n'
    )
    assert _cedar(policies, "bob", "d1", schema=None).allowed  # the fail-open, in Cedar's own terms
    allowed, ids, cedar = _both(policies, "bob")
    assert (allowed, cedar) == (False, False)
    assert ids == ("not-alices-reports",)


def test_a_permit_on_an_entity_attribute_written_as_a_record_holds_as_in_cedar() -> None:
    """The mirror: a permit that compares the attribute with the principal never holds without the
    schema (deny where Cedar allows)."""
    policies = '@id("owner-reads") permit (principal, action == Action::"read", resource) when { resource.owner == principal };\n'
    assert not _cedar(policies, "bob", "d1", schema=None).allowed
    assert _both(policies, "bob") == (True, ("owner-reads",), True)
    assert _both(policies, "alice") == (False, (), False)


def test_an_address_written_as_a_string_is_an_ip_value_as_in_cedar() -> None:
    policies = (
        '@id("internal") permit (principal, action == Action::"read", resource)\n'
        '  when { principal.ip.isInRange(ip("10.0.0.0/8")) };\n'
    )
    assert not _cedar(policies, "bob", "d1", schema=None).allowed  # a string has no isInRange
    assert _both(policies, "bob") == (True, ("internal",), True)
    assert _both(policies, "alice") == (False, (), False)


def test_entities_read_with_the_schema_keep_their_order_and_parents() -> None:
    read = read_entities(ENTITIES, SCHEMA)
    assert [e["uid"]["id"] for e in read] == ["bob", "alice", "d1"]  # no schema actions added here
    assert read[0]["attrs"]["manager"] == {"__entity": {"type": "User", "id": "alice"}}
    assert read[0]["attrs"]["ip"] == {"__extn": {"fn": "ip", "arg": "10.1.2.3"}}
    assert read_entities(ENTITIES, None) == json.loads(ENTITIES)
    bundle = PolicyBundle.build({}, entities_json=ENTITIES, schema_text=SCHEMA)
    assert bundle.groups_of("bob") == set()  # Team, not Group: parents are read, not retyped
    assert bundle.with_entities([]).entity_list() == read


def test_an_entity_the_schema_refuses_is_refused_at_build_with_file_and_line() -> None:
    # The third entity (line 8) names its owner by id alone where the schema says an entity.
    broken = ENTITIES.replace('"owner": {"type": "User", "id": "bob"}', '"owner": "bob"')
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build({}, entities_json=broken, schema_text=SCHEMA, entities_file="people.json")
    (problem,) = err.value.problems
    assert problem.startswith("people.json:8: ") and "`owner`" in problem and "entity reference" in problem, problem
    # Without a schema the same file is data like any other.
    PolicyBundle.build({}, entities_json=broken)
    # Two refused entities: both named, each at its own line.
    worse = broken.replace('"ip": "192.0.2.1"', '"ip": 7')
    with pytest.raises(PolicyError) as err:
        PolicyBundle.build({}, entities_json=worse, schema_text=SCHEMA)
    assert [p.split(": ")[0] for p in err.value.problems] == ["entities.json:5", "entities.json:8"]


def test_a_bundle_made_without_build_fails_closed_on_entities_the_schema_refuses() -> None:
    broken = ENTITIES.replace('"owner": {"type": "User", "id": "bob"}', '"owner": "bob"')
    bundle = PolicyBundle(statements=[], entities_json=broken, schema_text=SCHEMA, hash="x")
    with pytest.raises(ValueError, match="entity deserialization"):
        bundle.authorize(("User", "bob"), READ, ("Doc", "d1"), {})


@pytest.mark.parametrize("text", ["{not json", '{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}'])
def test_an_entities_file_that_is_no_list_is_one_problem_on_its_first_line(text: str) -> None:
    """Not JSON, or JSON but not a list of entities: one problem for the whole file (Cedar's own
    words), not one per key of an object taken for entities."""
    problems = schema_entity_problems(text, SCHEMA, "team/entities.json")
    assert len(problems) == 1 and problems[0].startswith("team/entities.json:1: "), problems
