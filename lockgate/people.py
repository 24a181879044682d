"""What a person says, signed: the statements operators sign and the worker verifies.

People are Vault/OpenBao identities (entities named after the person, groups for approver roles).
A person acts by signing a `Statement` with their own Transit key (`approver-<name>`, which only
their token can use); the worker verifies the signature, the bound fields and the person's groups
*at verification time* and records a `VerifiedAct`.

Pure pydantic, no I/O and no clock: importable from workflow code. Never a token or password here.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

__all__ = [
    "APPROVER_KEY_PREFIX",
    "PERSON_NAME",
    "Act",
    "ApproverKey",
    "FieldValue",
    "SignedStatement",
    "Statement",
    "VerifiedAct",
    "key_name",
    "parse_signature",
    "valid_person",
]

Act = Literal[
    "start", "approve", "reject", "halt", "freeze", "unfreeze", "policy-sign", "policy-switch", "policy-shadow"
]
FieldValue = str | int | bool | None

# Each person signs with the Transit key `approver-<entity name>` (lockgate.bootstrap creates them).
APPROVER_KEY_PREFIX = "approver-"
# A person's name goes into Vault paths (identity/entity/name/<name>, transit/keys/approver-<name>):
# nothing that could walk a path.
PERSON_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
_PERSON = re.compile(PERSON_NAME)
_SIGNATURE = re.compile(r"^vault:v(?P<version>[1-9][0-9]*):(?P<b64>[A-Za-z0-9+/=]+)$")


def key_name(person: str) -> str:
    """The Transit key a person signs with."""
    return f"{APPROVER_KEY_PREFIX}{person}"


def parse_signature(signature: str) -> tuple[int, str] | None:
    """`vault:v<N>:<base64>` as Transit returns it -> (N, base64), or None when malformed."""
    match = _SIGNATURE.match(signature)
    if match is None:
        return None
    return int(match["version"]), match["b64"]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a statement's time must be timezone-aware")
    return value.astimezone(UTC)


class Statement(BaseModel):
    """One act of one person, in the exact form that is signed.

    Attributes:
        v: Format version of the signed form (changing the form means a new version).
        act: What the person does.
        person: The signer's Vault entity name.
        at: When the person signed (UTC).
        nonce: Random, so two identical acts are two statements (replays are detectable).
        fields: What the act binds, e.g. run_id, temporal_run_id, request_id, decision_id, tool,
            args_digest, reason, agent, scope. Verification compares them exactly (type included).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    act: Act
    person: str = Field(pattern=PERSON_NAME)
    at: datetime
    nonce: str = Field(min_length=16, max_length=128)
    fields: dict[str, FieldValue] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _at_utc(cls, value: datetime) -> datetime:
        return _utc(value)

    @field_serializer("at")
    def _at_text(self, value: datetime) -> str:
        # One spelling of a time, so the signed bytes survive any JSON round trip unchanged.
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def canonical_bytes(self) -> bytes:
        """The one canonical form that is signed: sorted keys, no spaces, UTF-8.

        Defined here, not shared with other digests, because a signed format must never change
        as a side effect of an unrelated change.
        """
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def digest(self) -> str:
        """sha256 hex of `canonical_bytes()`: how evidence names this statement."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


class SignedStatement(BaseModel):
    """A statement with the person's Transit signature, as it travels to the worker (a signal).

    Attributes:
        statement: What was signed.
        key: The Transit key that signed (must be `approver-<statement.person>`).
        key_version: The key version that signed (the `vN` in the signature).
        signature: As Transit returns it, e.g. `vault:v1:<base64>`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    statement: Statement
    key: str
    key_version: int = Field(ge=1)
    signature: str

    def digest(self) -> str:
        return self.statement.digest()


class ApproverKey(BaseModel):
    """One version of a person's public signing key, archived so evidence verifies after rotation.

    Attributes:
        person: The entity name.
        version: The Transit key version.
        public_key: The raw ed25519 public key, base64 (as Transit publishes it).
        algorithm: The key type.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    person: str = Field(pattern=PERSON_NAME)
    version: int = Field(ge=1)
    public_key: str
    algorithm: Literal["ed25519"] = "ed25519"


class VerifiedAct(BaseModel):
    """What the worker established about a signed statement; what the workflow and ledger record.

    Attributes:
        person: The verified signer (Vault entity name).
        groups: The person's groups when the statement was verified (sorted).
        act: The act.
        fields: The bound fields, as signed.
        at: When the person signed.
        digest: sha256 of the statement's canonical form (the evidence's name).
        key_version: The key version that signed (which archived public key verifies it).
        verified_at: When the worker verified it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    person: str
    groups: tuple[str, ...]
    act: Act
    fields: dict[str, FieldValue]
    at: datetime
    digest: str
    key_version: int
    verified_at: datetime

    def in_group(self, group: str) -> bool:
        return group in self.groups


def valid_person(name: str) -> bool:
    """Whether `name` is a well-formed person name (safe in a Vault path)."""
    return bool(_PERSON.match(name))
