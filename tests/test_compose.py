"""docker-compose.yml is structurally sound and speaks the configuration contract (DESIGN.md)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = {
    "LOCKGATE_TEMPORAL_ADDRESS",
    "LOCKGATE_NAMESPACE",
    "LOCKGATE_TASK_QUEUE",
    "VAULT_ADDR",
    "LOCKGATE_VAULT_ROLE_ID",
    "LOCKGATE_VAULT_SECRET_ID",
    "LOCKGATE_POLICY_DIR",
    "LOCKGATE_LEDGER_URL",
    "LOCKGATE_STATE_DIR",
}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_healthchecks() -> None:
    services = compose()["services"]
    assert {"postgresql", "temporal", "temporal-ui", "openbao", "openbao-init", "lockgate-worker"} <= set(services)
    for name in ("postgresql", "temporal", "temporal-ui", "openbao", "lockgate-worker"):
        assert "healthcheck" in services[name], name
        assert services[name].get("image"), name
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"


def test_worker_env_matches_the_config_contract() -> None:
    worker = compose()["services"]["lockgate-worker"]
    assert set(worker["environment"]) == CONTRACT
    from lockgate.config import _ENV_NAMES

    assert CONTRACT <= set(_ENV_NAMES.values())


def test_no_secret_is_hard_coded() -> None:
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|DSN|LEDGER_URL", key):
                assert str(value).startswith("${"), f"{name}.{key} is hard-coded"


def test_referenced_files_exist() -> None:
    assert (ROOT / "Dockerfile").is_file() and (ROOT / "deploy" / "openbao.hcl").is_file()
    init = compose()["services"]["openbao-init"]["entrypoint"]
    assert init[:3] == ["python", "-m", "lockgate.deploy"]
    import lockgate.deploy  # noqa: F401 - the module the one-shot runs

    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
