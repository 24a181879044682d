"""lockgate.health: the checks the compose file and the Kubernetes probes run, on the real stack."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import Settings
from lockgate.health import check_url, check_worker


async def test_worker_check_passes_only_for_the_host_whose_worker_polls(
    worker_running: str, settings: Settings
) -> None:
    # A worker shows among the pollers once its first long poll reached the server.
    problem: str | None = "not checked"
    for _ in range(60):
        problem = await check_worker(settings)
        if problem is None:
            break
        await asyncio.sleep(0.5)
    assert problem is None
    # Another container's hostname: its worker is not among the pollers.
    problem = await check_worker(settings, hostname="lockgate-worker-elsewhere")
    assert problem is not None and "no worker on lockgate-worker-elsewhere" in problem
    # A task queue nobody polls.
    idle = settings.model_copy(update={"task_queue": "lockgate-health-idle"})
    problem = await check_worker(idle)
    assert problem is not None and "pollers: none" in problem


async def test_worker_check_fails_when_temporal_is_unreachable(settings: Settings) -> None:
    gone = settings.model_copy(update={"temporal_address": "127.0.0.1:9"})
    problem = await check_worker(gone, timeout=3)
    assert problem is not None and problem.startswith("Temporal at 127.0.0.1:9")


def test_worker_check_as_the_container_runs_it(worker_running: str, env: dict[str, str]) -> None:
    ok = subprocess.run([sys.executable, "-m", "lockgate.health", "worker"], env={**os.environ, **env}, timeout=60)
    assert ok.returncode == 0
    idle = {**os.environ, **env, "LOCKGATE_TASK_QUEUE": "lockgate-health-idle"}
    bad = subprocess.run(
        [sys.executable, "-m", "lockgate.health", "worker"], env=idle, timeout=60, capture_output=True, text=True
    )
    assert bad.returncode == 1, bad.stderr
    assert "unhealthy:" in bad.stderr


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_check(http_server: str) -> None:
    assert check_url(f"{http_server}/healthz") is None
    problem = check_url(f"{http_server}/other")
    assert problem is not None and "503" in problem
    closed = check_url("http://127.0.0.1:9/healthz", timeout=2)
    assert closed is not None and "127.0.0.1:9" in closed
    usage = subprocess.run([sys.executable, "-m", "lockgate.health", "nonsense"], capture_output=True, timeout=30)
    assert usage.returncode == 2


def test_the_containers_command_chain_runs_a_worker(worker_running: str, env: dict[str, str], tmp_path: Path) -> None:
    """What the compose worker runs, on the real stack without Docker: the image's entrypoint
    reads the ledger URL from a secret file and the AppRole credentials from the file the set-up
    leaves, then `lockgate worker` polls; the health check (plain environment, no secrets) sees
    it. Without the credentials file the worker refuses to start: nothing else provides them."""
    secret = ("LOCKGATE_VAULT_ROLE_ID", "LOCKGATE_VAULT_SECRET_ID", "LOCKGATE_LEDGER_URL", "VAULT_TOKEN")
    (tmp_path / "ledger_url").write_text(env["LOCKGATE_LEDGER_URL"] + "\n")
    creds = tmp_path / "worker.env"
    creds.write_text(
        "# lockgate setup\n"
        f"LOCKGATE_VAULT_ROLE_ID={env['LOCKGATE_VAULT_ROLE_ID']}\n"
        f"LOCKGATE_VAULT_SECRET_ID={env['LOCKGATE_VAULT_SECRET_ID']}\n"
    )
    (tmp_path / "state").mkdir()  # no dev.env here: the stack's defaults cannot stand in
    plain = {k: v for k, v in env.items() if k not in secret}
    plain |= {
        "LOCKGATE_STATE_DIR": str(tmp_path / "state"),
        "LOCKGATE_TASK_QUEUE": f"image-chain-{os.getpid()}",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    container = {**plain, "LOCKGATE_LEDGER_URL_FILE": str(tmp_path / "ledger_url"), "LOCKGATE_ENV_FROM": str(creds)}
    entrypoint = Path(__file__).resolve().parent.parent / "deploy" / "docker-entrypoint.sh"

    refused = subprocess.run(
        ["sh", str(entrypoint), "lockgate", "worker"],
        env={k: v for k, v in container.items() if k != "LOCKGATE_ENV_FROM"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "LOCKGATE_VAULT_ROLE_ID" in refused.stderr, refused.stderr

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(["sh", str(entrypoint), "lockgate", "worker"], env=container, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            check = subprocess.run(
                [sys.executable, "-m", "lockgate.health", "worker"],
                env=plain,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if check.returncode == 0:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, check.stderr
            time.sleep(1)
    finally:
        worker.terminate()  # SIGTERM, as `docker stop` sends: the worker stops cleanly
        code = worker.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
