"""Dev-stack bootstrap: the databases the agents' tools declare, and Vault (engines, least-privilege
policies, AppRole).

Everything here is idempotent: `lockgate dev up` runs it on every call. Database roles and Vault
policies are derived from the configured agents' tool declarations (`DatabaseSecret`), so an agent's
run identity can read exactly the dynamic secrets its tools declare and nothing else, and a team
declares its own roles without touching lockgate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import psycopg
from psycopg import sql

from lockgate import vaultio
from lockgate.people import APPROVER_KEY_PREFIX  # transit/keys/approver-<entity name>: one key per person
from lockgate.spec import AgentRegistry, DatabaseSecret

__all__ = [
    "APPROVER_KEY_PREFIX",
    "DEV_PEOPLE",
    "LEDGER_SIGNING_KEY",
    "LEDGER_WITNESS_PATH",
    "PAYLOAD_ENCRYPT_POLICY",
    "PAYLOAD_KEY",
    "PAYLOAD_READER_GROUPS",
    "PAYLOAD_READER_POLICY",
    "PAYLOAD_WRITER_POLICY",
    "PERSON_POLICY",
    "RUNS_MOUNT",
    "RUN_TOKEN_ROLE",
    "TRANSIT_MOUNT",
    "WORKER_POLICY",
    "Bootstrap",
    "bootstrap_ledger_signing",
    "bootstrap_payload_key",
    "bootstrap_people",
    "bootstrap_vault",
    "payload_policy",
    "person_policy",
    "provision_databases",
    "secure_postgres",
    "socket_connection_url",
]

# Vault names live in the one table (lockgate/names.py); re-exported for the code that says them here.
from lockgate.names import (
    LEDGER_SIGNING_KEY,
    LEDGER_WITNESS_PATH,
    PAYLOAD_ENCRYPT_POLICY,
    PAYLOAD_KEY,
    PAYLOAD_READER_GROUPS,
    PAYLOAD_READER_POLICY,
    PAYLOAD_WRITER_POLICY,
    PERSON_POLICY,
    RUN_TOKEN_ROLE,
    RUNS_MOUNT,
    SEAL_KEY,
    TRANSIT_MOUNT,
    USERPASS_MOUNT,
    WORKER_APPROLE,
    WORKER_POLICY,
)

# The dev stack's people (DESIGN.md "Demo agent"): name -> groups.
DEV_PEOPLE: dict[str, tuple[str, ...]] = {
    "alice": ("finance",),
    "bob": ("finance",),
    "carol": ("support-leads", "operators"),
    "dave": ("support-leads", "operators"),
    "mallory": (),
    # A requester: may start agents (policies/starts.cedar), approves and reads nothing.
    "erin": ("requesters",),
    # incident-agent's on-call engineers.
    "frank": ("sre-oncall",),
    "grace": ("sre-oncall",),
}
DEV_GROUPS = ("finance", "support-leads", "operators", "sre-oncall", "requesters", "auditors")


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


def provision_databases(socket_dir: Path, password: str, secrets: list[DatabaseSecret]) -> None:
    """Creates each declared secret's database if missing and runs its `setup_sql` (dev only)."""
    done: set[tuple[str, str]] = set()
    for secret in secrets:
        with _superuser(socket_dir, password) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (secret.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(secret.database)))
        if secret.setup_sql and (secret.database, secret.setup_sql) not in done:
            with _superuser(socket_dir, password, secret.database) as conn:
                conn.execute(secret.setup_sql)  # type: ignore[arg-type]  # trusted, declared DDL
            done.add((secret.database, secret.setup_sql))


@dataclass(frozen=True)
class Bootstrap:
    role_id: str
    secret_id: str


# -- payload encryption (activities/codec.py) ------------------------------------------------------


def payload_policy(key: str = PAYLOAD_KEY, *, encrypt: bool = True, decrypt: bool = True) -> str:
    """Exactly the Transit paths a payload reader (decrypt), encrypter (data keys) or writer (both) needs."""
    lines = []
    if encrypt:
        lines.append(f'path "{TRANSIT_MOUNT}/datakey/plaintext/{key}" {{ capabilities = ["update"] }}')
    if decrypt:
        lines.append(f'path "{TRANSIT_MOUNT}/decrypt/{key}" {{ capabilities = ["update"] }}')
    return "\n".join(lines) + "\n"


def bootstrap_payload_key(client: hvac.Client, key: str = PAYLOAD_KEY) -> None:
    """The Transit engine, the payload key (aes256-gcm96; never exportable) and the reader and
    writer policies. Rotation is `transit/keys/<key>/rotate`; old versions keep decrypting."""
    if f"{TRANSIT_MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
    try:
        client.secrets.transit.read_key(name=key, mount_point=TRANSIT_MOUNT)
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(name=key, key_type="aes256-gcm96", mount_point=TRANSIT_MOUNT)
    client.sys.create_or_update_policy(name=PAYLOAD_READER_POLICY, policy=payload_policy(key, encrypt=False))
    client.sys.create_or_update_policy(name=PAYLOAD_WRITER_POLICY, policy=payload_policy(key, encrypt=True))
    client.sys.create_or_update_policy(name=PAYLOAD_ENCRYPT_POLICY, policy=payload_policy(key, decrypt=False))


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
path "transit/hmac/{SEAL_KEY}/*" {{ capabilities = ["update"] }}
path "transit/verify/{SEAL_KEY}/*" {{ capabilities = ["update"] }}
path "sys/leases/lookup" {{ capabilities = ["update"] }}
path "sys/leases/lookup/database/creds/*" {{ capabilities = ["list", "sudo"] }}
# Verifying people's signed statements: who is in which group (live), and approvers' public keys.
# Nothing here lets the worker sign as a person (no transit/sign/approver-*).
path "identity/entity/name/*" {{ capabilities = ["read"] }}
path "identity/entity/id/*" {{ capabilities = ["read"] }}
path "identity/group/name/*" {{ capabilities = ["read"] }}
path "identity/group/id/*" {{ capabilities = ["read"] }}
path "{TRANSIT_MOUNT}/keys/{APPROVER_KEY_PREFIX}*" {{ capabilities = ["read"] }}
""" + payload_policy(PAYLOAD_KEY, encrypt=True)


def bootstrap_seal_key(client: hvac.Client, mounts: dict[str, object]) -> None:
    """The worker's sealing key (Transit; never exportable): continue-as-new carries are sealed with
    it, so a client can never hand a run engine-only state the engine did not make."""
    if "transit/" not in mounts:
        client.sys.enable_secrets_engine("transit", path="transit")
    client.adapter.post(f"/v1/transit/keys/{SEAL_KEY}", json={"type": "aes256-gcm96", "exportable": False})


def person_policy(groups: tuple[str, ...] | list[str]) -> str:
    """The one templated policy every person's token carries: sign only with their own key."""
    lines = [
        "# A person (operator, approver): sign statements with their own transit key only, and read",
        "# their own identity. Templating resolves per token, so alice's token can never name bob's key.",
        f'path "{TRANSIT_MOUNT}/sign/{APPROVER_KEY_PREFIX}{{{{identity.entity.name}}}}" {{ capabilities = ["update"] }}',
        'path "identity/entity/id/{{identity.entity.id}}" { capabilities = ["read"] }',
        'path "auth/token/lookup-self" { capabilities = ["read"] }',
        'path "auth/token/revoke-self" { capabilities = ["update"] }',
        "# A group's name, for its members only (the template does not resolve for anyone else).",
    ]
    lines += [
        f'path "identity/group/id/{{{{identity.groups.names.{g}.id}}}}" {{ capabilities = ["read"] }}' for g in groups
    ]
    return "\n".join(lines) + "\n"


def bootstrap_people(
    client: hvac.Client,
    *,
    password: str,
    people: dict[str, tuple[str, ...]] | None = None,
    groups: tuple[str, ...] = DEV_GROUPS,
) -> None:
    """Creates the dev people as Vault identities (dev stack only). Idempotent.

    Each person is a userpass user aliased to a named identity entity, with a non-exportable ed25519
    transit key `approver-<name>` only they can sign with; groups are internal identity groups with
    the seed membership (re-running resets membership to the seed). Tokens are short-lived.

    Args:
        client: A root (or equally privileged) client.
        password: The userpass password of every dev person.
        people: name -> groups (default: `DEV_PEOPLE`).
        groups: Every group to create, members or not.
    """
    people = DEV_PEOPLE if people is None else people
    auths = client.sys.list_auth_methods()["data"]
    if f"{USERPASS_MOUNT}/" not in auths:
        client.sys.enable_auth_method("userpass", path=USERPASS_MOUNT)
        auths = client.sys.list_auth_methods()["data"]
    accessor = auths[f"{USERPASS_MOUNT}/"]["accessor"]
    # Another bootstrap block (ledger checkpoints) may enable the same transit mount: either wins.
    if f"{TRANSIT_MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        try:
            client.sys.enable_secrets_engine("transit", path=TRANSIT_MOUNT)
        except hvac.exceptions.InvalidRequest:
            if f"{TRANSIT_MOUNT}/" not in client.sys.list_mounted_secrets_engines()["data"]:
                raise

    all_groups = tuple(dict.fromkeys([*groups, *PAYLOAD_READER_GROUPS, *(g for gs in people.values() for g in gs)]))
    client.sys.create_or_update_policy(name=PERSON_POLICY, policy=person_policy(all_groups))

    entity_ids: dict[str, str] = {}
    for name in people:
        vaultio.write(
            client,
            f"auth/{USERPASS_MOUNT}/users/{name}",
            password=password,
            # Their own signing key, and encrypting payloads (starting runs, sending signed acts).
            # Reading payloads is a group's policy (PAYLOAD_READER_GROUPS), not every person's.
            token_policies=[PERSON_POLICY, PAYLOAD_ENCRYPT_POLICY],
            token_ttl="1h",  # noqa: S106 - a duration: operator tokens are short-lived
            token_max_ttl="8h",  # noqa: S106 - a duration
            token_type="service",  # noqa: S106 - a token type
        )
        entity = (vaultio.read(client, f"identity/entity/name/{name}") or {}).get("data")
        if entity is None:
            entity = vaultio.write(client, "identity/entity", name=name)["data"]
        entity_ids[name] = entity["id"]
        if not any(a.get("mount_accessor") == accessor for a in entity.get("aliases") or []):
            vaultio.write(
                client, "identity/entity-alias", name=name, canonical_id=entity["id"], mount_accessor=accessor
            )
        # Writing an existing key returns it unchanged: no rotation, no error.
        vaultio.write(client, f"{TRANSIT_MOUNT}/keys/{APPROVER_KEY_PREFIX}{name}", type="ed25519", exportable=False)

    for group in all_groups:
        members = sorted(entity_ids[n] for n, gs in people.items() if group in gs)
        vaultio.write(
            client,
            f"identity/group/name/{group}",
            type="internal",
            member_entity_ids=members,
            # Identity policies apply to every token of every member, from the next request on.
            policies=[PAYLOAD_READER_POLICY] if group in PAYLOAD_READER_GROUPS else [],
        )


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
    connection_url: Callable[[str], str],
    db_username: str,
    db_password: str,
    agents: AgentRegistry,
    keep_secret_id: str | None = None,
    dev_password: str | None = None,
) -> Bootstrap:
    """Configures Vault with the root token. Returns the worker's AppRole credentials.

    Args:
        connection_url: The database engine's URL template for a database name.
        agents: The configured agents: their declared database secrets become Vault roles, and
            each agent gets a policy for exactly its tools' secrets.
        dev_password: The dev stack only: the userpass password of the dev people, who are then
            created (`bootstrap_people`). None creates no people.
    """
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if "database/" not in mounts:
        client.sys.enable_secrets_engine("database", path="database")
    if f"{RUNS_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("kv", path=RUNS_MOUNT, options={"version": "1"})
    bootstrap_seal_key(client, mounts)

    secrets = agents.database_secrets()
    for database in sorted({d.database for d in secrets}):
        client.secrets.database.configure(
            name=database,
            plugin_name="postgresql-database-plugin",
            allowed_roles=[d.role for d in secrets if d.database == database],
            connection_url=connection_url(database),
            username=db_username,
            password=db_password,
            verify_connection=True,
        )
    for declared in secrets:
        member_of = ", ".join(f'"{g}"' for g in declared.member_of)
        client.secrets.database.create_role(
            name=declared.role,
            db_name=declared.database,
            creation_statements=[
                # VALID UNTIL is the database's own backstop should Vault never revoke.
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                "VALID UNTIL '{{expiration}}'" + (f" IN ROLE {member_of};" if member_of else ";")
            ],
            revocation_statements=[
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
                'DROP ROLE IF EXISTS "{{name}}";',
            ],
            default_ttl=declared.default_ttl,
            max_ttl=declared.max_ttl,
        )

    bootstrap_payload_key(client)
    client.sys.create_or_update_policy(name=WORKER_POLICY, policy=_worker_policy() + ledger_signing_policy())
    bootstrap_ledger_signing(client)
    if dev_password is not None:
        bootstrap_people(client, password=dev_password)
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
            check = client.adapter.post(
                f"/v1/auth/approle/role/{WORKER_APPROLE}/secret-id/lookup", json={"secret_id": keep_secret_id}
            )
            # An unknown secret id is answered with 204 and no body (a successful, empty response):
            # only one the server describes is still valid.
            body = check if isinstance(check, dict) else None
            if body is not None and body.get("data"):
                return Bootstrap(role_id=role_id, secret_id=keep_secret_id)
        except Exception:  # noqa: BLE001, S110 - a stale secret id: issue a new one
            pass
    secret_id = client.auth.approle.generate_secret_id(role_name=WORKER_APPROLE)["data"]["secret_id"]
    return Bootstrap(role_id=role_id, secret_id=secret_id)


# -- ledger anchoring (issue 14) -------------------------------------------------------------------


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
