"""Pure tests of the deciding helpers inside the I/O modules (people's signatures checked offline,
the stale-lease sweep), each holding one control in isolation (found by `make mutation`). They run
first in those modules' selections: a mutant they kill costs no real stack. Each docstring names
the control."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lockgate.activities.identity import _same, verify_offline
from lockgate.activities.tools import _stale_leases
from lockgate.people import SignedStatement, Statement, key_name

ALICE = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _signed(signer: Ed25519PrivateKey = ALICE, *, version: int = 1, **update: Any) -> SignedStatement:
    """A statement of alice signed the way Transit signs with an ed25519 key (`vault:vN:<b64>`)."""
    statement = Statement(
        act="approve", person="alice", at=datetime(2026, 11, 23, tzinfo=UTC), nonce="n" * 16, fields={"run_id": "r-1"}
    )
    signature = f"vault:v{version}:" + base64.b64encode(signer.sign(statement.canonical_bytes())).decode()
    signed = SignedStatement(statement=statement, key=key_name("alice"), key_version=version, signature=signature)
    return signed.model_copy(update=update)


KEYS = {("alice", 1): _raw(ALICE)}


def test_offline_verification_accepts_the_persons_own_signature_in_every_key_form() -> None:
    """Control: `verify_offline` accepts a good signature (raw, base64 and PEM public key alike)."""
    pem = ALICE.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert verify_offline(_signed(), KEYS)
    assert verify_offline(_signed(), {("alice", 1): base64.b64encode(_raw(ALICE)).decode()})
    assert verify_offline(_signed(), {("alice", 1): pem})


def test_offline_verification_refuses_another_persons_key_name() -> None:
    """Control: `verify_offline` requires the key to be the statement person's own (the key name
    alone differs: the signature and the public key are alice's)."""
    assert not verify_offline(_signed(key=key_name("bob")), KEYS)


def test_offline_verification_refuses_a_key_version_the_signature_does_not_name() -> None:
    """Control: `verify_offline` requires the signature's `vN` to be the key version claimed (both
    versions' public keys are alice's, so only that comparison can refuse)."""
    keys = {("alice", 1): _raw(ALICE), ("alice", 2): _raw(ALICE)}
    assert not verify_offline(_signed(key_version=2), keys)
    assert verify_offline(_signed(version=2), keys)


def test_offline_verification_refuses_a_malformed_signature() -> None:
    """Control: `verify_offline` refuses a signature that is not `vault:vN:<base64>`."""
    assert not verify_offline(_signed(signature="v1:" + _signed().signature.split(":")[-1]), KEYS)


def test_offline_verification_refuses_without_that_versions_public_key() -> None:
    """Control: `verify_offline` refuses when the named version's public key is not given."""
    assert not verify_offline(_signed(), {("alice", 2): _raw(ALICE), ("bob", 1): _raw(ALICE)})


def test_offline_verification_refuses_a_public_key_that_is_not_one() -> None:
    """Control: an unreadable public key is a refusal, not an error (`except ValueError`)."""
    assert not verify_offline(_signed(), {("alice", 1): b"not a key"})


def test_offline_verification_refuses_a_signature_by_another_key() -> None:
    """Control: `_signature_valid` checks the ed25519 signature itself (the form is all right)."""
    assert not verify_offline(_signed(MALLORY), KEYS)


def test_offline_verification_refuses_a_signature_that_is_not_base64() -> None:
    """Control: `_signature_valid` refuses undecodable signature bytes (`binascii.Error`), not raises."""
    assert not verify_offline(_signed(signature="vault:v1:@@@@"), KEYS)


@pytest.mark.parametrize("extra", ["AAAA", "=", "==AA"])
def test_offline_verification_refuses_a_signature_with_data_after_its_padding(extra: str) -> None:
    """Control: `_signature_valid` decodes strictly: a lax decoder drops what follows the padding,
    so one signature would verify under many spellings (each a "new" signature to anything that
    tells statements apart by their signature)."""
    good = _signed()
    assert verify_offline(good, KEYS)
    assert not verify_offline(_signed(signature=good.signature + extra), KEYS)


@pytest.mark.parametrize(("a", "b"), [(True, 1), ("1", 1), (1, 1.0), (1, 2), ("a", "b")])
def test_bound_fields_differing_in_value_or_type_are_not_the_same(a: Any, b: Any) -> None:
    """Control: `_same` compares a bound field exactly, type included (True is not 1)."""
    assert not _same(a, b) and not _same(b, a)


@pytest.mark.parametrize("value", [1, "r-1", True, None, 1.5])
def test_bound_fields_equal_in_value_and_type_are_the_same(value: Any) -> None:
    """Control: `_same` accepts the exact value."""
    assert _same(value, value)


def test_the_stale_lease_sweep_finds_every_lease_an_earlier_attempt_left() -> None:
    """Control: `_stale_leases` returns each lease id of the heartbeat details, skips entries that
    name none, and all of them (not the first only)."""
    details = [{"lease_id": "a"}, {"lease_id": None}, "junk", {"other": 1}, {"lease_id": "b"}, {"lease_id": ""}]
    assert _stale_leases(details) == ["a", "b"]
    assert _stale_leases(None) == [] and _stale_leases(()) == []
