"""Sign-in is throttled before OpenBao locks anyone out (issue 27). Attacked as a password guesser:
wrong passwords for one account, and for many accounts from one address, posted to the inbox."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from lockgate.bootstrap import PERSON_POLICY
from lockgate.config import Settings
from lockgate.inbox.throttle import MemoryThrottleStore, SignInThrottle, Throttled
from tests.support.inbox import login_csrf_of, served_inbox
from tests.support.stack import Outside


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_account_is_refused_before_openbaos_threshold_and_forgiven_after_the_window() -> None:
    clock = Clock()
    throttle = SignInThrottle(window=900, clock=clock)
    for _ in range(3):
        throttle.begin("alice", "10.0.0.1")  # three wrong passwords reach Vault
    clock.now += 600
    with pytest.raises(Throttled) as err:
        throttle.begin("Alice", "10.0.0.2")  # userpass lowercases: the same account
    assert err.value.seconds == 300 and "wait 5 min 0 s" in err.value.message
    assert "for Alice" in err.value.message
    clock.now += 299
    with pytest.raises(Throttled):
        throttle.begin("alice", "10.0.0.3")
    clock.now += 1
    throttle.begin("alice", "10.0.0.3")  # the window passed without a failure: counted afresh
    throttle.succeeded("alice", "10.0.0.3")
    for _ in range(3):
        throttle.begin("alice", "10.0.0.3")


def test_an_address_trying_many_accounts_is_refused() -> None:
    clock = Clock()
    throttle = SignInThrottle(max_per_address=4, window=60, clock=clock)
    for n in range(4):
        throttle.begin(f"user{n}", "10.0.0.9")
    with pytest.raises(Throttled) as err:
        throttle.begin("user9", "10.0.0.9")
    assert "from your address: wait 1 min 0 s" in err.value.message
    throttle.begin("user9", "10.0.0.10")  # another address, another count


def test_concurrent_attempts_never_pass_the_limit() -> None:
    store = MemoryThrottleStore()
    throttle = SignInThrottle(store=store, max_per_address=1000)
    passed: list[int] = []
    barrier = threading.Barrier(32)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            throttle.begin("bob", f"10.1.0.{n}")
            passed.append(n)
        except Throttled:
            pass

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 3


# -- on the real stack ---------------------------------------------------------------------------
RESET = 3.0  # seconds: OpenBao's lockout counter reset for this test (15 minutes by default)


@pytest.fixture
def tess(outside: Outside) -> Iterator[tuple[str, str]]:
    """A person of their own (an approver locked out would disturb other tests), and OpenBao's user
    lockout with its default threshold (5) but a counter reset short enough for a test."""
    name, password = f"tess-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    vault = outside.vault
    vault.adapter.post(
        f"/v1/auth/userpass/users/{name}", json={"password": password, "token_policies": [PERSON_POLICY]}
    )
    vault.adapter.post(
        "/v1/sys/auth/userpass/tune",
        json={
            "user_lockout_config": {
                "lockout_threshold": "5",
                "lockout_duration": "10m",
                "lockout_counter_reset_duration": f"{int(RESET)}s",
            }
        },
    )
    try:
        yield name, password
    finally:
        vault.adapter.post(
            "/v1/sys/auth/userpass/tune",
            json={
                "user_lockout_config": {
                    "lockout_threshold": "5",
                    "lockout_duration": "15m",
                    "lockout_counter_reset_duration": "15m",
                }
            },
        )
        accessor = vault.sys.list_auth_methods()["data"]["userpass/"]["accessor"]
        vault.adapter.post(f"/v1/sys/locked-users/{accessor}/unlock/{name}")
        vault.adapter.delete(f"/v1/auth/userpass/users/{name}")


def locked(outside: Outside, name: str) -> bool:
    data: dict[str, Any] = outside.vault.adapter.get("/v1/sys/locked-users")["data"]
    return any(
        name in (m.get("alias_identifiers") or [])
        for ns in data.get("by_namespace") or []
        for m in ns.get("mount_accessors") or []
    )


async def _post_login(http: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    page = await http.get("/login")
    return await http.post(
        "/login", data={"csrf": login_csrf_of(page.text), "username": name, "password": password, "next": "/"}
    )


async def test_wrong_passwords_are_throttled_before_lockout_and_the_right_one_works_after_the_wait(
    settings: Settings, client: Client, outside: Outside, tess: tuple[str, str]
) -> None:
    name, password = tess
    async with served_inbox(settings, client) as (base, inbox):
        inbox.throttle = SignInThrottle(window=RESET)
        async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http:
            answers = [await _post_login(http, name, "wrong") for _ in range(12)]
            assert [r.status_code for r in answers] == [401] * 3 + [429] * 9
            assert f"login failed for {name}" in answers[0].text
            assert f"too many failed sign-ins for {name}: wait " in answers[-1].text
            assert int(answers[-1].headers["retry-after"]) <= RESET
            # The right password is refused too while the wait lasts, and OpenBao locked nothing.
            assert (await _post_login(http, name, password)).status_code == 429
            assert not locked(outside, name)
            await asyncio.sleep(RESET + 0.5)
            signed_in = await _post_login(http, name, password)
            assert signed_in.status_code == 303, signed_in.text
            assert not locked(outside, name)


async def test_a_locked_account_says_it_is_locked(
    settings: Settings, client: Client, outside: Outside, tess: tuple[str, str]
) -> None:
    """Guessed past the inbox (straight at OpenBao): the inbox says the account is locked, not that
    the right password is wrong."""
    name, password = tess
    for _ in range(6):
        try:
            outside.vault.auth.userpass.login(username=name, password="wrong")
        except Exception:  # noqa: BLE001, S110 - each guess fails; the sixth is already refused as locked
            pass
    assert locked(outside, name)
    async with (
        served_inbox(settings, client) as (base, _inbox),
        httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http,
    ):
        answer = await _post_login(http, name, password)
        assert answer.status_code == 423
        assert f"{name} is locked out of Vault after too many failed sign-ins" in answer.text
        assert "login failed" not in answer.text
        assert 'data-testid="locked"' in answer.text and "Account locked by OpenBao." in answer.text


async def test_one_address_guessing_many_accounts_is_throttled(settings: Settings, client: Client) -> None:
    async with served_inbox(settings, client) as (base, inbox):
        inbox.throttle = SignInThrottle(max_per_address=5, window=60)
        async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=30) as http:
            started = time.monotonic()
            codes = [(await _post_login(http, f"nobody-{n}", "guess")).status_code for n in range(7)]
            assert codes == [401] * 5 + [429] * 2
            last = await _post_login(http, "alice", "guess")
            assert last.status_code == 429 and "from your address: wait" in last.text
            assert time.monotonic() - started < 30
