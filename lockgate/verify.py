"""`lockgate verify`: where trust comes from, and the one entry point the CLI and the tests call.

A ledger proves itself only against something outside it: the signing key's public keys and the
newest checkpoint as witnessed outside the database. Both come from Vault when it answers (the key's
published versions, the witness the checkpointer keeps), else from a keys file the auditor passes,
else from the local anchor file that an earlier successful verification pinned
(`$LOCKGATE_STATE_DIR/ledger-anchor.json`). Signatures themselves are always checked offline.

The anchor file is believed only if nobody but its owner can have written it: a regular file (no
symlink) owned by the user verifying, not writable by group or others, in a directory with the same
properties (pinning writes it 0600 in a 0700 directory). Anything else is refused by name, and what
it would have anchored is reported unanchored.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.activities.ledger import Ledger, LedgerMissing, VerifyReport
from lockgate.config import Settings
from lockgate.evidence import fingerprint
from lockgate.text import redact_url

__all__ = [
    "Anchors",
    "anchor_file",
    "anchor_problem",
    "load_keys_file",
    "local_anchors",
    "open_ledger",
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


def _untrusted(path: Path, what: str) -> str | None:
    """Why `path` (a file or directory) may have been written by someone other than this user."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return f"{what} {path} is a symbolic link"
    if st.st_uid != os.geteuid():
        return f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def anchor_problem(settings: Settings) -> str | None:
    """Why the pinned anchor file cannot be trusted (None: trusted, or nothing pinned)."""
    path = anchor_file(settings)
    try:
        problem = _untrusted(path, "anchor file")
        if problem is None and not stat.S_ISREG(os.lstat(path).st_mode):
            problem = f"anchor file {path} is not a regular file"
        if problem is None:
            problem = _untrusted(path.parent, "anchor directory")
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"anchor file {path}: {err.strerror or err}"
    return problem


def _read_anchor_file(settings: Settings) -> dict[str, Any]:
    """The pinned anchor, or {} if there is none or it cannot be trusted (see `anchor_problem`)."""
    if anchor_problem(settings) is not None:
        return {}
    try:
        data = json.loads(anchor_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
    from lockgate import vaultio

    timeout = settings.verify_vault_timeout
    client = vaultio.client(settings.vault_addr, timeout=timeout)
    if settings.vault_role_id and settings.vault_secret_id:
        client.auth.approle.login(role_id=settings.vault_role_id, secret_id=settings.vault_secret_id)
    elif settings.vault_token:
        client.token = settings.vault_token
    else:
        return None
    return client


def open_ledger(settings: Settings, *, create: bool = True, online: bool = True, **kwargs: Any) -> Ledger:
    """The configured ledger, with its row key when this shell may derive it from Vault (the
    worker's AppRole, or a token whose policy allows it): its rows then carry lockgate's MAC, and
    its reads and `verify` check every row's. Else the ledger alone (hashes and signed heads only)."""
    from lockgate.activities.ledger.rowkey import VaultRowKeys
    from lockgate.worker import ledger_pool

    kwargs.setdefault("pool", ledger_pool(settings))
    client = None
    if online:
        try:
            client = _vault_client(settings)
        except Exception:  # noqa: BLE001 - Vault unreachable: the ledger without its row key
            client = None
    if client is not None:
        try:
            return Ledger(
                settings.ledger_url, create=create, row_key=VaultRowKeys(lambda: client), strict_events=True, **kwargs
            )
        except LedgerMissing:
            raise
        except Exception as err:  # noqa: BLE001 - no right to the row key: the ledger alone
            logging.getLogger("lockgate.verify").info("ledger row key not available: %s", err)
    return Ledger(settings.ledger_url, create=create, strict_events=True, **kwargs)


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
    """The pinned anchor; an untrusted one anchors nothing (its refusal is the `source`)."""
    problem = anchor_problem(settings)
    if problem is not None:
        return Anchors(source=f"nothing: REFUSED {problem}")
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
    """The keys an earlier online check pinned in the state dir, if any (and only if the anchor
    file is one only its owner can have written)."""
    problem = anchor_problem(settings)
    if problem is not None:
        return None, f"REFUSED {problem}"
    keys = _read_anchor_file(settings).get("keys")
    if not keys:
        return None, "nothing pinned"
    return {int(v): str(k) for v, k in keys.items()}, f"pinned in {anchor_file(settings)}"


def _write_anchor_file(settings: Settings, data: dict[str, Any]) -> None:
    path = anchor_file(settings)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path.parent)
        if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022:
            # Ours but writable by others (a umask of 002): what is pinned now was just proven
            # online, so close the directory first; nothing it held before is read.
            os.chmod(path.parent, stat.S_IMODE(st.st_mode) & ~0o022)
        if _untrusted(path.parent, "anchor directory") is not None:
            return  # others could swap the file: pinning there would anchor nothing
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
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
    ledger = open_ledger(settings, create=False, online=online)
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
                "no trusted public key for the ledger's signing key (Vault unreachable, "
                f"{anchors.source if 'REFUSED' in anchors.source else 'nothing pinned'}): "
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
