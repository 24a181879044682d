"""Pure checks of the evidence primitives: Merkle audit paths and Transit signature envelopes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lockgate.evidence import (
    Head,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    root_from_proof,
    signature_version,
    verify_signature,
)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_leaf_proves_its_inclusion_and_no_other_leaf_does(count: int) -> None:
    leaves = [Head(f"run-{i}", i + 1, hashlib.sha256(str(i).encode()).hexdigest()).leaf() for i in range(count)]
    root = merkle_root(leaves)
    for i, leaf in enumerate(leaves):
        path = inclusion_proof(i, leaves)
        assert root_from_proof(i, count, leaf, path) == root
        forged = leaf_hash(b"forged")
        assert root_from_proof(i, count, forged, path) != root
        if count > 1:
            other = (i + 1) % count
            assert root_from_proof(other, count, leaf, inclusion_proof(other, leaves)) != root


def test_a_final_flag_or_size_is_part_of_the_leaf() -> None:
    head = Head("run-1", 5, "a" * 64)
    assert head.leaf() != Head("run-1", 5, "a" * 64, final=True).leaf()
    assert head.leaf() != Head("run-1", 6, "a" * 64).leaf()


def test_transit_signature_envelope_verifies_offline() -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    signature = "vault:v3:" + base64.b64encode(key.sign(b"message")).decode()
    assert signature_version(signature) == 3
    assert verify_signature(public, signature, b"message")
    assert not verify_signature(public, signature, b"massage")
    with pytest.raises(ValueError):
        signature_version("not-a-signature")
