"""Dev-stack bootstrap: the `shop` database and Vault (engines, least-privilege policies, AppRole).

Everything here is idempotent: `lockgate dev up` runs it on every call. Vault policies for agents are
derived from the agents' tool declarations, so an agent's run identity can read exactly the dynamic
secrets its tools declare and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import psycopg
from psycopg import sql

from lockgate.spec import AgentRegistry, registry

__all__ = [
    "DB_ROLES",
    "LEDGER_SIGNING_KEY",
    "LEDGER_WITNESS_PATH",
    "RUNS_MOUNT",
    "RUN_TOKEN_ROLE",
    "TRANSIT_MOUNT",
    "WORKER_POLICY",
    "Bootstrap",
    "bootstrap_ledger_signing",
    "bootstrap_vault",
    "secure_postgres",
    "seed_shop",
    "socket_connection_url",
]

RUN_TOKEN_ROLE = "lockgate-run"  # noqa: S105 - a token role name, not a secret
WORKER_POLICY = "lockgate-worker"
WORKER_APPROLE = "lockgate-worker"
RUNS_MOUNT = "lockgate"  # kv-v1: runs/<run id> holds a run's token, worker/ the worker's settings
DB_CONNECTION = "shop"
LEASE_TTL = "300s"
LEASE_MAX_TTL = "3600s"

# Dynamic roles and the static group role each one joins; grants live on the group roles.
DB_ROLES = {
    "shop-reader": "shop_reader",
    "shop-refunds": "shop_refunder",
    "ops-reader": "ops_reader",
    "ops-responder": "ops_responder",
}

_SHOP_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id text PRIMARY KEY, name text NOT NULL, email text NOT NULL, closed_at timestamptz);
CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY, customer_id text NOT NULL REFERENCES customers(id),
    total_cents integer NOT NULL, status text NOT NULL DEFAULT 'paid');
CREATE TABLE IF NOT EXISTS refunds (
    id bigserial PRIMARY KEY, order_id text NOT NULL REFERENCES orders(id),
    amount_cents integer NOT NULL CHECK (amount_cents > 0), reason text NOT NULL DEFAULT '',
    idempotency_key text NOT NULL UNIQUE, run_id text NOT NULL, step integer NOT NULL,
    created_by text NOT NULL DEFAULT current_user, created_at timestamptz NOT NULL DEFAULT now(),
    reversed_at timestamptz);
CREATE TABLE IF NOT EXISTS notifications (
    id bigserial PRIMARY KEY, order_id text NOT NULL REFERENCES orders(id),
    email text NOT NULL, message text NOT NULL, idempotency_key text NOT NULL UNIQUE,
    sent_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (id, name, email) VALUES
    ('C-501', 'Ada Lovelace', 'ada@example.com'),
    ('C-502', 'Grace Hopper', 'grace@example.com'),
    ('C-503', 'Alan Turing', 'not-an-email')
ON CONFLICT (id) DO NOTHING;
INSERT INTO orders (id, customer_id, total_cents) VALUES
    ('A-1001', 'C-501', 2500), ('A-1002', 'C-502', 45000), ('A-1003', 'C-503', 3000)
ON CONFLICT (id) DO NOTHING;
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_reader') THEN
        CREATE ROLE shop_reader NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_refunder') THEN
        CREATE ROLE shop_refunder NOLOGIN; END IF;
END $$;
REVOKE ALL ON DATABASE shop FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO shop_reader, shop_refunder;
GRANT USAGE ON SCHEMA public TO shop_reader, shop_refunder;
GRANT SELECT ON customers, orders TO shop_reader;
GRANT INSERT ON notifications TO shop_reader;
GRANT USAGE ON SEQUENCE notifications_id_seq TO shop_reader;
GRANT SELECT ON orders, refunds TO shop_refunder;
GRANT SELECT (id, closed_at), UPDATE (closed_at) ON customers TO shop_refunder;
GRANT INSERT ON refunds TO shop_refunder;
GRANT UPDATE (reversed_at) ON refunds TO shop_refunder;
GRANT USAGE ON SEQUENCE refunds_id_seq TO shop_refunder;

-- incident-agent: hosts, alerts, tickets, pages (schema ops, same database).
CREATE SCHEMA IF NOT EXISTS ops;
REVOKE ALL ON SCHEMA ops FROM PUBLIC;
CREATE TABLE IF NOT EXISTS ops.hosts (
    id text PRIMARY KEY, env text NOT NULL, pager text,
    quarantined_at timestamptz, quarantine_key text);
CREATE TABLE IF NOT EXISTS ops.alerts (
    id bigserial PRIMARY KEY, host_id text NOT NULL REFERENCES ops.hosts(id), severity text NOT NULL,
    summary text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS ops.tickets (
    id bigserial PRIMARY KEY, host_id text NOT NULL REFERENCES ops.hosts(id), title text NOT NULL,
    severity text NOT NULL, idempotency_key text NOT NULL UNIQUE, run_id text NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(), closed_at timestamptz);
CREATE TABLE IF NOT EXISTS ops.pages (
    id bigserial PRIMARY KEY, host_id text NOT NULL, pager text NOT NULL, message text NOT NULL,
    idempotency_key text NOT NULL UNIQUE, sent_at timestamptz NOT NULL DEFAULT now());
INSERT INTO ops.hosts (id, env, pager) VALUES
    ('web-1', 'production', 'team-web'), ('web-2', 'production', NULL), ('db-1', 'production', 'team-data')
ON CONFLICT (id) DO NOTHING;
INSERT INTO ops.alerts (host_id, severity, summary)
SELECT * FROM (VALUES
    ('web-1', 'high', 'outbound traffic to an unknown address'),
    ('web-2', 'high', 'new setuid binary in /tmp'),
    ('db-1', 'low', 'slow queries')) AS v(host_id, severity, summary)
WHERE NOT EXISTS (SELECT 1 FROM ops.alerts);
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_reader') THEN
        CREATE ROLE ops_reader NOLOGIN; END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ops_responder') THEN
        CREATE ROLE ops_responder NOLOGIN; END IF;
END $$;
GRANT CONNECT ON DATABASE shop TO ops_reader, ops_responder;
GRANT USAGE ON SCHEMA ops TO ops_reader, ops_responder;
GRANT SELECT ON ops.hosts, ops.alerts TO ops_reader;
GRANT INSERT ON ops.pages TO ops_reader;
GRANT USAGE ON SEQUENCE ops.pages_id_seq TO ops_reader;
GRANT SELECT ON ops.hosts, ops.tickets TO ops_responder;
GRANT INSERT ON ops.tickets TO ops_responder;
GRANT UPDATE (closed_at) ON ops.tickets TO ops_responder;
GRANT UPDATE (quarantined_at, quarantine_key) ON ops.hosts TO ops_responder;
GRANT USAGE ON SEQUENCE ops.tickets_id_seq TO ops_responder;
"""


def _superuser(socket_dir: Path, password: str | None, dbname: str = "postgres") -> psycopg.Connection:
    params = {"host": str(socket_dir), "user": "postgres", "dbname": dbname, "autocommit": True}
    if password:
        params["password"] = password
    return psycopg.connect(**params)  # type: ignore[arg-type]


def secure_postgres(pgdata: Path, socket_dir: Path, password: str) -> None:
    """On a fresh cluster: set the superuser password and demand passwords from every client.

    initdb leaves `trust` auth; dynamic credentials would mean nothing if any role could log in
    without its password.
    """
    with _superuser(socket_dir, None) as conn:
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        hba = pgdata / "pg_hba.conf"
        hba.write_text(
            "# Written by lockgate dev up: password (SCRAM) auth for every connection.\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        conn.execute("SELECT pg_reload_conf()")


def seed_shop(socket_dir: Path, password: str) -> None:
    with _superuser(socket_dir, password) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shop'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE shop")
    with _superuser(socket_dir, password, "shop") as conn:
        conn.execute(_SHOP_SCHEMA)


@dataclass(frozen=True)
class Bootstrap:
    role_id: str
    secret_id: str


def _worker_policy() -> str:
    return f"""
# lockgate worker: orchestrates run identities; holds no database credentials itself.
path "auth/token/create/{RUN_TOKEN_ROLE}" {{ capabilities = ["update"] }}
path "auth/token/revoke-accessor" {{ capabilities = ["update"] }}
path "auth/token/lookup-accessor" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
path "auth/token/renew-self" {{ capabilities = ["update"] }}
path "{RUNS_MOUNT}/runs/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}
path "{RUNS_MOUNT}/runs" {{ capabilities = ["list"] }}
path "{RUNS_MOUNT}/worker/*" {{ capabilities = ["read"] }}
path "sys/leases/revoke" {{ capabilities = ["update"] }}
path "sys/leases/lookup" {{ capabilities = ["update"] }}
path "sys/leases/lookup/database/creds/*" {{ capabilities = ["list", "sudo"] }}
"""


def agent_policy(secret_paths: list[str]) -> str:
    lines = ["# A run identity of this agent: exactly the dynamic secrets its tools declare."]
    lines += [f'path "{p}" {{ capabilities = ["read"] }}' for p in secret_paths]
    lines.append('path "auth/token/lookup-self" { capabilities = ["read"] }')
    return "\n".join(lines) + "\n"


def socket_connection_url(socket_dir: Path, dbname: str = "shop") -> str:
    """The database engine's URL template for a Postgres listening on a Unix socket."""
    return f"postgresql://{{{{username}}}}:{{{{password}}}}@/{dbname}?host={socket_dir}"


def bootstrap_vault(
    client: hvac.Client,
    *,
    connection_url: str,
    db_username: str,
    db_password: str,
    agents: AgentRegistry = registry,
    keep_secret_id: str | None = None,
) -> Bootstrap:
    """Configures Vault with the root token. Returns the worker's AppRole credentials."""
    import lockgate.agents  # noqa: F401 - registers the built-in agents

    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "database/" not in mounts:
        client.sys.enable_secrets_engine("database", path="database")
    if f"{RUNS_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("kv", path=RUNS_MOUNT, options={"version": "1"})

    client.secrets.database.configure(
        name=DB_CONNECTION,
        plugin_name="postgresql-database-plugin",
        allowed_roles=list(DB_ROLES),
        connection_url=connection_url,
        username=db_username,
        password=db_password,
        verify_connection=True,
    )
    for role, group in DB_ROLES.items():
        client.secrets.database.create_role(
            name=role,
            db_name=DB_CONNECTION,
            creation_statements=[
                # VALID UNTIL is the database's own backstop should Vault never revoke.
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {group};"
            ],
            revocation_statements=[
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
                'DROP ROLE IF EXISTS "{{name}}";',
            ],
            default_ttl=LEASE_TTL,
            max_ttl=LEASE_MAX_TTL,
        )

    client.sys.create_or_update_policy(name=WORKER_POLICY, policy=_worker_policy() + ledger_signing_policy())
    bootstrap_ledger_signing(client)
    agent_policies = []
    for agent in agents.agents():
        client.sys.create_or_update_policy(name=agent.vault_policy, policy=agent_policy(agent.secrets()))
        agent_policies.append(agent.vault_policy)

    client.adapter.post(
        f"/v1/auth/token/roles/{RUN_TOKEN_ROLE}",
        json={
            "allowed_policies": agent_policies,
            "orphan": True,
            "renewable": False,
            "token_explicit_max_ttl": "24h",
            "token_type": "service",
        },
    )

    if "approle/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle(
        role_name=WORKER_APPROLE,
        token_policies=[WORKER_POLICY],
        token_ttl="1h",  # noqa: S106 - a duration
        token_max_ttl="24h",  # noqa: S106 - a duration
        secret_id_num_uses=0,
    )
    role_id = client.auth.approle.read_role_id(role_name=WORKER_APPROLE)["data"]["role_id"]
    if keep_secret_id:
        try:
            client.auth.approle.read_secret_id(role_name=WORKER_APPROLE, secret_id=keep_secret_id)
            check = client.adapter.post(
                f"/v1/auth/approle/role/{WORKER_APPROLE}/secret-id/lookup", json={"secret_id": keep_secret_id}
            )
            if check:
                return Bootstrap(role_id=role_id, secret_id=keep_secret_id)
        except Exception:  # noqa: BLE001, S110 - a stale secret id: issue a new one
            pass
    secret_id = client.auth.approle.generate_secret_id(role_name=WORKER_APPROLE)["data"]["secret_id"]
    return Bootstrap(role_id=role_id, secret_id=secret_id)


# -- ledger anchoring (issue 14) -------------------------------------------------------------------
TRANSIT_MOUNT = "transit"
LEDGER_SIGNING_KEY = "lockgate-ledger"
LEDGER_WITNESS_PATH = "ledger"  # kv-v1 under RUNS_MOUNT: the newest checkpoint of each ledger


def ledger_signing_policy() -> str:
    """What the worker needs to anchor the ledger: sign with the ledger key (never export it), read
    its public keys (all versions), and keep the newest checkpoint as a witness outside the database."""
    return f"""
# ledger anchoring: the key signs checkpoints; nobody can export it (exportable=false).
path "{TRANSIT_MOUNT}/sign/{LEDGER_SIGNING_KEY}" {{ capabilities = ["update"] }}
path "{TRANSIT_MOUNT}/keys/{LEDGER_SIGNING_KEY}" {{ capabilities = ["read"] }}
path "{RUNS_MOUNT}/{LEDGER_WITNESS_PATH}/*" {{ capabilities = ["create", "read", "update"] }}
"""


def bootstrap_ledger_signing(client: hvac.Client) -> None:
    """The Transit mount and the ledger's ed25519 signing key, non-exportable. Idempotent: an
    existing key (and its versions) is kept as it is."""
    if f"{TRANSIT_MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
    try:
        client.secrets.transit.read_key(name=LEDGER_SIGNING_KEY, mount_point=TRANSIT_MOUNT)
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(
            name=LEDGER_SIGNING_KEY, key_type="ed25519", exportable=False, mount_point=TRANSIT_MOUNT
        )
