"""Production mode (issue 29): `LOCKGATE_PRODUCTION=1` refuses dev defaults at start with one line,
each unless allowed by name; without it nothing changes."""

from __future__ import annotations

import os
import subprocess
import sys

from lockgate.config import load_settings, production_problems

PROD = {
    "LOCKGATE_STATE_DIR": "/nonexistent",
    "LOCKGATE_PRODUCTION": "1",
    "VAULT_ADDR": "https://vault.internal:8200",
    "LOCKGATE_LEDGER_URL": "postgresql+psycopg://lockgate@db/lockgate",
    "LOCKGATE_PAYLOAD_KEY": "lockgate-payloads",
}


def test_a_production_configuration_passes_and_each_dev_default_is_refused_alone() -> None:
    assert production_problems(load_settings(PROD)) == []
    cases = {
        "plain-vault": {"VAULT_ADDR": "http://127.0.0.1:8200"},
        "sqlite-ledger": {"LOCKGATE_LEDGER_URL": "sqlite:///.lockgate/ledger.db"},
        "root-token": {"VAULT_TOKEN": "root"},
        "clear-payloads": {"LOCKGATE_PAYLOAD_KEY": ""},
    }
    for name, change in cases.items():
        problems = production_problems(load_settings({**PROD, **change}))
        assert len(problems) == 1 and f"LOCKGATE_PRODUCTION_ALLOW={name}" in problems[0], (name, problems)
        allowed = production_problems(load_settings({**PROD, **change, "LOCKGATE_PRODUCTION_ALLOW": f"x,{name}"}))
        assert allowed == [], (name, allowed)
    # Not in production mode: the dev defaults stand.
    dev = {"LOCKGATE_STATE_DIR": "/nonexistent"}
    assert production_problems(load_settings(dev)) == []


def test_a_production_worker_with_a_sqlite_ledger_refuses_to_start_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKGATE_", "VAULT_"))}
    env.update({**PROD, "LOCKGATE_LEDGER_URL": "sqlite:///ledger.db"})
    out = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "production mode refuses: LOCKGATE_LEDGER_URL is a SQLite file" in lines[0], lines
