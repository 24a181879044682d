"""`lockgate setup`: prepares real servers for lockgate, idempotently (issue 28).

Three parts, each reading first and changing only what differs, each line of what it changed printed:

- **temporal**: lockgate's custom search attributes (the `SearchAttributeKey`s its workflows write)
  in the namespace, through the operator service. Without them every governed run's workflow task
  fails and retries forever. Temporal Cloud's operator service cannot add them: setup checks, and
  names the `tcld` command (or Cloud Ops API / Terraform) that does.
- **openbao**: `lockgate.bootstrap.configure_vault` (the same code as the dev stack: engines,
  Transit keys, lockgate's policies, the agents' database roles, the run token role, the worker's
  AppRole with a TTL- and use-bound secret id), the approver groups the policies name, the people of
  a `--people` file (the hook for the team's IdP sync), a `lockgate-setup` identity so that no later
  run needs the root token, and the worker's secret id delivered response-wrapped (only the
  single-use wrapping token is ever printed or written).
- **ledger**: `migrate_ledger(url)` with the migration role, then the runtime role's grants.

A second run with nothing to do prints "nothing to do" and exits 0.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hvac
import hvac.exceptions

from lockgate import bootstrap, vaultio
from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.spec import AgentRegistry

__all__ = [
    "SETUP_APPROLE",
    "SETUP_POLICY",
    "SetupOptions",
    "SetupReport",
    "approver_groups",
    "migrate_ledger",
    "run_setup",
    "search_attributes",
    "setup_policy",
]

SETUP_POLICY = "lockgate-setup"
SETUP_APPROLE = "lockgate-setup"
# A setup secret id lasts 90 days; `lockgate setup --setup-credentials NEW` as lockgate-setup rotates it.
SETUP_SECRET_ID_TTL = "2160h"  # noqa: S105 - a duration
# Temporal Cloud endpoints (mTLS: <ns>.<account>.tmprl.cloud; API keys: <region>.<cloud>.api.temporal.io).
_CLOUD_HOSTS = (".tmprl.cloud", ".api.temporal.io")


@dataclass(frozen=True)
class SetupOptions:
    """What `lockgate setup` does (the CLI's flags).

    Attributes:
        dry_run: read and compare only; report what would change.
        parts: which of "temporal", "openbao", "ledger" to prepare.
        people: name -> groups, from the IdP sync's file (None: membership is left alone).
        groups: approver groups to create besides those the policies and agents name.
        worker_credentials: where to write the worker's role id and wrapped secret id (0600).
        new_worker_secret: issue a new worker secret id even if a live one exists.
        setup_credentials: where to write the `lockgate-setup` AppRole credentials (0600); issued
            only with this, on a run with a token that may (the root token, the first time).
        wrap_ttl: lifetime of the wrapping token that delivers the worker's secret id.
        secret_id_ttl: lifetime of a worker secret id.
        secret_id_uses: logins per worker secret id.
        ledger_runtime_role: the PostgreSQL role workers use: SELECT, INSERT, UPDATE on the ledger.
        provision_databases: run the declared tools' `setup_sql` with the admin DSN.
        retention_days: history retention of the namespace, when setup registers it (self-hosted).
        unwrap: write the worker's secret id unwrapped (single-host deployments whose credentials
            volume is the trust boundary, e.g. compose); otherwise only the wrapping token.
    """

    dry_run: bool = False
    parts: tuple[str, ...] = ("temporal", "openbao", "ledger")
    people: dict[str, tuple[str, ...]] | None = None
    groups: tuple[str, ...] = ()
    worker_credentials: Path | None = None
    new_worker_secret: bool = False
    setup_credentials: Path | None = None
    wrap_ttl: str = "15m"
    secret_id_ttl: str = "720h"  # noqa: S105 - a duration
    secret_id_uses: int = 100
    ledger_runtime_role: str | None = None
    provision_databases: bool = False
    retention_days: int = 30
    unwrap: bool = False


@dataclass
class SetupReport:
    """What setup changed (`changes`, "part: what"), what it could not do (`problems`: exit 1),
    and what the operator needs next (`notes`, `outputs`; never a secret in clear)."""

    changes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": bool(self.changes),
            "dry_run": self.dry_run,
            "changes": self.changes,
            "problems": self.problems,
            "notes": self.notes,
            "outputs": self.outputs,
        }

    def lines(self) -> list[str]:
        verb = "would change" if self.dry_run else "changed"
        out = [f"{verb}: {c}" for c in self.changes] or ["nothing to do"]
        out += [f"note: {n}" for n in self.notes]
        out += [f"{k}: {v}" for k, v in sorted(self.outputs.items())]
        out += [f"PROBLEM: {p}" for p in self.problems]
        return out


# -- temporal ------------------------------------------------------------------------------------
def search_attributes() -> dict[str, int]:
    """The custom search attributes lockgate's workflows write: name -> IndexedValueType."""
    from lockgate.names import SEARCH_ATTRIBUTES

    return {key.name: int(key.indexed_value_type) for key in SEARCH_ATTRIBUTES}


def search_attribute_flags() -> list[str]:
    """`NAME=Keyword` as `temporal server start-dev --search-attribute` and `tcld` take them."""
    from temporalio.common import SearchAttributeIndexedValueType

    def kind(value: int) -> str:
        return SearchAttributeIndexedValueType(value).name.title().replace("_", "")

    return [f"{name}={kind(value)}" for name, value in sorted(search_attributes().items())]


def _is_cloud(target: str) -> bool:
    host = target.rsplit(":", 1)[0].lower()
    return host.endswith(_CLOUD_HOSTS)


async def _ensure_namespace(
    client: Any, namespace: str, retention_days: int, report: SetupReport, dry_run: bool
) -> bool:
    """Registers the namespace on a self-hosted cluster when it is missing (Temporal's server image
    with schema set-up, unlike the deprecated auto-setup, creates none). Returns False when the
    namespace is missing and a dry run did not create it."""
    from datetime import timedelta

    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
        return True
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise UserError(f"Temporal namespace {namespace}: {err.message}") from err
    report.changes.append(f"temporal: namespace {namespace} registered (retention {retention_days} days)")
    if dry_run:
        return False
    retention = Duration()
    retention.FromTimedelta(timedelta(days=retention_days))
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=namespace, workflow_execution_retention_period=retention)
    )
    return True


async def _temporal(settings: Settings, report: SetupReport, dry_run: bool, retention_days: int = 30) -> None:
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    from lockgate.worker import connect_config

    config = connect_config(settings)
    target = config.pop("target_host")
    namespace = config.get("namespace") or "default"
    config.pop("data_converter", None)
    cloud = _is_cloud(target)
    tcld = (
        "tcld namespace search-attributes add --namespace "
        + namespace
        + "".join(f' --search-attribute "{f}"' for f in search_attribute_flags())
    )
    try:
        client = await Client.connect(target, **config)
    except Exception as err:
        raise UserError(f"cannot reach Temporal at {target}: {err}") from err
    wanted = search_attributes()
    if not cloud and not await _ensure_namespace(client, namespace, retention_days, report, dry_run):
        report.changes.append(f"temporal: search attributes {', '.join(sorted(wanted))} added to namespace {namespace}")
        return
    try:
        # A namespace registered a moment ago reaches every frontend's cache within seconds.
        listed = None
        for attempt in range(60):
            try:
                listed = await client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=namespace)
                )
                break
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND or attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        assert listed is not None
        have = {k: int(v) for k, v in listed.custom_attributes.items()}
    except RPCError as err:
        if cloud:
            report.notes.append(
                f"Temporal Cloud: cannot list search attributes here ({err.message}); make sure: {tcld}"
            )
            return
        raise UserError(f"Temporal namespace {namespace}: cannot list search attributes: {err.message}") from err
    wrong = {k: v for k, v in wanted.items() if k in have and have[k] != v}
    for name in wrong:
        report.problems.append(
            f"temporal: search attribute {name} exists in {namespace} with another type; lockgate needs "
            f"{dict(f.split('=') for f in search_attribute_flags())[name]}"
        )
    missing = {k: v for k, v in wanted.items() if k not in have}
    if not missing:
        return
    names = ", ".join(sorted(missing))
    if cloud:
        report.problems.append(
            f"temporal: {namespace} lacks {names}; Temporal Cloud adds search attributes through its control "
            f"plane, not the operator service: {tcld} (or the Cloud Ops API / Terraform provider)"
        )
        return
    report.changes.append(f"temporal: search attributes {names} added to namespace {namespace}")
    if dry_run:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)  # type: ignore[arg-type]
        )
    except RPCError as err:
        report.changes.pop()
        hint = ""
        if err.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            hint = f" (an admin identity must add them: temporal operator search-attribute create, or {tcld})"
        report.problems.append(f"temporal: adding {names} to {namespace} was refused: {err.message}{hint}")


# -- openbao -------------------------------------------------------------------------------------
def setup_policy() -> str:
    """What `lockgate-setup` may do: exactly what `configure_vault` and setup's own steps touch.

    It can write lockgate-* policies and the worker's AppRole, so it can grant itself more: keep its
    credentials where the deployment pipeline keeps its other admin secrets.
    """
    worker = f"auth/approle/role/{bootstrap.WORKER_APPROLE}"
    return f"""# lockgate setup: prepares OpenBao for lockgate after the first run (no root token needed).
path "sys/mounts" {{ capabilities = ["read"] }}
path "sys/mounts/*" {{ capabilities = ["create", "read", "update", "sudo"] }}
path "sys/auth" {{ capabilities = ["read"] }}
path "sys/auth/*" {{ capabilities = ["create", "read", "update", "sudo"] }}
path "sys/policy/lockgate-*" {{ capabilities = ["create", "read", "update"] }}
path "sys/policies/acl/lockgate-*" {{ capabilities = ["create", "read", "update"] }}
path "database/config/*" {{ capabilities = ["create", "read", "update"] }}
path "database/roles/*" {{ capabilities = ["create", "read", "update"] }}
path "{bootstrap.TRANSIT_MOUNT}/keys/*" {{ capabilities = ["create", "read", "update"] }}
path "auth/token/roles/*" {{ capabilities = ["create", "read", "update"] }}  # the run role, MCP audiences
path "{worker}" {{ capabilities = ["create", "read", "update"] }}
path "{worker}/role-id" {{ capabilities = ["read"] }}
path "{worker}/secret-id" {{ capabilities = ["create", "update", "list"] }}
path "auth/approle/role/{SETUP_APPROLE}" {{ capabilities = ["read"] }}
path "auth/approle/role/{SETUP_APPROLE}/role-id" {{ capabilities = ["read"] }}
path "auth/approle/role/{SETUP_APPROLE}/secret-id" {{ capabilities = ["create", "update"] }}
path "auth/approle/role/{SETUP_APPROLE}/secret-id/destroy" {{ capabilities = ["update"] }}
path "identity/entity" {{ capabilities = ["create", "update"] }}
path "identity/entity/name/*" {{ capabilities = ["create", "read", "update"] }}
path "identity/entity-alias" {{ capabilities = ["create", "update"] }}
path "identity/group/name/*" {{ capabilities = ["create", "read", "update"] }}
"""


def approver_groups(policy_dir: Path, agents: AgentRegistry) -> tuple[str, ...]:
    """Every group lockgate asks for: policies' `@approval`, agents' escalations and taint
    approvers, and `operators` (halt, freeze)."""
    from lockgate.names import GROUP_OPERATORS
    from lockgate.policies import load_bundle

    bundle = load_bundle(policy_dir, agents)
    groups = {s.approval_group for s in bundle.statements if s.approval_group}
    for agent in agents.agents():
        groups.update(agent.escalations.values())
        if agent.taint_approver:
            groups.add(agent.taint_approver)
    return tuple(sorted({GROUP_OPERATORS, *groups}))


def _setup_identity(environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """lockgate-setup's AppRole credentials: LOCKGATE_SETUP_ROLE_ID / _SECRET_ID, else the file
    LOCKGATE_SETUP_CREDENTIALS names (written by the first run: a one-shot's volume, e.g. compose)."""
    role_id, secret_id = environ.get("LOCKGATE_SETUP_ROLE_ID"), environ.get("LOCKGATE_SETUP_SECRET_ID")
    path = environ.get("LOCKGATE_SETUP_CREDENTIALS")
    if not (role_id and secret_id) and path and Path(path).is_file():
        from lockgate.config import read_env_file

        values = read_env_file(Path(path))
        role_id, secret_id = values.get("LOCKGATE_SETUP_ROLE_ID"), values.get("LOCKGATE_SETUP_SECRET_ID")
    return role_id, secret_id


def _vault_client(settings: Settings, environ: Mapping[str, str]) -> tuple[hvac.Client, str]:
    """Logged in as `lockgate-setup` (LOCKGATE_SETUP_ROLE_ID / _SECRET_ID), else with VAULT_TOKEN."""
    client = vaultio.client(settings.vault_addr, timeout=10)
    try:
        health = vaultio.body(client.sys.read_health_status(method="GET"))
    except Exception as err:
        raise UserError(f"cannot reach OpenBao at {settings.vault_addr}: {err}") from err
    if not health.get("initialized"):
        raise UserError(f"OpenBao at {settings.vault_addr} is not initialized (bao operator init; see the runbook)")
    if health.get("sealed"):
        raise UserError(f"OpenBao at {settings.vault_addr} is sealed: unseal it first (bao operator unseal)")
    role_id, secret_id = _setup_identity(environ)
    if role_id and secret_id:
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id)
        except hvac.exceptions.VaultError as err:
            raise UserError(f"lockgate-setup AppRole login refused: {err}") from err
        return client, SETUP_APPROLE
    token = environ.get("VAULT_TOKEN") or settings.vault_token
    if not token:
        raise UserError(
            "no OpenBao identity for setup: set LOCKGATE_SETUP_ROLE_ID and LOCKGATE_SETUP_SECRET_ID "
            "(written by the first run's --setup-credentials), or VAULT_TOKEN the first time"
        )
    client.token = token
    if not client.is_authenticated():
        raise UserError("VAULT_TOKEN is not a valid OpenBao token")
    return client, "token"


def _admin_dsn(environ: Mapping[str, str]) -> str | None:
    # LOCKGATE_SHOP_DSN: the name lockgate.deploy's openbao-init read (compose files still set it).
    return environ.get("LOCKGATE_DB_ADMIN_DSN") or environ.get("LOCKGATE_SHOP_DSN") or None


def _database_engine(environ: Mapping[str, str]) -> bootstrap.DatabaseEngine | None:
    dsn = _admin_dsn(environ)
    if not dsn:
        return None
    parts = urlsplit(dsn)
    if not parts.username or not parts.password:
        raise UserError("LOCKGATE_DB_ADMIN_DSN must carry the user and password Vault manages roles with")
    host = parts.hostname or ""
    netloc = "{{username}}:{{password}}@" + host + (f":{parts.port}" if parts.port else "")
    template = urlunsplit(("postgresql", netloc, "/", parts.query, ""))

    def url(db: str) -> str:
        return urlunsplit(urlsplit(template)._replace(path=f"/{db}"))

    return bootstrap.DatabaseEngine(url, parts.username, parts.password)


def _provision(environ: Mapping[str, str], agents: AgentRegistry, report: SetupReport, dry_run: bool) -> None:
    import psycopg
    from psycopg import sql

    dsn = _admin_dsn(environ)
    if not dsn:
        raise UserError("--provision-databases needs LOCKGATE_DB_ADMIN_DSN")
    done: set[tuple[str, str]] = set()
    for secret in agents.database_secrets():
        with psycopg.connect(dsn, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (secret.database,)).fetchone():
                report.changes.append(f"postgres: database {secret.database} created")
                if not dry_run:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(secret.database)))
        if secret.setup_sql and (secret.database, secret.setup_sql) not in done and not dry_run:
            target = urlunsplit(urlsplit(dsn)._replace(path=f"/{secret.database}"))
            with psycopg.connect(target, autocommit=True) as conn:
                conn.execute(secret.setup_sql)  # type: ignore[arg-type]  # trusted, declared DDL
            done.add((secret.database, secret.setup_sql))
    if done:
        report.notes.append(f"ran the declared setup_sql of {len(done)} database role(s) (idempotent DDL)")


def _secret_ids(client: hvac.Client, role: str) -> list[str]:
    try:
        resp = vaultio.body(client.adapter.list(f"/v1/auth/approle/role/{role}/secret-id"))
    except hvac.exceptions.InvalidPath:
        return []
    return list((resp.get("data") or {}).get("keys") or [])


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


def _openbao(
    settings: Settings, environ: Mapping[str, str], agents: AgentRegistry, opts: SetupOptions, report: SetupReport
) -> None:
    client, who = _vault_client(settings, environ)
    changes = bootstrap.Changes(dry_run=opts.dry_run)
    for agent in agents.agents():
        if who == SETUP_APPROLE and not agent.vault_policy.startswith("lockgate-"):
            report.problems.append(
                f"openbao: agent {agent.name}'s policy {agent.vault_policy} is outside lockgate-*: "
                "the lockgate-setup identity may not write it (rename it, or run setup with an admin token)"
            )
            return
    configure = bootstrap.configure_vault
    configure(
        client,
        agents=agents,
        database=_database_engine(environ),
        worker=bootstrap.WorkerRole(secret_id_ttl=opts.secret_id_ttl, secret_id_num_uses=opts.secret_id_uses),
        changes=changes,
    )
    if _database_engine(environ) is None and agents.database_secrets():
        report.notes.append("database connections left as they are (set LOCKGATE_DB_ADMIN_DSN to configure them)")
    groups = tuple(sorted({*approver_groups(settings.policy_dir, agents), *opts.groups}))
    if opts.people is not None:
        bootstrap.ensure_people(client, opts.people, changes, groups=groups)
    else:
        _ensure_groups(client, groups, changes)

    # The setup identity, so that later runs need no root token (the runbook then revokes root).
    if who != SETUP_APPROLE:
        bootstrap.ensure_policy(client, SETUP_POLICY, setup_policy(), changes)
        bootstrap.ensure_config(
            client,
            f"auth/approle/role/{SETUP_APPROLE}",
            {
                "token_policies": [SETUP_POLICY],
                "token_ttl": "15m",
                "token_max_ttl": "1h",
                "secret_id_num_uses": 0,
                "secret_id_ttl": SETUP_SECRET_ID_TTL,
            },
            changes,
        )
        if (
            opts.setup_credentials is None
            and not environ.get("LOCKGATE_SETUP_CREDENTIALS")
            and not _secret_ids(client, SETUP_APPROLE)
        ):
            report.notes.append(
                "no lockgate-setup credentials exist yet: run once more with --setup-credentials FILE "
                "(with this token), then revoke the root token"
            )
    # New lockgate-setup credentials: the first time (with the root token), or a rotation by the
    # setup identity itself, which then destroys the secret id it logged in with.
    rotate = who == SETUP_APPROLE
    verb = "rotated" if rotate else "written"
    target = opts.setup_credentials
    kept = environ.get("LOCKGATE_SETUP_CREDENTIALS")
    if target is None and not rotate and kept and not Path(kept).is_file():
        target = Path(kept)  # the first run writes the file later runs log in with
    if target is not None and changes(f"lockgate-setup credentials {verb} to {target}"):
        used = _setup_identity(environ)[1]  # before the file (maybe the same) is rewritten
        role_id = client.auth.approle.read_role_id(role_name=SETUP_APPROLE)["data"]["role_id"]
        secret = client.auth.approle.generate_secret_id(role_name=SETUP_APPROLE)["data"]["secret_id"]
        _write_private(target, f"LOCKGATE_SETUP_ROLE_ID={role_id}\nLOCKGATE_SETUP_SECRET_ID={secret}\n")
        if rotate:
            client.adapter.post(
                f"/v1/auth/approle/role/{SETUP_APPROLE}/secret-id/destroy",
                json={"secret_id": used},
            )
    report.changes += [f"openbao: {c}" for c in changes.done]

    # The worker's secret id, response-wrapped: only the single-use wrapping token leaves OpenBao here.
    worker = bootstrap.WORKER_APPROLE
    live = _secret_ids(client, worker)
    if live and not opts.new_worker_secret:
        return
    what = "a new worker secret id" if live else "the worker's first secret id"
    report.changes.append(f"openbao: {what} issued (response-wrapped, wrap_ttl {opts.wrap_ttl})")
    if opts.dry_run:
        return
    role_id = client.auth.approle.read_role_id(role_name=worker)["data"]["role_id"]
    wrapped = vaultio.body(client.auth.approle.generate_secret_id(role_name=worker, wrap_ttl=opts.wrap_ttl))
    info = wrapped.get("wrap_info") or {}
    if not info.get("token"):
        raise UserError("OpenBao did not wrap the worker's secret id (is response wrapping allowed?)")
    report.outputs["worker_role_id"] = role_id
    report.outputs["worker_wrapped_secret_id_accessor"] = info.get("accessor")
    if opts.worker_credentials is not None and opts.unwrap:
        # Single host (compose): the credentials volume is the boundary, so setup unwraps here; the
        # unwrap fails if anyone else took the token first.
        try:
            unwrapped = vaultio.body(vaultio.client(settings.vault_addr, info["token"], timeout=10).sys.unwrap())
        except hvac.exceptions.VaultError as err:
            raise UserError(f"the worker's wrapped secret id could not be unwrapped (taken?): {err}") from err
        _write_private(
            opts.worker_credentials,
            f"LOCKGATE_VAULT_ROLE_ID={role_id}\nLOCKGATE_VAULT_SECRET_ID={unwrapped['data']['secret_id']}\n",
        )
        report.outputs["worker_credentials"] = str(opts.worker_credentials)
        return
    if opts.worker_credentials is not None:
        _write_private(
            opts.worker_credentials,
            f"LOCKGATE_VAULT_ROLE_ID={role_id}\nLOCKGATE_VAULT_WRAPPED_SECRET_ID={info['token']}\n",
        )
        report.outputs["worker_credentials"] = str(opts.worker_credentials)
    else:
        report.outputs["worker_wrapping_token"] = info["token"]
    report.notes.append(
        f"unwrap within {opts.wrap_ttl} into the worker's secret store: bao unwrap -field=secret_id TOKEN "
        "(single use: if it fails, someone else unwrapped it; issue a new one with --new-worker-secret)"
    )


def _ensure_groups(client: hvac.Client, groups: tuple[str, ...], changes: bootstrap.Changes) -> None:
    """The approver groups exist (empty when new); their membership belongs to the IdP sync."""
    for group in groups:
        try:
            exists = vaultio.read(client, f"identity/group/name/{group}") is not None
        except hvac.exceptions.InvalidPath:
            exists = False
        if not exists and changes(f"identity group {group} created (members: from your IdP sync or --people)"):
            vaultio.write(client, f"identity/group/name/{group}", type="internal")
    bootstrap.ensure_policy(client, bootstrap.PERSON_POLICY, bootstrap.person_policy(groups), changes)


# -- ledger --------------------------------------------------------------------------------------
def _schema_state(url: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return tuple((t, tuple(sorted(c["name"] for c in insp.get_columns(t)))) for t in sorted(insp.get_table_names()))
    finally:
        engine.dispose()


# Where the ledger's migrations live once they ship (the r3-ledger branch: activities/ledger/migrate.py).
_MIGRATION_MODULES = ("lockgate.activities.ledger.migrate", "lockgate.migrations", "lockgate.activities.ledger")


def _hook(name: str) -> Callable[..., Any] | None:
    """The ledger's `upgrade(url)` or `runtime_grants(role)`, once the ledger ships them."""
    for module_name in _MIGRATION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found = getattr(module, name, None)
        if callable(found):
            return found
    return None


def _upgrade_hook() -> Callable[[str], Any] | None:
    return _hook("upgrade")


def migrate_ledger(url: str) -> list[str]:
    """Brings the ledger's schema at `url` up to date; returns what changed (empty: nothing).

    Calls the ledger's `upgrade(url)` (lockgate.migrations or lockgate.activities.ledger) when it
    has one; until then, the ledger's own create-schema path. Run it with the migration role.
    """
    before = _schema_state(url)
    upgrade = _upgrade_hook()
    migrated = None
    if upgrade is not None:
        migrated = upgrade(url)
    else:
        from sqlmodel import SQLModel

        import lockgate.activities.freeze  # noqa: F401 - registers the kill switch's table
        from lockgate.activities.ledger import Ledger

        ledger = Ledger(url, checkpoint_interval=None)
        try:
            # The kill switch's table lives beside the ledger; its store creates it at worker start,
            # which a runtime role without DDL rights cannot.
            SQLModel.metadata.create_all(ledger.engine, tables=[SQLModel.metadata.tables["freezes"]])
        finally:
            ledger.dispose()
    after = _schema_state(url)
    revisions = []
    if getattr(migrated, "changed", False):
        revisions.append(f"migrated from revision {migrated.before or 'none'} to {migrated.after}")  # type: ignore[union-attr]
    if before == after:
        return revisions
    old = dict(before)
    new_tables = [t for t, _ in after if t not in old]
    altered = [t for t, cols in after if t in old and old[t] != cols]
    out = revisions
    if new_tables:
        out.append(f"tables created: {', '.join(new_tables)}")
    if altered:
        out.append(f"tables altered: {', '.join(altered)}")
    return out


def _acls(conn: Any) -> set[tuple[str, str]]:
    """Every ACL in the current schema (tables, sequences, columns, the schema itself)."""
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT c.relname, coalesce(c.relacl::text, '') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() "
            "UNION ALL SELECT c.relname || '.' || a.attname, a.attacl::text FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND a.attacl IS NOT NULL "
            "UNION ALL SELECT nspname, coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = current_schema()"
        )
    )
    return {(str(r[0]), str(r[1])) for r in rows}


def _fallback_grants(conn: Any, role: str) -> list[str]:
    """Until the ledger ships its own list: SELECT, INSERT, UPDATE on the migration role's tables."""
    from sqlalchemy import text

    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    owned = "schemaname = current_schema() AND tableowner = current_user"
    tables = [r[0] for r in conn.execute(text(f"SELECT tablename FROM pg_tables WHERE {owned}"))]
    sequences = [
        r[0]
        for r in conn.execute(
            text(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema() AND sequenceowner = current_user"
            )
        )
    ]
    out = [f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"']
    out += [f'GRANT SELECT, INSERT, UPDATE ON "{schema}"."{t}" TO "{role}"' for t in tables]
    out += [f'GRANT USAGE, SELECT ON SEQUENCE "{schema}"."{q}" TO "{role}"' for q in sequences]
    return out


def _grant_runtime(url: str, role: str, report: SetupReport, dry_run: bool) -> None:
    """The worker's runtime role gets what it needs on the ledger and nothing more (no DDL, no
    DELETE): the ledger's own `runtime_grants(role)` when it ships one, else table-wide DML. GRANT
    is idempotent; what changed is read from the ACLs before and after (a dry run rolls back)."""
    from sqlalchemy import create_engine, text

    if not role.replace("_", "").isalnum():
        raise UserError(f"--ledger-runtime-role {role!r}: a plain role name, please")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            trans = conn.begin()
            if not conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
                trans.rollback()
                report.problems.append(f"ledger: runtime role {role} does not exist (create it with LOGIN first)")
                return
            hook = _hook("runtime_grants")
            statements = list(hook(role)) if hook is not None else _fallback_grants(conn, role)
            before = _acls(conn)
            for statement in statements:
                conn.execute(text(statement))
            changed = _acls(conn) != before
            if dry_run:
                trans.rollback()
            else:
                trans.commit()
            if changed:
                report.changes.append(f"ledger: grants to runtime role {role} ({len(statements)} GRANT statements)")
    finally:
        engine.dispose()


def _ledger(settings: Settings, environ: Mapping[str, str], opts: SetupOptions, report: SetupReport) -> None:
    url = environ.get("LOCKGATE_LEDGER_MIGRATE_URL") or settings.ledger_url
    if opts.ledger_runtime_role and not url.startswith("postgresql"):
        raise UserError("--ledger-runtime-role needs a PostgreSQL ledger")
    if opts.dry_run:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(url)
        try:
            fresh = not inspect(engine).has_table("ledger")
        finally:
            engine.dispose()
        if fresh:
            report.changes.append("ledger: schema created")
            if opts.ledger_runtime_role:  # on tables that do not exist yet: nothing to try
                report.changes.append(f"ledger: grants to runtime role {opts.ledger_runtime_role}")
            return
    else:
        report.changes += [f"ledger: {c}" for c in migrate_ledger(url)]
        if _upgrade_hook() is None:
            report.notes.append("ledger: schema from the ledger's create path (no migrations module yet)")
    if opts.ledger_runtime_role:
        _grant_runtime(url, opts.ledger_runtime_role, report, opts.dry_run)


# -- entry ---------------------------------------------------------------------------------------
def run_setup(
    settings: Settings, agents: AgentRegistry, opts: SetupOptions, environ: Mapping[str, str] | None = None
) -> SetupReport:
    """Prepares Temporal, OpenBao and the ledger for lockgate (see the module doc).

    Raises:
        UserError: a server is unreachable, sealed, or refuses setup's identity; bad settings.
    """
    env = os.environ if environ is None else environ
    report = SetupReport(dry_run=opts.dry_run)
    if "temporal" in opts.parts:
        asyncio.run(_temporal(settings, report, opts.dry_run, opts.retention_days))
    if "openbao" in opts.parts:
        if opts.provision_databases:
            _provision(env, agents, report, opts.dry_run)
        _openbao(settings, env, agents, opts, report)
    if "ledger" in opts.parts:
        _ledger(settings, env, opts, report)
    return report
