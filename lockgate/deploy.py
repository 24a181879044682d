"""Production bootstrap helpers (used by docker-compose.yml's one-shot `openbao-init` service).

`python -m lockgate.deploy openbao-init` initialises OpenBao on first start (one unseal key share;
keys and root token written only to $LOCKGATE_KEYS_DIR, default /keys, mode 0600), unseals it,
configures the database engine against $LOCKGATE_SHOP_DSN, lockgate's policies, token role and the
worker's AppRole, and writes the worker's AppRole credentials to $LOCKGATE_KEYS_DIR/worker.env.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lockgate import vaultio
from lockgate.bootstrap import bootstrap_vault
from lockgate.spec import load_agents

__all__ = ["engine_url", "openbao_init"]


def engine_url(dsn: str) -> tuple[str, str, str]:
    """Splits a Postgres DSN into Vault's URL template (credentials as placeholders), user, password."""
    parts = urlsplit(dsn)
    if not parts.username or not parts.password:
        raise ValueError("LOCKGATE_SHOP_DSN must carry the admin user and password Vault manages roles with")
    host = parts.hostname or ""
    netloc = "{{username}}:{{password}}@" + host + (f":{parts.port}" if parts.port else "")
    scheme = "postgresql"
    return urlunsplit((scheme, netloc, parts.path, parts.query, "")), parts.username, parts.password


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def openbao_init(addr: str, keys_dir: Path, shop_dsn: str, *, wait_seconds: float = 120) -> None:
    client = vaultio.client(addr)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            initialized = client.sys.is_initialized()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    init_file = keys_dir / "init.json"
    if not initialized:
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        _write_private(init_file, json.dumps({"keys": result["keys"], "root_token": result["root_token"]}))
    keys = json.loads(init_file.read_text())
    if client.sys.is_sealed():
        client.sys.submit_unseal_keys(keys["keys"])
    client.token = keys["root_token"]
    url, user, password = engine_url(shop_dsn)
    # The configured agents' declared database secrets become Vault roles (LOCKGATE_AGENT_MODULES and
    # the `lockgate.agents` entry points); each database the roles name gets its own connection.
    agents = load_agents(os.environ.get("LOCKGATE_AGENT_MODULES", ""))
    boot = bootstrap_vault(
        client,
        connection_url=lambda db: urlunsplit(urlsplit(url)._replace(path=f"/{db}")),
        db_username=user,
        db_password=password,
        agents=agents,
    )
    _write_private(
        keys_dir / "worker.env", f"LOCKGATE_VAULT_ROLE_ID={boot.role_id}\nLOCKGATE_VAULT_SECRET_ID={boot.secret_id}\n"
    )
    print(f"openbao ready; worker AppRole credentials in {keys_dir / 'worker.env'}")


def main(argv: list[str]) -> int:
    if argv[:1] != ["openbao-init"]:
        print("usage: python -m lockgate.deploy openbao-init", file=sys.stderr)
        return 2
    dsn = os.environ.get("LOCKGATE_SHOP_DSN")
    if not dsn:
        print("LOCKGATE_SHOP_DSN is not set", file=sys.stderr)
        return 2
    openbao_init(
        os.environ.get("VAULT_ADDR", "http://127.0.0.1:8200"), Path(os.environ.get("LOCKGATE_KEYS_DIR", "/keys")), dsn
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
