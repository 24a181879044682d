"""OIDC sign-in (authorization code + PKCE) through Vault's own OIDC auth method.

An ID token alone proves who someone is, but the inbox must sign each act with the person's own
Transit key, which needs the person's Vault token. So the inbox is not the OIDC client itself: it asks
Vault's OIDC auth method for the identity provider's authorization URL (Vault adds state, nonce and
the PKCE challenge), the provider sends the browser back to the inbox with a code, and the inbox hands
state and code to Vault, which exchanges them (with the PKCE verifier) and returns the person's token.
The provider can be any OIDC provider; the dev stack uses OpenBao's own (`setup_dev_oidc`).
"""

from __future__ import annotations

import secrets
from typing import Any

import hvac
import hvac.exceptions
import requests

from lockgate import vaultio
from lockgate.errors import UserError

__all__ = ["OIDC_MOUNT", "OIDC_ROLE", "auth_url", "callback_token", "setup_dev_oidc"]

OIDC_MOUNT = "oidc"
OIDC_ROLE = "person"
PROVIDER = "lockgate"
CLIENT = "lockgate-inbox"
_TIMEOUT = 5


def _vault(addr: str, token: str | None = None) -> hvac.Client:
    return vaultio.client(addr, token, timeout=_TIMEOUT)


def auth_url(vault_addr: str, redirect_uri: str, *, mount: str = OIDC_MOUNT, role: str = OIDC_ROLE) -> tuple[str, str]:
    """The provider's authorization URL for a new sign-in, and the client nonce that must come back
    with its callback (kept server-side: it binds the callback to this browser's sign-in).

    Raises:
        UserError: OIDC sign-in is not configured, or Vault is unreachable.
    """
    nonce = secrets.token_urlsafe(24)
    try:
        resp = _vault(vault_addr).adapter.post(
            f"/v1/auth/{mount}/oidc/auth_url", json={"role": role, "redirect_uri": redirect_uri, "client_nonce": nonce}
        )
    except hvac.exceptions.VaultError as err:
        raise UserError(f"OIDC sign-in is not available: {err}") from None
    except requests.RequestException:
        raise UserError(f"cannot reach Vault at {vault_addr}") from None
    url = str(((resp or {}).get("data") or {}).get("auth_url") or "")
    if not url:
        raise UserError("OIDC sign-in is not available: Vault returned no authorization URL")
    return url, nonce


def callback_token(vault_addr: str, *, state: str, code: str, client_nonce: str, mount: str = OIDC_MOUNT) -> str:
    """Vault's half of the callback: it checks state and nonce, redeems the code with the PKCE
    verifier, and returns the person's Vault token.

    Raises:
        UserError: The sign-in was refused (unknown state, reused code, nobody mapped to the subject).
    """
    try:
        resp = _vault(vault_addr).adapter.get(
            f"/v1/auth/{mount}/oidc/callback", params={"state": state, "code": code, "client_nonce": client_nonce}
        )
    except hvac.exceptions.VaultError as err:
        raise UserError(f"OIDC sign-in refused: {err}") from None
    except requests.RequestException:
        raise UserError(f"cannot reach Vault at {vault_addr}") from None
    token = ((resp or {}).get("auth") or {}).get("client_token")
    if not token:
        raise UserError("OIDC sign-in refused: Vault returned no token")
    return str(token)


def setup_dev_oidc(root: hvac.Client, redirect_uri: str, people: list[str]) -> dict[str, Any]:
    """Dev stack only: OpenBao's OIDC provider as the identity provider of its own OIDC auth method.

    The provider's subject is the person's entity id; each person gets an alias on the OIDC mount
    named by that id, so a sign-in lands on the same entity (groups, Transit key) as userpass.
    """
    from lockgate.names import PERSON_POLICY

    # hvac's generic read/write are untyped (they return dicts or Responses): treat them as such.
    vault: Any = root
    addr = root.url.rstrip("/")
    vault.write(f"identity/oidc/key/{CLIENT}", allowed_client_ids="*", algorithm="RS256")
    vault.write(
        f"identity/oidc/client/{CLIENT}",
        key=CLIENT,
        redirect_uris=[redirect_uri],
        assignments=["allow_all"],
        client_type="confidential",
        id_token_ttl="5m",  # noqa: S106 - a duration
        access_token_ttl="5m",  # noqa: S106 - a duration
    )
    client = vault.read(f"identity/oidc/client/{CLIENT}")["data"]
    vault.write(f"identity/oidc/provider/{PROVIDER}", allowed_client_ids=[client["client_id"]], issuer=addr)
    if f"{OIDC_MOUNT}/" not in vault.sys.list_auth_methods()["data"]:
        vault.sys.enable_auth_method("oidc", path=OIDC_MOUNT)
    accessor = vault.sys.list_auth_methods()["data"][f"{OIDC_MOUNT}/"]["accessor"]
    vault.write(
        f"auth/{OIDC_MOUNT}/config",
        oidc_discovery_url=f"{addr}/v1/identity/oidc/provider/{PROVIDER}",
        oidc_client_id=client["client_id"],
        oidc_client_secret=client["client_secret"],
        default_role=OIDC_ROLE,
    )
    vault.write(
        f"auth/{OIDC_MOUNT}/role/{OIDC_ROLE}",
        role_type="oidc",
        user_claim="sub",
        allowed_redirect_uris=[redirect_uri],
        oidc_scopes=["openid"],
        token_policies=[PERSON_POLICY],
        token_ttl="1h",  # noqa: S106 - a duration
        token_type="service",  # noqa: S106 - a token type
    )
    for name in people:
        entity = vault.read(f"identity/entity/name/{name}")["data"]
        if not any(a.get("mount_accessor") == accessor for a in entity.get("aliases") or []):
            vault.write("identity/entity-alias", name=entity["id"], canonical_id=entity["id"], mount_accessor=accessor)
    return {"client_id": client["client_id"], "mount_accessor": accessor}
