"""People are Vault identities: login, own-key signing, worker-side verification, live groups,
key rotation with archived public keys, and the login/whoami/logout CLI. All on the real OpenBao."""

from __future__ import annotations

import base64
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from lockgate.activities.identity import LedgerKeyArchive, PeopleDirectory, Refused, verify_offline
from lockgate.bootstrap import DEV_PEOPLE, bootstrap_people
from lockgate.config import Settings
from lockgate.errors import UserError
from lockgate.identity import (
    OperatorSession,
    load_session,
    login_token,
    login_userpass,
    save_session,
    session_path,
    sign,
)
from lockgate.people import SignedStatement, Statement
from tests.support.people import FIELDS, MAX_AGE
from tests.support.stack import run_cli


@pytest.fixture(scope="module")
def password(env: dict[str, str]) -> str:
    return env["LOCKGATE_DEV_PASSWORD"]


@pytest.fixture(scope="module")
def root(settings: Settings) -> hvac.Client:
    return hvac.Client(url=settings.vault_addr, token=settings.vault_token)


@pytest.fixture(scope="module")
def archive(deps: Any) -> LedgerKeyArchive:
    return LedgerKeyArchive(deps.ledger)


@pytest.fixture(scope="module")
def directory(deps: Any, archive: LedgerKeyArchive) -> PeopleDirectory:
    """What a worker holds: its own AppRole broker, and the ledger as the key archive."""
    return PeopleDirectory(deps.vault, archive=archive)


@pytest.fixture(scope="module")
def alice(settings: Settings, password: str) -> OperatorSession:
    return login_userpass(settings.vault_addr, "alice", password)


@pytest.fixture
def own_state(settings: Settings, tmp_path: Path) -> Settings:
    """Settings with a private state dir, so a test's operator.json is its own."""
    return settings.model_copy(update={"state_dir": tmp_path, "operator_token": None})


def _entity_id(root: hvac.Client, name: str) -> str:
    return str(root.read(f"identity/entity/name/{name}")["data"]["id"])


def _alive(root: hvac.Client, token: str) -> bool:
    try:
        root.auth.token.lookup(token)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False  # "bad token": expired or revoked
    return True


def _refused(directory: PeopleDirectory, signed: SignedStatement, match: str, **kwargs: Any) -> None:
    options: dict[str, Any] = {"act": "approve", "expect": FIELDS, "max_age": MAX_AGE, **kwargs}
    with pytest.raises(Refused, match=match):
        directory.verify(signed, **options)


# -- identities and login --------------------------------------------------------------------------
def test_dev_people_log_in_with_their_groups(settings: Settings, password: str) -> None:
    for name, groups in DEV_PEOPLE.items():
        session = login_userpass(settings.vault_addr, name, password)
        assert (session.name, session.groups) == (name, frozenset(groups))
        assert session.expires_at is not None
        # Operator tokens are short-lived (token_ttl 1h).
        assert timedelta(minutes=50) < session.expires_at - datetime.now(UTC) <= timedelta(hours=1)
        assert session.token not in repr(session) and "token" not in session.public()
    with pytest.raises(UserError, match=r"^login failed for alice$"):
        login_userpass(settings.vault_addr, "alice", password + "x")
    with pytest.raises(UserError, match=r"^login failed for nobody$"):
        login_userpass(settings.vault_addr, "nobody", password)


def test_bootstrap_people_is_idempotent(root: hvac.Client, password: str) -> None:
    before = {n: root.read(f"identity/entity/name/{n}")["data"] for n in DEV_PEOPLE}
    keys = {n: root.read(f"transit/keys/approver-{n}")["data"]["latest_version"] for n in DEV_PEOPLE}
    bootstrap_people(root, password=password)
    for name in DEV_PEOPLE:
        after = root.read(f"identity/entity/name/{name}")["data"]
        assert after["id"] == before[name]["id"]
        assert len(after["aliases"]) == 1
        key = root.read(f"transit/keys/approver-{name}")["data"]
        assert key["latest_version"] == keys[name] and key["exportable"] is False and key["type"] == "ed25519"
    finance = root.read("identity/group/name/finance")["data"]
    assert sorted(finance["member_entity_ids"]) == sorted(_entity_id(root, n) for n in ("alice", "bob"))


def test_person_signs_only_with_own_key(alice: OperatorSession, settings: Settings) -> None:
    message = base64.b64encode(b"anything").decode()
    assert alice.client().secrets.transit.sign_data(name="approver-alice", hash_input=message)["data"]["signature"]
    for other in ("approver-bob", "approver-carol", "ledger-anchor"):
        with pytest.raises(hvac.exceptions.Forbidden):
            alice.client().secrets.transit.sign_data(name=other, hash_input=message)
    # A client that claims to be bob still holds alice's token: Vault's templated policy refuses.
    posing = OperatorSession(
        token=alice.token,
        vault_addr=settings.vault_addr,
        entity_id=alice.entity_id,
        name="bob",
        groups=frozenset({"finance"}),
        expires_at=None,
        method="userpass",
    )
    with pytest.raises(UserError, match="Vault refused to sign as bob"):
        sign(posing, "approve", FIELDS)


def test_worker_reads_identities_but_signs_as_nobody(deps: Any) -> None:
    worker = deps.vault.client
    assert worker.read("identity/group/name/finance")["data"]["name"] == "finance"
    assert worker.read("transit/keys/approver-alice")["data"]["keys"]
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.secrets.transit.sign_data(name="approver-alice", hash_input=base64.b64encode(b"x").decode())
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write("identity/group/name/finance", member_entity_ids=[])


# -- verification ----------------------------------------------------------------------------------
def test_signed_statement_verifies_in_worker_and_offline(
    alice: OperatorSession, directory: PeopleDirectory, archive: LedgerKeyArchive
) -> None:
    signed = sign(alice, "approve", FIELDS)
    assert signed.key == "approver-alice" and signed.signature.startswith(f"vault:v{signed.key_version}:")
    # As it travels in a signal: JSON and back, the signed bytes unchanged.
    wire = SignedStatement.model_validate_json(signed.model_dump_json())
    verified = directory.verify(wire, act="approve", expect=FIELDS, max_age=MAX_AGE)
    assert (verified.person, verified.groups, verified.act) == ("alice", ("finance",), "approve")
    assert verified.fields == FIELDS and verified.digest == signed.statement.digest()
    assert verified.key_version == signed.key_version
    dumped = verified.model_dump_json() + wire.model_dump_json()
    assert alice.token not in dumped

    # Offline, from the archived public keys alone (as an evidence bundle carries them).
    keys = {(k.person, k.version): k.public_key for k in archive.all()}
    assert verify_offline(wire, keys)
    raw = {("alice", signed.key_version): directory.public_key("alice", signed.key_version)}
    assert verify_offline(wire, raw)
    altered = wire.model_copy(
        update={"statement": wire.statement.model_copy(update={"fields": {**FIELDS, "request_id": "req-2"}})}
    )
    assert not verify_offline(altered, keys)
    assert not verify_offline(wire, {})


def test_forgeries_and_mismatches_are_refused(
    alice: OperatorSession, settings: Settings, password: str, directory: PeopleDirectory
) -> None:
    signed = sign(alice, "approve", FIELDS)
    statement = signed.statement

    def altered(**update: Any) -> SignedStatement:
        return signed.model_copy(update={"statement": statement.model_copy(update=update)})

    for name in FIELDS:
        _refused(directory, altered(fields={**FIELDS, name: "other"}), "signature does not match")
    _refused(directory, altered(act="reject"), "signature does not match", act="reject")
    _refused(directory, altered(at=statement.at + timedelta(seconds=1)), "signature does not match")
    # Swapping the signer: another person's key name, or another person with their key name.
    _refused(directory, signed.model_copy(update={"key": "approver-bob"}), "not alice's key")
    _refused(directory, altered(person="bob"), "not bob's key")
    bobbed = altered(person="bob").model_copy(update={"key": "approver-bob"})
    _refused(directory, bobbed, "signature does not match the statement: not signed by bob")
    nobody = altered(person="zed").model_copy(update={"key": "approver-zed"})
    _refused(directory, nobody, "unknown person 'zed'")
    _refused(directory, signed.model_copy(update={"signature": "vault:v1:!!"}), "malformed signature")
    _refused(directory, signed.model_copy(update={"key_version": signed.key_version + 1}), "malformed signature")
    # A genuine statement, but not the one expected here.
    _refused(directory, signed, "statement is 'approve', not 'reject'", act="reject")
    _refused(directory, signed, "binds request_id='req-1', expected 'req-9'", expect={**FIELDS, "request_id": "req-9"})
    _refused(directory, signed, "does not bind decision_id", expect={**FIELDS, "decision_id": "d-1"})
    typed = sign(alice, "approve", {**FIELDS, "quorum": 1})
    _refused(directory, typed, "binds quorum=1, expected True", expect={"quorum": True})
    # Time: too old (signed long ago, or verified long after), or from the future.
    old = sign(alice, "approve", FIELDS, at=datetime.now(UTC) - timedelta(hours=2))
    _refused(directory, old, "too old")
    _refused(directory, signed, "too old", now=datetime.now(UTC) + MAX_AGE + timedelta(seconds=5))
    future = sign(alice, "approve", FIELDS, at=datetime.now(UTC) + timedelta(minutes=10))
    _refused(directory, future, "from the future")
    # mallory's statement is genuine; she simply has no approver group.
    mallory = login_userpass(settings.vault_addr, "mallory", password)
    assert (
        directory.verify(sign(mallory, "approve", FIELDS), act="approve", expect=FIELDS, max_age=MAX_AGE).groups == ()
    )


def test_disabled_person_is_refused_at_once(
    settings: Settings, password: str, root: hvac.Client, directory: PeopleDirectory
) -> None:
    dave = login_userpass(settings.vault_addr, "dave", password)
    signed = sign(dave, "halt", {"run_id": "r-1"})
    dave_id = _entity_id(root, "dave")
    root.write(f"identity/entity/id/{dave_id}", disabled=True)
    try:
        with pytest.raises(Refused, match="dave is disabled"):
            directory.groups_of("dave")
        with pytest.raises(Refused, match="dave is disabled"):
            directory.verify(signed, act="halt", expect={"run_id": "r-1"}, max_age=MAX_AGE)
        with pytest.raises(UserError):
            sign(dave, "halt", {"run_id": "r-1"})
    finally:
        root.write(f"identity/entity/id/{dave_id}", disabled=False)
    assert directory.verify(signed, act="halt", expect={"run_id": "r-1"}, max_age=MAX_AGE).person == "dave"


def test_group_change_counts_at_the_next_check(
    settings: Settings, password: str, root: hvac.Client, directory: PeopleDirectory
) -> None:
    carol = login_userpass(settings.vault_addr, "carol", password)
    signed = sign(carol, "approve", FIELDS)
    assert directory.groups_of("carol") == {"support-leads", "operators"}
    leads = root.read("identity/group/name/support-leads")["data"]["member_entity_ids"]
    carol_id = _entity_id(root, "carol")
    root.write("identity/group/name/support-leads", member_entity_ids=[m for m in leads if m != carol_id])
    try:
        assert directory.groups_of("carol") == {"operators"}
        verified = directory.verify(signed, act="approve", expect=FIELDS, max_age=MAX_AGE)
        assert verified.groups == ("operators",)
    finally:
        root.write("identity/group/name/support-leads", member_entity_ids=leads)
    assert directory.groups_of("carol") == {"support-leads", "operators"}
    with pytest.raises(Refused, match="unknown person 'nobody'"):
        directory.groups_of("nobody")
    with pytest.raises(Refused, match="not a person's name"):
        directory.groups_of("../sys/policy")


def test_key_rotation_keeps_old_signatures_verifiable(
    alice: OperatorSession, root: hvac.Client, deps: Any, directory: PeopleDirectory, archive: LedgerKeyArchive
) -> None:
    before = sign(alice, "approve", FIELDS)
    directory.verify(before, act="approve", expect=FIELDS, max_age=MAX_AGE)  # archives what Vault publishes
    root.write("transit/keys/approver-alice/rotate")
    after = sign(alice, "approve", FIELDS)
    assert after.key_version == before.key_version + 1
    # Retire the old version in Vault: it no longer publishes (nor verifies with) that key.
    root.write("transit/keys/approver-alice/config", min_decryption_version=after.key_version)
    try:
        assert str(before.key_version) not in root.read("transit/keys/approver-alice")["data"]["keys"]
        fresh = PeopleDirectory(deps.vault, archive=archive)  # a worker started after the rotation
        assert fresh.verify(before, act="approve", expect=FIELDS, max_age=MAX_AGE).key_version == before.key_version
        assert fresh.verify(after, act="approve", expect=FIELDS, max_age=MAX_AGE).key_version == after.key_version
        with pytest.raises(Refused, match=f"no public key version {before.key_version} for alice"):
            PeopleDirectory(deps.vault).verify(before, act="approve", expect=FIELDS, max_age=MAX_AGE)
        keys = {(k.person, k.version): k.public_key for k in archive.all()}
        assert verify_offline(before, keys) and verify_offline(after, keys)
        assert not verify_offline(before.model_copy(update={"signature": after.signature}), keys)
    finally:
        root.write("transit/keys/approver-alice/config", min_decryption_version=1)
    # Each (person, version) is archived exactly once, however many workers saw it.
    archived = [(e.event_key) for e in deps.ledger.entries(LedgerKeyArchive.RUN_ID) if ":alice:" in e.event_key]
    assert sorted(archived) == sorted({f"approver.key:alice:v{v}" for v in range(1, after.key_version + 1)})


# -- sessions --------------------------------------------------------------------------------------
def test_expired_or_revoked_token_is_not_logged_in(
    own_state: Settings, password: str, root: hvac.Client, alice: OperatorSession
) -> None:
    with pytest.raises(UserError, match=r"^not logged in"):
        load_session(own_state)
    session = login_userpass(own_state.vault_addr, "bob", password)
    save_session(own_state, session)
    assert session_path(own_state).stat().st_mode & 0o777 == 0o600
    assert load_session(own_state).name == "bob"
    # LOCKGATE_OPERATOR_TOKEN wins over the stored session.
    assert load_session(own_state.model_copy(update={"operator_token": alice.token})).name == "alice"

    session.client().auth.token.renew_self(increment="1s")  # the token's lease now ends in a second
    time.sleep(2.2)
    with pytest.raises(UserError, match=r"^not logged in: the token is expired or revoked"):
        load_session(own_state)

    session = login_userpass(own_state.vault_addr, "bob", password)
    save_session(own_state, session)
    root.auth.token.revoke(session.token)
    with pytest.raises(UserError, match=r"^not logged in: the token is expired or revoked"):
        load_session(own_state)
    with pytest.raises(UserError, match=r"^not logged in: .*LOCKGATE_OPERATOR_TOKEN"):
        load_session(own_state.model_copy(update={"operator_token": session.token}))
    with pytest.raises(UserError, match="belongs to no person"):
        login_token(own_state.vault_addr, str(root.token))


def test_sign_and_verify_latency(alice: OperatorSession, directory: PeopleDirectory) -> None:
    signs, verifies = [], []
    for i in range(60):
        t = time.perf_counter()
        signed = sign(alice, "approve", {**FIELDS, "request_id": f"req-{i}"})
        signs.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        directory.verify(signed, act="approve", expect={"request_id": f"req-{i}"}, max_age=MAX_AGE)
        verifies.append((time.perf_counter() - t) * 1000)
    keys = {("alice", signed.key_version): directory.public_key("alice", signed.key_version)}
    offline = []
    for _ in range(200):
        t = time.perf_counter()
        assert verify_offline(signed, keys)
        offline.append((time.perf_counter() - t) * 1000)
    sign_p50, verify_p50, offline_p50 = (statistics.median(x) for x in (signs, verifies, offline))
    print(
        f"\nsign p50 {sign_p50:.2f} ms, verify p50 {verify_p50:.2f} ms (live entity + group reads, cached key), "
        f"offline verify p50 {offline_p50:.3f} ms"
    )
    assert sign_p50 < 50 and verify_p50 < 50 and offline_p50 < 5


# -- CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The stack's environment with a private state dir (its own operator.json)."""
    return {**env, "LOCKGATE_STATE_DIR": str(tmp_path)}


def test_cli_login_whoami_logout(
    cli_env: dict[str, str], settings: Settings, password: str, root: hvac.Client, tmp_path: Path
) -> None:
    nobody = run_cli(cli_env, "whoami")
    assert nobody.returncode == 2 and nobody.stderr.startswith("lockgate: not logged in")

    wrong = run_cli(cli_env, "login", "alice", "--password-stdin", input="not-the-password\n")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "lockgate: login failed for alice" and "Traceback" not in wrong.stderr
    assert not (tmp_path / "operator.json").exists()

    ok = run_cli(cli_env, "login", "alice", "--password-stdin", input=password + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "logged in as alice" in ok.stdout and "finance" in ok.stdout
    stored = tmp_path / "operator.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    record = json.loads(stored.read_text())
    assert password not in stored.read_text() and record["name"] == "alice"
    token = record["token"]
    assert _alive(root, token) and root.auth.token.lookup(token)["data"]["meta"]["username"] == "alice"

    who = run_cli(cli_env, "whoami", "--json")
    assert who.returncode == 0, who.stderr
    me = json.loads(who.stdout)
    assert (me["name"], me["groups"], me["method"]) == ("alice", ["finance"], "userpass")
    assert datetime.fromisoformat(me["expires_at"]) > datetime.now(UTC)
    text = run_cli(cli_env, "whoami")
    assert text.returncode == 0 and text.stdout.startswith("alice  groups: finance  token expires")

    # Any auth method's token: here bob's, piped in. Logging in again revokes the replaced token.
    bob = login_userpass(settings.vault_addr, "bob", password)
    swapped = run_cli(cli_env, "login", "--method", "token", "--json", input=bob.token + "\n")
    assert swapped.returncode == 0, swapped.stderr
    assert json.loads(swapped.stdout)["name"] == "bob"
    assert not _alive(root, token)
    mismatch = run_cli(cli_env, "login", "carol", "--method", "token", input=bob.token + "\n")
    assert mismatch.returncode == 2 and "the token belongs to bob" in mismatch.stderr

    out = run_cli(cli_env, "logout")
    assert out.returncode == 0 and "logged out bob" in out.stdout
    assert not stored.exists()
    assert not _alive(root, bob.token)
    after = run_cli(cli_env, "whoami")
    assert after.returncode == 2 and "not logged in" in after.stderr

    for result in (nobody, wrong, ok, who, text, swapped, mismatch, out, after):
        assert password not in result.stdout + result.stderr
        assert token not in result.stdout + result.stderr and bob.token not in result.stdout + result.stderr


def test_statement_form_is_canonical() -> None:
    at = datetime(2026, 11, 23, 20, 0, tzinfo=UTC)
    statement = Statement(act="freeze", person="carol", at=at, nonce="n" * 16, fields={"scope": "all", "ok": True})
    assert statement.canonical_bytes() == (
        b'{"act":"freeze","at":"2026-11-23T20:00:00.000000Z","fields":{"ok":true,"scope":"all"},'
        b'"nonce":"nnnnnnnnnnnnnnnn","person":"carol","v":1}'
    )
    again = Statement.model_validate_json(statement.model_dump_json())
    assert again.digest() == statement.digest() and again.fields["ok"] is True
    with pytest.raises(ValueError, match="timezone-aware"):
        Statement(act="halt", person="carol", at=datetime(2026, 1, 1), nonce="n" * 16)
    with pytest.raises(ValueError, match="person"):
        Statement(act="halt", person="../bob", at=at, nonce="n" * 16)
    with pytest.raises(ValueError, match="extra"):
        Statement.model_validate({"act": "halt", "person": "carol", "at": at, "nonce": "n" * 16, "token": "s"})
