"""Malformed or schema-invalid policies: the worker refuses to start; `policy check` exits 2 (scenario 14)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.stack import ROOT, run_cli


def broken_copy(tmp_path: Path, policy_dir: Path) -> Path:
    bad = tmp_path / "bad-policies"
    shutil.copytree(policy_dir, bad)
    (bad / "broken.cedar").write_text(
        "// a typo in a condition, and a policy without an id\n"
        '@id("broken.typo")\n'
        'permit (principal, action == Action::"orders.lookup", resource)\n'
        "when { context.args.amount > 1 };\n"
        "\n"
        "permit (principal, action, resource);\n"
    )
    return bad


def test_policy_check_accepts_the_bundle(env: dict[str, str], policy_dir: Path) -> None:
    result = run_cli(env, "policy", "check", str(policy_dir))
    assert result.returncode == 0, result.stderr
    assert "policies valid" in result.stdout


def test_policy_check_reports_each_error_with_file_and_line(
    env: dict[str, str], policy_dir: Path, tmp_path: Path
) -> None:
    bad = broken_copy(tmp_path, policy_dir)
    result = run_cli(env, "policy", "check", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}/broken.cedar:6:") and "@id" in line for line in lines), lines
    assert any(line.startswith(f"{bad}/broken.cedar:2:") and "amount" in line for line in lines), lines
    assert "Traceback" not in result.stderr


def test_worker_refuses_to_start_on_an_invalid_bundle(env: dict[str, str], policy_dir: Path, tmp_path: Path) -> None:
    bad = broken_copy(tmp_path, policy_dir)
    result = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={**env, "LOCKGATE_POLICY_DIR": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    assert f"{bad}/broken.cedar:6:" in result.stderr and f"{bad}/broken.cedar:2:" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_refuses_bad_vault_credentials(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={**env, "LOCKGATE_VAULT_SECRET_ID": "not-a-secret-id"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2 and "AppRole" in result.stderr
