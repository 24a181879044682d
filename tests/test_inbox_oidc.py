"""OIDC sign-in (authorization code + PKCE) through Vault's OIDC auth method, with OpenBao's own OIDC
provider as the identity provider: the person lands on the same entity, groups and Transit key."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import hvac
from temporalio.client import Client

from lockgate.config import Settings
from lockgate.inbox.oidc import OIDC_MOUNT, setup_dev_oidc
from tests.support.inbox import csrf_of, served_inbox
from tests.support.stack import person
from tests.support.vault import read_data


async def _provider_login(settings: Settings, url: str, name: str) -> dict[str, str]:
    """What the provider's login page does once `name` has signed in to it: the authorize call with
    their Vault token, which answers with the code and state for the redirect back."""
    parsed = urlparse(url)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    path = parsed.path.replace("/ui/vault/identity/oidc/provider/", "/v1/identity/oidc/provider/")
    async with httpx.AsyncClient(base_url=settings.vault_addr, timeout=10) as vault:
        resp = await vault.get(path, params=params, headers={"X-Vault-Token": person(name).token})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_oidc_sign_in_lands_on_the_persons_identity(settings: Settings, client: Client) -> None:
    root = hvac.Client(url=settings.vault_addr, token=settings.vault_token)
    async with served_inbox(settings, client) as (base, inbox):
        wired = setup_dev_oidc(root, f"{base}/login/oidc/callback", ["alice", "carol"])
        try:
            await _sign_in_with_oidc(settings, base, inbox)
        finally:
            # The session's other tests expect each person to have their userpass alias only.
            for name in ("alice", "carol"):
                entity = read_data(root, f"identity/entity/name/{name}")
                for alias in entity.get("aliases") or []:
                    if alias["mount_accessor"] == wired["mount_accessor"]:
                        root.delete(f"identity/entity-alias/id/{alias['id']}")
            root.sys.disable_auth_method(OIDC_MOUNT)


async def _sign_in_with_oidc(settings: Settings, base: str, inbox: Any) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        start = await http.get("/login/oidc?next=%2Ffreeze")
        assert start.status_code == 303, start.text
        url = start.headers["location"]
        query = parse_qs(urlparse(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]  # PKCE
        answer = await _provider_login(settings, url, "carol")
        assert answer["state"] == query["state"][0]

        # The browser's binding to this sign-in is a cookie scripts cannot read.
        assert "httponly" in start.headers["set-cookie"].lower()
        # A callback in a browser that did not start this sign-in is refused...
        async with httpx.AsyncClient(base_url=base, timeout=30) as other:
            foreign = await other.get("/login/oidc/callback", params=answer)
            assert foreign.status_code == 401 and "foreign" in foreign.text
        # ...and so is one for a sign-in nobody started, in the browser that did start one.
        unknown = await http.get("/login/oidc/callback", params={**answer, "state": "never-started"})
        assert unknown.status_code == 401 and "foreign" in unknown.text
        # A code the provider never issued (in a browser of its own, which started its own sign-in):
        # Vault refuses it, and the browser gets the sign-in page saying so, not a server error.
        async with httpx.AsyncClient(base_url=base, timeout=30) as third:
            begun = await third.get("/login/oidc?next=%2F")
            state = parse_qs(urlparse(begun.headers["location"]).query)["state"][0]
            bogus = await third.get("/login/oidc/callback", params={"state": state, "code": "not-a-code"})
            assert bogus.status_code == 401 and "sign in" in bogus.text.lower(), bogus.text
            # A callback that brings no code is refused before anything is asked of Vault.
            begun = await third.get("/login/oidc?next=%2F")
            state = parse_qs(urlparse(begun.headers["location"]).query)["state"][0]
            empty = await third.get("/login/oidc/callback", params={"state": state})
            assert empty.status_code == 401 and "returned no code" in empty.text, empty.text

        done = await http.get("/login/oidc/callback", params=answer)
        assert done.status_code == 200, done.text
        assert 'http-equiv="refresh" content="0;url=/freeze"' in done.text
        (web,) = inbox.sessions.values()
        assert web.person.name == "carol" and "operators" in web.person.groups
        assert web.person.entity_id == person("carol").entity_id
        page = await http.get("/freeze")
        assert page.status_code == 200 and "Freeze" in page.text
        # The OIDC token signs with carol's own Transit key: a signed kill-switch act goes through.
        csrf = csrf_of(page.text)
        act = {"csrf": csrf, "scope": "report-agent", "reason": "oidc drill", "confirm": "yes"}
        froze = await http.post("/freeze", data={**act, "action": "freeze"})
        assert froze.status_code == 303, froze.text  # post/redirect/get
        froze = await http.get(froze.headers["location"])
        assert froze.status_code == 200 and "carol froze report-agent" in froze.text, froze.text
        lifted = await http.post("/freeze", data={**act, "action": "unfreeze"})
        lifted = await http.get(lifted.headers["location"])
        assert lifted.status_code == 200 and "carol unfroze report-agent" in lifted.text
        # The code is single-use: replaying the callback signs nobody in.
        replay = await http.get("/login/oidc/callback", params=answer)
        assert replay.status_code == 401
