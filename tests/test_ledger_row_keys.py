"""The ledger's row MACs (`activities/ledger/rowkey.py`): a row counts as written by a lockgate
worker only with a tag made by the row key of its version, for this ledger, over this very entry
hash. Pure: keys held in memory (`static_row_key`, a derive function standing in for Transit);
`tests/test_ledger_forgery.py` has the same checks against OpenBao's Transit key versions."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from lockgate.activities.ledger.rowkey import RowKey, static_row_key

HASH = "ab" * 32


def _versions(keys: dict[int, bytes], newest: int) -> tuple[RowKey, list[int | None]]:
    """A row key whose derive function knows `keys` (as Transit does its versions) and records asks."""
    asked: list[int | None] = []

    def derive(version: int | None) -> tuple[int, bytes]:
        asked.append(version)
        if version is None:
            return newest, keys[newest]
        if version not in keys:
            raise KeyError(version)  # trimmed below the minimum version, or never made
        return version, keys[version]

    return RowKey(derive, "ledger-1"), asked


def test_a_tag_is_the_hmac_of_ledger_and_entry_under_the_newest_version() -> None:
    key, _ = _versions({1: b"k1", 2: b"k2"}, newest=2)
    tag = key.mac(HASH)
    expected = hmac.new(b"k2", f"ledger-1|{HASH}".encode(), hashlib.sha256).hexdigest()
    assert tag == f"v2:{expected}" and key.version == 2
    assert key.check(HASH, tag)


def test_a_tag_for_another_entry_ledger_or_key_fails() -> None:
    key = static_row_key(b"secret")("ledger-1")
    tag = key.mac(HASH)
    assert key.check(HASH, tag)
    assert not key.check("cd" * 32, tag)  # another row
    assert not static_row_key(b"secret")("ledger-2").check(HASH, tag)  # another ledger's row
    assert not static_row_key(b"other")("ledger-1").check(HASH, tag)  # not the workers' key
    body = tag.partition(":")[2]
    flipped = ("0" if body[0] != "0" else "1") + body[1:]
    assert not key.check(HASH, f"v1:{flipped}")


@pytest.mark.parametrize(
    "tag",
    ["", "1:abc", "v:abc", "vx:abc", "v1:", "v1", "v-1:abc", "V1:abc", "v1 :abc"],
)
def test_a_tag_of_another_shape_fails(tag: str) -> None:
    key = static_row_key(b"secret")("ledger-1")
    good = key.mac(HASH).partition(":")[2]
    assert not key.check(HASH, tag)
    assert not key.check(HASH, tag.replace("abc", good))


def test_no_tag_at_all_fails() -> None:
    key = static_row_key(b"secret")("ledger-1")
    assert not key.check(HASH, None)  # type: ignore[arg-type]  # a row with no tag column value


def test_an_older_version_verifies_with_its_own_key_asked_once() -> None:
    key, asked = _versions({1: b"k1", 2: b"k2"}, newest=2)
    old = f"v1:{hmac.new(b'k1', f'ledger-1|{HASH}'.encode(), hashlib.sha256).hexdigest()}"
    assert key.check(HASH, old) and key.check(HASH, old)
    assert asked == [None, 1]  # the newest at start, version 1 once (then remembered)
    # The old version's tag is not the newest key's: a tag names the version it was made with.
    assert not key.check(HASH, old.replace("v1:", "v2:", 1))


def test_a_version_the_key_does_not_have_verifies_nothing_and_is_remembered() -> None:
    key, asked = _versions({2: b"k2"}, newest=2)
    tag = key.mac(HASH)
    trimmed = tag.replace("v2:", "v1:", 1)
    assert not key.check(HASH, trimmed) and not key.check(HASH, trimmed)
    assert asked == [None, 1]
    assert not key.check(HASH, tag.replace("v2:", "v7:", 1))


def test_a_derive_that_answers_another_version_verifies_nothing() -> None:
    """Transit answering with its newest version for an asked one (a version it no longer has)
    must not make the newest key stand in for the old one."""

    def derive(version: int | None) -> tuple[int, bytes]:
        return 2, b"k2"

    key = RowKey(derive, "ledger-1")
    tag = key.mac(HASH)
    assert key.check(HASH, tag)
    assert not key.check(HASH, tag.replace("v2:", "v1:", 1))
