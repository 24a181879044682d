"""Vault (OpenBao) I/O: the worker's AppRole login, run identities, dynamic-secret leases.

hvac is synchronous: every method here is called from sync activities running in the worker's
thread pool, never on the event loop. Secret values returned by `issue` stay in the calling activity.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

import hvac
import hvac.exceptions
import requests
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate import vaultio
from lockgate.errors import LockgateError
from lockgate.models import LeaseRef, RunIdentity
from lockgate.names import RUN_TOKEN_ROLE, RUNS_MOUNT, SEAL_KEY, audience_policy

__all__ = ["RETRYABLE", "SEAL_KEY", "LeaseForbidden", "RunMismatch", "VaultBroker", "VaultUnavailable"]


class VaultUnavailable(LockgateError):
    """Vault did not answer, or answered that it cannot serve now. Retryable."""


class LeaseForbidden(LockgateError):
    """Vault refused: the identity may not have this secret. Not retryable."""


class RunMismatch(LockgateError):
    """A per-run record belongs to another run (reused or aliased id). Not retryable."""


def _data(resp: Any) -> dict[str, Any]:
    body = resp.json() if hasattr(resp, "json") else resp
    return dict((body or {}).get("data") or {})


# How many runs a broker remembers opening (see VaultBroker._opened).
OPENED_KEPT = 10_000
# Secret paths that mint a token per call (a token role), and how its lease id names its accessor.
TOKEN_CREATE = "auth/token/create/"  # noqa: S105 - a Vault path
TOKEN_LEASE = "token-accessor:"  # noqa: S105 - a prefix
# What OpenBao says when an accessor names no live token.
NO_TOKEN_WARNING = "No token found with this accessor"  # noqa: S105 - a message, not a secret

RETRYABLE = (
    VaultUnavailable,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.BadGateway,
    requests.ConnectionError,
    requests.Timeout,
)

# VAULT_CALL: a few quick in-process retries ride out a blip; past 10 s the activity fails and
# Temporal's own retry policy takes over, so a stuck Vault never pins a worker thread for long.
_vault_call = retry(
    retry=retry_if_exception_type(RETRYABLE),
    wait=wait_exponential(multiplier=0.1, max=2),
    stop=stop_after_delay(10),
    reraise=True,
)


class VaultBroker:
    """The worker's door to Vault. One per worker process; thread-safe."""

    def __init__(self, addr: str, role_id: str, secret_id: str, *, timeout: int = 5) -> None:
        self._addr = addr
        self._role_id = role_id
        self._secret_id = secret_id
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: hvac.Client | None = None
        self._expires = 0.0
        self._run_tokens: dict[str, str] = {}
        # Records this worker wrote in `open_run`, for its `close_run` (the run's local activities
        # run on the worker that holds the run): no read back. Bounded; a miss reads Vault.
        self._opened: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # One connection pool for every client this broker makes: keep-alive to Vault matters on
        # the hot path (a lease per tool call). urllib3's pool is thread-safe.
        # Its verify/cert/namespace come from VAULT_CACERT & co. (vaultio.client), read once here.
        self._tls = vaultio.vault_tls()
        self._session = vaultio.make_session(self._tls, pool_maxsize=64)

    # -- the worker's own identity -------------------------------------------------------------
    @_vault_call
    def _login(self) -> hvac.Client:
        client = vaultio.client(self._addr, timeout=self._timeout, session=self._session, tls=self._tls)
        auth = client.auth.approle.login(role_id=self._role_id, secret_id=self._secret_id)["auth"]
        self._expires = time.monotonic() + max(30, int(auth["lease_duration"]) - 60)
        return client

    def _renewed(self) -> hvac.Client | None:
        """The current token renewed (until its max TTL): a login spends one use of the secret
        id, which production bounds (`secret_id_num_uses`), so the worker logs in about once a day."""
        if self._client is None:
            return None
        try:
            ttl = int(self._client.auth.token.renew_self()["auth"]["lease_duration"])
        except Exception:  # noqa: BLE001 - expired, revoked or not renewable: log in again
            return None
        if ttl < 120:
            return None  # at its max TTL: a fresh login
        self._expires = time.monotonic() + ttl - 60
        return self._client

    @property
    def client(self) -> hvac.Client:
        with self._lock:
            if self._client is None or time.monotonic() >= self._expires:
                self._client = self._renewed() or self._login()
            return self._client

    def check(self) -> None:
        """Logs in (raising on bad credentials) — the worker refuses to start without Vault."""
        _ = self.client

    @_vault_call
    def worker_secret(self, path: str) -> dict[str, Any]:
        """A secret the worker itself may read (kv-v1 under `lockgate/worker/`), e.g. an LLM API key."""
        prefix = f"{RUNS_MOUNT}/worker/"
        if not path.startswith(prefix):
            raise LeaseForbidden(f"{path}: the worker reads only its own secrets under {prefix}")
        try:
            data = self.client.secrets.kv.v1.read_secret(path=path[len(RUNS_MOUNT) + 1 :], mount_point=RUNS_MOUNT)
        except (hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden) as err:
            raise LeaseForbidden(f"{path}: not readable: {err}") from err
        return dict(data["data"])

    # -- run identities ------------------------------------------------------------------------
    @_vault_call
    def open_run(
        self, run_id: str, agent: str, policy: str, ttl_seconds: int, origin: str, *, existing: Any = None
    ) -> RunIdentity:
        """Creates (or finds, on retry) the run's own token and keeps it where workers can reach it.

        The record is bound to the run id, the run's first Temporal execution (`origin`) and the
        agent: a record of another run under the same id is never reused (RunMismatch).

        `existing`: a `concurrent.futures.Future` of `read_run(run_id)` the caller started (so that
        the read overlaps its own checks); None: read here.
        """
        existing = self._read_run(run_id) if existing is None else existing.result()
        if existing is not None:
            if existing.get("origin") != origin or existing.get("agent") != agent:
                raise RunMismatch(
                    f"run id {run_id} already holds the identity of another run "
                    f"({existing.get('agent')}, execution {str(existing.get('origin'))[:12]})"
                )
            return RunIdentity(
                accessor=existing["accessor"],
                policies=tuple(existing["policies"].split(",")),
                expires_at=datetime.fromisoformat(existing["expires_at"]),
            )
        resp = self.client.adapter.post(
            f"/v1/auth/token/create/{RUN_TOKEN_ROLE}",
            json={
                "policies": [policy],
                "ttl": f"{ttl_seconds}s",
                "explicit_max_ttl": f"{ttl_seconds}s",
                "display_name": f"run-{run_id}"[:64],
                "meta": {"run_id": run_id, "agent": agent},
                "no_default_policy": True,
            },
        )
        auth = resp["auth"]
        expires = datetime.now(UTC) + timedelta(seconds=int(auth["lease_duration"]))
        self.client.secrets.kv.v1.create_or_update_secret(
            path=f"runs/{run_id}",
            secret={
                "token": auth["client_token"],
                "accessor": auth["accessor"],
                "policies": policy,
                "agent": agent,
                "origin": origin,
                "expires_at": expires.isoformat(),
            },
            mount_point=RUNS_MOUNT,
        )
        with self._lock:
            self._run_tokens[run_id] = auth["client_token"]
            self._opened[run_id] = {"accessor": auth["accessor"], "agent": agent, "origin": origin}
            while len(self._opened) > OPENED_KEPT:
                self._opened.popitem(last=False)
        return RunIdentity(accessor=auth["accessor"], policies=(policy,), expires_at=expires)

    def read_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's record (token included: callers must keep it to themselves), or None."""
        return self._read_run(run_id)

    def _read_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            data = self.client.secrets.kv.v1.read_secret(path=f"runs/{run_id}", mount_point=RUNS_MOUNT)
        except hvac.exceptions.InvalidPath:
            return None
        return dict(data["data"])

    def _run_token(self, run_id: str) -> str:
        with self._lock:
            token = self._run_tokens.get(run_id)
        if token is None:
            record = self._read_run(run_id)
            if record is None:
                raise LeaseForbidden(f"run {run_id} has no open identity (closed or never opened)")
            token = str(record["token"])
            with self._lock:
                self._run_tokens[run_id] = token
        return token

    @_vault_call
    def close_run(self, run_id: str, accessor: str | None, origin: str | None = None) -> bool:
        """Revokes the run's identity, and with it every lease it issued. Idempotent.

        With `origin`, only the identity that run opened: a record of another run under the same id
        (or another accessor) is left alone (RunMismatch). Returns True when an identity was revoked
        by this call.
        """
        with self._lock:
            record = self._opened.get(run_id)
        if record is None:
            record = self._read_run(run_id)
        if origin is not None and record is not None and record.get("origin") != origin:
            raise RunMismatch(f"run id {run_id} holds another run's identity: not revoking it")
        if origin is not None and record is not None and accessor and record.get("accessor") != accessor:
            raise RunMismatch(f"accessor does not match the identity run {run_id} opened: not revoking it")
        # The accessor named and the one the run's record holds: they differ only when the run was
        # opened again since (a reaper's retry identity left by a reaper that died): both go.
        revoked = False
        for one in dict.fromkeys(a for a in (accessor, (record or {}).get("accessor")) if a):
            revoked = self._revoke_identity(one, live=record is not None and one == record.get("accessor")) or revoked
        if record is not None:
            self.client.secrets.kv.v1.delete_secret(path=f"runs/{run_id}", mount_point=RUNS_MOUNT)
        with self._lock:
            self._run_tokens.pop(run_id, None)
            self._opened.pop(run_id, None)
        return revoked

    def _revoke_identity(self, accessor: str, *, live: bool) -> bool:
        """Revokes a run identity by accessor (True when this call revoked it). `live`: its run's
        record is still there, so it is live (the record goes only after the revocation) and is
        revoked without asking first; otherwise only if Vault says it is alive."""
        if not live and not self.identity_alive(accessor):
            return False
        # Vault revokes the token at once and its leases right after (asynchronously).
        try:
            resp = self.client.adapter.post("/v1/auth/token/revoke-accessor", json={"accessor": accessor})
        except hvac.exceptions.InvalidRequest:
            return False  # HashiCorp Vault's answer to an unknown accessor
        # OpenBao answers an accessor whose token is gone (expired, revoked meanwhile) with a warning,
        # not an error: that call revoked nothing.
        warnings = resp.get("warnings") if isinstance(resp, dict) else None
        return NO_TOKEN_WARNING not in (warnings or ())

    @_vault_call
    def identity_alive(self, accessor: str) -> bool:
        try:
            self.client.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": accessor})
            return True
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden):
            return False  # expired or revoked

    @_vault_call
    def open_runs(self) -> list[str]:
        try:
            data = self.client.secrets.kv.v1.list_secrets(path="runs", mount_point=RUNS_MOUNT)
        except hvac.exceptions.InvalidPath:
            return []
        return [str(k) for k in data["data"]["keys"]]

    # -- seals -----------------------------------------------------------------------------------
    @_vault_call
    def seal(self, data: bytes) -> str:
        """A MAC of `data` under the worker's Transit key (the key never leaves Vault)."""
        resp = self.client.adapter.post(
            f"/v1/transit/hmac/{SEAL_KEY}/sha2-256", json={"input": base64.b64encode(data).decode()}
        )
        return str(_data(resp)["hmac"])

    @_vault_call
    def check_seal(self, data: bytes, seal: str) -> bool:
        if not seal.startswith("vault:"):
            return False
        try:
            resp = self.client.adapter.post(
                f"/v1/transit/verify/{SEAL_KEY}/sha2-256",
                json={"input": base64.b64encode(data).decode(), "hmac": seal},
            )
        except hvac.exceptions.InvalidRequest:
            return False  # malformed: not a seal of ours
        return bool(_data(resp).get("valid"))

    # -- leases --------------------------------------------------------------------------------
    @_vault_call
    def issue(self, run_id: str, secret_path: str) -> tuple[LeaseRef, dict[str, Any]]:
        """A fresh dynamic secret under the run's identity. The dict is the secret: keep it local."""
        client = vaultio.client(
            self._addr, self._run_token(run_id), timeout=self._timeout, session=self._session, tls=self._tls
        )
        if secret_path.startswith(TOKEN_CREATE):
            return self._mint(client, run_id, secret_path)
        try:
            resp = vaultio.read(client, secret_path)
        except hvac.exceptions.Forbidden as err:
            raise LeaseForbidden(f"run {run_id} may not read {secret_path}") from err
        if not resp or not resp.get("lease_id"):
            raise LeaseForbidden(f"{secret_path} issued no lease")
        lease = LeaseRef(lease_id=resp["lease_id"], secret_path=secret_path, ttl_seconds=int(resp["lease_duration"]))
        return lease, dict(resp["data"])

    def _mint(self, client: hvac.Client, run_id: str, secret_path: str) -> tuple[LeaseRef, dict[str, Any]]:
        """A token for one call from a token role (`auth/token/create/<role>`, e.g. an MCP server's
        audience): a child of the run's identity, so revoking the run revokes it too. Its lease is
        named by its accessor (never the token)."""
        try:
            role = secret_path[len(TOKEN_CREATE) :]
            auth = vaultio.write(client, secret_path, policies=[audience_policy(role)]).get("auth") or {}
        except hvac.exceptions.Forbidden as err:
            raise LeaseForbidden(f"run {run_id} may not mint {secret_path}") from err
        except hvac.exceptions.InvalidRequest as err:
            raise LeaseForbidden(f"{secret_path}: {err}") from err
        if not auth.get("client_token") or not auth.get("accessor"):
            raise LeaseForbidden(f"{secret_path} minted no token")
        lease = LeaseRef(
            lease_id=f"{TOKEN_LEASE}{auth['accessor']}",
            secret_path=secret_path,
            ttl_seconds=int(auth.get("lease_duration") or 0),
        )
        return lease, {"token": auth["client_token"]}

    @_vault_call
    def revoke(self, lease_id: str) -> None:
        """Revokes one lease (the database drops the role; a minted token is revoked by its
        accessor). Revoking a gone lease is a no-op."""
        if lease_id.startswith(TOKEN_LEASE):
            try:
                self.client.auth.token.revoke_accessor(lease_id[len(TOKEN_LEASE) :])
            except hvac.exceptions.InvalidRequest:
                pass  # already gone
            return
        try:
            self.client.sys.revoke_lease(lease_id=lease_id)
        except hvac.exceptions.InvalidRequest:
            pass

    @_vault_call
    def live_leases(self, secret_path: str) -> list[str]:
        """Lease ids still alive under a secret path (for `lockgate leases` and the reaper)."""
        try:
            resp = self.client.adapter.list(f"/v1/sys/leases/lookup/{secret_path}/")
        except hvac.exceptions.InvalidPath:
            return []
        keys = (resp or {}).get("data", {}).get("keys", [])
        return [f"{secret_path}/{k}" for k in keys]

    @_vault_call
    def lease_info(self, lease_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.sys.read_lease(lease_id=lease_id)["data"])
        except hvac.exceptions.InvalidRequest:
            return None
