"""Per-run Vault identity: least privilege, and one revocation removes every credential of a run."""

from __future__ import annotations

import uuid
from typing import Any

import hvac
import hvac.exceptions
import pytest

from lockgate import vaultio
from lockgate.activities.vault import LeaseForbidden, VaultBroker
from lockgate.config import Settings
from tests.support.stack import Outside


def test_revoking_the_run_identity_removes_all_its_credentials(deps: Any, outside: Outside) -> None:
    vault: VaultBroker = deps.vault
    run_id = f"identity-{uuid.uuid4().hex[:8]}"
    identity = vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 120, "origin-1")
    leases = [
        vault.issue(run_id, path)[0]
        for path in ("database/creds/shop-reader", "database/creds/shop-reader", "database/creds/shop-refunds")
    ]
    assert len(outside.dynamic_roles()) >= 3
    assert {lease.lease_id for lease in leases} <= set(outside.live_leases())

    assert vault.close_run(run_id, identity.accessor) is True
    outside.assert_nothing_leaked()
    assert not outside.token_alive(identity.accessor)
    assert vault.close_run(run_id, identity.accessor) is False  # idempotent
    with pytest.raises(LeaseForbidden):
        vault.issue(run_id, "database/creds/shop-reader")


def test_closing_a_run_revokes_the_identity_its_record_holds_whatever_accessor_is_named(
    deps: Any, outside: Outside
) -> None:
    """A reaper that died while retrying a closed run's compensations leaves the run's record
    holding its retry identity; the next reap names the accessor the run opened with (long revoked).
    The identity the record holds goes too, with its leases: not left to its TTL."""
    vault: VaultBroker = deps.vault
    run_id = f"identity-{uuid.uuid4().hex[:8]}"
    first = vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 120, "origin-r")
    assert vault.close_run(run_id, first.accessor, "origin-r") is True
    retry = vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 600, "origin-r")
    vault.issue(run_id, "database/creds/shop-reader")
    assert vault.close_run(run_id, first.accessor) is True
    assert not outside.token_alive(retry.accessor)
    assert vault.read_run(run_id) is None
    outside.assert_nothing_leaked()


def test_run_identity_reads_only_its_agents_secrets(deps: Any, outside: Outside) -> None:
    vault: VaultBroker = deps.vault
    run_id = f"identity-{uuid.uuid4().hex[:8]}"
    identity = vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 60, "origin-2")
    try:
        with pytest.raises(LeaseForbidden):
            vault.issue(run_id, "lockgate/worker/settings")
        info = outside.vault.adapter.post("/v1/auth/token/lookup-accessor", json={"accessor": identity.accessor})
        assert info["data"]["policies"] == ["lockgate-agent-refund-agent"]
        assert info["data"]["ttl"] <= 60
    finally:
        vault.close_run(run_id, identity.accessor)


def test_worker_approle_token_cannot_read_database_credentials(settings: Settings) -> None:
    client = hvac.Client(url=settings.vault_addr)
    client.auth.approle.login(role_id=settings.vault_role_id, secret_id=settings.vault_secret_id)
    assert "root" not in vaultio.body(client.lookup_token())["data"]["policies"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.read("database/creds/shop-refunds")


def test_a_run_record_is_bound_to_its_own_execution(deps: Any, outside: Outside) -> None:
    """The same run id from another execution can neither take over nor revoke the identity."""
    from lockgate.activities.vault import RunMismatch

    vault = deps.vault
    run_id = f"bound-{uuid.uuid4().hex[:8]}"
    identity = vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 60, "execution-a")
    try:
        with pytest.raises(RunMismatch):
            vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 60, "execution-b")
        with pytest.raises(RunMismatch):
            vault.open_run(run_id, "incident-agent", "lockgate-agent-incident-agent", 60, "execution-a")
        with pytest.raises(RunMismatch):
            vault.close_run(run_id, identity.accessor, "execution-b")
        assert outside.token_alive(identity.accessor)
        # The same execution, retrying, finds its own identity.
        assert vault.open_run(run_id, "refund-agent", "lockgate-agent-refund-agent", 60, "execution-a") == identity
    finally:
        assert vault.close_run(run_id, identity.accessor, "execution-a") is True
    assert not outside.token_alive(identity.accessor)
