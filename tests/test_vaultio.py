"""Every hvac client lockgate builds honours the standard Vault client environment (issue 28, item 3).

The end-to-end proof against an https OpenBao with its own CA is tests/test_production.py; these
check the factory itself and that nothing in the package builds a client around it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from lockgate import vaultio
from lockgate.activities.vault import VaultBroker
from lockgate.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_every_hvac_client_is_built_by_the_factory() -> None:
    built = re.compile(r"\bhvac\.Client\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("lockgate", "activities", "workflows", "gates")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "vaultio.py" and not path.is_symlink()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if built.search(line)
    ]
    offenders += [
        f"worker.py:{n}"
        for n, line in enumerate((ROOT / "worker.py").read_text().splitlines(), 1)
        if built.search(line)
    ]
    assert offenders == [], f"build hvac clients with lockgate.vaultio.client: {offenders}"


def test_ca_namespace_and_client_certificate_reach_a_shared_session(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for f in (ca, cert, key):
        f.write_text("-")
    env = {
        "VAULT_CACERT": str(ca),
        "VAULT_CLIENT_CERT": str(cert),
        "VAULT_CLIENT_KEY": str(key),
        "VAULT_NAMESPACE": "team-a",
    }
    tls = vaultio.vault_tls(env)
    shared = vaultio.make_session(tls, pool_maxsize=8)
    client = vaultio.client("https://vault.example:8200", "t", session=shared, tls=tls)
    # hvac keeps a passed session's verify=True and ignores VAULT_CACERT: the factory sets both.
    assert client.adapter.session is shared
    assert shared.verify == str(ca)
    assert shared.cert == (str(cert), str(key))
    assert client.adapter.namespace == "team-a"
    assert vars(client.adapter)["_kwargs"]["verify"] == str(ca)  # hvac's private per-request settings


def test_capath_when_no_cacert(tmp_path: Path) -> None:
    tls = vaultio.vault_tls({"VAULT_CAPATH": str(tmp_path)})
    assert vaultio.make_session(tls).verify == str(tmp_path)
    assert vaultio.vault_tls({}).verify is True


def test_the_worker_broker_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    monkeypatch.setenv("VAULT_CACERT", str(ca))
    monkeypatch.setenv("VAULT_NAMESPACE", "ops")
    broker = VaultBroker("https://vault.example:8200", "role", "secret")
    assert broker._session.verify == str(ca)
    assert broker._tls.namespace == "ops"


@pytest.mark.parametrize("value", ["1", "true"])
def test_skip_verify_is_refused_outside_dev(value: str) -> None:
    with pytest.raises(UserError, match="VAULT_SKIP_VERIFY is refused"):
        vaultio.vault_tls({"VAULT_SKIP_VERIFY": value})
    with pytest.raises(UserError, match="VAULT_SKIP_VERIFY is refused"):
        vaultio.vault_tls({"VAULT_SKIP_VERIFY": value, "LOCKGATE_ENV": "production"})
    assert vaultio.vault_tls({"VAULT_SKIP_VERIFY": value, "LOCKGATE_ENV": "dev"}).verify is False


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"VAULT_CACERT=.*no such file"):
        vaultio.vault_tls({"VAULT_CACERT": str(tmp_path / "nope.pem")})
    key = tmp_path / "k"
    key.write_text("-")
    with pytest.raises(UserError, match="without VAULT_CLIENT_CERT"):
        vaultio.vault_tls({"VAULT_CLIENT_KEY": str(key)})


def test_the_broker_renews_its_token_before_logging_in_again(deps: Any) -> None:
    """A login spends one use of a use-bound secret id: the worker renews instead while it can."""
    broker = deps.vault
    token = broker.client.token
    broker._expires = 0.0  # as if the token were about to expire
    assert broker.client.token == token  # renewed, not a new login
    assert broker._expires > time.monotonic() + 60
    # A token that can no longer be renewed (revoked): a fresh login.
    vaultio.client(deps.settings.vault_addr, token).auth.token.revoke_self()
    broker._expires = 0.0
    assert broker.client.token != token
    assert broker.client.is_authenticated()


def _recording_server() -> tuple[Any, list[str]]:
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b'{"initialized": true, "sealed": false}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_proxy_and_ca_bundle_variables_are_honoured_though_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session reads the proxy and CA-bundle variables once instead of on every request (a
    worker's CPU per call), with requests' own rules: a proxy set for http is used for Vault unless
    NO_PROXY names Vault's host, and REQUESTS_CA_BUNDLE is what verifies when no Vault CA is named."""
    proxy, through_proxy = _recording_server()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
        monkeypatch.setenv("NETRC", "")
        monkeypatch.setenv("HOME", "/nonexistent-home")
        c = vaultio.client("http://vault.invalid:8200", tls=vaultio.VaultTLS())
        assert c.sys.read_health_status(method="GET")["initialized"] is True
        assert through_proxy == ["http://vault.invalid:8200/v1/sys/health"]
        assert c.session.verify == "/etc/ssl/certs/ca-certificates.crt"
        assert c.session.trust_env is False  # read once, not per request

        direct, seen_direct = _recording_server()
        try:
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            c = vaultio.client(f"http://127.0.0.1:{direct.server_address[1]}", tls=vaultio.VaultTLS())
            c.sys.read_health_status(method="GET")
            assert seen_direct == ["/v1/sys/health"] and len(through_proxy) == 1
        finally:
            direct.shutdown()
        # A CA named for Vault wins over the bundle variable.
        named = vaultio.client("http://vault.invalid:8200", tls=vaultio.VaultTLS(cacert="/some/ca.pem"))
        assert named.session.verify == "/some/ca.pem"
    finally:
        proxy.shutdown()
