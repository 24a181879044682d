"""The operator's side of people-as-Vault-identities: log in, who am I, sign a statement.

Used by the CLI, the inbox and tests (the shell, never the worker). A person logs in to Vault with
any auth method (userpass in the dev stack; a token from OIDC, LDAP, ... with `login_token`); the
token is kept in `<state_dir>/operator.json` (mode 0600) unless `LOCKGATE_OPERATOR_TOKEN` provides
one. Every act is a `Statement` signed with the person's own Transit key (`sign`); Vault's templated
policy makes sure that key is the only one their token can sign with.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import hvac
import hvac.exceptions
import requests

from lockgate import vaultio
from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.files import private_dir
from lockgate.people import Act, FieldValue, SignedStatement, Statement, key_name, parse_signature

__all__ = [
    "AccountLocked",
    "OperatorSession",
    "load_session",
    "login_token",
    "login_userpass",
    "logout",
    "save_session",
    "session_path",
    "sign",
]

Method = Literal["userpass", "token"]
_TIMEOUT = 5
_RELOGIN = "run `lockgate login USER`"


class OperatorSession:
    """A person logged in to Vault.

    The token is the person's credential: it is never part of `repr`, `public()` or any model, and
    the object refuses to be pickled or copied (so it cannot slip into workflow history).

    Attributes:
        vault_addr: The Vault the token belongs to.
        entity_id: The person's identity entity id.
        name: The person (entity name).
        groups: The person's groups when the session was loaded (the worker checks them again).
        expires_at: When the token expires (None: it does not).
        method: How the person logged in.
    """

    __slots__ = ("_client", "_token", "entity_id", "expires_at", "groups", "method", "name", "vault_addr")

    def __init__(
        self,
        *,
        token: str,
        vault_addr: str,
        entity_id: str,
        name: str,
        groups: frozenset[str],
        expires_at: datetime | None,
        method: Method,
    ) -> None:
        self._token = token
        self._client: hvac.Client | None = None
        self.vault_addr = vault_addr
        self.entity_id = entity_id
        self.name = name
        self.groups = groups
        self.expires_at = expires_at
        self.method = method

    @property
    def token(self) -> str:
        """The person's Vault token. A secret: keep it in this process (or the 0600 session file)."""
        return self._token

    def client(self) -> hvac.Client:
        """An hvac client acting as this person (kept, so signing reuses the connection)."""
        if self._client is None:
            self._client = _vault(self.vault_addr, self._token)
        return self._client

    def public(self) -> dict[str, Any]:
        """Who this is, for `whoami` and the inbox: everything but the token."""
        return {
            "name": self.name,
            "entity_id": self.entity_id,
            "groups": sorted(self.groups),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "method": self.method,
            "vault_addr": self.vault_addr,
        }

    def __repr__(self) -> str:
        return f"OperatorSession(name={self.name!r}, groups={sorted(self.groups)!r}, expires_at={self.expires_at!r})"

    def __getstate__(self) -> Any:
        raise TypeError("an OperatorSession holds a Vault token: it is not serializable")


class AccountLocked(UserError):
    """Vault refuses every sign-in of this account for now (its user lockout)."""


def _vault(addr: str, token: str | None = None) -> hvac.Client:
    return vaultio.client(addr, token, timeout=_TIMEOUT)


def _unreachable(addr: str) -> UserError:
    return UserError(f"cannot reach Vault at {addr}")


def login_userpass(vault_addr: str, username: str, password: str) -> OperatorSession:
    """Logs a person in with Vault's userpass method.

    Raises:
        AccountLocked: Vault's user lockout refuses the account (the right password too).
        UserError: "login failed for USER" (wrong password and unknown user alike), or Vault is
            unreachable.
    """
    client = _vault(vault_addr)
    try:
        auth = client.auth.userpass.login(username=username, password=password)["auth"]
    except hvac.exceptions.Forbidden:
        # OpenBao's lockout answer: 403 "permission denied" whatever the password (a wrong password
        # is 400 "invalid username or password"), until its lockout duration has passed.
        raise AccountLocked(
            f"{username} is locked out of Vault after too many failed sign-ins: it unlocks by itself "
            "after Vault's lockout duration (15 minutes by default), or an administrator unlocks it "
            f"(sys/locked-users/<mount accessor>/unlock/{username})"
        ) from None
    except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath):
        raise UserError(f"login failed for {username}") from None
    except requests.RequestException:
        raise _unreachable(vault_addr) from None
    return login_token(vault_addr, auth["client_token"], method="userpass")


def login_token(vault_addr: str, token: str, *, method: Method = "token") -> OperatorSession:
    """A session for a token from any auth method: lookup-self, then the person's entity and groups.

    Raises:
        UserError: "not logged in: ..." when the token is expired, revoked or has no identity
            entity (a root or orphan token is nobody); or Vault is unreachable.
    """
    client = _vault(vault_addr, token)
    try:
        info = client.auth.token.lookup_self()["data"]
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        raise UserError(f"not logged in: the token is expired or revoked ({_RELOGIN})") from None
    except requests.RequestException:
        raise _unreachable(vault_addr) from None
    entity_id = info.get("entity_id") or ""
    if not entity_id:
        raise UserError("not logged in: the token belongs to no person (no identity entity); log in as a person")
    try:
        entity = vaultio.read(client, f"identity/entity/id/{entity_id}")
    except hvac.exceptions.Forbidden:
        raise UserError(
            "not logged in: the token may not read its own identity (is policy lockgate-person attached?)"
        ) from None
    except requests.RequestException:
        raise _unreachable(vault_addr) from None
    data = (entity or {}).get("data") or {}
    if not data:
        raise UserError("not logged in: the token's identity entity no longer exists")
    if data.get("disabled"):
        raise UserError(f"not logged in: {data.get('name')} is disabled in Vault")
    groups = set()
    for group_id in data.get("group_ids") or []:
        try:
            groups.add(str((vaultio.read(client, f"identity/group/id/{group_id}") or {})["data"]["name"]))
        except hvac.exceptions.Forbidden:
            groups.add(f"group:{group_id}")  # a group the person policy does not name yet
    ttl = int(info.get("ttl") or 0)
    return OperatorSession(
        token=token,
        vault_addr=vault_addr,
        entity_id=entity_id,
        name=str(data["name"]),
        groups=frozenset(groups),
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl) if ttl else None,
        method=method,
    )


def session_path(settings: Settings) -> Path:
    """Where `lockgate login` keeps the person's token."""
    return settings.state_dir / "operator.json"


def save_session(settings: Settings, session: OperatorSession) -> Path:
    """Stores the session's token for later commands, readable by this OS user only (0600)."""
    path = session_path(settings)
    private_dir(path.parent)
    record = {"name": session.name, "method": session.method, "vault_addr": session.vault_addr, "token": session.token}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    # Created 0600 from the first byte: never a moment where the token is readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path.chmod(0o600)
    return path


def _stored(settings: Settings) -> dict[str, Any] | None:
    path = session_path(settings)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("token"), str):
            raise ValueError("no token")
    except (OSError, ValueError):
        raise UserError(f"not logged in: {path} is unreadable ({_RELOGIN})") from None
    return record


def load_session(settings: Settings) -> OperatorSession:
    """The logged-in person: `LOCKGATE_OPERATOR_TOKEN` if set, else the token `lockgate login` stored.

    The token is checked with Vault on every load, so an expired or revoked one is refused at once.

    Raises:
        UserError: "not logged in: ..." when there is no usable token.
    """
    if settings.operator_token:
        try:
            return login_token(settings.vault_addr, settings.operator_token)
        except UserError as err:
            raise UserError(f"{err} [token from LOCKGATE_OPERATOR_TOKEN]") from None
    record = _stored(settings)
    if record is None:
        raise UserError(f"not logged in ({_RELOGIN})")
    method: Method = "userpass" if record.get("method") == "userpass" else "token"
    return login_token(settings.vault_addr, record["token"], method=method)


def logout(settings: Settings) -> str | None:
    """Revokes the stored token and deletes the session file.

    Returns:
        The name stored with the session, or None when nobody was logged in. A token that is already
        invalid (expired, revoked, Vault reset) still ends the session.
    """
    record = _stored(settings)
    if record is None:
        return None
    try:
        _vault(settings.vault_addr, record["token"]).auth.token.revoke_self()
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        pass  # already expired or revoked: nothing left to revoke
    except requests.RequestException:
        raise _unreachable(settings.vault_addr) from None
    session_path(settings).unlink(missing_ok=True)
    return str(record.get("name") or "") or None


def sign(
    session: OperatorSession, act: Act, fields: dict[str, FieldValue], *, at: datetime | None = None
) -> SignedStatement:
    """Signs a statement of `act` as the session's person, with their own Transit key.

    Args:
        session: The logged-in person.
        act: What they do.
        fields: What the act binds (run_id, request_id, args_digest, ...).
        at: When (default: now). Tests pass other times to exercise the worker's age checks.

    Raises:
        UserError: Vault refused (token expired or revoked, entity disabled) or is unreachable.
    """
    statement = Statement(
        act=act, person=session.name, at=at or datetime.now(UTC), nonce=secrets.token_hex(16), fields=fields
    )
    key = key_name(session.name)
    client = session.client()
    try:
        data = client.secrets.transit.sign_data(
            name=key, hash_input=base64.b64encode(statement.canonical_bytes()).decode()
        )["data"]
    except hvac.exceptions.Forbidden:
        try:
            client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            raise UserError(f"not logged in: the token is expired or revoked ({_RELOGIN})") from None
        raise UserError(f"Vault refused to sign as {session.name} with key {key}") from None
    except requests.RequestException:
        raise _unreachable(session.vault_addr) from None
    parsed = parse_signature(str(data["signature"]))
    if parsed is None:
        raise UserError(f"Vault returned a signature in an unknown form for key {key}")
    return SignedStatement(statement=statement, key=key, key_version=parsed[0], signature=str(data["signature"]))
