"""Configuration from the environment (DESIGN.md "Configuration").

`.lockgate/dev.env`, written by `lockgate dev up`, is read as defaults: a variable already set in the
environment always wins, so operators and tests can point lockgate anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lockgate.errors import UserError

__all__ = ["Settings", "archive_dir", "load_settings", "production_problems", "read_env_file"]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # None: from temporalio's environment configuration (TEMPORAL_ADDRESS, profiles), else localhost:7233.
    temporal_address: str | None = None
    namespace: str | None = None
    task_queue: str = "lockgate"
    vault_addr: str = "http://127.0.0.1:8200"
    vault_role_id: str | None = None
    vault_secret_id: str | None = None
    policy_dir: Path = Path("policies")
    ledger_url: str = "sqlite:///.lockgate/ledger.db"
    state_dir: Path = Path(".lockgate")
    # Archived histories of closed runs (default: STATE_DIR/archive), anchored in the ledger.
    archive_dir: Path | None = None
    # Dev stack only (never used by the worker for its own authentication).
    vault_token: str | None = None
    pg_socket_dir: str | None = None
    # Where tools reach PostgreSQL over TCP when no socket dir is set (workers on other hosts).
    pg_host: str | None = None
    pg_port: int | None = Field(default=None, gt=0, lt=65536)
    pg_dsn: str | None = None
    ui_address: str | None = None
    # Modules that declare the agents a worker runs and the CLI knows (comma-separated), besides
    # installed entry points of group `lockgate.agents`.
    agent_modules: str = ""
    # Payload encryption (activities/codec.py): the Vault Transit key; unset means payloads in clear.
    payload_key: str | None = None
    # A person's Vault token (any auth method); wins over the one `lockgate login` stored.
    operator_token: str | None = None
    # The worker's Prometheus endpoint (host:port): temporalio's metrics and lockgate's (lockgate/metrics.py).
    metrics_address: str | None = None
    # On SIGTERM the worker stops polling and gives running activities this long to finish.
    drain_seconds: float = Field(default=30.0, ge=0)
    # Production mode: the worker refuses dev defaults (`production_problems`) unless allowed by name.
    production: bool = False
    production_allow: str = ""
    # Signed team bundles (lockgate/teambundles.py): distinct policy owners who must sign a bundle and a switch.
    policy_quorum: int = Field(default=2, ge=1)
    # PostgreSQL connections per process (README "Connections"): the ledger's SQLAlchemy pool
    # (size + overflow) and its plain append connections; a transaction-mode PgBouncer in front.
    ledger_pool_size: int = Field(default=10, ge=1)
    ledger_pool_overflow: int = Field(default=10, ge=0)
    ledger_raw_pool: int = Field(default=10, ge=1)
    ledger_pool_timeout: float = Field(default=30.0, gt=0)
    ledger_pgbouncer: bool = False
    # The worker's liveness (/livez) and readiness (/readyz) endpoints (host:port; lockgate/probes.py).
    health_address: str | None = None
    # Cluster-state gauges (lockgate/metrics.py StateGauges) every this many seconds; 0: off.
    metrics_interval: float = Field(default=15.0, ge=0)
    # Tracing (lockgate/observability.py): temporalio's TracingInterceptor and lockgate's spans,
    # exported over OTLP/HTTP to the standard endpoint variable when set, else to the console.
    otel: bool = False
    otel_endpoint: str | None = None
    otel_service: str = "lockgate"
    log_format: Literal["text", "json"] = "text"
    # The worker's sticky cache (runs kept in memory); None: Temporal's default (1,000).
    max_cached_workflows: int | None = Field(default=None, ge=1)
    # Seconds `lockgate verify` waits for Vault before verifying with local anchors only.
    verify_vault_timeout: int = Field(default=3, ge=1)
    # The inbox: its public URL (links in notifications) and webhooks (comma-separated).
    inbox_url: str | None = None
    inbox_webhooks: str = ""
    # Whether this worker runs the cluster's background work (reaper, archiver, checkpointer: Temporal
    # workflows, once per cluster); off for a worker that should only host tools.
    background: bool = True
    # Seconds between the reaper's and the archiver's passes (the cluster's, whichever worker runs them).
    reap_interval: float = Field(default=15.0, gt=0)
    archive_interval: float = Field(default=10.0, gt=0)


_ENV_NAMES = {
    "temporal_address": "LOCKGATE_TEMPORAL_ADDRESS",
    "namespace": "LOCKGATE_NAMESPACE",
    "task_queue": "LOCKGATE_TASK_QUEUE",
    "vault_addr": "VAULT_ADDR",
    "vault_role_id": "LOCKGATE_VAULT_ROLE_ID",
    "vault_secret_id": "LOCKGATE_VAULT_SECRET_ID",
    "policy_dir": "LOCKGATE_POLICY_DIR",
    "ledger_url": "LOCKGATE_LEDGER_URL",
    "state_dir": "LOCKGATE_STATE_DIR",
    "archive_dir": "LOCKGATE_ARCHIVE_DIR",
    "vault_token": "VAULT_TOKEN",
    "pg_socket_dir": "LOCKGATE_PG_SOCKET_DIR",
    "pg_host": "LOCKGATE_PG_HOST",
    "pg_port": "LOCKGATE_PG_PORT",
    "pg_dsn": "LOCKGATE_PG_DSN",
    "ui_address": "LOCKGATE_UI_ADDRESS",
    "agent_modules": "LOCKGATE_AGENT_MODULES",
    "payload_key": "LOCKGATE_PAYLOAD_KEY",
    "operator_token": "LOCKGATE_OPERATOR_TOKEN",
    "metrics_address": "LOCKGATE_METRICS_ADDRESS",
    "drain_seconds": "LOCKGATE_DRAIN_SECONDS",
    "production": "LOCKGATE_PRODUCTION",
    "production_allow": "LOCKGATE_PRODUCTION_ALLOW",
    "policy_quorum": "LOCKGATE_POLICY_QUORUM",
    "ledger_pool_size": "LOCKGATE_LEDGER_POOL_SIZE",
    "ledger_pool_overflow": "LOCKGATE_LEDGER_POOL_OVERFLOW",
    "ledger_raw_pool": "LOCKGATE_LEDGER_RAW_POOL",
    "ledger_pool_timeout": "LOCKGATE_LEDGER_POOL_TIMEOUT",
    "ledger_pgbouncer": "LOCKGATE_LEDGER_PGBOUNCER",
    "health_address": "LOCKGATE_HEALTH_ADDRESS",
    "metrics_interval": "LOCKGATE_METRICS_INTERVAL",
    "otel": "LOCKGATE_OTEL",
    "otel_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "otel_service": "OTEL_SERVICE_NAME",
    "log_format": "LOCKGATE_LOG_FORMAT",
    "max_cached_workflows": "LOCKGATE_MAX_CACHED_WORKFLOWS",
    "verify_vault_timeout": "LOCKGATE_VERIFY_VAULT_TIMEOUT",
    "inbox_url": "LOCKGATE_INBOX_URL",
    "inbox_webhooks": "LOCKGATE_INBOX_WEBHOOKS",
    "background": "LOCKGATE_BACKGROUND",
    "reap_interval": "LOCKGATE_REAP_INTERVAL",
    "archive_interval": "LOCKGATE_ARCHIVE_INTERVAL",
}


def read_env_file(path: Path) -> dict[str, str]:
    """Parses a KEY=VALUE file; blank lines and `#` comments are skipped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"')
    return values


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from `environ` (default: the process environment) over `STATE_DIR/dev.env`."""
    env = dict(os.environ if environ is None else environ)
    state_dir = Path(env.get("LOCKGATE_STATE_DIR", ".lockgate"))
    merged = {**read_env_file(state_dir / "dev.env"), **env}
    fields = {name: merged[var] for name, var in _ENV_NAMES.items() if merged.get(var)}
    try:
        return Settings.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "?"
        raise UserError(f"invalid setting {_ENV_NAMES.get(name, name)}: {first['msg']}") from None


def archive_dir(settings: Settings) -> Path:
    """Where closed runs' histories are archived: LOCKGATE_ARCHIVE_DIR, else STATE_DIR/archive."""
    return settings.archive_dir or Path(settings.state_dir) / "archive"


def production_problems(settings: Settings) -> list[str]:
    """What a production worker refuses to start with (`LOCKGATE_PRODUCTION=1`), each unless named in
    `LOCKGATE_PRODUCTION_ALLOW` (comma-separated): `plain-vault` (Vault over http), `sqlite-ledger` (a
    ledger file on one host's disk), `root-token` (`VAULT_TOKEN` in the worker's environment: it
    logs in with its AppRole), `clear-payloads` (no payload key: regulated data in clear in history)."""
    if not settings.production:
        return []
    allowed = {a.strip() for a in settings.production_allow.split(",") if a.strip()}
    checks = {
        "plain-vault": (settings.vault_addr.startswith("http://"), f"VAULT_ADDR {settings.vault_addr} is plain http"),
        "sqlite-ledger": (settings.ledger_url.startswith("sqlite"), "LOCKGATE_LEDGER_URL is a SQLite file"),
        "root-token": (bool(settings.vault_token), "VAULT_TOKEN is set in the worker's environment"),
        "clear-payloads": (not settings.payload_key, "LOCKGATE_PAYLOAD_KEY is unset: payloads in clear"),
    }
    return [
        f"{why} (allow with LOCKGATE_PRODUCTION_ALLOW={name})"
        for name, (bad, why) in checks.items()
        if bad and name not in allowed
    ]
