"""The worker's side of people-as-Vault-identities: who is in which group, and is this signature theirs.

`PeopleDirectory` reads Vault with the worker's own AppRole token, which may read identities and
approvers' public keys but sign as no one. Group membership is read live on every check (a change
in Vault counts from the next check on, no restart); public keys are cached per (person, version) —
a version's key never changes — and each is archived once (e.g. in the ledger) so evidence still
verifies after the key is rotated and old versions are trimmed from Vault.

hvac is synchronous: call this from sync activities (the worker's thread pool), never the event loop.
`verify_offline` needs no server at all (evidence bundles).
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import hvac
import hvac.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate import vaultio
from lockgate.activities.vault import RETRYABLE, VaultBroker
from lockgate.errors import LockgateError
from lockgate.names import TRANSIT_MOUNT
from lockgate.people import (
    Act,
    ApproverKey,
    FieldValue,
    SignedStatement,
    VerifiedAct,
    key_name,
    parse_signature,
    valid_person,
)

__all__ = [
    "CLOCK_SKEW",
    "KeyArchive",
    "LedgerKeyArchive",
    "PeopleDirectory",
    "Refused",
    "load_public_key",
    "verify_offline",
]

# A signer's clock may run a little ahead of the worker's; more than this is a statement from the future.
CLOCK_SKEW = timedelta(seconds=30)

# VAULT_CALL, as in activities/vault.py: ride out a blip in-process, then let Temporal retry.
_vault_call = retry(
    retry=retry_if_exception_type(RETRYABLE),
    wait=wait_exponential(multiplier=0.1, max=2),
    stop=stop_after_delay(10),
    reraise=True,
)


class Refused(LockgateError):
    """A person or a signed statement is not accepted; `reason` says why, for people to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyArchive(Protocol):
    """Where approvers' public keys are kept for as long as evidence must verify."""

    def put(self, key: ApproverKey) -> None:
        """Stores one key version (idempotent)."""
        ...

    def get(self, person: str, version: int) -> ApproverKey | None:
        """The stored key version, if any."""
        ...


class LedgerKeyArchive:
    """Archives public keys as ledger entries (kind `approver.key`), beside the evidence they verify.

    Args:
        ledger: A `lockgate.activities.ledger.Ledger` (anything with `try_append` and `entries`).
    """

    RUN_ID = "lockgate.people"
    KIND = "approver.key"

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def put(self, key: ApproverKey) -> None:
        # The event key makes the append idempotent: one entry per (person, version), ever.
        self._ledger.try_append(
            f"{self.KIND}:{key.person}:v{key.version}", self.RUN_ID, self.KIND, key.model_dump(mode="json")
        )

    def get(self, person: str, version: int) -> ApproverKey | None:
        for key in self.all():
            if key.person == person and key.version == version:
                return key
        return None

    def all(self) -> list[ApproverKey]:
        """Every archived key (for evidence bundles)."""
        return [
            ApproverKey.model_validate_json(e.data) for e in self._ledger.entries(self.RUN_ID) if e.kind == self.KIND
        ]


def load_public_key(value: bytes | str) -> Ed25519PublicKey:
    """An ed25519 public key from raw bytes (32), base64 text (as Transit publishes it) or PEM.

    Raises:
        ValueError: Not an ed25519 public key.
    """
    raw = value.encode() if isinstance(value, str) else value
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = load_pem_public_key(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an ed25519 public key")
        return key
    if len(raw) != 32:
        try:
            raw = base64.b64decode(raw, validate=True)
        except binascii.Error as err:
            raise ValueError("not an ed25519 public key") from err
    return Ed25519PublicKey.from_public_bytes(raw)


def _signature_valid(signed: SignedStatement, signature_b64: str, key: Ed25519PublicKey) -> bool:
    """Whether `signature_b64` (the signature's base64, strictly decoded: one spelling per
    signature) is `key`'s ed25519 signature of the statement's canonical bytes."""
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), signed.statement.canonical_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify_offline(signed: SignedStatement, public_keys: Mapping[tuple[str, int], bytes | str]) -> bool:
    """Whether `signed` is a valid signature of its statement by its person, with no server at all.

    Args:
        signed: The signed statement (e.g. from an evidence bundle).
        public_keys: (person, key version) -> public key (raw, base64 or PEM), e.g. from the archive.

    Returns:
        True only if the key is the statement person's own, the signature names that key version,
        that version's public key is given and the ed25519 signature matches the canonical bytes.
    """
    person = signed.statement.person
    parsed = parse_signature(signed.signature)
    if signed.key != key_name(person) or parsed is None or parsed[0] != signed.key_version:
        return False
    value = public_keys.get((person, signed.key_version))
    if value is None:
        return False
    try:
        key = load_public_key(value)
    except ValueError:
        return False
    return _signature_valid(signed, parsed[1], key)


def _same(a: FieldValue, b: FieldValue) -> bool:
    # Exact, type included: True must not pass for 1, nor "1" for 1.
    return type(a) is type(b) and a == b


class PeopleDirectory:
    """People, groups and their public keys, as the worker sees them in Vault.

    Args:
        vault: The worker's `VaultBroker`; its AppRole client does the reads.
        archive: Where each public key version is archived once (e.g. `LedgerKeyArchive(ledger)`);
            also consulted for versions Vault no longer publishes.
    """

    def __init__(self, vault: VaultBroker, archive: KeyArchive | None = None) -> None:
        self._vault = vault
        self._archive = archive
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, int], bytes] = {}

    @property
    def _client(self) -> hvac.Client:
        return self._vault.client

    # -- people and groups ---------------------------------------------------------------------
    @_vault_call
    def _entity(self, person: str) -> dict[str, Any]:
        if not valid_person(person):
            raise Refused(f"{person!r} is not a person's name")
        entity = (vaultio.read(self._client, f"identity/entity/name/{person}") or {}).get("data")
        if not entity:
            raise Refused(f"unknown person {person!r} (no such identity in Vault)")
        if entity.get("disabled"):
            raise Refused(f"{person} is disabled in Vault")
        return dict(entity)

    @_vault_call
    def _group_name(self, group_id: str) -> str | None:
        group = (vaultio.read(self._client, f"identity/group/id/{group_id}") or {}).get("data")
        return str(group["name"]) if group else None

    def groups_of(self, person: str) -> frozenset[str]:
        """The person's groups now (direct and inherited), read live from Vault.

        Raises:
            Refused: Unknown person, or their entity is disabled.
        """
        entity = self._entity(person)
        names = (self._group_name(g) for g in entity.get("group_ids") or [])
        return frozenset(n for n in names if n)

    # -- public keys ---------------------------------------------------------------------------
    @_vault_call
    def _published(self, person: str) -> dict[int, str]:
        data = (vaultio.read(self._client, f"{TRANSIT_MOUNT}/keys/{key_name(person)}") or {}).get("data") or {}
        if data.get("type") != "ed25519":
            return {}
        return {int(v): str(k["public_key"]) for v, k in (data.get("keys") or {}).items() if k.get("public_key")}

    def public_key(self, person: str, version: int) -> bytes:
        """The raw ed25519 public key of `person`'s signing key at `version`.

        Cached per (person, version); each version Vault publishes is archived once. A version Vault
        no longer publishes (trimmed after rotation) comes from the archive.

        Raises:
            Refused: No such key version anywhere.
        """
        with self._lock:
            cached = self._keys.get((person, version))
        if cached is not None:
            return cached
        if not valid_person(person):
            raise Refused(f"{person!r} is not a person's name")
        for v, b64 in self._published(person).items():
            self._remember(ApproverKey(person=person, version=v, public_key=b64), archive=True)
        if (person, version) not in self._keys and self._archive is not None:
            archived = self._archive.get(person, version)
            if archived is not None:
                self._remember(archived, archive=False)
        with self._lock:
            found = self._keys.get((person, version))
        if found is None:
            raise Refused(f"no public key version {version} for {person}")
        return found

    def _remember(self, key: ApproverKey, *, archive: bool) -> None:
        with self._lock:
            if (key.person, key.version) in self._keys:
                return
        raw = base64.b64decode(key.public_key)
        # Archived before it is cached: a key used to verify is always in the archive.
        if archive and self._archive is not None:
            self._archive.put(key)
        with self._lock:
            self._keys.setdefault((key.person, key.version), raw)

    # -- verification --------------------------------------------------------------------------
    def verify(
        self,
        signed: SignedStatement,
        *,
        act: Act,
        expect: Mapping[str, FieldValue],
        max_age: timedelta,
        now: datetime | None = None,
    ) -> VerifiedAct:
        """Verifies a signed statement of a person and returns what it establishes.

        Args:
            signed: What the person sent.
            act: The act this statement must be.
            expect: Fields the statement must bind, with exactly these values.
            max_age: How old the statement may be.
            now: The verification time (default: now).

        Raises:
            Refused: With a reason for people: wrong act, key not the person's, unknown or disabled
                person, bad signature, a bound field that differs, too old or from the future.
        """
        now = now or datetime.now(UTC)
        statement = signed.statement
        person = statement.person
        if statement.act != act:
            raise Refused(f"statement is {statement.act!r}, not {act!r}")
        if signed.key != key_name(person):
            raise Refused(f"signed with key {signed.key!r}, which is not {person}'s key {key_name(person)!r}")
        parsed = parse_signature(signed.signature)
        if parsed is None or parsed[0] != signed.key_version:
            raise Refused("malformed signature (not a Transit signature of the named key version)")
        entity = self._entity(person)
        public_key = Ed25519PublicKey.from_public_bytes(self.public_key(person, parsed[0]))
        if not _signature_valid(signed, parsed[1], public_key):
            raise Refused(f"signature does not match the statement: not signed by {person}, or altered since")
        for name, value in expect.items():
            if name not in statement.fields:
                raise Refused(f"statement does not bind {name} (expected {value!r})")
            if not _same(statement.fields[name], value):
                raise Refused(f"statement binds {name}={statement.fields[name]!r}, expected {value!r}")
        if statement.at > now + CLOCK_SKEW:
            raise Refused(f"statement is from the future (signed at {statement.at.isoformat()})")
        if now - statement.at > max_age:
            raise Refused(
                f"statement is too old (signed at {statement.at.isoformat()}, older than {max_age.total_seconds():.0f}s)"
            )
        names = (self._group_name(g) for g in entity.get("group_ids") or [])
        return VerifiedAct(
            person=person,
            groups=tuple(sorted(n for n in names if n)),
            act=statement.act,
            fields=dict(statement.fields),
            at=statement.at,
            digest=statement.digest(),
            key_version=signed.key_version,
            verified_at=now,
        )
