"""Every hvac client lockgate makes, and typed wrappers of the few raw hvac calls it makes.

`client()` is the one place an `hvac.Client` is built (worker, CLI, inbox, codec server, setup): it
honours the standard Vault client environment (`VAULT_CACERT`, `VAULT_CAPATH`, `VAULT_CLIENT_CERT` /
`VAULT_CLIENT_KEY`, `VAULT_NAMESPACE`, `VAULT_SKIP_VERIFY`) even where lockgate hands hvac its own
`requests.Session` for connection pooling (hvac then keeps the session's `verify=True` and ignores
`VAULT_CACERT`). `VAULT_SKIP_VERIFY` is refused unless `LOCKGATE_ENV=dev`.

hvac answers a JSON body as a dict and an empty body (204) as a Response; `body`, `read`, `write` and
`post` return the dict, or an empty dict for no body, so callers index one type.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests
import requests.adapters

from lockgate.errors import UserError

__all__ = ["VaultTLS", "body", "client", "make_session", "post", "read", "vault_tls", "write"]

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class VaultTLS:
    """How lockgate's Vault clients verify the server and present themselves (from `vault_tls()`).

    Attributes:
        cacert: `VAULT_CACERT`: a PEM bundle of the CA(s) that sign the server's certificate.
        capath: `VAULT_CAPATH`: a directory of CA certificates (`c_rehash`ed); `cacert` wins.
        client_cert: `VAULT_CLIENT_CERT`: a client certificate for the TLS cert auth method / mTLS.
        client_key: `VAULT_CLIENT_KEY`: its key.
        namespace: `VAULT_NAMESPACE`: the namespace every request is sent to (`X-Vault-Namespace`).
        skip_verify: `VAULT_SKIP_VERIFY`: no server verification (dev only).
    """

    cacert: str | None = None
    capath: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    namespace: str | None = None
    skip_verify: bool = False

    @property
    def verify(self) -> bool | str:
        """requests' `verify`: False, a CA bundle or directory, or True (the system's CAs)."""
        if self.skip_verify:
            return False
        return self.cacert or self.capath or True

    @property
    def cert(self) -> tuple[str, str] | str | None:
        """requests' `cert`: (certificate, key), a combined PEM, or None."""
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return self.client_cert or None


def vault_tls(environ: Mapping[str, str] | None = None) -> VaultTLS:
    """The Vault client settings from the environment (default: the process environment).

    Raises:
        UserError: a named file is missing, a client key without its certificate, or
            `VAULT_SKIP_VERIFY` outside `LOCKGATE_ENV=dev` (production never skips verification).
    """
    env = os.environ if environ is None else environ

    def value(name: str) -> str | None:
        return (env.get(name) or "").strip() or None

    tls = VaultTLS(
        cacert=value("VAULT_CACERT"),
        capath=value("VAULT_CAPATH"),
        client_cert=value("VAULT_CLIENT_CERT"),
        client_key=value("VAULT_CLIENT_KEY"),
        namespace=value("VAULT_NAMESPACE"),
        skip_verify=(value("VAULT_SKIP_VERIFY") or "").lower() in _TRUE,
    )
    if tls.skip_verify and (value("LOCKGATE_ENV") or "").lower() != "dev":
        raise UserError("VAULT_SKIP_VERIFY is refused: set VAULT_CACERT to the CA of Vault's certificate")
    for name, path in (
        ("VAULT_CACERT", tls.cacert),
        ("VAULT_CAPATH", tls.capath),
        ("VAULT_CLIENT_CERT", tls.client_cert),
        ("VAULT_CLIENT_KEY", tls.client_key),
    ):
        if path and not Path(path).exists():
            raise UserError(f"{name}={path}: no such file or directory")
    if tls.client_key and not tls.client_cert:
        raise UserError("VAULT_CLIENT_KEY is set without VAULT_CLIENT_CERT")
    return tls


def _netrc_exists() -> bool:
    if os.environ.get("NETRC"):
        return True
    home = Path.home() if "HOME" in os.environ or os.name != "posix" else None
    return home is not None and any((home / name).exists() for name in (".netrc", "_netrc"))


def _verify(tls: VaultTLS) -> bool | str:
    """`tls.verify` as requests would merge it with the environment: with no CA of Vault's named,
    `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` when set (requests' own rule), else the system's CAs."""
    verify = tls.verify
    if verify is True:
        return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return verify


def make_session(tls: VaultTLS | None = None, *, pool_maxsize: int = 10, addr: str | None = None) -> requests.Session:
    """A keep-alive `requests.Session` to Vault (at `addr`) that verifies (and presents
    certificates) per `tls`."""
    tls = tls or vault_tls()
    new = requests.Session()
    new.verify = _verify(tls)
    new.cert = tls.cert
    # requests reads the proxy variables, the CA-bundle variables and ~/.netrc again on every
    # request, walking the whole environment several times (a measurable share of a worker's CPU
    # per governed call). They are read once here instead: the proxies for Vault's address (no_proxy
    # included) and the CA bundle (`_verify`); the process environment does not change under a
    # running worker. Only a netrc file, which requests turns into per-request credentials, keeps
    # requests' own reading.
    new.trust_env = _netrc_exists()
    if not new.trust_env:
        found = requests.utils.get_environ_proxies(addr) if addr else urllib.request.getproxies()
        new.proxies = {k: v for k, v in found.items() if k != "no"}
    if pool_maxsize != 10:
        new.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize))
        new.mount("https://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize))
    return new


def client(
    addr: str,
    token: str | None = None,
    *,
    timeout: float = 5,
    session: requests.Session | None = None,
    tls: VaultTLS | None = None,
) -> hvac.Client:
    """An hvac client for `addr`, honouring the Vault client environment (see the module doc).

    Args:
        addr: Vault's address (`VAULT_ADDR`).
        token: the token to act with (None: log in afterwards).
        timeout: seconds per request.
        session: a shared session (its pool is reused); its `verify` and `cert` are set from `tls`.
        tls: the settings (default: `vault_tls()` from the environment).
    """
    tls = tls or vault_tls()
    if session is None:
        session = make_session(tls, addr=addr)
    else:
        session.verify = _verify(tls)
        session.cert = tls.cert
    return hvac.Client(
        url=addr,
        token=token,
        timeout=timeout,  # type: ignore[arg-type]  # hvac declares int; requests takes a float
        session=session,
        verify=_verify(tls),
        cert=tls.cert,  # type: ignore[arg-type]  # hvac declares a tuple; requests also takes a path
        namespace=tls.namespace,
    )


def body(resp: Any) -> dict[str, Any]:
    """The JSON body of an hvac answer ({} when there is none)."""
    if resp is None:
        return {}
    if isinstance(resp, dict):
        return resp
    try:
        parsed = resp.json()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def read(client: hvac.Client, path: str) -> dict[str, Any] | None:
    """`vault read PATH`: the body, or None when nothing is there."""
    resp = client.read(path)
    return body(resp) if resp is not None else None


def write(client: hvac.Client, path: str, **data: Any) -> dict[str, Any]:
    """`vault write PATH k=v ...`: the body ({} for none)."""
    return body(client.write_data(path, data=data))


def post(client: hvac.Client, url: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A raw POST to `/v1/...`: the body ({} for none)."""
    return body(client.adapter.post(url, json=payload))
