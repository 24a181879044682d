"""Pure tests of people's signed form (lockgate/people.py), each holding one control in isolation
(found by `make mutation`). Each docstring names the control."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from lockgate.people import ApproverKey, SignedStatement, Statement, VerifiedAct, key_name, parse_signature

AT = datetime(2026, 11, 23, tzinfo=UTC)


def _signed() -> SignedStatement:
    statement = Statement(act="approve", person="alice", at=AT, nonce="n" * 16, fields={"run_id": "r-1"})
    return SignedStatement(statement=statement, key=key_name("alice"), key_version=1, signature="vault:v1:QUJD")


def test_only_a_transit_signature_parses() -> None:
    """Control: `parse_signature` returns None for anything but `vault:vN:<base64>`."""
    assert parse_signature("vault:v3:QUJD") == (3, "QUJD")
    assert parse_signature("v3:QUJD") is None and parse_signature("vault:v:QUJD") is None


def test_signed_forms_cannot_be_altered_after_they_are_made() -> None:
    """Control: statements, signed statements, archived keys and verified acts are frozen (what was
    signed or verified cannot be changed in place afterwards)."""
    signed = _signed()
    key = ApproverKey(person="alice", version=1, public_key="QUJD")
    act = VerifiedAct(
        person="alice",
        groups=(),
        act="approve",
        fields={},
        at=signed.statement.at,
        digest="d",
        key_version=1,
        verified_at=signed.statement.at,
    )
    for model, name, value in (
        (signed.statement, "person", "bob"),
        (signed, "key", "approver-bob"),
        (key, "person", "bob"),
        (act, "person", "bob"),
    ):
        with pytest.raises(ValidationError):
            setattr(model, name, value)


def test_the_canonical_form_keeps_text_as_utf8() -> None:
    """Control: the signed canonical form writes non-ASCII text as UTF-8, not \\u escapes (the form
    a signature covers never changes)."""
    statement = Statement(
        act="approve", person="alice", at=datetime(2026, 11, 23, tzinfo=UTC), nonce="n" * 16, fields={"reason": "Grüße"}
    )
    assert '"reason":"Grüße"'.encode() in statement.canonical_bytes()
