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
from typing import Any

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
    "LEDGER_ROW_KEY",
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
    "WORKER_APPROLE",
    "WORKER_POLICY",
    "Bootstrap",
    "Changes",
    "DatabaseEngine",
    "WorkerRole",
    "bootstrap_ledger_signing",
    "bootstrap_payload_key",
    "bootstrap_people",
    "bootstrap_vault",
    "configure_vault",
    "ensure_auth",
    "ensure_config",
    "ensure_mount",
    "ensure_people",
    "ensure_policy",
    "ensure_transit_key",
    "payload_policy",
    "person_policy",
    "provision_databases",
    "secure_postgres",
    "socket_connection_url",
]

# Vault names live in the one table (lockgate/names.py); re-exported for the code that says them here.
from lockgate.names import (
    LEDGER_ROW_KEY,
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
    audience_policy,
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


# -- idempotent building blocks: read, compare, write only what differs -------------------------
class Changes:
    """What a bootstrap changed (or, in a dry run, would change), one line per change.

    `changes("policy x: created")` records the line and answers whether to apply it: False in a
    dry run, so every `ensure_*` reads and compares the same way and only skips the write.
    """

    def __init__(self, *, dry_run: bool = False) -> None:
        self.dry_run = dry_run
        self.done: list[str] = []

    def __call__(self, what: str) -> bool:
        self.done.append(what)
        return not self.dry_run

    def __bool__(self) -> bool:
        return bool(self.done)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> object:
    """Vault answers durations in seconds; lockgate writes them as "1h": compare both as seconds."""
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in _UNITS:
        return int(value[:-1]) * _UNITS[value[-1]]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _same(current: object, desired: object) -> bool:
    if isinstance(desired, (list, tuple)):
        have = current if isinstance(current, (list, tuple)) else ([] if current in (None, "") else [current])
        return sorted(map(str, have)) == sorted(map(str, desired))
    return _seconds(current) == _seconds(desired)


def ensure_mount(client: hvac.Client, path: str, kind: str, changes: Changes, **options: Any) -> None:
    """A secrets engine at `path`. Tolerates a concurrent bootstrap enabling it first."""
    if f"{path}/" in client.sys.list_mounted_secrets_engines()["data"]:
        return
    if changes(f"secrets engine {kind} enabled at {path}/"):
        try:
            client.sys.enable_secrets_engine(kind, path=path, **options)
        except hvac.exceptions.InvalidRequest:
            if f"{path}/" not in client.sys.list_mounted_secrets_engines()["data"]:
                raise


def ensure_auth(client: hvac.Client, path: str, kind: str, changes: Changes) -> None:
    """An auth method at `path`."""
    if f"{path}/" in client.sys.list_auth_methods()["data"]:
        return
    if changes(f"auth method {kind} enabled at {path}/"):
        client.sys.enable_auth_method(kind, path=path)


def ensure_policy(client: hvac.Client, name: str, text: str, changes: Changes) -> None:
    """An ACL policy with exactly `text`."""
    try:
        current = vaultio.body(client.sys.read_policy(name=name)).get("data", {}).get("rules")
    except hvac.exceptions.InvalidPath:
        current = None
    if current is not None and current.strip() == text.strip():
        return
    if changes(f"policy {name}: {'created' if current is None else 'updated'}"):
        client.sys.create_or_update_policy(name=name, policy=text)


def ensure_transit_key(client: hvac.Client, name: str, key_type: str, changes: Changes) -> None:
    """A non-exportable Transit key; an existing one (and its versions) is kept as it is."""
    try:
        client.secrets.transit.read_key(name=name, mount_point=TRANSIT_MOUNT)
        return
    except hvac.exceptions.InvalidPath:
        pass
    if changes(f"transit key {name} ({key_type}) created"):
        # Writing an existing key returns it unchanged (a concurrent bootstrap): no rotation, no error.
        vaultio.write(client, f"{TRANSIT_MOUNT}/keys/{name}", type=key_type, exportable=False)


def ensure_config(
    client: hvac.Client, path: str, desired: dict[str, Any], changes: Changes, *, write_only: tuple[str, ...] = ()
) -> None:
    """`vault write PATH desired...` unless what Vault reads back at PATH already matches.

    Args:
        write_only: fields Vault never reads back (passwords): written along with any change,
            never compared.
    """
    try:
        current = (vaultio.read(client, path) or {}).get("data")
    except hvac.exceptions.InvalidPath:
        current = None
    if current is not None:
        flat = {**current, **(current.get("connection_details") or {})}
        if all(_same(flat.get(k), v) for k, v in desired.items() if k not in write_only):
            return
    if changes(f"{path}: {'created' if current is None else 'updated'}"):
        vaultio.write(client, path, **desired)


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


def bootstrap_payload_key(client: hvac.Client, key: str = PAYLOAD_KEY, changes: Changes | None = None) -> None:
    """The Transit engine, the payload key (aes256-gcm96; never exportable) and the reader and
    writer policies. Rotation is `transit/keys/<key>/rotate`; old versions keep decrypting."""
    changes = changes or Changes()
    ensure_mount(client, TRANSIT_MOUNT, "transit", changes)
    ensure_transit_key(client, key, "aes256-gcm96", changes)
    ensure_policy(client, PAYLOAD_READER_POLICY, payload_policy(key, encrypt=False), changes)
    ensure_policy(client, PAYLOAD_WRITER_POLICY, payload_policy(key, encrypt=True), changes)
    ensure_policy(client, PAYLOAD_ENCRYPT_POLICY, payload_policy(key, decrypt=False), changes)


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
# Tokens minted per call for an MCP server's audience (`lockgate leases` lists the live ones).
path "sys/leases/lookup/auth/token/create/*" {{ capabilities = ["list", "sudo"] }}
# Verifying people's signed statements: who is in which group (live), and approvers' public keys.
# Nothing here lets the worker sign as a person (no transit/sign/approver-*).
path "identity/entity/name/*" {{ capabilities = ["read"] }}
path "identity/entity/id/*" {{ capabilities = ["read"] }}
path "identity/group/name/*" {{ capabilities = ["read"] }}
path "identity/group/id/*" {{ capabilities = ["read"] }}
path "{TRANSIT_MOUNT}/keys/{APPROVER_KEY_PREFIX}*" {{ capabilities = ["read"] }}
""" + payload_policy(PAYLOAD_KEY, encrypt=True)


def bootstrap_seal_key(client: hvac.Client, mounts: object = None, changes: Changes | None = None) -> None:
    """The worker's sealing key (Transit; never exportable): continue-as-new carries are sealed with
    it, so a client can never hand a run engine-only state the engine did not make."""
    changes = changes or Changes()
    ensure_mount(client, TRANSIT_MOUNT, "transit", changes)
    ensure_transit_key(client, SEAL_KEY, "aes256-gcm96", changes)


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
    changes: Changes | None = None,
) -> None:
    """Creates the dev people as Vault identities (dev stack only). Idempotent.

    Each person is a userpass user aliased to a named identity entity (`ensure_people`), with a
    non-exportable ed25519 transit key `approver-<name>` only they can sign with; groups are internal
    identity groups with the seed membership (re-running resets membership to the seed). Tokens are
    short-lived.

    Args:
        client: A root (or equally privileged) client.
        password: The userpass password of every dev person.
        people: name -> groups (default: `DEV_PEOPLE`).
        groups: Every group to create, members or not.
    """
    changes = changes or Changes()
    people = DEV_PEOPLE if people is None else people
    ensure_auth(client, USERPASS_MOUNT, "userpass", changes)
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
    ensure_people(client, people, changes, groups=groups, alias_mount=USERPASS_MOUNT)


def ensure_people(
    client: hvac.Client,
    people: dict[str, tuple[str, ...]] | dict[str, list[str]],
    changes: Changes,
    *,
    groups: tuple[str, ...] = (),
    alias_mount: str | None = None,
) -> None:
    """People as Vault identities: an entity each, their `approver-<name>` signing key, the groups
    with exactly these members, and the person policy that templates over those groups.

    This is the hook for a team's IdP automation (`lockgate setup --people FILE`): the sync job
    writes who is in which approver group; how people sign in (OIDC, LDAP, userpass) is an alias
    of the entity on that auth method, made here only for `alias_mount`.
    """
    accessor = None
    if alias_mount is not None:
        accessor = client.sys.list_auth_methods()["data"].get(f"{alias_mount}/", {}).get("accessor")
    ensure_mount(client, TRANSIT_MOUNT, "transit", changes)
    # Sorted: the same groups give the same policy text, whatever order they came in.
    all_groups = tuple(sorted({*groups, *PAYLOAD_READER_GROUPS, *(g for gs in people.values() for g in gs)}))
    ensure_policy(client, PERSON_POLICY, person_policy(all_groups), changes)

    entity_ids: dict[str, str] = {}
    for name in people:
        entity = (vaultio.read(client, f"identity/entity/name/{name}") or {}).get("data")
        if entity is None:
            if not changes(f"identity entity {name} created"):
                continue
            entity = vaultio.write(client, "identity/entity", name=name)["data"]
        entity_ids[name] = entity["id"]
        if accessor and not any(a.get("mount_accessor") == accessor for a in entity.get("aliases") or []):
            if changes(f"identity entity {name}: alias on {alias_mount}/"):
                vaultio.write(
                    client, "identity/entity-alias", name=name, canonical_id=entity["id"], mount_accessor=accessor
                )
        ensure_transit_key(client, f"{APPROVER_KEY_PREFIX}{name}", "ed25519", changes)

    for group in all_groups:
        members = sorted(entity_ids[n] for n, gs in people.items() if group in gs and n in entity_ids)
        # Identity policies apply to every token of every member, from the next request on: reading
        # payloads is these groups' role (PAYLOAD_READER_GROUPS), not every person's.
        policies = [PAYLOAD_READER_POLICY] if group in PAYLOAD_READER_GROUPS else []
        current = (vaultio.read(client, f"identity/group/name/{group}") or {}).get("data")
        if (
            current is not None
            and sorted(current.get("member_entity_ids") or []) == members
            and sorted(current.get("policies") or []) == policies
        ):
            continue
        verb = "created" if current is None else "members and policies set"
        if changes(f"identity group {group}: {verb} ({len(members)} members)"):
            vaultio.write(
                client, f"identity/group/name/{group}", type="internal", member_entity_ids=members, policies=policies
            )


MINTED = "auth/token/create/"  # secret paths that mint a token per call (an MCP server's audience)


def agent_policy(secret_paths: list[str]) -> str:
    lines = ["# A run identity of this agent: exactly the dynamic secrets its tools declare."]
    lines += [
        f'path "{p}" {{ capabilities = ["{"update" if p.startswith(MINTED) else "read"}"] }}' for p in secret_paths
    ]
    lines.append('path "auth/token/lookup-self" { capabilities = ["read"] }')
    return "\n".join(lines) + "\n"


def socket_connection_url(socket_dir: Path, dbname: str = "shop") -> str:
    """The database engine's URL template for a Postgres listening on a Unix socket."""
    return f"postgresql://{{{{username}}}}:{{{{password}}}}@/{dbname}?host={socket_dir}"


@dataclass(frozen=True)
class DatabaseEngine:
    """How Vault's database engine reaches the databases the agents' tools declare.

    Attributes:
        connection_url: the engine's URL template for a database name (credentials as
            `{{username}}`/`{{password}}` placeholders).
        username: the admin role Vault creates and drops dynamic roles with.
        password: its password (written when a connection is created or changed, never compared:
            Vault does not read it back, and `database/rotate-root/<db>` may have rotated it).
    """

    connection_url: Callable[[str], str]
    username: str
    password: str


@dataclass(frozen=True)
class WorkerRole:
    """The worker's AppRole: token lifetimes and how long and how often one secret id may log in.

    Attributes:
        secret_id_ttl: a secret id's lifetime ("0": unbounded; the dev stack only).
        secret_id_num_uses: logins per secret id (0: unbounded; the dev stack only). The worker
            renews its token and logs in again only when the token reaches `token_max_ttl`.
    """

    token_ttl: str = "1h"  # noqa: S105 - a duration
    token_max_ttl: str = "24h"  # noqa: S105 - a duration
    secret_id_ttl: str = "0"  # noqa: S105 - a duration
    secret_id_num_uses: int = 0


def configure_vault(
    client: hvac.Client,
    *,
    agents: AgentRegistry,
    database: DatabaseEngine | None,
    worker: WorkerRole,
    changes: Changes,
) -> None:
    """Everything lockgate needs in Vault/OpenBao, for the dev stack and `lockgate setup` alike:
    engines, Transit keys, lockgate's policies, the agents' database roles and policies, the run
    token role and the worker's AppRole. Reads first and writes only what differs (`changes`).

    Args:
        agents: The configured agents: their declared database secrets become Vault roles, and
            each agent gets a policy for exactly its tools' secrets.
        database: How the database engine reaches the agents' databases; None leaves the
            connections as they are (their roles are still declared).
        worker: The worker's AppRole settings.
    """
    ensure_mount(client, "database", "database", changes)
    ensure_mount(client, RUNS_MOUNT, "kv", changes, options={"version": "1"})
    bootstrap_seal_key(client, changes=changes)

    secrets = agents.database_secrets()
    if database is not None:
        for name in sorted({d.database for d in secrets}):
            ensure_config(
                client,
                f"database/config/{name}",
                {
                    "plugin_name": "postgresql-database-plugin",
                    "allowed_roles": [d.role for d in secrets if d.database == name],
                    "connection_url": database.connection_url(name),
                    "username": database.username,
                    "password": database.password,
                    "verify_connection": True,
                },
                changes,
                write_only=("password", "verify_connection"),
            )
    for declared in secrets:
        member_of = ", ".join(f'"{g}"' for g in declared.member_of)
        ensure_config(
            client,
            f"database/roles/{declared.role}",
            {
                "db_name": declared.database,
                "creation_statements": [
                    # VALID UNTIL is the database's own backstop should Vault never revoke.
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                    "VALID UNTIL '{{expiration}}'" + (f" IN ROLE {member_of};" if member_of else ";")
                ],
                "revocation_statements": [
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
                    'DROP ROLE IF EXISTS "{{name}}";',
                ],
                "default_ttl": declared.default_ttl,
                "max_ttl": declared.max_ttl,
            },
            changes,
        )

    bootstrap_payload_key(client, changes=changes)
    ensure_policy(client, WORKER_POLICY, _worker_policy() + ledger_signing_policy(), changes)
    bootstrap_ledger_signing(client, changes)
    bootstrap_token_roles(
        client, sorted({t.secret for t in agents.tools() if t.secret and t.secret.startswith(MINTED)}), changes
    )
    agent_policies = []
    for agent in agents.agents():
        ensure_policy(client, agent.vault_policy, agent_policy(agent.secrets()), changes)
        agent_policies.append(agent.vault_policy)

    ensure_config(
        client,
        f"auth/token/roles/{RUN_TOKEN_ROLE}",
        {
            "allowed_policies": agent_policies,
            "orphan": True,
            "renewable": False,
            "token_explicit_max_ttl": "24h",
            "token_type": "service",
        },
        changes,
    )

    ensure_auth(client, "approle", "approle", changes)
    ensure_config(
        client,
        f"auth/approle/role/{WORKER_APPROLE}",
        {
            "token_policies": [WORKER_POLICY],
            "token_ttl": worker.token_ttl,
            "token_max_ttl": worker.token_max_ttl,
            "secret_id_ttl": worker.secret_id_ttl,
            "secret_id_num_uses": worker.secret_id_num_uses,
        },
        changes,
    )


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
    """The dev stack's Vault: `configure_vault` with the root token, the dev people, and the
    worker's AppRole credentials in clear (kept while still valid). Returns those credentials.

    Args:
        connection_url: The database engine's URL template for a database name.
        agents: The configured agents (see `configure_vault`).
        dev_password: The dev stack only: the userpass password of the dev people, who are then
            created (`bootstrap_people`). None creates no people.
    """
    changes = Changes()
    configure_vault(
        client,
        agents=agents,
        database=DatabaseEngine(connection_url, db_username, db_password),
        worker=WorkerRole(),
        changes=changes,
    )
    if dev_password is not None:
        bootstrap_people(client, password=dev_password, changes=changes)
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


def bootstrap_token_roles(client: hvac.Client, paths: list[str], changes: Changes | None = None) -> None:
    """A token role per audience (`auth/token/create/<role>`, e.g. `mcp-bank`): the tokens a run
    mints from it for one call may only look themselves up (how the server they are for checks them:
    `role` names the audience), last at most 5 minutes and are children of the run's identity."""
    changes = changes or Changes()
    for path in paths:
        role = path[len(MINTED) :]
        policy = audience_policy(role)
        ensure_policy(
            client,
            policy,
            f"# A token for one call to {role}: it can only be introspected by its audience.\n"
            'path "auth/token/lookup-self" { capabilities = ["read"] }\n',
            changes,
        )
        ensure_config(
            client,
            f"auth/token/roles/{role}",
            {
                "allowed_policies": [policy],
                "token_no_default_policy": True,
                "orphan": False,
                "renewable": False,
                "token_explicit_max_ttl": "300s",
                "token_type": "service",
            },
            changes,
        )


# -- ledger anchoring (issue 14) -------------------------------------------------------------------


def ledger_signing_policy() -> str:
    """What the worker needs to anchor the ledger: sign with the ledger key (never export it), read
    its public keys (all versions), and keep the newest checkpoint as a witness outside the database."""
    return f"""
# ledger anchoring: the key signs checkpoints; nobody can export it (exportable=false).
path "{TRANSIT_MOUNT}/sign/{LEDGER_SIGNING_KEY}" {{ capabilities = ["update"] }}
path "{TRANSIT_MOUNT}/keys/{LEDGER_SIGNING_KEY}" {{ capabilities = ["read"] }}
# ledger rows: every row a worker writes carries a MAC with a key derived from this Transit key.
path "{TRANSIT_MOUNT}/hmac/{LEDGER_ROW_KEY}/*" {{ capabilities = ["update"] }}
path "{RUNS_MOUNT}/{LEDGER_WITNESS_PATH}/*" {{ capabilities = ["create", "read", "update"] }}
"""


def bootstrap_ledger_signing(client: hvac.Client, changes: Changes | None = None) -> None:
    """The Transit mount and the ledger's ed25519 signing key, non-exportable. Idempotent: an
    existing key (and its versions) is kept as it is."""
    changes = changes or Changes()
    ensure_mount(client, TRANSIT_MOUNT, "transit", changes)
    ensure_transit_key(client, LEDGER_SIGNING_KEY, "ed25519", changes)
    ensure_transit_key(client, LEDGER_ROW_KEY, "aes256-gcm96", changes)
