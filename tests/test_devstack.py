"""`lockgate dev up | down | status` on its own stack: idempotent, honest status, no process left."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lockgate.bootstrap import PAYLOAD_KEY
from lockgate.devstack import DevStack, _alive, free_port
from lockgate.errors import UserError
from tests.support.stack import run_cli


def test_up_twice_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = {
        "LOCKGATE_DEV_TEMPORAL_PORT": str(free_port()),
        "LOCKGATE_DEV_UI_PORT": str(free_port()),
        "LOCKGATE_DEV_VAULT_PORT": str(free_port()),
        "LOCKGATE_DEV_CODEC_PORT": str(free_port()),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCKGATE_", "VAULT_"))}
    env.update(ports, LOCKGATE_STATE_DIR=str(state))
    # An operator's shell may hold tokens: none of them reaches the codec server `up` starts.
    env.update(VAULT_TOKEN="shell-token-for-codec-check", LOCKGATE_OPERATOR_TOKEN="operator-token-for-codec-check")
    stack = DevStack(
        state,
        temporal_port=int(ports["LOCKGATE_DEV_TEMPORAL_PORT"]),
        ui_port=int(ports["LOCKGATE_DEV_UI_PORT"]),
        vault_port=int(ports["LOCKGATE_DEV_VAULT_PORT"]),
        codec_port=int(ports["LOCKGATE_DEV_CODEC_PORT"]),
    )
    try:
        first = run_cli(env, "dev", "up")
        assert first.returncode == 0, first.stderr
        pids = stack.status()
        assert all(s["healthy"] for s in pids.values()), pids
        dev_env = stack.env()
        for key in (
            "LOCKGATE_TEMPORAL_ADDRESS",
            "VAULT_ADDR",
            "LOCKGATE_VAULT_ROLE_ID",
            "LOCKGATE_VAULT_SECRET_ID",
            "VAULT_TOKEN",
            "LOCKGATE_PG_SOCKET_DIR",
            "LOCKGATE_PG_DSN",
            "LOCKGATE_UI_ADDRESS",
            "LOCKGATE_DEV_PASSWORD",
        ):
            assert dev_env.get(key), key
        assert (state / "dev.env").stat().st_mode & 0o077 == 0  # holds the dev root token
        # Payloads encrypted in dev; the UI decodes through the codec server, which holds no token.
        assert dev_env["LOCKGATE_PAYLOAD_KEY"] == PAYLOAD_KEY
        assert dev_env["LOCKGATE_CODEC_ENDPOINT"] == stack.codec_endpoint == pids["codec"]["address"]
        cmdline = Path(f"/proc/{pids['temporal']['pid']}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--ui-codec-endpoint") + 1] == stack.codec_endpoint.encode()
        codec_env = Path(f"/proc/{pids['codec']['pid']}/environ").read_bytes()
        assert b"VAULT_TOKEN=" not in codec_env and b"OPERATOR_TOKEN=" not in codec_env
        assert dev_env["VAULT_TOKEN"].encode() not in codec_env

        second = run_cli(env, "dev", "up")  # idempotent: same processes, same credentials
        assert second.returncode == 0, second.stderr
        assert {k: v["pid"] for k, v in stack.status().items()} == {k: v["pid"] for k, v in pids.items()}
        assert stack.env()["LOCKGATE_VAULT_SECRET_ID"] == dev_env["LOCKGATE_VAULT_SECRET_ID"]
        assert stack.env()["LOCKGATE_DEV_PASSWORD"] == dev_env["LOCKGATE_DEV_PASSWORD"]

        status = run_cli(env, "dev", "status", "--json")
        assert status.returncode == 0 and '"healthy": true' in status.stdout
        # Without the port variables, `dev status` finds the ports the stack was started with.
        bare = {k: v for k, v in env.items() if not k.startswith("LOCKGATE_DEV_")}
        found = run_cli(bare, "dev", "status", "--json")
        assert found.returncode == 0 and '"healthy": true' in found.stdout, found.stdout
        assert f"127.0.0.1:{ports['LOCKGATE_DEV_TEMPORAL_PORT']}" in found.stdout

        # A port held by someone else is a clear error, not a hang.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            other = DevStack(tmp_path / "other", temporal_port=busy.getsockname()[1], ui=False)
            with pytest.raises(UserError, match="already in use"):
                other.up()
            other.down()
    finally:
        down = run_cli(env, "dev", "down")
    assert down.returncode == 0
    for name, s in pids.items():
        assert not _alive(s["pid"]), f"{name} still running"
    after = run_cli(env, "dev", "status")
    assert after.returncode == 1 and "DOWN" in after.stdout
