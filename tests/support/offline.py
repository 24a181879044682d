"""The environment of an auditor's machine: every server address points where nothing listens."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEAD", "offline"]

# Every server address points where nothing listens, and no database is configured.
DEAD = {
    "LOCKGATE_TEMPORAL_ADDRESS": "127.0.0.1:9",
    "VAULT_ADDR": "http://127.0.0.1:9",
    "LOCKGATE_PG_DSN": "",
    "LOCKGATE_PG_SOCKET_DIR": "",
    "LOCKGATE_VAULT_ROLE_ID": "",
    "LOCKGATE_VAULT_SECRET_ID": "",
    "VAULT_TOKEN": "",
}


def offline(env: dict[str, str], tmp: Path, *, state: Path | None = None) -> dict[str, str]:
    return {
        **env,
        **DEAD,
        "LOCKGATE_LEDGER_URL": f"sqlite:///{tmp / 'no-ledger-here.db'}",
        "LOCKGATE_STATE_DIR": str(state or tmp / "auditor"),
    }
