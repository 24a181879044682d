"""MCP pins (`lockgate/mcp/pins.py`): what a reviewed pin holds an MCP server's tools to. A change
to anything that changes what a tool does or what a model is told changes its digest (and blocks
the tool until reviewed, `tests/test_mcp.py`); what does not (icons, `_meta`) does not. No pin file:
none of the server's tools runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lockgate.mcp.pins import FIELDS, definition_of, diff, digest, load_pin, load_pins, pin_path, write_pin

TOOL: dict[str, Any] = {
    "name": "transfer",
    "title": "Transfer money",
    "description": "Moves money between accounts.",
    "inputSchema": {"type": "object", "properties": {"amount": {"type": "integer"}}},
    "outputSchema": {"type": "object"},
    "annotations": {"destructiveHint": True},
}


def test_a_definition_keeps_exactly_the_pinned_fields() -> None:
    raw = {**TOOL, "icons": [{"src": "x.png"}], "_meta": {"trace": 1}, "outputSchema": None}
    assert definition_of(raw) == {k: v for k, v in TOOL.items() if k != "outputSchema"}

    class Model:
        def model_dump(self, **kw: Any) -> dict[str, Any]:
            assert kw == {"mode": "json", "by_alias": True, "exclude_none": True}
            return {**TOOL, "_meta": {"x": 1}}

    assert definition_of(Model()) == TOOL
    assert set(FIELDS) == set(TOOL)


@pytest.mark.parametrize("field", list(TOOL))
def test_changing_any_pinned_field_changes_the_digest(field: str) -> None:
    changed = {**TOOL, field: {"changed": True}}
    assert digest(changed) != digest(TOOL)
    assert digest(changed).startswith("sha256:") and len(digest(changed)) == len("sha256:") + 64


def test_the_digest_does_not_depend_on_key_order_or_unpinned_fields() -> None:
    reordered = dict(reversed(list(TOOL.items())))
    assert digest(reordered) == digest(TOOL)
    assert digest(definition_of({**TOOL, "icons": ["a"]})) == digest(TOOL)
    nested = {**TOOL, "inputSchema": {"properties": {"amount": {"type": "integer"}}, "type": "object"}}
    assert digest(nested) == digest(TOOL)
    # Unicode is hashed as written, not escaped: a homoglyph is a change.
    assert digest({**TOOL, "description": "Moves m\u043eney"}) != digest(TOOL)


def test_the_digest_format_is_stable_for_pins_already_written() -> None:
    """Pin files hold digests: the canonical form (sorted keys, no spaces, UTF-8 as written) must
    not drift, or every reviewed pin would stop matching its unchanged server."""
    tool = {**TOOL, "description": "Überweist Geld \u2192 Konto"}
    canonical_form = json.dumps(tool, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest(tool) == "sha256:" + hashlib.sha256(canonical_form.encode()).hexdigest()


def test_no_pin_file_means_no_pin(tmp_path: Path) -> None:
    assert load_pin(None, "bank") is None
    assert load_pin(tmp_path, "bank") is None
    assert load_pins(tmp_path) == {}


def test_a_written_pin_reads_back_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    path = write_pin(tmp_path, "bank", {"transfer": TOOL}, by="carol", endpoint="stdio:bank")
    assert path == pin_path(tmp_path, "bank") == tmp_path / "mcp" / "bank.json"
    pin = load_pin(tmp_path, "bank")
    assert pin is not None
    assert pin["tools"]["transfer"] == {"digest": digest(TOOL), "definition": TOOL}
    assert (pin["server"], pin["endpoint"], pin["pinned_by"]) == ("bank", "stdio:bank", "carol")
    assert not (tmp_path / "mcp" / "bank.json.tmp").exists()
    assert load_pins(tmp_path) == {"bank": pin}
    # Written for review in git: sorted keys, indented, one trailing newline.
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    for bad in ([1, 2], {"tools": []}, {"server": "bank"}):
        (tmp_path / "mcp" / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="not a pin file"):
            load_pin(tmp_path, "bad")


def test_a_pin_goes_into_a_policy_directory_not_made_yet(tmp_path: Path) -> None:
    fresh = tmp_path / "team" / "policies"
    write_pin(fresh, "bank", {"transfer": TOOL}, by="carol", endpoint="stdio:bank")
    assert load_pins(fresh)["bank"]["tools"]["transfer"]["digest"] == digest(TOOL)


def test_the_review_diff_shows_only_what_changed() -> None:
    """Key order is not a change: the diff compares sorted dumps, so a reordered and edited
    definition shows the one edited line."""
    edited = dict(reversed(list({**TOOL, "title": "Transfer all money"}.items())))
    changed = diff(TOOL, edited, "transfer")
    body = [line for line in changed[2:] if line[:1] in "+-"]
    assert body == ['-  "title": "Transfer money"', '+  "title": "Transfer all money"'], changed


def test_the_review_diff_is_empty_only_for_the_same_definition() -> None:
    assert diff(TOOL, dict(reversed(list(TOOL.items()))), "transfer") == []
    changed = diff(TOOL, {**TOOL, "description": "Moves all the money."}, "transfer")
    assert changed[:2] == ["--- pinned/transfer", "+++ live/transfer"]
    assert any(line.startswith("-") and "Moves money" in line for line in changed)
    assert any(line.startswith("+") and "all the money" in line for line in changed)
    gone = diff(TOOL, None, "transfer")
    assert gone and all(not line.startswith("+ ") for line in gone[2:])
    new = diff(None, TOOL, "transfer")
    assert new and any(line.startswith("+") and "transfer" in line for line in new[2:])
