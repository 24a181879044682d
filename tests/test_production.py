"""A production-shaped deployment on this machine (issue 28, item 4): slow, run with --run-slow.

OpenBao in server mode (raft, TLS with a CA made here, the audit device of deploy/openbao/openbao.hcl,
5/3 Shamir), a Temporal dev server WITHOUT lockgate's namespace or search attributes, PostgreSQL with
separate migration and runtime roles. `lockgate setup` prepares them with the root token, the root
token is revoked, and a second setup run (as `lockgate-setup`) has nothing to do. A worker with only
production settings (https OpenBao + VAULT_CACERT, PostgreSQL ledger as the runtime role) runs a
refund that needs finance's approval (signed with `lockgate approve` on the CLI); OpenBao is
restarted and unsealed with three other shares and the next run works; a backup (OpenBao raft
snapshot, then pg_dump of the ledger) restored into fresh servers passes `lockgate verify` and
`lockgate audit`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import psycopg
import pytest
from psycopg import sql

from lockgate import vaultio
from lockgate.devstack import DevStack, _embedded_postgres, bao_binary, free_port, temporal_binary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

PG_PASSWORD = "pg-admin-" + uuid.uuid4().hex[:8]
MIGRATE_PASSWORD = "migrate-" + uuid.uuid4().hex[:8]
RUNTIME_PASSWORD = "runtime-" + uuid.uuid4().hex[:8]
PEOPLE_PASSWORD = "people-" + uuid.uuid4().hex[:8]


# -- processes -------------------------------------------------------------------------------------
class Procs:
    """Every process this module starts, stopped at the end whatever happened (by pid only)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.postgres: list[DevStack] = []

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for pg in self.postgres:
            pg.stop_postgres()


@pytest.fixture(scope="module")
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{log.name} exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


# -- TLS -------------------------------------------------------------------------------------------
def make_tls(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for IP:127.0.0.1 signed by it (openssl)."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=lockgate test CA",
    )
    run(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=openbao",
    )
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    run(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    return d / "ca.crt", d / "tls.crt", d / "tls.key"


# -- OpenBao ---------------------------------------------------------------------------------------
class OpenBao:
    """`bao server` with deploy/openbao/openbao.hcl, its paths and ports moved into `home`."""

    def __init__(
        self,
        procs: Procs,
        home: Path,
        tls: tuple[Path, Path, Path],
        ports: tuple[int, int] | None = None,
        audit: Path | None = None,
    ) -> None:
        self.procs, self.home, (self.ca, crt, key) = procs, home, tls
        self.port, self.cluster_port = ports or (free_port(), free_port())
        self.audit = audit or home / "audit" / "audit.log"
        (home / "data").mkdir(parents=True, exist_ok=True)
        self.audit.parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / "deploy" / "openbao" / "openbao.hcl").read_text()
        for old, new in (
            ("/openbao/data", str(home / "data")),
            ("/openbao/tls/tls.crt", str(crt)),
            ("/openbao/tls/tls.key", str(key)),
            ("/openbao/audit/audit.log", str(self.audit)),
            ("0.0.0.0:8200", f"127.0.0.1:{self.port}"),
            ("0.0.0.0:8201", f"127.0.0.1:{self.cluster_port}"),
            ("https://openbao:8200", f"https://127.0.0.1:{self.port}"),
            ("https://openbao:8201", f"https://127.0.0.1:{self.cluster_port}"),
        ):
            assert old in text, f"deploy/openbao/openbao.hcl no longer has {old}"
            text = text.replace(old, new)
        self.config = home / "openbao.hcl"
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"VAULT_ADDR": self.addr, "VAULT_CACERT": str(self.ca)}

    def client(self, token: str | None = None) -> hvac.Client:
        return vaultio.client(self.addr, token, timeout=10, tls=vaultio.VaultTLS(cacert=str(self.ca)))

    def start(self) -> None:
        log = self.home / "openbao.log"
        self.proc = self.procs.spawn([bao_binary(), "server", f"-config={self.config}"], log)
        _wait_port(self.port, self.proc, log)

    def stop(self) -> None:
        assert self.proc is not None
        self.procs.stop(self.proc)

    def bao(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**_base_env(), **self.env, **({"VAULT_TOKEN": token} if token else {})}
        return subprocess.run([bao_binary(), *args], env=env, capture_output=True, text=True, timeout=60)

    def init(self) -> dict[str, Any]:
        out = self.bao("operator", "init", "-key-shares=5", "-key-threshold=3", "-format=json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def unseal(self, keys: list[str]) -> None:
        for key in keys:
            out = self.bao("operator", "unseal", key)
            assert out.returncode == 0, out.stderr
        status = json.loads(self.bao("status", "-format=json").stdout)
        assert status["sealed"] is False and status["storage_type"] == "raft", status
        deadline = time.monotonic() + 30  # raft elects this node leader: active a moment later
        while json.loads(self.bao("status", "-format=json").stdout).get("is_self") is not True:
            assert time.monotonic() < deadline, self.bao("status").stdout
            time.sleep(0.2)


# -- helpers ---------------------------------------------------------------------------------------
def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"PYTHONPATH": str(ROOT)}


def cli(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lockgate.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        input=input,
    )


def _pg_url(role: str, password: str, socket_dir: Path, db: str, driver: str = "postgresql+psycopg") -> str:
    return f"{driver}://{role}:{password}@/{db}?host={socket_dir}"


def start_postgres(procs: Procs, home: Path) -> Path:
    """Embedded PostgreSQL (password auth) with lockgate's migration and runtime roles and an empty
    `ledger` database owned by the migration role. Returns its socket dir."""
    pg = DevStack(home)
    procs.postgres.append(pg)
    pg.dev_dir.mkdir(parents=True, exist_ok=True)
    socket_dir = pg._start_postgres(PG_PASSWORD)
    admin = psycopg.connect(_pg_url("postgres", PG_PASSWORD, socket_dir, "postgres", "postgresql"), autocommit=True)
    with admin:
        for role, password in (("lockgate_migrate", MIGRATE_PASSWORD), ("lockgate_runtime", RUNTIME_PASSWORD)):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
            )
        admin.execute("CREATE DATABASE ledger OWNER lockgate_migrate")
        admin.execute("REVOKE ALL ON DATABASE ledger FROM PUBLIC")
        admin.execute("GRANT CONNECT ON DATABASE ledger TO lockgate_runtime")
    with psycopg.connect(_pg_url("postgres", PG_PASSWORD, socket_dir, "ledger", "postgresql"), autocommit=True) as c:
        c.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        c.execute("ALTER SCHEMA public OWNER TO lockgate_migrate")
    return socket_dir


def wait_state(env: dict[str, str], run_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        out = cli(env, "status", run_id, "--json")
        if out.returncode == 0:
            last = json.loads(out.stdout)
            if last["state"] in states:
                return last
        else:
            last = out.stderr
        time.sleep(0.5)
    raise AssertionError(f"{run_id} never reached {states}: {last}")


# -- the scenario ----------------------------------------------------------------------------------
def test_production_deployment(procs: Procs, tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test CA")
    tls = make_tls(tmp_path / "tls")

    # OpenBao: server mode, raft, TLS, audit device; 5 shares, threshold 3.
    bao = OpenBao(procs, tmp_path / "openbao", tls)
    bao.start()
    init = bao.init()
    shares, root = init["unseal_keys_b64"], init["root_token"]
    assert len(shares) == 5
    bao.unseal(shares[:3])
    assert "main/" in bao.client(root).sys.list_enabled_audit_devices()["data"]

    # Temporal, WITHOUT lockgate's search attributes.
    t_port = free_port()
    t_log = tmp_path / "temporal.log"
    temporal = procs.spawn(
        [
            temporal_binary(),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(t_port),
            "--db-filename",
            str(tmp_path / "temporal.db"),
            "--log-level",
            "warn",
        ],
        t_log,
    )
    _wait_port(t_port, temporal, t_log, timeout=90)

    socket_dir = start_postgres(procs, tmp_path / "pg")
    people = tmp_path / "people.json"  # what the team's IdP sync would write
    people.write_text(json.dumps({"alice": ["finance"], "bob": ["finance"], "erin": ["requesters"]}))

    common = {
        **_base_env(),
        **bao.env,
        "LOCKGATE_ENV": "production",
        "LOCKGATE_TEMPORAL_ADDRESS": f"127.0.0.1:{t_port}",
        "LOCKGATE_NAMESPACE": "lockgate-prod",  # not there yet: setup registers it
        "LOCKGATE_AGENT_MODULES": "lockgate.demo.shop",
        "LOCKGATE_POLICY_DIR": str(ROOT / "policies"),
    }
    setup_env = {
        **common,
        "LOCKGATE_STATE_DIR": str(tmp_path / "setup-state"),
        "LOCKGATE_LEDGER_URL": _pg_url("lockgate_migrate", MIGRATE_PASSWORD, socket_dir, "ledger"),
        "LOCKGATE_DB_ADMIN_DSN": _pg_url("postgres", PG_PASSWORD, socket_dir, "postgres", "postgresql"),
    }
    setup_creds, worker_creds = tmp_path / "setup.env", tmp_path / "worker.env"
    args = ["setup", "--json", "--people", str(people), "--ledger-runtime-role", "lockgate_runtime"]

    # A dry run changes nothing.
    dry = cli({**setup_env, "VAULT_TOKEN": root}, *args, "--dry-run", "--provision-databases")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["changes"]
    assert "database/" not in bao.client(root).sys.list_mounted_secrets_engines()["data"]

    first = cli(
        {**setup_env, "VAULT_TOKEN": root},
        *args,
        "--provision-databases",
        "--setup-credentials",
        str(setup_creds),
        "--worker-credentials",
        str(worker_creds),
    )
    assert first.returncode == 0, first.stderr + first.stdout
    report = json.loads(first.stdout)
    changes = "\n".join(report["changes"])
    assert "temporal: namespace lockgate-prod registered (retention 30 days)" in changes
    assert "temporal: search attributes LockgateAgent, LockgateInitiator, LockgatePending, LockgateState" in changes
    assert "openbao: transit key lockgate-ledger (ed25519) created" in changes
    assert "openbao: identity group finance" in changes
    assert "ledger: tables created" in changes and "grants to runtime role lockgate_runtime" in changes
    assert oct(setup_creds.stat().st_mode & 0o777) == "0o600" and oct(worker_creds.stat().st_mode & 0o777) == "0o600"
    worker_file = dict(line.split("=", 1) for line in worker_creds.read_text().split())
    assert set(worker_file) == {"LOCKGATE_VAULT_ROLE_ID", "LOCKGATE_VAULT_WRAPPED_SECRET_ID"}

    # The worker's secret id is delivered wrapped: single use, TTL- and use-bound.
    wrapping = worker_file["LOCKGATE_VAULT_WRAPPED_SECRET_ID"]
    secret_id = vaultio.body(bao.client(wrapping).sys.unwrap())["data"]["secret_id"]
    with pytest.raises(hvac.exceptions.VaultError):
        bao.client(wrapping).sys.unwrap()
    lookup = vaultio.body(
        bao.client(root).adapter.post(
            "/v1/auth/approle/role/lockgate-worker/secret-id/lookup", json={"secret_id": secret_id}
        )
    )["data"]
    assert lookup["secret_id_num_uses"] == 100 and lookup["secret_id_ttl"] == 720 * 3600

    # The team's IdP: how people sign in (here userpass) is an alias of the entities setup made.
    admin = bao.client(root)
    admin.sys.enable_auth_method("userpass")
    accessor = admin.sys.list_auth_methods()["data"]["userpass/"]["accessor"]
    for name in ("alice", "bob", "erin"):
        vaultio.write(
            admin,
            f"auth/userpass/users/{name}",
            password=PEOPLE_PASSWORD,
            token_policies=["lockgate-person", "lockgate-payload-writer"],
            token_ttl="1h",
        )
        entity = vaultio.read(admin, f"identity/entity/name/{name}")
        assert entity is not None, f"setup did not create {name}"
        vaultio.write(
            admin, "identity/entity-alias", name=name, canonical_id=entity["data"]["id"], mount_accessor=accessor
        )
    # A backup job's identity (raft snapshots only), then the root token goes (the runbook).
    admin.sys.create_or_update_policy(
        name="backup", policy='path "sys/storage/raft/snapshot" { capabilities = ["read"] }'
    )
    backup_token = admin.auth.token.create(policies=["backup"], ttl="2h", no_parent=True)["auth"]["client_token"]
    admin.auth.token.revoke_self()
    assert not bao.client(root).is_authenticated()

    # Second run, as lockgate-setup (no root token anywhere): nothing to do.
    setup_file = dict(line.split("=", 1) for line in setup_creds.read_text().split())
    again = cli({**setup_env, **setup_file}, *args)
    assert again.returncode == 0, again.stderr + again.stdout
    assert json.loads(again.stdout)["changes"] == [], again.stdout
    plain = cli({**setup_env, **setup_file}, "setup", "--only", "openbao", "--people", str(people))
    assert plain.returncode == 0 and plain.stdout.splitlines()[0] == "nothing to do", plain.stdout
    # Single host (compose): --unwrap writes a secret id the worker can use as it is.
    plain_file = tmp_path / "worker-plain.env"
    # (and logs in from the credentials file the first run wrote, as a one-shot container would)
    plain_run = cli({**setup_env, "LOCKGATE_SETUP_CREDENTIALS": str(setup_creds)}, "setup", "--only", "openbao", "--people", str(people),
                    "--new-worker-secret", "--unwrap", "--worker-credentials", str(plain_file))  # fmt: skip
    assert plain_run.returncode == 0, plain_run.stderr + plain_run.stdout
    plain = dict(line.split("=", 1) for line in plain_file.read_text().split())
    assert set(plain) == {"LOCKGATE_VAULT_ROLE_ID", "LOCKGATE_VAULT_SECRET_ID"}
    assert bao.client().auth.approle.login(role_id=plain["LOCKGATE_VAULT_ROLE_ID"],
                                           secret_id=plain["LOCKGATE_VAULT_SECRET_ID"])["auth"]  # fmt: skip

    # lockgate-setup rotates its own credentials; the old secret id stops working.
    rotated_file = tmp_path / "setup-rotated.env"
    rotated = cli({**setup_env, **setup_file}, "setup", "--only", "openbao", "--people", str(people),
                  "--setup-credentials", str(rotated_file), "--json")  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr + rotated.stdout
    assert json.loads(rotated.stdout)["changes"] == [f"openbao: lockgate-setup credentials rotated to {rotated_file}"]
    stale = cli({**setup_env, **setup_file}, "setup", "--only", "openbao")
    assert stale.returncode == 2 and "login refused" in stale.stderr, stale.stderr
    setup_file = dict(line.split("=", 1) for line in rotated_file.read_text().split())
    # lockgate-setup cannot act as a person (no transit/sign), nor read snapshots.
    setup_client = bao.client()
    setup_client.auth.approle.login(
        role_id=setup_file["LOCKGATE_SETUP_ROLE_ID"], secret_id=setup_file["LOCKGATE_SETUP_SECRET_ID"]
    )
    with pytest.raises(hvac.exceptions.Forbidden):
        setup_client.secrets.transit.sign_data(name="approver-alice", hash_input="eA==", mount_point="transit")

    # A worker with production settings only: https OpenBao with VAULT_CACERT, PostgreSQL ledger as
    # the runtime role (no DDL rights), the unwrapped AppRole secret id.
    worker_env = {
        **common,
        "LOCKGATE_STATE_DIR": str(tmp_path / "worker-state"),
        "LOCKGATE_TASK_QUEUE": "lockgate-prod",
        "LOCKGATE_LEDGER_URL": _pg_url("lockgate_runtime", RUNTIME_PASSWORD, socket_dir, "ledger"),
        "LOCKGATE_VAULT_ROLE_ID": worker_file["LOCKGATE_VAULT_ROLE_ID"],
        "LOCKGATE_VAULT_SECRET_ID": secret_id,
        "LOCKGATE_PG_SOCKET_DIR": str(socket_dir),
    }
    w_log = tmp_path / "worker.log"
    worker = procs.spawn([sys.executable, "-m", "lockgate.cli", "worker"], w_log, env=worker_env)

    def person(name: str) -> dict[str, str]:
        state = tmp_path / f"person-{name}"
        env = {**common, "LOCKGATE_STATE_DIR": str(state), "LOCKGATE_TASK_QUEUE": "lockgate-prod"}
        out = cli(env, "login", name, "--password-stdin", input=PEOPLE_PASSWORD + "\n")
        assert out.returncode == 0, out.stderr
        return env

    erin, alice = person("erin"), person("alice")
    run_id = f"refund-prod-{uuid.uuid4().hex[:8]}"
    started = cli(
        erin,
        "run",
        "refund-agent",
        "--id",
        run_id,
        "--input",
        json.dumps({"order_id": "A-1002", "amount_cents": 25000}),
    )
    assert started.returncode == 0, started.stderr
    deadline, request = time.monotonic() + 90, None
    while time.monotonic() < deadline and request is None:
        assert worker.poll() is None, w_log.read_text()[-3000:]
        pending = cli(alice, "pending", "--json")  # lists through the registered search attributes
        assert pending.returncode == 0, pending.stderr
        request = next((p for p in json.loads(pending.stdout) if p["run_id"] == run_id), None)
        time.sleep(0.5)
    assert request is not None, f"no pending approval: {w_log.read_text()[-3000:]}"
    approved = cli(alice, "approve", run_id, request["request_id"], "--reason", "production drill")
    assert approved.returncode == 0, approved.stderr
    assert wait_state(alice, run_id, {"completed", "failed"})["state"] == "completed"
    with psycopg.connect(_pg_url("postgres", PG_PASSWORD, socket_dir, "shop", "postgresql")) as conn:
        assert conn.execute("SELECT amount_cents FROM refunds WHERE run_id = %s", (run_id,)).fetchall() == [(25000,)]
    # The runtime role could not have set the ledger aside or altered it.
    with psycopg.connect(_pg_url("lockgate_runtime", RUNTIME_PASSWORD, socket_dir, "ledger", "postgresql")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE ledger RENAME TO ledger_aside")

    # OpenBao restarts (a node reboot): sealed until three other share holders unseal it.
    bao.stop()
    bao.start()
    assert json.loads(bao.bao("status", "-format=json").stdout)["sealed"] is True
    bao.unseal(shares[2:5])
    second = f"refund-prod-{uuid.uuid4().hex[:8]}"
    started = cli(
        erin, "run", "refund-agent", "--id", second, "--input", json.dumps({"order_id": "A-1001", "amount_cents": 1500})
    )
    assert started.returncode == 0, started.stderr
    assert wait_state(erin, second, {"completed", "failed"})["state"] == "completed", w_log.read_text()[-3000:]

    # Backup: stop the worker (its last checkpoint is written), snapshot OpenBao, then dump the
    # ledger (in that order: a witness newer than the ledger dump would read as a truncation).
    procs.stop(worker)
    snap = tmp_path / "openbao.snap"
    saved = bao.bao("operator", "raft", "snapshot", "save", str(snap), token=backup_token)
    assert saved.returncode == 0, saved.stderr
    pg_bin = Path(_embedded_postgres().__file__).parent / "pginstall" / "bin"  # pg_dump, pg_restore
    dump = tmp_path / "ledger.dump"
    dumped = subprocess.run(
        [
            str(pg_bin / "pg_dump"),
            "--format=custom",
            "--no-owner",
            "--file",
            str(dump),
            _pg_url("lockgate_migrate", MIGRATE_PASSWORD, socket_dir, "ledger", "postgresql"),
        ],
        capture_output=True,
        text=True,
    )
    assert dumped.returncode == 0, dumped.stderr

    # Restore into fresh servers: a new OpenBao at the lost one's address (raft's configuration in
    # the snapshot names it), from the snapshot, unsealed with the original cluster's shares; and a
    # new PostgreSQL (same roles, the dump restored by the migration role, the runtime grants).
    bao.stop()
    # The snapshot also carries the declared audit device: the config must declare it identically.
    bao2 = OpenBao(procs, tmp_path / "openbao-restored", tls, ports=(bao.port, bao.cluster_port), audit=bao.audit)
    bao2.start()
    init2 = bao2.init()
    bao2.unseal(init2["unseal_keys_b64"][:3])
    restored = bao2.bao("operator", "raft", "snapshot", "restore", "-force", str(snap), token=init2["root_token"])
    assert restored.returncode == 0, restored.stderr
    deadline = time.monotonic() + 30
    while json.loads(bao2.bao("status", "-format=json").stdout).get("sealed") is False:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    bao2.unseal(shares[1:4])  # the snapshot carries the original keyring: the original shares
    assert not bao2.client(init2["root_token"]).is_authenticated()  # the new cluster's root is gone

    socket2 = start_postgres(procs, tmp_path / "pg-restored")
    loaded = subprocess.run(
        [
            str(pg_bin / "pg_restore"),
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            _pg_url("lockgate_migrate", MIGRATE_PASSWORD, socket2, "ledger", "postgresql"),
            str(dump),
        ],
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr
    restore_setup = cli(
        {
            **setup_env,
            **bao2.env,
            **setup_file,
            "LOCKGATE_LEDGER_URL": _pg_url("lockgate_migrate", MIGRATE_PASSWORD, socket2, "ledger"),
        },
        "setup",
        "--only",
        "ledger",
        "--ledger-runtime-role",
        "lockgate_runtime",
    )
    assert restore_setup.returncode == 0, restore_setup.stderr + restore_setup.stdout
    # The dump carried the schema and the runtime grants: the migration and the grants are in place.
    assert restore_setup.stdout.splitlines()[0] == "nothing to do", restore_setup.stdout

    auditor = {
        **worker_env,
        **bao2.env,
        "LOCKGATE_LEDGER_URL": _pg_url("lockgate_runtime", RUNTIME_PASSWORD, socket2, "ledger"),
        "LOCKGATE_STATE_DIR": str(tmp_path / "auditor-state"),
    }
    verified = cli(auditor, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    body = json.loads(verified.stdout)
    assert body["intact"] is True and body["entries"] > 0 and body["checkpoints"] > 0, body
    assert body["unproven"] == 0 and body["witness"], body  # every entry under a checkpoint the witness vouches for
    print("anchors:", body["anchors"])
    for rid in (run_id, second):
        audited = cli(auditor, "audit", rid)
        assert audited.returncode == 0, audited.stderr
        assert "refunds.issue" in audited.stdout
    audited = cli(auditor, "audit", run_id)
    assert "alice" in audited.stdout  # the approval, with the approver's verified identity

    # The restored ledger is checked, not trusted: one edited entry (the database owner's write,
    # beneath lockgate) fails verification against the restored OpenBao's keys and witness.
    owner = _pg_url("lockgate_migrate", MIGRATE_PASSWORD, socket2, "ledger", "postgresql")
    with psycopg.connect(owner, autocommit=True) as conn:
        edited = conn.execute(
            "UPDATE ledger SET data = replace(data, '25000', '2500') WHERE run_id = %s AND data LIKE '%%25000%%'",
            (run_id,),
        ).rowcount
    assert edited > 0
    tampered = cli(auditor, "verify")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
