"""Secrets stay secret on every page and log (issue 27): a webhook URL (for Slack-style hooks the URL
*is* the credential), a DSN's password, never shown; operators see a host name and the failure."""

from __future__ import annotations

import logging

import pytest

from lockgate.inbox.notify import Notifier
from lockgate.text import host_of, redact_url
from tests.support.inbox import free_port, receiver

SECRET_PATH = "/services/T000/B000/XXXXsecretXXXX"


def test_a_dsn_is_shown_without_its_password() -> None:
    shown = redact_url("postgresql+psycopg://lockgate:s3cr3t-pw@db.internal:5432/ledger")
    assert "s3cr3t-pw" not in shown and shown.startswith("postgresql+psycopg://lockgate:***@db.internal")
    assert redact_url("sqlite:///.lockgate/ledger.db") == "sqlite:///.lockgate/ledger.db"


def test_a_webhook_is_shown_by_its_host_only() -> None:
    assert host_of(f"slack:https://hooks.slack.com{SECRET_PATH}") == "hooks.slack.com"
    assert host_of("https://user:pw@hooks.example:8443/x?token=abc") == "hooks.example:8443"


async def _failed_delivery(url: str, caplog: pytest.LogCaptureFixture) -> Notifier:
    notifier = Notifier([url], base_url="http://inbox.example", list_pending=_nothing)
    req = {"run_id": "r-1", "request_id": "1.1", "agent": "a", "tool": "t", "step": 1, "group": "g", "quorum": 1}
    with caplog.at_level(logging.DEBUG):
        assert await notifier.deliver(url, "opened", req) is False
    return notifier


async def _nothing() -> list[dict[str, object]]:
    return []


async def test_a_failing_hook_is_reported_by_host_and_failure_never_by_url(caplog: pytest.LogCaptureFixture) -> None:
    async with receiver(fail=True) as (url, _rec):
        base = url.rsplit("/", 1)[0]
        secret = f"slack:{base}{SECRET_PATH}"
        notifier = await _failed_delivery(secret, caplog)
    (failure,) = notifier.failures
    assert failure.host == base.split("://", 1)[1]
    assert failure.error.startswith("HTTP 404") or failure.error.startswith("HTTP 405")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "secret" not in logged and "failed after 4 tries" in logged and failure.host in logged

    # Unreachable (connection refused): httpx's own message would carry the URL.
    caplog.clear()
    dead = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    notifier = await _failed_delivery(dead, caplog)
    (failure,) = notifier.failures
    assert failure.error.startswith("ConnectError") and "secret" not in failure.error
    assert "secret" not in "\n".join(r.getMessage() for r in caplog.records)
    assert not any(isinstance(v, str) and "secret" in v for v in vars(failure).values())
