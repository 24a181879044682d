"""`lockgate verify`: where trust comes from, and the one entry point the CLI and the tests call.

A ledger proves itself only against something outside it: the signing key's public keys and the
newest checkpoint as witnessed outside the database. Both come from Vault when it answers (the key's
published versions, the witness the checkpointer keeps), else from the local anchor file that an
earlier successful verification pinned (`$LOCKGATE_STATE_DIR/ledger-anchor.json`), else from a keys
file the auditor passes. Signatures themselves are always checked offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.activities.ledger import Ledger, LedgerMissing, VerifyReport
from lockgate.config import Settings
from lockgate.evidence import fingerprint
from lockgate.files import write_private
from lockgate.text import redact_url

__all__ = [
    "Anchors",
    "anchor_file",
    "load_keys_file",
    "local_anchors",
    "pin_keys",
    "pinned_keys",
    "vault_anchors",
    "verify_ledger",
]


@dataclass
class Anchors:
    keys: dict[int, str] | None = None
    witness: dict[str, Any] | None = None
    source: str = "none"


def anchor_file(settings: Settings) -> Path:
    return Path(settings.state_dir) / "ledger-anchor.json"


def _read_anchor_file(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads(anchor_file(settings).read_text())
    except (OSError, ValueError):
        return {}


def load_keys_file(path: str) -> dict[int, str]:
    """Public keys an auditor trusts: a JSON object {"version": "base64 key", ...}, or a bundle's or
    anchor file's `keys`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        from lockgate.errors import UserError

        raise UserError(f"cannot read keys file {path}: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("keys"), dict):
        data = data["keys"]
    return {int(v): str(k) for v, k in data.items()}


def _vault_client(settings: Settings) -> Any:
    import hvac

    timeout = int(os.environ.get("LOCKGATE_VERIFY_VAULT_TIMEOUT", "3"))
    client = hvac.Client(url=settings.vault_addr, timeout=timeout)
    if settings.vault_role_id and settings.vault_secret_id:
        client.auth.approle.login(role_id=settings.vault_role_id, secret_id=settings.vault_secret_id)
    elif settings.vault_token:
        client.token = settings.vault_token
    else:
        return None
    return client


def vault_anchors(settings: Settings, ledger_name: str) -> Anchors | None:
    """The ledger key's published public keys and the witness, from Vault; None if it does not answer."""
    from lockgate.activities.anchor import TransitAnchor

    try:
        client = _vault_client(settings)
        if client is None:
            return None
        anchor = TransitAnchor(lambda: client)
        return Anchors(keys=anchor.public_keys(), witness=anchor.read_witness(ledger_name), source="Vault")
    except Exception:  # noqa: BLE001 - unreachable, or no key yet: verify with the local anchors
        return None


def local_anchors(settings: Settings, ledger_name: str) -> Anchors | None:
    data = _read_anchor_file(settings)
    keys = data.get("keys")
    if not keys:
        return None
    return Anchors(
        keys={int(v): str(k) for v, k in keys.items()},
        witness=(data.get("ledgers") or {}).get(ledger_name),
        source=f"local anchor file {anchor_file(settings)}",
    )


def pin_keys(settings: Settings, keys: dict[int, str]) -> None:
    """Pins the ledger key's public keys (as Vault published them) for later offline checks."""
    data = _read_anchor_file(settings)
    data.setdefault("keys", {}).update({str(v): k for v, k in keys.items()})
    _write_anchor_file(settings, data)


def pinned_keys(settings: Settings) -> tuple[dict[int, str] | None, str]:
    """The keys an earlier online check pinned in the state dir, if any."""
    keys = _read_anchor_file(settings).get("keys")
    if not keys:
        return None, "nothing pinned"
    return {int(v): str(k) for v, k in keys.items()}, f"pinned in {anchor_file(settings)}"


def _write_anchor_file(settings: Settings, data: dict[str, Any]) -> None:
    path = anchor_file(settings)
    try:
        write_private(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # read-only state dir: nothing pinned, nothing lost


def pin(settings: Settings, report: VerifyReport, ledger_name: str, keys: dict[int, str]) -> None:
    """Remembers what was just proven (keys, newest checkpoint): a later offline verify of this
    ledger fails if it has been rolled back or re-keyed since."""
    if not report.ok or report.proven_through is None:
        return
    data = _read_anchor_file(settings)
    data.setdefault("keys", {}).update({str(v): k for v, k in keys.items()})
    data.setdefault("ledgers", {})[ledger_name] = {
        "ledger_id": report.ledger_id,
        "seq": report.proven_through["checkpoint"],
        "hash": report.proven_through["hash"],
        "at": report.proven_through["at"],
    }
    _write_anchor_file(settings, data)


def verify_ledger(
    settings: Settings, *, strict: bool = False, keys: dict[int, str] | None = None, online: bool = True
) -> tuple[VerifyReport, Anchors]:
    """Verifies the configured ledger without ever creating it (LedgerMissing if absent or empty)."""
    ledger = Ledger(settings.ledger_url, create=False)
    try:
        anchors = Anchors(keys=keys, source="keys file") if keys else None
        if anchors is None and online:
            anchors = vault_anchors(settings, ledger.name)
        if anchors is None:
            anchors = local_anchors(settings, ledger.name) or Anchors()
        elif anchors.witness is None and anchors.source != "Vault":
            local = local_anchors(settings, ledger.name)
            anchors.witness = local.witness if local else None
        report = ledger.verify_report(trusted_keys=anchors.keys, witness=anchors.witness, grace=0 if strict else 60)
        if report.entries == 0 and report.checkpoints == 0:
            raise LedgerMissing(f"the ledger at {redact_url(settings.ledger_url)} is empty")
        if anchors.keys is None and report.checkpoints:
            report.problems.append(
                "no trusted public key for the ledger's signing key (Vault unreachable, nothing pinned): "
                f"the checkpoints verify only against keys recorded in the ledger itself "
                f"({', '.join(fingerprint(k) for k in report.keys.values())}); pass --keys FILE"
            )
        if anchors.witness is None:
            report.witness = f"none (consulted: {anchors.source})"
        else:
            report.witness += f" ({anchors.source})"
        if report.ok and anchors.keys:
            pin(settings, report, ledger.name, {**report.keys, **anchors.keys})
        return report, anchors
    finally:
        ledger.dispose()
