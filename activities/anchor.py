"""Ledger anchoring in Vault: checkpoints signed with a Transit key that cannot be exported, its
public keys (every version), and a witness of the newest checkpoint kept outside the database.

hvac is synchronous: called from the ledger's checkpointer (a thread) and from sync activities.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions

from lockgate.names import LEDGER_SIGNING_KEY, LEDGER_WITNESS_PATH, RUNS_MOUNT, TRANSIT_MOUNT

__all__ = ["TransitAnchor"]


class TransitAnchor:
    """The ledger's `Signer`: Vault Transit (ed25519, exportable=false) plus a kv witness.

    Args:
        client: returns an authenticated hvac client (the worker's AppRole login, renewed as needed).
        key_name: the Transit key; the worker's policy may sign with it and read its public keys.
    """

    def __init__(
        self, client: Callable[[], hvac.Client], *, key_name: str = LEDGER_SIGNING_KEY, mount: str = TRANSIT_MOUNT
    ) -> None:
        self._client = client
        self.key_name = key_name
        self._mount = mount

    def sign(self, message: bytes) -> str:
        resp = self._client().secrets.transit.sign_data(
            name=self.key_name, hash_input=base64.b64encode(message).decode(), mount_point=self._mount
        )
        return str(resp["data"]["signature"])

    def public_keys(self) -> dict[int, str]:
        """Every version's public key (base64 raw ed25519), as Vault publishes them."""
        data = self._client().secrets.transit.read_key(name=self.key_name, mount_point=self._mount)["data"]
        return {int(v): str(info["public_key"]) for v, info in data["keys"].items()}

    def write_witness(self, name: str, record: dict[str, Any]) -> None:
        current = self.read_witness(name)
        if current is not None and current.get("ledger_id") == record["ledger_id"]:
            if int(current.get("seq", 0)) >= int(record["seq"]):
                return  # a newer checkpoint was witnessed by another worker meanwhile
        self._client().secrets.kv.v1.create_or_update_secret(
            path=f"{LEDGER_WITNESS_PATH}/{name}", secret=record, mount_point=RUNS_MOUNT
        )

    def read_witness(self, name: str) -> dict[str, Any] | None:
        try:
            data = self._client().secrets.kv.v1.read_secret(
                path=f"{LEDGER_WITNESS_PATH}/{name}", mount_point=RUNS_MOUNT
            )
        except hvac.exceptions.InvalidPath:
            return None
        record = dict(data["data"])
        record["seq"] = int(record["seq"])
        return record
