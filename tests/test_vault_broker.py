"""Real-stack tests of the run identity's and the seal's checks in the Vault broker, each in
isolation (found by `make mutation`): called directly, as the governance activities call them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lockgate.activities.vault import LeaseForbidden, RunMismatch, VaultBroker
from lockgate.bootstrap import RUNS_MOUNT
from lockgate.config import Settings
from tests.support.stack import Outside

POLICY = "lockgate-agent-refund-agent"


def _id() -> str:
    return f"vault-{uuid.uuid4().hex[:8]}"


def _another_worker(settings: Settings) -> VaultBroker:
    """A second worker's broker: nothing of the first one's memory, only what Vault holds."""
    assert settings.vault_role_id and settings.vault_secret_id
    return VaultBroker(settings.vault_addr, settings.vault_role_id, settings.vault_secret_id)


def test_a_run_opened_by_another_worker_is_closed_by_its_record(
    deps: Any, settings: Settings, outside: Outside
) -> None:
    """Control: `close_run` reads the run's record from Vault when this worker did not open it: it
    checks the record's execution, revokes the identity and removes the record (a record left
    behind would keep the run "open" for the reaper)."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    other = _another_worker(settings)
    with pytest.raises(RunMismatch):
        other.close_run(run_id, identity.accessor, "execution-b")
    assert outside.token_alive(identity.accessor)
    assert other.close_run(run_id, identity.accessor, "execution-a") is True
    assert not outside.token_alive(identity.accessor)
    assert other.read_run(run_id) is None and run_id not in other.open_runs()


def test_closing_with_another_accessor_than_the_runs_is_refused(deps: Any, outside: Outside) -> None:
    """Control: `close_run` revokes only the accessor the run's record holds: another one (a token of
    another run, say) is refused and the run's identity and record stay."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    try:
        with pytest.raises(RunMismatch):
            deps.vault.close_run(run_id, "not-this-runs-accessor", "execution-a")
        assert outside.token_alive(identity.accessor)
        assert deps.vault.read_run(run_id) is not None
    finally:
        deps.vault.close_run(run_id, identity.accessor, "execution-a")


def test_closing_an_identity_revoked_meanwhile_says_this_call_revoked_nothing(deps: Any, outside: Outside) -> None:
    """Control: `close_run` reports whether this call revoked the identity (`run.closed` records it):
    one revoked meanwhile (expired, or by an operator) is not, and its record still goes."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    outside.vault.adapter.post("/v1/auth/token/revoke-accessor", json={"accessor": identity.accessor})
    assert deps.vault.close_run(run_id, identity.accessor, "execution-a") is False
    assert deps.vault.read_run(run_id) is None


def test_an_identity_reports_when_it_expires(deps: Any) -> None:
    """Control: the identity's expiry (recorded with it; a sub-agent's never outlives it) is its
    TTL from now."""
    run_id = _id()
    before = datetime.now(UTC)
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    try:
        assert before + timedelta(seconds=55) < identity.expires_at <= datetime.now(UTC) + timedelta(seconds=61)
        assert datetime.fromisoformat(deps.vault.read_run(run_id)["expires_at"]) == identity.expires_at
    finally:
        deps.vault.close_run(run_id, identity.accessor, "execution-a")


def test_a_seal_verifies_only_over_its_own_bytes(deps: Any) -> None:
    """Control: `check_seal` accepts the worker's seal of exactly these bytes, and nothing else: other
    bytes, a seal without Transit's `vault:` form, a malformed one."""
    vault: VaultBroker = deps.vault
    seal = vault.seal(b"carry-1")
    assert vault.check_seal(b"carry-1", seal) is True
    assert vault.check_seal(b"carry-2", seal) is False
    assert vault.check_seal(b"carry-1", seal.removeprefix("vault:")) is False
    assert vault.check_seal(b"carry-1", "forged") is False
    assert vault.check_seal(b"carry-1", "vault:v1:@@not-base64@@") is False


def test_closing_without_an_accessor_revokes_the_one_the_runs_record_holds(deps: Any, outside: Outside) -> None:
    """Control: `close_run` without an accessor (a run that closes before it learnt its own, the
    reaper) takes the accessor from the run's record."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    assert deps.vault.close_run(run_id, None, "execution-a") is True
    assert not outside.token_alive(identity.accessor)


def test_an_identity_whose_record_is_gone_is_still_revoked_by_its_accessor(
    deps: Any, settings: Settings, outside: Outside
) -> None:
    """Control: without the run's record (lost, or never written by a worker that died), `close_run`
    still revokes a live identity by the accessor the ledger recorded (the reaper's path)."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    outside.vault.secrets.kv.v1.delete_secret(path=f"runs/{run_id}", mount_point=RUNS_MOUNT)
    assert _another_worker(settings).close_run(run_id, identity.accessor) is True
    assert not outside.token_alive(identity.accessor)


def test_a_secret_path_that_issues_no_lease_is_refused(deps: Any) -> None:
    """Control: a tool gets only a dynamic secret (one with a lease, revoked when the call ends): a
    path the run's identity may read but that issues no lease (its own token lookup) is refused."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    try:
        with pytest.raises(LeaseForbidden, match="issued no lease"):
            deps.vault.issue(run_id, "auth/token/lookup-self")
    finally:
        deps.vault.close_run(run_id, identity.accessor, "execution-a")


def test_a_closed_run_keeps_no_token_in_the_worker(deps: Any) -> None:
    """Control: `close_run` forgets the run's token (a worker serves runs for months: it keeps no
    token of a closed run, dead or not), so a late call is refused as closed, without asking Vault."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    deps.vault.issue(run_id, "database/creds/shop-reader")
    deps.vault.close_run(run_id, identity.accessor, "execution-a")
    with pytest.raises(LeaseForbidden, match="has no open identity"):
        deps.vault.issue(run_id, "database/creds/shop-reader")


def test_a_closed_runs_id_holds_nothing_for_a_later_close(deps: Any, outside: Outside) -> None:
    """Control: `close_run` forgets the run it closed: a later close under the same id (a refused
    reuse of the id, closing what it never opened) finds no identity of anyone, revokes nothing and
    is not taken for a claim on the earlier run's."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    assert deps.vault.close_run(run_id, identity.accessor, "execution-a") is True
    assert deps.vault.close_run(run_id, None, "execution-b") is False
    assert deps.vault.read_run(run_id) is None and not outside.token_alive(identity.accessor)


def test_revoking_a_lease_twice_or_one_vault_never_issued_is_a_no_op(deps: Any, outside: Outside) -> None:
    """The tool activity revokes a call's lease when the call ends, and a retried attempt or the
    reaper may revoke it again: a lease already gone (or never issued) is no error."""
    run_id = _id()
    identity = deps.vault.open_run(run_id, "refund-agent", POLICY, 60, "execution-a")
    try:
        lease, _ = deps.vault.issue(run_id, "database/creds/shop-reader")
        deps.vault.revoke(lease.lease_id)
        assert lease.lease_id not in outside.live_leases()
        deps.vault.revoke(lease.lease_id)
        deps.vault.revoke("database/creds/shop-reader/never-issued")
    finally:
        deps.vault.close_run(run_id, identity.accessor, "execution-a")
