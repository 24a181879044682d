"""Row authentication: every row a lockgate worker appends carries a MAC only lockgate can make.

The hash chain proves order, but anyone with write access to the database can recompute it; the
checkpoints prove only what was signed. A row MAC closes the gap in between: HMAC-SHA256 over the
ledger's id and the row's entry hash (which commits to its chain, position, previous hash and
content), with a key derived from a Vault Transit key that only lockgate workers may use
(`transit/hmac/lockgate-ledger-rows`). The key is derived once per key version at worker start and
kept in memory: an append costs one local HMAC (microseconds), never a Vault round trip.

A row without a valid MAC was not written by a lockgate worker (inserted, edited or re-chained in
the database directly): readers that act on the ledger ignore it, the checkpointer never signs it,
`lockgate verify` names it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections.abc import Callable
from typing import Any

from lockgate.names import LEDGER_ROW_KEY, TRANSIT_MOUNT

__all__ = ["LEDGER_ROW_KEY", "RowKey", "RowKeySource", "VaultRowKeys", "static_row_key"]

_LABEL = "lockgate ledger row key v1|"


class RowKey:
    """The MAC keys of one ledger, by Transit key version.

    Args:
        derive: returns (version, key bytes) for a version, or for the newest one given None.
    """

    def __init__(self, derive: Callable[[int | None], tuple[int, bytes]], ledger_id: str) -> None:
        self._derive = derive
        self._ledger_id = ledger_id
        self._lock = threading.Lock()
        version, key = derive(None)
        self.version = version
        self._keys: dict[int, bytes | None] = {version: key}

    def _key(self, version: int) -> bytes | None:
        with self._lock:
            if version in self._keys:
                return self._keys[version]
        try:
            got, key = self._derive(version)
            found: bytes | None = key if got == version else None
        except Exception:  # noqa: BLE001 - an unknown or trimmed version: no row of it verifies
            found = None
        with self._lock:
            self._keys[version] = found
        return found

    def _tag(self, key: bytes, entry_hash: str) -> str:
        return hmac.new(key, f"{self._ledger_id}|{entry_hash}".encode(), hashlib.sha256).hexdigest()

    def mac(self, entry_hash: str) -> str:
        """The tag of a row whose entry hash is `entry_hash`: `v<version>:<hex>`."""
        key = self._keys[self.version]
        assert key is not None
        return f"v{self.version}:{self._tag(key, entry_hash)}"

    def check(self, entry_hash: str, tag: str) -> bool:
        """Whether `tag` is a lockgate worker's MAC of the row with this entry hash."""
        version, _, value = (tag or "").partition(":")
        if not version.startswith("v") or not version[1:].isdigit() or not value:
            return False
        key = self._key(int(version[1:]))
        return key is not None and hmac.compare_digest(self._tag(key, entry_hash), value)


RowKeySource = Callable[[str], RowKey]
"""Makes the row key of a ledger, given its id (Ledger(..., row_key=...))."""


class VaultRowKeys:
    """Row keys derived from Vault Transit: the key of version v is Transit's HMAC (sha2-256, key
    version v) of a fixed label and the ledger's id. Only a token whose policy allows
    `transit/hmac/lockgate-ledger-rows` (lockgate's worker AppRole) can derive it.

    Args:
        client: returns an authenticated hvac client.
    """

    def __init__(
        self, client: Callable[[], Any], *, key_name: str = LEDGER_ROW_KEY, mount: str = TRANSIT_MOUNT
    ) -> None:
        self._client = client
        self._key_name = key_name
        self._mount = mount

    def __call__(self, ledger_id: str) -> RowKey:
        def derive(version: int | None) -> tuple[int, bytes]:
            body: dict[str, Any] = {"input": base64.b64encode((_LABEL + ledger_id).encode()).decode()}
            if version is not None:
                body["key_version"] = version
            resp = self._client().adapter.post(f"/v1/{self._mount}/hmac/{self._key_name}/sha2-256", json=body)
            tag = str(resp["data"]["hmac"])  # vault:v<N>:<base64>
            _, ver, value = tag.split(":", 2)
            return int(ver.lstrip("v")), base64.b64decode(value)

        return RowKey(derive, ledger_id)


def static_row_key(secret: bytes) -> RowKeySource:
    """A row key from a secret held in memory (tests, benchmarks): version 1 only."""
    return lambda ledger_id: RowKey(lambda _v: (1, secret), ledger_id)
